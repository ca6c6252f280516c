"""MMAD as a method: :func:`~mambaad_lib.models.build_mmad` under the release's training protocol.

MMAD's trainer is MambaAD's (the MMAD release reuses ADer's trainer): AdamW, lr 0.005 x
batch / 16, weight decay 1e-4 on weight matrices and kernels only, step decay x0.1 at 80%,
gradient clipping 5.0, loss 5 x sum over scales of MSE(encoder, decoder), unified
multi-class training. Only the batch size differs (8, hence lr 0.0025: the ``mmad_paper``
profile). Everything but building the model is therefore
:class:`~mambaad_lib.methods.mambaad.MambaADMethod`'s.

Evaluation runs the engine's metric protocols. The release evaluates pixel AUROC, AP and
AU-PRO with the ``adeval`` package (binned, on the GPU); our ``standard`` protocol is the
exact form of those metrics, ``ader`` is MambaAD's release evaluator.

Inference is deterministic by default here (``inference_seed: 0``): the release's
Gumbel-sampled token budget is drawn from a generator seeded afresh for every batch.
``inference_seed: null`` reproduces the release's unseeded draw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mambaad_lib.methods.encoder import FrozenEncoderOptions
from mambaad_lib.methods.mambaad import MambaADMethod
from mambaad_lib.models.mambaad import ReconstructionModel
from mambaad_lib.models.mmad import MMADConfig, build_mmad
from mambaad_lib.utils.errors import ConfigError


@dataclass
class MMADMethodConfig(FrozenEncoderOptions, MMADConfig):
    """The ``model:`` section of ``method: mmad``: the architecture (:class:`MMADConfig`) and
    how the encoder is prepared (:class:`FrozenEncoderOptions`).

    ``release_compat``: the release's quirks (default) or the corrected model
    (:mod:`mambaad_lib.models.mmad_fuser`, :mod:`mambaad_lib.models.mmad_decoder`).
    ``image_size`` is not a key here: the engine builds the model for ``data.crop_size``.
    """

    inference_seed: int | None = 0
    image_size: int = field(default=256, init=False, repr=False)

    def __post_init__(self) -> None:
        self.check_encoder_options()
        try:
            MMADConfig.__post_init__(self)
        except ValueError as error:
            raise ConfigError(f"config section 'model': {error}") from None


class MMADMethod(MambaADMethod):
    """MMAD (frozen CNN encoder, Dilated Mamba Fuser, Hybrid Mamba Decoder): one unified model."""

    name = "mmad"
    config_class = MMADMethodConfig
    profiles = {"smoke": "mmad_smoke", "demo": "mmad_demo", "paper": "mmad_paper"}

    def build_model(self, encoder_weights: str | None) -> ReconstructionModel:
        return build_mmad(self.config, encoder_weights=encoder_weights, image_size=self.image_size)

    def summary(self) -> str:
        c = self.config
        return (f"mmad(backbone={c.backbone}, depths={list(c.depths)}, group_scans={'->'.join(c.group_scans)}"
                f"x{c.directions}, release_compat={c.release_compat}, inference_seed={c.inference_seed}, "
                f"image_size={self.image_size})")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "release_compat": self.config.release_compat,
                "inference_seed": self.config.inference_seed}
