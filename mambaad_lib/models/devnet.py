"""DevNet for images: the deviation loss, top-k pooling and the one-head scorer.

Deviation loss (Pang et al., KDD 2019; released code Choubo/deviation-network-image): reference scores r drawn
from N(0, 1) (5,000, fresh each call), ``dev = (s - mean(r)) / std(r)``; the loss is
``|dev|`` for normal samples and ``max(0, margin - dev)`` for anomalies (margin 5), averaged.

The head (5.2): a 1x1 convolution C -> 1 on each scale's feature map, the mean of the k
largest absolute values (k = max(floor(0.1 h w), 1)), averaged over the scales.

Heads here take a list of feature maps, one (B, C, h, w) tensor per scale, and return a
dict of per-head scores so that DevNet, DRA and AHL share one calling convention. Labels
follow AHL's: 0 normal, 1 seen (real) anomaly, 2 pseudo anomaly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMAL, SEEN, PSEUDO = 0, 1, 2
DEVIATION_MARGIN = 5.0
N_REFERENCE_SCORES = 5000


def deviation_loss(scores: Tensor, targets: Tensor, margin: float = DEVIATION_MARGIN,
                   reference: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """DevNet's deviation loss of scores (B,) against binary targets (B,) (1 = anomaly).

    ``reference``: the prior scores; default 5,000 fresh N(0, 1) draws (from ``generator``).
    Their standard deviation is the unbiased one, as ``torch.std`` computes it.
    """
    if scores.shape != targets.shape or scores.dim() != 1:
        raise ValueError(f"scores and targets must both be (B,), got {tuple(scores.shape)} and {tuple(targets.shape)}")
    if reference is None:
        reference = torch.randn(N_REFERENCE_SCORES, generator=generator).to(scores)
    deviation = (scores - reference.mean()) / reference.std()
    inlier = deviation.abs()
    outlier = (margin - deviation).clamp_min(0.0)
    return torch.where(targets > 0, outlier, inlier).mean()


def topk_mean(maps: Tensor, ratio: float) -> Tensor:
    """Mean of the k largest |values| of each map (B, 1, h, w) -> (B,), k = max(floor(ratio h w), 1)."""
    flat = maps.flatten(1).abs()                  # (B, h*w)
    k = max(int(ratio * flat.shape[1]), 1)
    return flat.topk(k, dim=1).values.mean(dim=1)


def grouped_deviation_loss(scores: Tensor, labels: Tensor, group: int, target: Tensor,
                           generator: torch.Generator | None = None) -> Tensor:
    """Deviation loss over the samples whose label is not ``group`` (zero when none)."""
    keep = labels != group
    if not keep.any():
        return scores.sum() * 0.0
    return deviation_loss(scores[keep], target[keep], generator=generator)


@dataclass
class DevNetConfig:
    in_channels: int = 512
    topk_ratio: float = 0.1


class DevNetHead(nn.Module):
    """One 1x1 convolution scored by top-k pooling, averaged over scales (C*1 + 1 parameters)."""

    head_names = ("anomaly",)

    def __init__(self, config: DevNetConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(config.in_channels, 1, kernel_size=1)
        nn.init.kaiming_normal_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: list[Tensor], reference: list[Tensor] | None = None) -> dict[str, Tensor]:
        """features: per scale (B, C, h, w) -> {"anomaly": (B,)}; ``reference`` is unused."""
        scores = [topk_mean(self.conv(x), self.config.topk_ratio) for x in features]  # each (B,)
        return {"anomaly": torch.stack(scores).mean(0)}

    @staticmethod
    def score(outputs: dict[str, Tensor]) -> Tensor:
        return outputs["anomaly"]

    def anomaly_map(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        """|1x1-conv map| of every scale, resized to ``size`` and averaged: (B, 1, H, W)."""
        maps = [F.interpolate(self.conv(x).abs(), size=size, mode="bilinear", align_corners=False)
                for x in features]
        return torch.stack(maps).mean(0)

    @staticmethod
    def loss(outputs: dict[str, Tensor], labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """AHL's DevNet loss: one deviation loss on normal + pseudo and one on normal + seen
        (pseudo anomalies count as anomalies), summed; a group absent from the batch adds nothing."""
        scores = outputs["anomaly"]
        target = (labels > 0).to(scores.dtype)
        present = [group for group in (SEEN, PSEUDO) if (labels == group).any()]
        if not present:
            return deviation_loss(scores, target, generator=generator)
        excluded = {SEEN: PSEUDO, PSEUDO: SEEN}
        return sum(grouped_deviation_loss(scores, labels, excluded[group], target, generator) for group in present)


def build_devnet(in_channels: int, topk_ratio: float = 0.1) -> DevNetHead:
    return DevNetHead(DevNetConfig(in_channels, topk_ratio))
