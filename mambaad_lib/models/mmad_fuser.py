"""MMAD's Dilated Mamba Fuser (DMF): MambaAD's MFF_OCE with a dilated-convolution and Mamba
step between the multi-scale fusion and the one-class embedding (xyd2023/MMAD ``model/mmad.py``).

With ResNet34 features at 256x256 (c1, c2, c3 = 64, 128, 256):

    s    = MFF(f1, f2, f3)                                    (B, 256, 16, 16)  as MambaAD
    b_d  = DConv chains, dilations (1), (1, 3), (1, 3, 5)     (B, 256, 16, 16) each
    s1   = conv1x1(concat[b_1, b_3, b_5, s])                  (B, 256, 16, 16)
    s2   = s1 + VSS(LN_a(s1))                                 plain Mamba block
    s3   = s2 + CA(conv3x3 -> GELU -> conv3x3 (LN_c(s2)))     channel-attention step
    out  = OCE(s3)                                            (B, 512, 8, 8)    as MambaAD

Two quirks of the released code are reproduced when ``release_compat=True`` (the default):

- the VSS block carries its own residual, so the step adds ``LN_a(s1)`` a second time
  (``s2 = s1 + LN_a(s1) + DropPath(SS2D(LN_b(LN_a(s1))))``); corrected: the block's
  residual branch only, ``s2 = s1 + DropPath(SS2D(LN_b(LN_a(s1))))``;
- the channel attention returns its sigmoid weights without multiplying them into the
  features, so ``s3 = s2 + w`` adds a per-image, per-channel constant; corrected:
  ``s3 = s2 + t * w`` with ``t`` the convolution output the weights were computed from.

Both modes have the same parameters (a checkpoint loads into either).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambaad_lib.models.batch_randomness import SampleDropout
from mambaad_lib.models.bottleneck import MFFOCE
from mambaad_lib.models.ss2d import HSSBlock, LAYER_NORM_EPS


class DilatedConv(nn.Sequential):
    """conv3x3 (bias, dilation d, padding d) -> BatchNorm -> SiLU on (B, C, H, W); keeps H, W."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(dim, dim, kernel_size=3, padding=dilation, dilation=dilation, bias=True),
            nn.BatchNorm2d(dim),
            nn.SiLU(),
        )
        self.dilation = dilation


class DilatedBranches(nn.Module):
    """Parallel chains of dilated convolutions, fused with the input by a 1x1 conv.

    Branch i chains ``DilatedConv(d)`` for ``d in dilations[: i + 1]``, each with its own
    weights; the 1x1 fusion conv reads ``concat[branch_1, ..., branch_n, input]`` (the
    release concatenates the un-dilated input as well; Fig. 3(b) draws only the branches).

    Args:
        dim: C.
        dilations: e.g. (1, 3, 5): receptive fields 3, 9 and 19 pixels.
    """

    def __init__(self, dim: int, dilations: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        dilations = tuple(dilations)
        if not dilations or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in dilations):
            raise ValueError(f"dilations must be a non-empty sequence of positive integers, got {dilations!r}")
        self.branches = nn.ModuleList(
            nn.Sequential(*(DilatedConv(dim, d) for d in dilations[: i + 1])) for i in range(len(dilations)))
        self.fuse = nn.Conv2d((len(dilations) + 1) * dim, dim, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.fuse(torch.cat([branch(x) for branch in self.branches] + [x], dim=1))


class DropoutHSSBlock(HSSBlock):
    """MambaAD's HSS block (MMAD's "VSS block") with dropout on the SS2D output, on (B, H, W, C)."""

    def __init__(self, dim: int, grid_size: tuple[int, int], drop_path: float = 0.0, dropout: float = 0.0,
                 **ss2d_kwargs) -> None:
        super().__init__(dim, grid_size, drop_path=drop_path, **ss2d_kwargs)
        self.dropout = SampleDropout(dropout)  # nn.Dropout's draw, per sample (world-size independent)

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch ``DropPath(Dropout(SS2D(LN(x))))``: (B, H, W, C) -> (B, H, W, C)."""
        return self.drop_path(self.dropout(self.ss2d(self.norm(x))))

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        return x + self.branch(x)


class ChannelAttention(nn.Module):
    """CBAM channel attention weights: ``sigmoid(MLP(avgpool x) + MLP(maxpool x))``, MLP C -> C/r -> C
    without bias (1x1 convs). Returns the weights (B, C, 1, 1), not the weighted features."""

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        if dim % reduction:
            raise ValueError(f"channel attention needs channels divisible by {reduction}, got {dim}")
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, dim // reduction, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(dim // reduction, dim, kernel_size=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, 1, 1) weights in (0, 1)."""
        return torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))


