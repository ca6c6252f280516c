"""MambaAD Companion: an executable, CPU-capable companion to MambaAD (NeurIPS 2024).

Layers, lowest first (imports point down only; ``.importlinter`` checks it in CI):
``utils``; the leaves ``scan``, ``ops``, ``metrics``, ``data``, ``synthesis``, ``paper``;
``models``; ``methods``; ``engine``; ``experiments``, ``viz`` and ``data_prep``; the front
ends ``cli`` and ``reproduce``.

The names below load lazily, so ``import mambaad_lib.scan`` pulls in nothing above it.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use.
_LAZY = {
    "count_parameters": "mambaad_lib.models.costs",
    "count_flops": "mambaad_lib.models.costs",
    "Predictor": "mambaad_lib.engine.predictor",
    "Prediction": "mambaad_lib.engine.predictor",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mambaad_lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
