"""MMAD as an engine method: ``build_mmad`` under the release's training protocol.

MMAD's trainer is MambaAD's (mmad_facts.md section 7): AdamW, lr 0.005 x batch / 16, weight
decay 1e-4 on weight matrices and kernels only, step decay x0.1 at 80%, gradient clipping
5.0, loss 5 x sum over scales of MSE(encoder, decoder), unified multi-class training. Only
the batch size differs (8, hence lr 0.0025): ``configs/mmad_paper.yaml``. Everything but
building the model is therefore :class:`~mambaad_lib.methods.mambaad.MambaADMethod`'s.

Evaluation runs both metric protocols of the engine. The release evaluates pixel AUROC, AP
and AU-PRO with the ``adeval`` package (binned, on the GPU); our ``standard`` protocol is
the exact form of those metrics, ``ader`` is MambaAD's release evaluator.

Inference is deterministic by default here (``inference_seed: 0``): the release's
Gumbel-sampled token budget is drawn from a generator seeded afresh for every batch.
``inference_seed: null`` reproduces the release's unseeded draw.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.methods.base import AnomalyMethod
from mambaad_lib.methods.mambaad import MambaADMethod, check_encoder_options
from mambaad_lib.models.mmad import DEFAULT_GROUP_SCANS, MMADConfig

# Any valid image size validates the architecture options; the run's size is checked at build time.
_VALIDATION_IMAGE_SIZE = 256


@dataclass
class MMADMethodConfig:
    """The ``model:`` section for ``method: mmad`` (arguments of ``build_mmad``).

    ``encoder_weights``: ``imagenet``, ``none`` (random encoder, BatchNorm re-estimated on at
    most ``bn_reestimate_images`` training images) or a local weights file.
    ``release_compat``: the release's quirks (default) or the corrected model
    (:mod:`mambaad_lib.models.mmad_fuser`, :mod:`mambaad_lib.models.mmad_decoder`).
    """

    backbone: str = "resnet34"
    depths: tuple[int, ...] = (3, 4, 6, 3)
    group_scans: tuple[str, ...] = DEFAULT_GROUP_SCANS
    fuser_scan: str = "hilbert"
    directions: int = 8
    dilations: tuple[int, ...] = (1, 3, 5)
    release_compat: bool = True
    inference_seed: int | None = 0
    encoder_weights: str = "imagenet"
    drop_path_rate: float = 0.2
    fuser_drop_path: float = 0.1
    fuser_dropout: float = 0.1
    scan_backend: str = "auto"
    bn_reestimate_images: int | None = None

    def __post_init__(self) -> None:
        check_encoder_options(self)
        try:
            self.model_config(encoder_weights=None, image_size=_VALIDATION_IMAGE_SIZE)
        except ValueError as error:
            raise ConfigError(f"config section 'model': {error}") from None

    @property
    def random_encoder(self) -> bool:
        return self.encoder_weights.lower() == "none"

    def model_config(self, encoder_weights: str | None, image_size: int) -> MMADConfig:
        """The :class:`MMADConfig` of this section for images of ``image_size``."""
        shared = {f.name: getattr(self, f.name) for f in fields(MMADConfig)
                  if f.name not in ("encoder_weights", "image_size")}
        return MMADConfig(**shared, encoder_weights=encoder_weights, image_size=image_size)


class MMADMethod(MambaADMethod):
    """MMAD (frozen CNN encoder, Dilated Mamba Fuser, Hybrid Mamba Decoder)."""

    name = "mmad"
    config_class = MMADMethodConfig

    def build_model(self, encoder_weights: str | None) -> nn.Module:
        from mambaad_lib.models.mmad import MMAD

        return MMAD(self.config.model_config(encoder_weights=encoder_weights, image_size=self.image_size))

    def summary(self) -> str:
        c = self.config
        return (f"mmad(backbone={c.backbone}, depths={list(c.depths)}, group_scans={'->'.join(c.group_scans)}"
                f"x{c.directions}, release_compat={c.release_compat}, inference_seed={c.inference_seed}, "
                f"image_size={self.image_size})")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "release_compat": self.config.release_compat,
                "inference_seed": self.config.inference_seed}


def compare_inference_speed(methods: Mapping[str, AnomalyMethod], images: Tensor, repeats: int = 3
                            ) -> dict[str, float]:
    """Images per second of ``method.predict(images)`` for every method, best of ``repeats``.

    The methods take turns (one call of each per round, after one warm-up round), so a load
    change on a shared machine affects all of them alike; the ratios are the result to read.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    best = {label: float("inf") for label in methods}
    for round_index in range(repeats + 1):
        for label, method in methods.items():
            started = time.perf_counter()
            method.predict(images)
            if method.device.type == "cuda":
                torch.cuda.synchronize(method.device)
            if round_index:  # round 0 warms caches and kernels up
                best[label] = min(best[label], time.perf_counter() - started)
    return {label: images.shape[0] / seconds for label, seconds in best.items()}
