"""Pure-PyTorch reference selective scan (Mamba S6), written for clarity, not speed.

It walks the sequence one step at a time, keeping the state ``x`` of shape (b, d, n):

    x_t = exp(delta_t * A) * x_t-1 + delta_t * B_t * u_t
    y_t = <x_t, C_t> + D * u_t
    out = y * silu(z)

It is differentiable through autograd, runs in any float dtype on any device, and stores
``exp(delta * A)`` for the whole sequence, so its memory grows with L x n. Tests and small
shapes use it; the fast backends are checked against it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def expand_groups(M: Tensor, channels: int) -> Tensor:
    """Give every channel its B or C row.

    Args:
        M: (b, n, L) shared by all channels, or (b, g, n, L) shared within groups of d/g channels.
        channels: d.
    Returns:
        (b, d, n, L), or (b, 1, n, L) when ungrouped (broadcasts over d).
    """
    if M.dim() == 3:
        return M.unsqueeze(1)
    groups = M.shape[1]
    return M.repeat_interleave(channels // groups, dim=1)


def prepared_inputs(u: Tensor, delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool
                    ) -> tuple[torch.dtype, Tensor, Tensor]:
    """What every PyTorch scan computes in: the compute dtype (float64 for float64 inputs, else
    float32), u (b, d, L) in it, and the step sizes (b, d, L) with bias and softplus applied."""
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    delta = delta.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return compute, u.to(compute), delta


def finished_output(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The scan's output (b, d, L) in ``dtype``: the state readout ``y`` plus the skip ``D * u``,
    gated by ``silu(z)`` (``u`` in the compute dtype of ``y``)."""
    if D is not None:
        y = y + u * D.to(y.dtype)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """Selective scan; shapes as in :func:`mambaad_lib.ops.selective_scan`. Returns (b, d, L)."""
    dtype_in = u.dtype
    compute, u, delta = prepared_inputs(u, delta, delta_bias, delta_softplus)
    A = A.to(compute)
    batch, channels, _ = u.shape
    B = expand_groups(B.to(compute), channels)  # (b, d|1, n, L)
    C = expand_groups(C.to(compute), channels)

    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))  # (b, d, L, n)
    drive = torch.einsum("bdl,bdnl->bdln", delta * u, B)  # (b, d, L, n)
    state = u.new_zeros(batch, channels, A.shape[1])
    outputs = []
    # unbind once: indexing inside the loop would make autograd build a full-size gradient per step
    for decay_t, drive_t, C_t in zip(decay.unbind(2), drive.unbind(2), C.unbind(3)):
        state = decay_t * state + drive_t
        outputs.append(torch.einsum("bdn,bdn->bd", state, C_t.expand_as(state)))
    return finished_output(torch.stack(outputs, dim=2), u, D, z, dtype_in)  # (b, d, L)
