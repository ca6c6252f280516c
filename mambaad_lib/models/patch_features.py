"""Frozen patch features shared by GLASS and the nearest-neighbour baseline.

Locally aware patch features from a frozen ResNet (:mod:`mambaad_lib.models.encoders`),
layer2 (stride 8) and layer3 (stride 16) by default, in one of two descriptors:

``release`` (GLASS's and PatchCore's released code; GLASS's default):
    1. every layer's map (B, C, h, w) is unfolded into 3x3 neighbourhoods with zero padding,
       one flattened vector of C*9 values per position, channel-major (c, dy, dx);
    2. each vector is average-pooled along its length to ``pre_embed_dim`` values
       (``adaptive_avg_pool1d``; the release's "pretrain_embed_dimension", 1536);
    3. deeper layers are upsampled (bilinear) to the first layer's grid;
    4. the layers' vectors are stacked, flattened (L*pre_embed_dim) and average-pooled again
       to ``embed_dim`` values (the release's "target_embed_dimension", 1536).
    Both poolings are fixed linear maps, so pooling before upsampling (done here, cheaper)
    equals the release's upsample-then-pool. Defaults: ``pre_embed_dim = embed_dim`` = the sum
    of the layers' channels, i.e. 512 + 1024 = 1536 for WideResNet50 (the release's setting)
    and 128 + 256 = 384 for ResNet18/34.

``concat`` (this project's earlier descriptor; the nearest-neighbour baseline's default):
    each layer averaged over its 3x3 neighbourhood (zero padding excluded), optionally its
    channels average-pooled to ``embed_dim / n_layers``, layer3 upsampled to layer2's grid,
    and the layers concatenated along channels (512 + 1024 for WideResNet50).

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
DESCRIPTORS = ("release", "concat")


@dataclass
class PatchFeatureConfig:
    """Which frozen features make a patch descriptor.

    ``encoder_weights``: None (random; re-estimate BatchNorm with :meth:`fit_batchnorm`),
    ``"imagenet"`` or a path to a local ResNet state dict. ``descriptor``: ``concat`` or
    ``release`` (see the module docstring); ``pre_embed_dim`` is used by ``release`` only.
    """

    backbone: str = "wide_resnet50_2"
    encoder_weights: str | os.PathLike | None = "imagenet"
    layers: tuple[str, ...] = ("layer2", "layer3")
    neighbourhood: int = 3
    embed_dim: int | None = None
    descriptor: str = "concat"
    pre_embed_dim: int | None = None

    def __post_init__(self) -> None:
        encoder_spec(self.backbone)  # raises ValueError naming the supported backbones
        unknown = [name for name in self.layers if name not in LAYER_NAMES]
        if not self.layers or unknown:
            raise ValueError(f"layers must be a non-empty subset of {LAYER_NAMES}, got {self.layers}")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be an odd size >= 1, got {self.neighbourhood}")
        if self.descriptor not in DESCRIPTORS:
            raise ValueError(f"descriptor must be one of {DESCRIPTORS}, got {self.descriptor!r}")
        if self.descriptor == "concat":
            if self.embed_dim is not None and (self.embed_dim < len(self.layers) or self.embed_dim % len(self.layers)):
                raise ValueError(f"embed_dim must be a positive multiple of the number of layers "
                                 f"({len(self.layers)}), got {self.embed_dim}")
            if self.pre_embed_dim is not None:
                raise ValueError("pre_embed_dim is an option of descriptor 'release' only")
        for key in ("embed_dim", "pre_embed_dim"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


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
        if self.config.descriptor == "release":
            self._dim = self.config.embed_dim or sum(channels)
            self.pre_embed_dim = self.config.pre_embed_dim or self._dim
        else:
            per_layer = self.config.embed_dim // len(channels) if self.config.embed_dim else None
            self.layer_dims = [per_layer or c for c in channels]
            self._dim = sum(self.layer_dims)
        self.requires_grad_(False)

    @property
    def dim(self) -> int:
        """Patch descriptor width D."""
        return self._dim

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

    def _unfold_pool(self, feature: Tensor) -> Tensor:
        """Release descriptor of one layer: (B, C, h, w) -> (B, pre_embed_dim, h, w)."""
        size = self.config.neighbourhood
        batch, _, height, width = feature.shape
        unfolded = F.unfold(feature, size, padding=size // 2)  # (B, C*size*size, h*w), channel-major
        flat = unfolded.transpose(1, 2).reshape(batch * height * width, 1, -1)
        pooled = F.adaptive_avg_pool1d(flat, self.pre_embed_dim)  # (B*h*w, 1, pre_embed_dim)
        return pooled.view(batch, height, width, -1).permute(0, 3, 1, 2)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        features = self.encoder(images)  # [f1, f2, f3]
        if self.config.descriptor == "release":
            selected = [self._unfold_pool(features[i]) for i in self.layer_indices]
        else:
            selected = [self._aggregate(features[i], d) for i, d in zip(self.layer_indices, self.layer_dims)]
        grid = selected[0].shape[-2:]
        resized = [f if f.shape[-2:] == grid else F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
                   for f in selected]
        if self.config.descriptor == "concat":
            return torch.cat(resized, dim=1)  # (B, D, h, w)
        # Release: stack the layers (B, h, w, L*pre) with each layer's vector contiguous, pool to D.
        stacked = torch.stack(resized, dim=-1).permute(0, 2, 3, 4, 1)  # (B, h, w, L, pre)
        batch, height, width = stacked.shape[:3]
        pooled = F.adaptive_avg_pool1d(stacked.reshape(batch * height * width, 1, -1), self._dim)
        return pooled.view(batch, height, width, self._dim).permute(0, 3, 1, 2)  # (B, D, h, w)


def flatten_patches(features: Tensor) -> Tensor:
    """(B, D, h, w) -> (B*h*w, D), patches of one image contiguous, row-major."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def anomaly_map_from_patches(patch_scores: Tensor, image_size: tuple[int, int] | torch.Size,
                             sigma: float = 4.0) -> Tensor:
    """Patch scores (B, h, w) -> anomaly maps (B, 1, H, W): bilinear upsampling, then the same
    Gaussian smoothing as MambaAD's maps (``sigma <= 0``: none)."""
    maps = F.interpolate(patch_scores[:, None], size=tuple(image_size), mode="bilinear", align_corners=False)
    return gaussian_blur(maps, sigma) if sigma > 0 else maps
