"""The ``cpu`` selective-scan backend: a fused C++ kernel, compiled at first use.

The kernel works token-major (a sequence position's channels are contiguous) and scans
several directions per call, each reading its tokens in its own order; see
``selective_scan_cpu.cpp``. Two entry points:

- :func:`selective_scan_cpu`, mamba-ssm's ``(b, d, L)`` interface (the public
  :func:`mambaad_lib.ops.selective_scan`): the groups of B / C become the kernel's
  directions, the layout change is a copy on each side.
- :func:`selective_scan_directions_cpu`, SS2D's fused path: one input map shared by K
  directions, each scanned in its own token order (optionally forming low-rank step sizes
  itself), the outputs summed back on the grid
  (:func:`mambaad_lib.ops.selective_scan_directions`).

Both run on torch's intra-op threads (``torch.set_num_threads``). The forward keeps its
inputs and, when a gradient will be needed, the state entering every 64-step chunk; the
backward recomputes the states chunk by chunk. Results are bit-identical for any thread count.
Each thread keeps its scratch buffers between calls, sized by the largest call so far (about
10 MB per thread for the paper model's 64x64 stage), so that calls do not map fresh pages.
The same compiled module holds the fused InstanceNorm + SiLU (:mod:`mambaad_lib.ops.norm_act`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mambaad_lib.ops.cpu._build import build_key, cache_root, load_extension

__all__ = ["availability", "build_key", "cache_root", "selective_scan_cpu", "selective_scan_directions_cpu"]


def availability() -> str | None:
    """None when the kernel is compiled (or compiles now), else why it cannot be."""
    try:
        load_extension()
    except Exception as error:
        return str(error)
    return None


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _to(x: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if x is None else x.to(dtype).contiguous()


def _unit_stride_last(x: Tensor) -> Tensor:
    """The kernel reads any strides but the last, which must be 1."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


class _FusedScan(torch.autograd.Function):
    """The kernel as an autograd function; ``order`` and the flags are not differentiable.

    When a gradient will be needed, the forward also keeps the state entering every chunk of
    64 steps (1/64 of the states' memory), so that the backward recomputes each chunk from it
    instead of re-running the whole recurrence first.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, dt_weight, order, delta_softplus, summed):
        save = any(ctx.needs_input_grad[:8])
        out, checkpoints = load_extension().forward(u, delta, A, B, C, D, delta_bias, dt_weight, order,
                                                    delta_softplus, summed, save)
        ctx.flags = (delta_softplus, summed)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, dt_weight, order, checkpoints if save else None)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, delta_bias, dt_weight, order, checkpoints = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dbias, dweight = load_extension().backward(
            u, delta, A, B, C, D, delta_bias, dt_weight, order, *ctx.flags, checkpoints, dout.contiguous())
        return du, ddelta, dA, dB, dC, dD, dbias, dweight, None, None, None


def selective_scan_cpu(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False,
) -> Tensor:
    """Selective scan on CPU tensors; shapes as in :func:`mambaad_lib.ops.selective_scan`.

    Computes in float64 for float64 inputs and in float32 otherwise. Returns (b, d, L)
    in u's dtype.
    """
    dtype_in = u.dtype
    compute = _compute_dtype(u)
    batch, channels, length = u.shape
    groups = 1 if B.dim() == 3 else B.shape[1]
    per_group = channels // groups

    # (b, d, L) -> (b, L, g, d/g) and (b, [g,] n, L) -> (b, L, g, n): ordinary autograd ops, so
    # gradients come back in the callers' dtypes and layouts.
    def token_major(x: Tensor) -> Tensor:
        return x.to(compute).view(batch, groups, per_group, length).permute(0, 3, 1, 2).contiguous()

    def rows(M: Tensor) -> Tensor:
        M = M.unsqueeze(1) if M.dim() == 3 else M
        return M.to(compute).permute(0, 3, 1, 2).contiguous()

    out = _FusedScan.apply(token_major(u), token_major(delta), _to(A, compute), rows(B), rows(C),
                           _to(D, compute), _to(delta_bias, compute), None, None, bool(delta_softplus), False)
    out = out.permute(0, 2, 3, 1).reshape(batch, channels, length)  # (b, d, L)
    if z is not None:
        out = out * F.silu(z.to(compute))
    return out.to(dtype_in)


def selective_scan_directions_cpu(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
    orders: Tensor | None = None, delta_weight: Tensor | None = None,
) -> Tensor:
    """K directions over one token map in a single fused call; shapes as in
    :func:`mambaad_lib.ops.selective_scan_directions`. Returns (b, L, d) in u's dtype."""
    dtype_in = u.dtype
    compute = _compute_dtype(u)
    order = None if orders is None else orders.to(device="cpu", dtype=torch.int64).contiguous()
    out = _FusedScan.apply(
        _unit_stride_last(u.to(compute)), _unit_stride_last(delta.to(compute)), _to(A, compute),
        _unit_stride_last(B.to(compute)), _unit_stride_last(C.to(compute)), _to(D, compute),
        _to(delta_bias, compute), _to(delta_weight, compute), order, bool(delta_softplus), True)
    return out.to(dtype_in)
