"""DRA's four heads (Ding et al., CVPR 2022) on multi-scale feature maps (Choubo/DRA ``modeling/net.py``).

- normal (holistic) head: global average pool -> Linear C->256 -> ReLU -> Linear 256->1,
  trained with target "is normal";
- seen-anomaly head: 1x1 conv C->1 -> top-k mean, trained on normal + seen samples;
- pseudo-anomaly head: another 1x1 conv -> top-k, trained on normal + pseudo samples;
- composite (latent residual) head: (mean of the reference normals' maps - sample map) ->
  3x3 conv C->C -> BatchNorm -> ReLU -> 1x1 conv C->1 -> top-k, target "any anomaly".

Every head runs on each scale and its two scores are averaged. Score =
``-normal + seen + pseudo + composite``; loss = sum of the four deviation losses.

``composite="dra"`` is DRA's head (3x3 conv, stride 1, padding 1; trainable BatchNorm with
weight 1, bias 0). ``composite="ahl_release"`` is the released AHL head: stride 3, no
padding, BatchNorm normalising with fixed statistics (0, 1) and affine weight and bias
initialised to 0. In that released code, the head's ReLU input is exactly 0 and it
stays a constant: it is kept only to reproduce the released code's behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambaad_lib.models.devnet import NORMAL, PSEUDO, SEEN, deviation_loss, grouped_deviation_loss, topk_mean

COMPOSITE_HEADS = ("dra", "ahl_release")


@dataclass
class DRAConfig:
    in_channels: int = 512
    hidden: int = 256
    topk_ratio: float = 0.1
    composite: str = "dra"

    def __post_init__(self) -> None:
        if self.composite not in COMPOSITE_HEADS:
            raise ValueError(f"composite must be one of {list(COMPOSITE_HEADS)}, got {self.composite!r}")


class FixedStatisticsBatchNorm(nn.BatchNorm2d):
    """BatchNorm that always normalises with its (never updated) running statistics (0, 1)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class DRAHeads(nn.Module):
    """The four DRA heads. Inputs: per scale (B, C, h, w) maps and (R, C, h, w) reference normals."""

    head_names = ("normal", "seen", "pseudo", "composite")

    def __init__(self, config: DRAConfig) -> None:
        super().__init__()
        self.config = config
        c = config.in_channels
        self.normal_fc1 = nn.Linear(c, config.hidden)
        self.normal_fc2 = nn.Linear(config.hidden, 1)
        self.seen_conv = nn.Conv2d(c, 1, kernel_size=1)
        self.pseudo_conv = nn.Conv2d(c, 1, kernel_size=1)
        release = config.composite == "ahl_release"
        self.composite_conv = nn.Conv2d(c, c, kernel_size=3, stride=3 if release else 1, padding=0 if release else 1)
        self.composite_norm = FixedStatisticsBatchNorm(c) if release else nn.BatchNorm2d(c)
        self.composite_out = nn.Conv2d(c, 1, kernel_size=1)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)
        if release:
            nn.init.zeros_(self.composite_norm.weight)
            nn.init.zeros_(self.composite_norm.bias)

    def _one_scale(self, x: Tensor, reference: Tensor) -> dict[str, Tensor]:
        # x (B, C, h, w); reference (R, C, h, w)
        ratio = self.config.topk_ratio
        if self.config.composite == "ahl_release" and min(x.shape[-2:]) < 3:
            raise ValueError(f"the released AHL composite head (3x3 conv, stride 3, no padding) needs feature maps "
                             f"of at least 3x3 at every scale, got {tuple(x.shape[-2:])}; use larger images")
        pooled = x.mean(dim=(2, 3))                                                   # (B, C)
        residual = reference.mean(dim=0, keepdim=True) - x                            # (B, C, h, w)
        latent = F.relu(self.composite_norm(self.composite_conv(residual)))           # (B, C, h', w')
        return {"normal": self.normal_fc2(F.relu(self.normal_fc1(pooled)))[:, 0],     # (B,)
                "seen": topk_mean(self.seen_conv(x), ratio),
                "pseudo": topk_mean(self.pseudo_conv(x), ratio),
                "composite": topk_mean(self.composite_out(latent), ratio)}

    def forward(self, features: list[Tensor], reference: list[Tensor] | None = None) -> dict[str, Tensor]:
        """Per-head scores (B,) averaged over scales."""
        if reference is None or len(reference) != len(features):
            raise ValueError("DRA heads need one reference tensor (R, C, h, w) of normal features per scale")
        per_scale = [self._one_scale(x, ref) for x, ref in zip(features, reference)]
        return {name: torch.stack([scores[name] for scores in per_scale]).mean(0) for name in self.head_names}

    @staticmethod
    def score(outputs: dict[str, Tensor]) -> Tensor:
        return -outputs["normal"] + outputs["seen"] + outputs["pseudo"] + outputs["composite"]

    def anomaly_map(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        """|seen-head map| + |pseudo-head map|, resized to ``size``, averaged over scales: (B, 1, H, W)."""
        maps = [F.interpolate(self.seen_conv(x).abs() + self.pseudo_conv(x).abs(), size=size, mode="bilinear",
                              align_corners=False) for x in features]
        return torch.stack(maps).mean(0)

    @staticmethod
    def loss(outputs: dict[str, Tensor], labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sum of the four heads' deviation losses (labels: 0 normal, 1 seen, 2 pseudo)."""
        dtype = outputs["normal"].dtype
        is_normal = (labels == NORMAL).to(dtype)
        is_anomaly = 1.0 - is_normal
        return (deviation_loss(outputs["normal"], is_normal, generator=generator)
                + grouped_deviation_loss(outputs["seen"], labels, PSEUDO, (labels == SEEN).to(dtype), generator)
                + grouped_deviation_loss(outputs["pseudo"], labels, SEEN, (labels == PSEUDO).to(dtype), generator)
                + deviation_loss(outputs["composite"], is_anomaly, generator=generator))


def build_dra(in_channels: int, topk_ratio: float = 0.1, hidden: int = 256, composite: str = "dra") -> DRAHeads:
    return DRAHeads(DRAConfig(in_channels, hidden, topk_ratio, composite))
