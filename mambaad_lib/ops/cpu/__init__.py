"""The ``cpu`` selective-scan backend: a fused C++ kernel, compiled at first use.

Forward and backward run in one pass over memory per (batch, channel) sequence, in
parallel over batch x channels on torch's intra-op threads (``torch.set_num_threads``).
The forward keeps nothing but its inputs (memory O(b*d*L)); the backward recomputes
the states. Gradients are bit-reproducible: see ``selective_scan_cpu.cpp``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mambaad_lib.ops.cpu._build import build_key, cache_root, load_extension

__all__ = ["availability", "build_key", "cache_root", "selective_scan_cpu"]


def availability() -> str | None:
    """None when the kernel is compiled (or compiles now), else why it cannot be."""
    try:
        load_extension()
    except Exception as error:
        return str(error)
    return None


def _as_groups_last(M: Tensor) -> Tensor:
    """(b, n, L) or (b, g, n, L) -> contiguous (b, g, L, n), the kernel's layout."""
    M = M.unsqueeze(1) if M.dim() == 3 else M
    return M.transpose(-1, -2).contiguous()


def _to(x: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if x is None else x.to(dtype).contiguous()


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        # B, C arrive as (b, g, L, n); everything else contiguous in the compute dtype.
        out = load_extension().forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dbias, dz = load_extension().backward(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, dout.contiguous())
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None


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
    compute = torch.float64 if dtype_in == torch.float64 else torch.float32
    # Casts and the layout change are ordinary autograd ops, so gradients come back in the
    # callers' dtypes and shapes.
    B_rows = _as_groups_last(B.to(compute))  # (b, g, L, n)
    C_rows = _as_groups_last(C.to(compute))
    out = _FusedScan.apply(
        _to(u, compute), _to(delta, compute), _to(A, compute), B_rows, C_rows, _to(D, compute),
        _to(z, compute), _to(delta_bias, compute), bool(delta_softplus))
    return out.to(dtype_in)
