"""The nearest-neighbour baseline as an engine method (``method: nearest_neighbor``).

"Training" is one pass over the normal training images: their frozen patch features
stream into a memory bank. With ``max_bank_size`` the bank is a uniform random sample of
all patches seen, kept by reservoir sampling
(:meth:`~mambaad_lib.models.nearest_neighbor.PatchMemoryBank.add`, seeded by
``model.sampling_seed``); a resumed run continues the same sample. A patch's anomaly
score is the distance to its nearest bank entry; image score = maximum over patches.

Like PatchCore (and GLASS) it is meant per class (trait ``per_class``).

Under torchrun every process extracts the features of its images and adds the gathered
global batch's features to its bank: every process ends with the one-process run's bank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.methods.base import AnomalyMethod, Parallel
from mambaad_lib.methods.glass import PatchFeatureOptions, build_patch_features, prepare_patch_features
from mambaad_lib.models.nearest_neighbor import NearestNeighborNet
from mambaad_lib.models.patch_features import flatten_patches

@dataclass
class NearestNeighborMethodConfig(PatchFeatureOptions):
    """The ``model:`` section for ``method: nearest_neighbor``.

    ``max_bank_size``: keep at most this many normal patches (uniform random sample); null
    keeps them all (exact, slower and larger).
    """

    max_bank_size: int | None = 16384
    sampling_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_bank_size is not None and self.max_bank_size < 1:
            raise ConfigError(f"config key 'model.max_bank_size': must be >= 1 or null, got {self.max_bank_size}")


class NearestNeighborMethod(AnomalyMethod):
    """Distance to the nearest normal patch in a memory bank of frozen patch features."""

    name = "nearest_neighbor"
    config_class = NearestNeighborMethodConfig
    per_class = True
    one_pass = True
    profiles = {"smoke": "nearest_neighbor_smoke", "demo": "nearest_neighbor_demo"}
    distributed = True

    def __init__(self, config: NearestNeighborMethodConfig, image_size: int, device: torch.device,
                 pretrained: bool = True) -> None:
        super().__init__(config, image_size, device, pretrained)
        self.net = NearestNeighborNet(build_patch_features(config, self.device, pretrained)).to(self.device)
        self.rng = np.random.default_rng(config.sampling_seed)

    @property
    def network(self) -> nn.Module:
        return self.net

    def summary(self) -> str:
        c = self.config
        return (f"nearest_neighbor(backbone={c.backbone}, layers={list(c.layers)}, dim={self.net.features.dim}, "
                f"max_bank_size={c.max_bank_size}, image_size={self.image_size})")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(),
                "memory_bank": {"patches": len(self.net.memory), "seen": int(self.net.memory.seen)}}

    def load_state_dict(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        self.net.memory.resize_for(state, "memory.")
        super().load_state_dict(state, source)

    # ---- "training": one pass that fills the memory bank ------------------------------------
    def prepare(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        return prepare_patch_features(self.net.features, self.config, batches, self.device)

    def distribute(self, parallel: Parallel) -> None:
        self.parallel = parallel  # nothing to train: only the bank's features are gathered

    def configure_optimization(self, train, total_steps: int) -> None:
        if train.epochs != 1:
            raise ConfigError(f"config key 'train.epochs': method nearest_neighbor fills its memory bank in one "
                              f"pass over the training images; set it to 1 (got {train.epochs})")

    @torch.no_grad()
    def training_step(self, images: Tensor) -> float:
        """Stream the (global) batch's patch features (B*h*w, D) into the bank; returns 0 (no loss)."""
        features = self.parallel.gather(flatten_patches(self.net.features(images.to(self.device))))
        self.net.memory.add(features, self.config.max_bank_size, self.rng)
        return 0.0

    def optimization_state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_optimization_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    # ---- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self.net.eval()
        return self.net.predict(images.to(self.device), self.config.map_sigma)  # (B,1,H,W), (B,)
