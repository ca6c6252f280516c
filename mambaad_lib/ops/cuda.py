"""mamba-ssm's compiled CUDA selective scan (``selective_scan_cuda``), wrapped for autograd.

Only the compiled extension is imported: the ``mamba_ssm`` package's ``__init__`` pulls in
generation utilities that break with some ``transformers`` releases, while the kernel itself
works (see the project's GPU notes). Nothing here is imported until the backend is asked for.
"""
from __future__ import annotations

import importlib

import torch
from torch import Tensor


def _extension():
    return importlib.import_module("selective_scan_cuda")


def availability() -> str | None:
    """None when the CUDA kernel can run here, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    try:
        _extension()
    except Exception as error:
        return (f"the compiled extension 'selective_scan_cuda' (installed by the 'cuda' extra, "
                f"mamba-ssm) does not import: {type(error).__name__}: {error}")
    return None


def _contiguous_last(x: Tensor | None) -> Tensor | None:
    return x.contiguous() if x is not None and x.stride(-1) != 1 else x


class _MambaSsmScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        u, delta, z = _contiguous_last(u), _contiguous_last(delta), _contiguous_last(z)
        squeeze_B, squeeze_C = B.dim() == 3, C.dim() == 3
        B = (B.unsqueeze(1) if squeeze_B else B).contiguous()  # kernel wants (b, g, n, L)
        C = (C.unsqueeze(1) if squeeze_C else C).contiguous()
        out, states, *rest = _extension().fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = delta_softplus
        ctx.squeeze = (squeeze_B, squeeze_C)
        ctx.has_D, ctx.has_z, ctx.has_bias = D is not None, z is not None, delta_bias is not None
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, out)
        return rest[0] if z is not None else out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, states, out = ctx.saved_tensors
        dout = _contiguous_last(dout)
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = _extension().bwd(
            u, delta, A, B, C, D, z, delta_bias, dout, states, out, None, ctx.delta_softplus, False)
        dz = rest[0] if ctx.has_z else None
        squeeze_B, squeeze_C = ctx.squeeze
        dB = dB.squeeze(1) if squeeze_B else dB
        dC = dC.squeeze(1) if squeeze_C else dC
        return (du, ddelta, dA, dB, dC, dD if ctx.has_D else None, dz,
                ddelta_bias if ctx.has_bias else None, None)


def selective_scan_mamba_ssm(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False,
) -> Tensor:
    """Selective scan on CUDA tensors through mamba-ssm's kernel. Returns (b, d, L)."""
    if u.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"the mamba_ssm backend takes float32/float16/bfloat16 inputs, got u of dtype {u.dtype}")
    A = A.float()  # the kernel keeps its weights in fp32
    D = D.float() if D is not None else None
    delta_bias = delta_bias.float() if delta_bias is not None else None
    return _MambaSsmScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
