"""InstanceNorm followed by SiLU, fused on CPU (the LSS local branches' norm and activation).

``instance_norm_silu(x) = silu(instance_norm(x))`` with no affine parameters and no running
statistics, as ``nn.InstanceNorm2d`` then ``nn.SiLU``. On CPU tensors, when the compiled
kernels are available, one C++ pass per direction computes it on a channels-last map and
returns a channels-last map; elsewhere (CUDA, no compiler, while tracing for export) it is the
two torch ops.

Why channels-last: the depthwise convolutions around it then stay channels-last, and oneDNN
runs their weight gradient with its direct kernel. On an NCHW map it picks a per-group GEMM
that is 10x slower on an idle machine and collapses (seconds per call) when another job
competes for the cores; see benchmarks/README.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mambaad_lib.ops.selective_scan import available_backends


def instance_norm_silu_reference(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``silu(instance_norm(x))`` with torch's ops; x (B, C, H, W) -> (B, C, H, W)."""
    return F.silu(F.instance_norm(x, eps=eps))


def _fused_kernels():
    """The compiled CPU module (built with the ``cpu`` scan backend), or None when it cannot be built here."""
    if "cpu" not in available_backends("cpu"):  # cached: a failed build is not retried
        return None
    from mambaad_lib.ops.cpu import load_extension

    return load_extension()


class _InstanceNormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps):
        y, mean, rstd = _fused_kernels().instance_norm_silu_forward(x, eps)
        ctx.save_for_backward(x, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, mean, rstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        return _fused_kernels().instance_norm_silu_backward(grad, x, mean, rstd), None


def instance_norm_silu(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``silu(instance_norm(x))`` over each (image, channel) plane of x (B, C, H, W).

    Returns:
        (B, C, H, W); channels-last in memory on the fused CPU path.
    """
    # Under torch.export / torch.compile / jit tracing the compiled kernel is opaque to the
    # tracer: the two torch ops trace into an exportable graph instead.
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
    if (tracing or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or _fused_kernels() is None):
        return instance_norm_silu_reference(x, eps)
    return _InstanceNormSiLU.apply(x.contiguous(memory_format=torch.channels_last), float(eps))
