"""Selective-scan operators: one public entry point, several backends, and SS2D's multi-direction scan."""
from mambaad_lib.ops.directions import permute_sequences, selective_scan_directions
from mambaad_lib.ops.selective_scan import (
    AUTO_ORDER,
    BACKEND_ENV,
    BACKENDS,
    available_backends,
    backend_status,
    resolve_backend,
    selective_scan,
)

__all__ = [
    "AUTO_ORDER",
    "BACKEND_ENV",
    "BACKENDS",
    "available_backends",
    "backend_status",
    "resolve_backend",
    "permute_sequences",
    "selective_scan",
    "selective_scan_directions",
]
