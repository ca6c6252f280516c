"""PatchExpand and the four-stage Mamba decoder (a chain of LSS modules per stage).

Stage i works at ``dims[i]`` channels on a grid ``bottleneck_grid * 2**i``; stages 1..3 start
with a PatchExpand. The outputs of stages 1, 2, 3 are compared with the encoder's f3, f2, f1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mambaad_lib.models.lss import LSSModule
from mambaad_lib.models.ss2d import LAYER_NORM_EPS


class PatchExpand(nn.Module):
    """Double the resolution and halve the channels: (B, H, W, d) -> (B, 2H, 2W, d/2).

    ``Linear(d, 2d)`` then pixel shuffle: output channel ``(p1*2 + p2)*(d/2) + c`` goes to
    pixel ``(2h + p1, 2w + p2)``, channel c; then ``LayerNorm(d/2)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"PatchExpand needs an even channel count, got {dim}")
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, d) -> (B, 2H, 2W, d/2)."""
        batch, height, width, dim = x.shape
        x = self.expand(x).view(batch, height, width, 2, 2, dim // 2)  # (B, H, W, p1, p2, d/2)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, 2 * height, 2 * width, dim // 2)
        return self.norm(x)


def split_depth(depth: int, hss_per_lss: int | None = None) -> list[int]:
    """How many HSS blocks each LSS module of a stage holds.

    ``hss_per_lss=None`` is the release rule: a depth divisible by 3 gives modules of 3,
    otherwise modules of 2. With 1, 2 or 3 the stage is cut into modules of that size.
    Every HSS block is kept: a remainder becomes one last, smaller module (the release
    would drop the odd block of e.g. depth 5; here 5 -> [2, 2, 1], 7 -> [2, 2, 2, 1]).

    >>> [split_depth(d) for d in (3, 4, 6, 9, 2, 5)]
    [[3], [2, 2], [3, 3], [3, 3, 3], [2], [2, 2, 1]]
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"every decoder depth must be a positive integer, got {depth!r}")
    if hss_per_lss is None:
        size = 3 if depth % 3 == 0 else 2
    elif hss_per_lss in (1, 2, 3) and not isinstance(hss_per_lss, bool):
        size = hss_per_lss
    else:
        raise ValueError(f"hss_per_lss must be None (release rule), 1, 2 or 3, got {hss_per_lss!r}")
    full, rest = divmod(depth, size)
    return [size] * full + ([rest] if rest else [])


def decoder_drop_paths(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Per-stage drop-path rates: linspace(0, rate, total HSS), reversed (deepest stage highest)."""
    rates = torch.linspace(0, rate, sum(depths), device="cpu").tolist()[::-1]
    bounds = [sum(depths[:i]) for i in range(len(depths) + 1)]
    return [rates[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


class DecoderStage(nn.Module):
    """Optional PatchExpand, then LSS modules, on (B, H, W, C)."""

    def __init__(self, dim: int, grid_size: tuple[int, int], drop_paths: Sequence[float], upsample: bool,
                 hss_per_lss: int | None, **lss_kwargs) -> None:
        super().__init__()
        self.upsample = PatchExpand(2 * dim) if upsample else None
        starts = [0]
        for size in split_depth(len(drop_paths), hss_per_lss):
            starts.append(starts[-1] + size)
        self.lss_modules = nn.ModuleList(
            LSSModule(dim, grid_size, drop_paths[start:stop], **lss_kwargs)
            for start, stop in zip(starts[:-1], starts[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) or, with upsampling, (B, H/2, W/2, 2C) -> (B, H, W, C)."""
        if self.upsample is not None:
            x = self.upsample(x)
        for module in self.lss_modules:
            x = module(x)
        return x


class MambaDecoder(nn.Module):
    """Four decoder stages from the bottleneck to the encoder's finest scale.

    Args:
        dims: channels per stage, e.g. (512, 256, 128, 64); each is half the previous.
        depths: HSS blocks per stage, e.g. (3, 4, 6, 3).
        bottleneck_grid: (H, W) of the bottleneck map (8x8 at 256x256 input).
        drop_path_rate: largest drop-path rate.
        hss_per_lss: see :func:`split_depth`.
        **lss_kwargs: ``local_kernels``, ``local_conv``, ``residual`` and SS2D options.
    """

    def __init__(self, dims: Sequence[int], depths: Sequence[int], bottleneck_grid: tuple[int, int],
                 drop_path_rate: float = 0.2, hss_per_lss: int | None = None, **lss_kwargs) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"depths must have one entry per decoder stage ({len(dims)}), got {tuple(depths)}")
        height, width = bottleneck_grid
        self.stages = nn.ModuleList(
            DecoderStage(dim, (height << i, width << i), rates, upsample=i > 0, hss_per_lss=hss_per_lss,
                         **lss_kwargs)
            for i, (dim, rates) in enumerate(zip(dims, decoder_drop_paths(depths, drop_path_rate))))
        self.apply(self._init_dense)

    @staticmethod
    @torch.no_grad()
    def _init_dense(module: nn.Module) -> None:
        # VMamba's convention for the decoder's linear layers and layer norms.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, C0, h, w) bottleneck map -> outputs of stages 1..3, finest first.

        Returns:
            [(B, dims[3], 8h, 8w), (B, dims[2], 4h, 4w), (B, dims[1], 2h, 2w)].
        """
        x = x.permute(0, 2, 3, 1)  # (B, h, w, C0)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x.permute(0, 3, 1, 2))  # (B, C_i, H_i, W_i)
        return outputs[1:][::-1]
