"""MambaAD model: encoders, bottleneck, SS2D/HSS, LSS, decoder and the assembled model."""
from mambaad_lib.models.mambaad import (
    MambaAD,
    MambaADConfig,
    build_mambaad,
    cosine_anomaly_map,
    gaussian_blur,
    reconstruction_loss,
)
from mambaad_lib.models.release import (
    ReleaseLoadReport,
    export_release_state_dict,
    load_release_checkpoint,
    load_release_weights,
)
from mambaad_lib.models.mmad import MMAD, MMADConfig, build_mmad

__all__ = [
    "MMAD",
    "MMADConfig",
    "MambaAD",
    "MambaADConfig",
    "ReleaseLoadReport",
    "build_mambaad",
    "build_mmad",
    "cosine_anomaly_map",
    "export_release_state_dict",
    "gaussian_blur",
    "load_release_checkpoint",
    "load_release_weights",
    "reconstruction_loss",
]
