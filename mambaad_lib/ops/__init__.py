"""Selective-scan operators: one public entry point, several backends."""
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
    "selective_scan",
]
