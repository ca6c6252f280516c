"""Selective-scan operators (one public entry point, several backends), SS2D's multi-direction
scan, and the fused InstanceNorm + SiLU of the LSS local branches."""
from mambaad_lib.ops.directions import permute_sequences, selective_scan_directions
from mambaad_lib.ops.norm_act import instance_norm_silu
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
    "instance_norm_silu",
    "backend_status",
    "resolve_backend",
    "permute_sequences",
    "selective_scan",
    "selective_scan_directions",
]
