"""MambaAD trained with Local Anomaly Synthesis on its input path (``method: mambaad_las``).

Everything is MambaAD's (:class:`~mambaad_lib.methods.mambaad.MambaADMethod`) except the
training loss: with probability ``las_probability`` a training image is replaced by its LAS
version on the decoder's input path while the reconstruction target stays the clean
image's encoder features (:func:`las_reconstruction_loss`). Inference is unchanged, so the
two methods' checkpoints share one architecture. With ``las_augment: false`` it trains
exactly like ``mambaad``, which makes the flag an ablation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mambaad_lib.methods.mambaad import MambaADMethod, MambaADMethodConfig
from mambaad_lib.models.mambaad import ReconstructionModel, reconstruction_loss
from mambaad_lib.synthesis.las import LocalAnomalySynthesizer, build_las
from mambaad_lib.utils.errors import ConfigError


@dataclass
class MambaADLASMethodConfig(MambaADMethodConfig):
    """MambaAD's ``model:`` section plus the LAS options.

    ``texture_dir``: DTD or any image folder (null: textures bundled with scikit-image).
    LAS uses the whole image as foreground (MambaAD is trained on all classes at once).
    """

    las_augment: bool = True
    las_probability: float = 0.5
    texture_dir: str | None = None
    las_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.las_probability <= 1.0:
            raise ConfigError(f"config key 'model.las_probability': must be in [0, 1], got {self.las_probability}")


def las_reconstruction_loss(model: ReconstructionModel, images: Tensor, synthesizer: LocalAnomalySynthesizer,
                            rng: np.random.Generator) -> Tensor:
    """MambaAD's reconstruction loss with LAS on the input path (the ``las_augment`` rule).

    The decoder reconstructs from the encoder features of the LAS-corrupted batch, and the
    target is the encoder features of the *clean* batch: the model learns to map corrupted
    inputs back to normal features. ``images`` are ImageNet-normalised (B, 3, H, W); returns
    a scalar.
    """
    corrupted, _ = synthesizer(images.detach().cpu(), rng)
    with torch.no_grad():
        clean_features = model.encoder(images)
    _, decoded = model(corrupted.to(images.device))
    return reconstruction_loss(clean_features, decoded)


class MambaADLASMethod(MambaADMethod):
    """MambaAD whose decoder learns to reconstruct clean features from LAS-corrupted inputs."""

    name = "mambaad_las"
    config_class = MambaADLASMethodConfig

    def __init__(self, config: MambaADLASMethodConfig, image_size: int, device: torch.device,
                 pretrained: bool = True) -> None:
        super().__init__(config, image_size, device, pretrained)
        self.las = build_las(config.texture_dir, probability=config.las_probability) if config.las_augment else None
        self.las_rng = np.random.default_rng(config.las_seed)

    def summary(self) -> str:
        las = f"las_p={self.config.las_probability}" if self.las is not None else "las=off"
        return super().summary()[:-1] + f", {las})"

    def training_loss(self, images: Tensor) -> Tensor:
        if self.las is None:
            return super().training_loss(images)
        return las_reconstruction_loss(self.model, images, self._las_on_global_batch, self.las_rng)

    def _las_on_global_batch(self, images: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """LAS of this process's images (B, 3, H, W): under torchrun the whole global batch is
        synthesized from the random stream every process shares and each keeps its rows, so
        the result does not depend on the world size."""
        corrupted, masks = self.las(self.parallel.gather(images), rng)
        return self.parallel.local(corrupted), self.parallel.local(masks)

    def optimization_state(self) -> dict[str, Any]:
        return {**super().optimization_state(), "las_rng": self.las_rng.bit_generator.state}

    def load_optimization_state(self, state: dict[str, Any]) -> None:
        super().load_optimization_state(state)
        self.las_rng.bit_generator.state = state["las_rng"]
