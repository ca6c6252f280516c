"""Anomaly synthesis: seeded Perlin noise and masks (:mod:`.perlin`), and the GLASS local and
global anomaly synthesis built on them (their own modules in this package)."""
from mambaad_lib.synthesis.perlin import as_generator, perlin_mask, perlin_noise

__all__ = ["as_generator", "perlin_noise", "perlin_mask"]
