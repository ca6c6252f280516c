"""Frozen patch features shared by GLASS and the nearest-neighbour baseline.

PatchCore-style locally aware patch features from a frozen ResNet
(:mod:`mambaad_lib.models.encoders`):

1. layer2 (stride 8) and layer3 (stride 16) feature maps;
2. each averaged over its 3x3 neighbourhood (stride 1, zero padding excluded from the
   average), so a patch sees its surroundings;
3. layer3 upsampled (bilinear) to layer2's grid, and the two concatenated along channels:
   512 + 1024 = 1536 dimensions for WideResNet50 (GLASS's width), 128 + 256 = 384 for
   ResNet18/34;
4. optionally ``embed_dim``: each layer's channels are average-pooled to
   ``embed_dim / n_layers`` first (a fixed, parameter-free reduction).

Also :func:`anomaly_map_from_patches`, the shared post-processing of patch scores.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambaad_lib.models.encoders import build_encoder, encoder_spec, reestimate_batchnorm
from mambaad_lib.models.mambaad import gaussian_blur

# Names of the encoder outputs, in the order FrozenResNetEncoder returns them.
LAYER_NAMES = ("layer1", "layer2", "layer3")


@dataclass
class PatchFeatureConfig:
    """Which frozen features make a patch descriptor.

    ``encoder_weights``: None (random; re-estimate BatchNorm with :meth:`fit_batchnorm`),
    ``"imagenet"`` or a path to a local ResNet state dict.
    """

    backbone: str = "wide_resnet50_2"
    encoder_weights: str | os.PathLike | None = "imagenet"
    layers: tuple[str, ...] = ("layer2", "layer3")
    neighbourhood: int = 3
    embed_dim: int | None = None

    def __post_init__(self) -> None:
        encoder_spec(self.backbone)  # raises ValueError naming the supported backbones
        unknown = [name for name in self.layers if name not in LAYER_NAMES]
        if not self.layers or unknown:
            raise ValueError(f"layers must be a non-empty subset of {LAYER_NAMES}, got {self.layers}")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be an odd size >= 1, got {self.neighbourhood}")
        if self.embed_dim is not None and (self.embed_dim < len(self.layers) or self.embed_dim % len(self.layers)):
            raise ValueError(f"embed_dim must be a positive multiple of the number of layers "
                             f"({len(self.layers)}), got {self.embed_dim}")


class PatchFeatureExtractor(nn.Module):
    """Images (B, 3, H, W), ImageNet-normalised -> patch features (B, D, H/s, W/s).

    ``s`` is the stride of the first selected layer (8 for layer2). Frozen: no parameter
    needs a gradient and the encoder stays in eval mode.
    """

    def __init__(self, config: PatchFeatureConfig | None = None) -> None:
        super().__init__()
        self.config = config or PatchFeatureConfig()
        self.encoder = build_encoder(self.config.backbone, self.config.encoder_weights)
        self.layer_indices = [LAYER_NAMES.index(name) for name in self.config.layers]
        channels = [self.encoder.channels[index] for index in self.layer_indices]
        per_layer = self.config.embed_dim // len(channels) if self.config.embed_dim else None
        self.layer_dims = [per_layer or c for c in channels]
        self.requires_grad_(False)

    @property
    def dim(self) -> int:
        """Patch descriptor width D."""
        return sum(self.layer_dims)

    def fit_batchnorm(self, batches: Iterable[Tensor]) -> int:
        """Re-estimate the encoder's BatchNorm statistics (random encoders); returns #images."""
        return reestimate_batchnorm(self.encoder, batches)

    def _aggregate(self, feature: Tensor, out_dim: int) -> Tensor:
        """3x3 neighbourhood average, then channel pooling to ``out_dim``: (B, C, h, w) -> (B, out_dim, h, w)."""
        size = self.config.neighbourhood
        if size > 1:
            feature = F.avg_pool2d(feature, size, stride=1, padding=size // 2, count_include_pad=False)
        if out_dim != feature.shape[1]:
            batch, channels, height, width = feature.shape
            flat = feature.permute(0, 2, 3, 1).reshape(-1, 1, channels)  # (B*h*w, 1, C)
            flat = F.adaptive_avg_pool1d(flat, out_dim)                  # (B*h*w, 1, out_dim)
            feature = flat.view(batch, height, width, out_dim).permute(0, 3, 1, 2)
        return feature

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        features = self.encoder(images)  # [f1, f2, f3]
        selected = [self._aggregate(features[i], d) for i, d in zip(self.layer_indices, self.layer_dims)]
        grid = selected[0].shape[-2:]
        resized = [f if f.shape[-2:] == grid else F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                   for f in selected]
        return torch.cat(resized, dim=1)  # (B, D, h, w)


def flatten_patches(features: Tensor) -> Tensor:
    """(B, D, h, w) -> (B*h*w, D), patches of one image contiguous, row-major."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def anomaly_map_from_patches(patch_scores: Tensor, image_size: tuple[int, int] | torch.Size,
                             sigma: float = 4.0) -> Tensor:
    """Patch scores (B, h, w) -> anomaly maps (B, 1, H, W): bilinear upsampling, then the same
    Gaussian smoothing as MambaAD's maps (``sigma <= 0``: none)."""
    maps = F.interpolate(patch_scores[:, None], size=tuple(image_size), mode="bilinear", align_corners=False)
    return gaussian_blur(maps, sigma) if sigma > 0 else maps
