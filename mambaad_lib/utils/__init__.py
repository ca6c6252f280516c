"""Small helpers every layer may use: errors (and one-line messages for OS errors), atomic
file writing, safe names for folders, reading torch files without running their code,
package resources, dataclass configs. Nothing here imports another part of the library."""
