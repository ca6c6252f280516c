"""Selective scan as a fixed graph of whole-tensor operations: the backend for model export.

``torch.export`` and ``torch.onnx.export`` trace Python loops by unrolling them, so the
per-step reference (L steps) or the chunked scan (about 2 sqrt(2L) steps, each a handful
of operators) become very long graphs, and the compiled kernels cannot be traced at all.
This backend needs about log2 L steps of a few operators each, by the doubling scan
(Hillis and Steele) of the linear recurrence

    x_t = a_t * x_t-1 + b_t,   a_t = exp(delta_t * A),   b_t = delta_t * u_t * B_t.

After the step with offset k (k = 1, 2, 4, ...) every position holds the state it would
have if the sequence started k steps earlier, and ``a_t`` the product of the k decays
before it::

    x_t <- x_t + a_t * x_t-k        a_t <- a_t * a_t-k      (terms before t = 0 are 0 and 1)

Two levels keep the work on full-size tensors small: the doubling runs first within blocks
of :data:`BLOCK` positions (3 steps), then over the blocks' end states (log2(L / BLOCK)
steps on 1/BLOCK of the data), and one more pass adds each block's entering state times the
decays within the block. Everything stays in linear space: decays are products of numbers
in (0, 1], so nothing overflows. The price is memory: the states of all L positions exist at
once, b x d x n x L values (like the reference backend's decay table), against the chunked
scan's b x d x n x L / T. Differentiable through autograd, any device and float dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mambaad_lib.ops.reference import finished_output, prepared_inputs

BLOCK = 8  # positions scanned within a block first; then the blocks' end states, on 1/BLOCK of the data


def _per_group(M: Tensor) -> Tensor:
    """(b, n, L) or (b, g, n, L) -> (b, g, 1, n, L): broadcasts over the channels of a group."""
    return (M.unsqueeze(1) if M.dim() == 3 else M).unsqueeze(2)


def _shift(x: Tensor, offset: int, fill: float) -> Tensor:
    """x moved ``offset`` steps later along the last dim, the first ``offset`` entries ``fill``."""
    return F.pad(x[..., :-offset], (offset, 0), value=fill)


def _doubling_scan(state: Tensor, decay: Tensor, length: int, need_decay: bool) -> tuple[Tensor, Tensor]:
    """Inclusive scan of ``x_t = a_t x_t-1 + b_t`` along the last dim (``length`` entries) in
    ceil(log2 length) steps: (states, decays), the decays multiplied over each state's window
    (from the sequence start; returned as given when ``need_decay`` is False)."""
    offset = 1
    while offset < length:
        state = state + decay * _shift(state, offset, 0.0)
        if need_decay or 2 * offset < length:  # the last step's decays are needed only on request
            decay = decay * _shift(decay, offset, 1.0)
        offset *= 2
    return state, decay


def selective_scan_export(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False,
) -> Tensor:
    """Selective scan in about log2 L whole-tensor steps; shapes as in
    :func:`mambaad_lib.ops.selective_scan`.

    Returns:
        (b, d, L) in u's dtype (computed in float64 for float64 inputs, else float32).
    """
    dtype_in = u.dtype
    compute, u_c, dt = prepared_inputs(u, delta, delta_bias, delta_softplus)
    batch, channels, length = u.shape
    d_state = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    per_group = channels // groups

    grouped = (batch, groups, per_group, 1, length)
    decay = torch.exp(dt.reshape(grouped) * A.to(compute).reshape(1, groups, per_group, d_state, 1))
    state = (dt * u_c).reshape(grouped) * _per_group(B.to(compute))  # (b, g, c, n, L)

    block = min(BLOCK, length)
    n_blocks = -(-length // block)
    pad = n_blocks * block - length
    if pad:  # padding steps: decay 1, no input
        decay, state = F.pad(decay, (0, pad), value=1.0), F.pad(state, (0, pad))
    blocked = (*state.shape[:-1], n_blocks, block)
    state, decay = _doubling_scan(state.reshape(blocked), decay.reshape(blocked), block, need_decay=n_blocks > 1)
    if n_blocks > 1:
        # States entering each block: the scan, across blocks, of their end states and decays.
        carry, _ = _doubling_scan(state[..., -1], decay[..., -1], n_blocks, need_decay=False)
        state = state + decay * _shift(carry, 1, 0.0)[..., None]
    state = state.reshape(*blocked[:-2], n_blocks * block)[..., :length]
    y = (state * _per_group(C.to(compute))).sum(dim=3).reshape(batch, channels, length)
    return finished_output(y, u_c, D, z, dtype_in)