class ChannelAttentionStep(nn.Module):
    """``x + CA-step(LN(x))`` on (B, H, W, C): conv3x3 C -> C/4, GELU, conv3x3 C/4 -> C, channel attention.

    ``release_compat=True`` adds the attention weights themselves (a per-channel constant
    broadcast over positions, as the release does); ``False`` adds the features scaled by them.
    """

    def __init__(self, dim: int, release_compat: bool = True, compression: int = 4) -> None:
        super().__init__()
        self.release_compat = release_compat
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.convs = nn.Sequential(
            nn.Conv2d(dim, dim // compression, kernel_size=3, padding=1, bias=True),
            nn.GELU(),
            nn.Conv2d(dim // compression, dim, kernel_size=3, padding=1, bias=True),
        )
        self.attention = ChannelAttention(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        features = self.convs(self.norm(x).permute(0, 3, 1, 2))  # (B, C, H, W)
        weights = self.attention(features)  # (B, C, 1, 1)
        update = weights if self.release_compat else features * weights
        return x + update.permute(0, 2, 3, 1)  # (B, 1, 1, C) broadcasts over H, W in release mode


class DilatedMambaFuser(MFFOCE):
    """MMAD's bottleneck: MFF fusion, dilated branches, a plain Mamba block, the channel-attention
    step, then MambaAD's one-class embedding.

    Inherits MambaAD's fusion convolutions and OCE (same parameter names); see the module
    docstring for the data flow and the ``release_compat`` switch.

    Args:
        channels: encoder channels (c1, c2, c3), e.g. (64, 128, 256) for ResNet34.
        grid_size: (H, W) of the fused map (image side / 16), the VSS block's scan grid.
        dilations: dilation rates of the branch chains.
        scan: scan order of the VSS block; ``directions`` of them.
        drop_path, dropout: the VSS block's stochastic depth and output dropout (training only).
        release_compat: reproduce the release's doubled residual and constant attention.
        **ss2d_kwargs: further SS2D options (``scan_backend``, ``d_state``, ...).
    """

    def __init__(self, channels: Sequence[int], grid_size: tuple[int, int], dilations: Sequence[int] = (1, 3, 5),
                 scan: str = "hilbert", directions: int = 8, drop_path: float = 0.1, dropout: float = 0.1,
                 release_compat: bool = True, **ss2d_kwargs) -> None:
        super().__init__(channels)
        dim = channels[2]
        self.release_compat = release_compat
        self.dilated = DilatedBranches(dim, dilations)
        self.mamba_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mamba = DropoutHSSBlock(dim, grid_size, drop_path=drop_path, dropout=dropout, scan=scan,
                                     directions=directions, **ss2d_kwargs)
        self.attention_step = ChannelAttentionStep(dim, release_compat=release_compat)
        # The release initialises every conv of the fuser (the VSS depthwise conv included)
        # Kaiming-normal fan_out and its BatchNorms to (1, 0): MambaAD's rule, re-applied here.
        self._init_weights()

    def fuse_scales(self, features: Sequence[Tensor]) -> Tensor:
        """MambaAD's half-FPN: [f1, f2, f3] -> (B, c3, H/16, W/16) for images of H x W."""
        f1, f2, f3 = features
        p2 = self.lateral2(f2) + self.down1(f1)  # (B, c2, H/8, W/8)
        return self.fuse(self.down2(p2) + self.lateral3(f3))  # (B, c3, H/16, W/16)

    def mamba_step(self, x: Tensor) -> Tensor:
        """``x + VSS(LN(x))`` on (B, H, W, C); the release's VSS residual doubles the skip."""
        normed = self.mamba_norm(x)
        return x + (self.mamba(normed) if self.release_compat else self.mamba.branch(normed))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """[f1 (B,c1,H/4,W/4), f2 (B,c2,H/8,W/8), f3 (B,c3,H/16,W/16)] -> (B, 2*c3, H/32, W/32)."""
        fused = self.dilated(self.fuse_scales(features))  # (B, c3, H/16, W/16)
        x = self.mamba_step(fused.permute(0, 2, 3, 1))  # (B, H/16, W/16, c3)
        x = self.attention_step(x)
        return self.oce(x.permute(0, 3, 1, 2).contiguous())  # (B, 2*c3, H/32, W/32)
