"""Small helpers every layer may use: errors, atomic file writing, package resources,
dataclass configs. Nothing here imports another part of the library."""
