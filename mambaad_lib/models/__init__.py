"""MambaAD model: encoders, bottleneck, SS2D/HSS, LSS, decoder and the assembled model."""
from mambaad_lib.models.mambaad import (
    MambaAD,
    MambaADConfig,
    build_mambaad,
    cosine_anomaly_map,
    gaussian_blur,
    reconstruction_loss,
)

__all__ = [
    "MambaAD",
    "MambaADConfig",
    "build_mambaad",
    "cosine_anomaly_map",
    "gaussian_blur",
    "reconstruction_loss",
]
