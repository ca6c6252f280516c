"""The LSS (Locality-enhanced State Space) module: a global HSS chain beside local conv branches.

    global = HSS_m(...HSS_1(x))                                  (B, H, W, C)
    local_k = branch_k(x)    for k in local_kernels               (B, C, H, W)
    out = conv1x1(concat[global, local_k...]) (+ x)               (B, H, W, C)

The fusion conv's input channels are ordered ``[global, local_k for k in local_kernels]``, as
the release's ``finalconv11`` is for kernels (5, 7).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mambaad_lib.models.ss2d import HSSBlock
from mambaad_lib.ops import instance_norm_silu

LOCAL_CONV_KINDS: tuple[str, ...] = ("conv1x1+dw", "dw")


class InstanceNormSiLU(nn.InstanceNorm2d):
    """``SiLU(InstanceNorm2d(x))`` (no affine, no running stats) on (B, C, H, W), fused on CPU.

    An ``InstanceNorm2d`` (so parameter-free and counted as one by the FLOP counter) whose
    forward also applies SiLU, through :func:`mambaad_lib.ops.instance_norm_silu`: on CPU
    one kernel pass that keeps the map channels-last, elsewhere the two torch ops.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, affine=False, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        return instance_norm_silu(x, self.eps)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int, groups: int = 1,
                  bias: bool = True) -> nn.Sequential:
    """Conv2d (same padding) -> InstanceNorm2d (no affine, no running stats) and SiLU.

    Index 0 is the convolution (the release checkpoints' ``<name>.0.weight``), index 1 the
    fused :class:`InstanceNormSiLU`.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=bias),
        InstanceNormSiLU(out_channels),
    )


class LocalBranch(nn.Sequential):
    """One local branch on (B, C, H, W).

    ``"conv1x1+dw"``: conv1x1 (bias) -> depthwise kxk (no bias) -> conv1x1 (bias), each
    followed by InstanceNorm and SiLU. ``"dw"``: only the depthwise kxk unit.
    """

    def __init__(self, dim: int, kernel_size: int, kind: str = "conv1x1+dw") -> None:
        depthwise = conv_norm_act(dim, dim, kernel_size, groups=dim, bias=False)
        if kind == "conv1x1+dw":
            super().__init__(conv_norm_act(dim, dim, 1), depthwise, conv_norm_act(dim, dim, 1))
        elif kind == "dw":
            super().__init__(depthwise)
        else:
            raise ValueError(f"local_conv must be one of {list(LOCAL_CONV_KINDS)}, got {kind!r}")
        self.kernel_size = kernel_size


def check_local_kernels(kernels: Sequence[int]) -> tuple[int, ...]:
    """Validate a kernel-size list: positive odd integers (same padding), no repeats."""
    kernels = tuple(kernels)
    if any(not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0 for k in kernels) \
            or len(set(kernels)) != len(kernels):
        raise ValueError(f"local_kernels must be distinct positive odd integers, got {kernels!r}")
    return kernels


class LSSModule(nn.Module):
    """LSS module on (B, H, W, C).

    Args:
        dim: C.
        grid_size: (H, W) of the stage.
        drop_paths: one drop-path rate per HSS block (its length is the chain length).
        local_kernels: one local branch per kernel size; ``()`` keeps only the global branch.
        local_conv: ``"conv1x1+dw"`` or ``"dw"``.
        residual: add the module input to the fused output.
        **ss2d_kwargs: passed to every :class:`~mambaad_lib.models.ss2d.SS2D`.
    """

    def __init__(
        self,
        dim: int,
        grid_size: tuple[int, int],
        drop_paths: Sequence[float],
        local_kernels: Sequence[int] = (5, 7),
        local_conv: str = "conv1x1+dw",
        residual: bool = True,
        **ss2d_kwargs,
    ) -> None:
        super().__init__()
        if len(drop_paths) == 0:
            raise ValueError("an LSS module needs at least one HSS block (drop_paths is empty)")
        kernels = check_local_kernels(local_kernels)
        self.residual = residual
        self.hss_blocks = nn.ModuleList(HSSBlock(dim, grid_size, drop_path=p, **ss2d_kwargs) for p in drop_paths)
        self.local_branches = nn.ModuleList(LocalBranch(dim, k, local_conv) for k in kernels)
        self.fuse = nn.Conv2d((1 + len(kernels)) * dim, dim, kernel_size=1, bias=True)
        self._init_convs()

    @torch.no_grad()
    def _init_convs(self) -> None:
        # The release's LSS init: normal(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups; zero bias.
        convs = [m for m in self.local_branches.modules() if isinstance(m, nn.Conv2d)] + [self.fuse]
        for conv in convs:
            fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
            conv.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
            if conv.bias is not None:
                conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        global_branch = x
        for block in self.hss_blocks:
            global_branch = block(global_branch)
        # (B, C, H, W) views of channels-last memory: the convolutions (oneDNN) and the fused
        # norm keep that layout, and the final permute back is free.
        x_chw = x.permute(0, 3, 1, 2)
        branches = [global_branch.permute(0, 3, 1, 2)] + [branch(x_chw) for branch in self.local_branches]
        out = self.fuse(torch.cat(branches, dim=1))  # (B, C, H, W)
        if self.residual:
            out = out + x_chw
        return out.permute(0, 2, 3, 1)  # (B, H, W, C)
