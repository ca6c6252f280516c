"""GLASS networks: adaptor, discriminator, losses and the assembled detector.

GLASS (Chen et al., ECCV 2024) scores patches with a small discriminator on top of frozen
CNN patch features (as the release, ``glass.py`` and ``model.py`` of cqylunlun/GLASS):

    image (B,3,H,W) --frozen encoder, layer2+layer3, patch descriptor--> (B, D, h, w)
                    --linear adaptor D -> D ("pre_projection")--> adapted features (N, D)
                    --discriminator Linear D -> hidden, BatchNorm1d, LeakyReLU(0.2),
                      Linear hidden -> 1 without bias, sigmoid--> (N, 1)

Patch scores are anomaly probabilities; the anomaly map is their bilinear upsampling to
the image size smoothed by a Gaussian (sigma 4), the image score is the maximum patch score.
Training (``mambaad_lib.methods.glass``) uses BCE on normal (0) and GAS (1) features and a
focal loss on the hardest half of the LAS patches (:func:`patch_labels`,
:func:`hardest_patches`, :func:`focal_loss`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mambaad_lib.models.patch_features import (PatchFeatureConfig, PatchFeatureExtractor, anomaly_map_from_patches,
                                               flatten_patches)


@dataclass
class GLASSNetConfig:
    """Architecture of the trainable heads (the release's defaults)."""

    discriminator_hidden: int = 1024
    leaky_slope: float = 0.2

    def __post_init__(self) -> None:
        if self.discriminator_hidden < 1:
            raise ValueError(f"discriminator_hidden must be >= 1, got {self.discriminator_hidden}")


class Adaptor(nn.Module):
    """Linear map of patch features adapting frozen ImageNet features to the target domain
    (the release's one-layer ``Projection``: Xavier-normal weight, PyTorch's default bias)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.linear.weight)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)  # (N, D) -> (N, D)


class Discriminator(nn.Module):
    """MLP D -> hidden -> BatchNorm -> LeakyReLU -> 1 (no bias) -> sigmoid: anomaly probability.

    As the release: Xavier-normal weights, PyTorch's default biases and BatchNorm affine
    parameters, and a head without bias.
    """

    def __init__(self, dim: int, hidden: int = 1024, leaky_slope: float = 0.2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(leaky_slope))
        self.head = nn.Linear(hidden, 1, bias=False)
        for layer in (self.body[0], self.head):
            nn.init.xavier_normal_(layer.weight)

    def forward(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.head(self.body(features)))  # (N, D) -> (N, 1)


def focal_loss(probabilities: Tensor, targets: Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> Tensor:
    """The release's focal loss (``loss.py``: two classes, alpha 1, label smoothing ``smooth``).

    ``p_t = (1 - smooth) * p_target + smooth * p_other + smooth``, loss
    ``-(1 - p_t)^gamma * log(p_t)`` averaged over elements. probabilities, targets: the same
    shape, targets in {0, 1}.
    """
    p_target = torch.where(targets > 0.5, probabilities, 1 - probabilities)
    p_t = (1 - smooth) * p_target + smooth * (1 - p_target) + smooth
    return (-(1 - p_t) ** gamma * torch.log(p_t)).mean()


def hardest_patches(probabilities: Tensor, targets: Tensor, quantile: float = 0.5) -> Tensor:
    """Bool (N, 1) selecting the patches whose squared error ``(p - target)^2`` is at least
    its ``quantile`` (the release's ``p``: 0.5 keeps the hardest half); ``quantile <= 0``
    selects every patch. probabilities, targets: (N, 1)."""
    if quantile <= 0:
        return torch.ones_like(probabilities, dtype=torch.bool)
    error = (probabilities.detach() - targets) ** 2
    return error >= torch.quantile(error, quantile)


def patch_labels(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Pixel masks (B, 1, H, W) -> patch labels (B*h*w, 1): 1 where *any* pixel of the patch's
    cell is defect (max-pooling, the release's ``mask_s``), in :func:`flatten_patches` order."""
    covered = F.adaptive_max_pool2d(masks.float(), grid)  # (B, 1, h, w)
    return (covered > 0.5).float().permute(0, 2, 3, 1).reshape(-1, 1)


class GLASSNet(nn.Module):
    """Frozen patch features + trainable adaptor and discriminator.

    Only ``adaptor`` and ``discriminator`` are trained; ``features`` is frozen (its BatchNorm
    statistics may have been re-estimated, and are part of the state dict).
    """

    def __init__(self, features: PatchFeatureExtractor, config: GLASSNetConfig | None = None) -> None:
        super().__init__()
        config = config or GLASSNetConfig()
        self.features = features
        self.adaptor = Adaptor(features.dim)
        self.discriminator = Discriminator(features.dim, config.discriminator_hidden, config.leaky_slope)

    def frozen(self, images: Tensor) -> Tensor:
        """Frozen patch features (B, D, h, w) of images (B, 3, H, W)."""
        with torch.no_grad():
            return self.features(images)

    def adapted(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Adapted patch features (B*h*w, D) and the patch grid (h, w) of images (B, 3, H, W)."""
        frozen = self.frozen(images)  # (B, D, h, w)
        return self.adaptor(flatten_patches(frozen)), (frozen.shape[-2], frozen.shape[-1])

    @torch.no_grad()
    def patch_scores(self, images: Tensor) -> Tensor:
        """Anomaly probability per patch: (B, h, w)."""
        adapted, grid = self.adapted(images)
        return self.discriminator(adapted).view(images.shape[0], *grid)

    @torch.no_grad()
    def predict(self, images: Tensor, sigma: float = 4.0) -> tuple[Tensor, Tensor]:
        """Anomaly maps (B, 1, H, W) and image scores (B,) = max patch score."""
        scores = self.patch_scores(images)  # (B, h, w)
        return anomaly_map_from_patches(scores, images.shape[-2:], sigma), scores.flatten(1).amax(dim=1)


def build_glass_net(feature_config: PatchFeatureConfig, net_config: GLASSNetConfig | None = None) -> GLASSNet:
    """Factory: the patch feature extractor described by ``feature_config`` plus GLASS heads."""
    return GLASSNet(PatchFeatureExtractor(feature_config), net_config)
