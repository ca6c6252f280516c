"""Chunked selective scan in plain PyTorch: the GPU path that needs no CUDA build.

The sequence is cut into ``n_chunks`` chunks of ``T`` steps and scanned in three phases,
each a short Python loop of whole-tensor operations over all chunks at once:

1. within every chunk, from a zero state: the chunk's end state ``h_end`` (T steps);
2. across chunks: the state entering each chunk, ``s_c = P_{c-1} s_{c-1} + h_end_{c-1}``
   with ``P_c = exp(A * sum(dt over chunk c))`` (n_chunks steps);
3. within every chunk again, from its entering state: the states and ``y_t = <x_t, C_t>``.

That is ``2T + L/T`` tensor steps instead of L (T ~ sqrt(L/2)). Everything stays in linear
space: the only exponentials are ``exp(dt * A)`` and ``exp(A * sum dt)``, whose arguments are
<= 0 for a stable A, so long sequences and large step sizes underflow harmlessly to 0 and
never overflow (log-space cumulative sums of ``dt * A``, the usual chunked trick, overflow
from T ~ 64 on). Gradients come from autograd; each phase step keeps tensors of
b x d x n x L/T values, so training memory is a few b x d x n x L values.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mambaad_lib.ops.reference import finished_output, prepared_inputs


def default_chunk_length(length: int) -> int:
    """T minimising the number of tensor steps 2T + L/T."""
    return max(1, round(math.sqrt(length / 2)))


def _grouped(M: Tensor, channels: int) -> Tensor:
    """(b, n, L) or (b, g, n, L) -> (b, g, 1, n, L): broadcasts over the channels of a group."""
    return (M.unsqueeze(1) if M.dim() == 3 else M).unsqueeze(2)


def selective_scan_chunked(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, z: Tensor | None = None,
    delta_bias: Tensor | None = None, delta_softplus: bool = False,
    chunk_length: int | None = None,
) -> Tensor:
    """Selective scan on any device; shapes as in :func:`mambaad_lib.ops.selective_scan`.

    Args:
        chunk_length: T; default :func:`default_chunk_length`.
    Returns:
        (b, d, L) in u's dtype (computed in float64 for float64 inputs, else float32).
    """
    dtype_in = u.dtype
    compute, u_c, dt = prepared_inputs(u, delta, delta_bias, delta_softplus)
    batch, channels, length = u.shape
    d_state = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    T = chunk_length or default_chunk_length(length)
    if T < 1:
        raise ValueError(f"chunk_length must be >= 1, got {chunk_length}")
    n_chunks = -(-length // T)
    pad = n_chunks * T - length

    # Padding steps have dt = 0: decay 1 and no input, so they leave the state unchanged.
    # Time-in-chunk goes first so that every phase step reads contiguous slices.
    shape = (batch, groups, channels // groups, n_chunks, T)

    def time_major(x: Tensor) -> Tensor:  # (b, d, L) -> (T, b, g, c, nc)
        return F.pad(x, (0, pad)).reshape(shape).permute(4, 0, 1, 2, 3).contiguous()

    dt_steps, du_steps = time_major(dt), time_major(dt * u_c)
    A_g = A.to(compute).reshape(1, groups, channels // groups, 1, d_state)  # (1, g, c, 1, n)

    def steps(M: Tensor) -> Tensor:  # (b, [g,] n, L) -> (T, b, g, 1, nc, n)
        M = F.pad(_grouped(M.to(compute), channels), (0, pad))
        return M.reshape(batch, groups, 1, d_state, n_chunks, T).permute(5, 0, 1, 2, 4, 3).contiguous()

    B_s, C_s = steps(B), steps(C)

    def decay_drive(t: int) -> tuple[Tensor, Tensor]:  # each (b, g, c, nc, n)
        return torch.exp(dt_steps[t, ..., None] * A_g), du_steps[t, ..., None] * B_s[t]

    # Phase 1: end state of every chunk from a zero state.
    h_end = torch.zeros(*shape[:4], d_state, dtype=compute, device=u.device)
    for t in range(T):
        decay, drive = decay_drive(t)
        h_end = decay * h_end + drive
    # Phase 2: the state entering every chunk.
    chunk_decay = torch.exp(dt_steps.sum(0)[..., None] * A_g)  # (b, g, c, nc, n)
    entering = [torch.zeros_like(h_end[..., 0, :])]
    for c in range(n_chunks - 1):
        entering.append(chunk_decay[..., c, :] * entering[-1] + h_end[..., c, :])
    x = torch.stack(entering, dim=3)  # (b, g, c, nc, n)
    # Phase 3: states and outputs inside every chunk.
    outputs = []
    for t in range(T):
        decay, drive = decay_drive(t)
        x = decay * x + drive
        outputs.append((x * C_s[t]).sum(-1))  # (b, g, c, nc)
    y = torch.stack(outputs, dim=-1).reshape(batch, channels, n_chunks * T)[..., :length]
    return finished_output(y, u_c, D, z, dtype_in)
