"""Multi-direction selective scan over one token map (SS2D's inner loop), and its permutations.

SS2D scans one (b, L, d) map of L = H*W tokens in K directions: direction k visits token
``orders[k, t]`` at step t, and the K outputs are put back on the grid and summed. Two
implementations compute the same thing:

- the ``cpu`` backend's fused kernel reads every direction's tokens in its order and
  accumulates the outputs on the grid itself: no permuted copy of anything exists (and, given
  ``delta_weight``, it forms the step sizes from their low-rank factors block by block);
- the reference composition (any backend) permutes the inputs into K sequences with
  :func:`permute_sequences`, runs :func:`mambaad_lib.ops.selective_scan` on them, and
  permutes the outputs back.

:func:`permute_sequences` is a gather whose backward is again a gather (by the inverse
order) rather than autograd's zero-filled scatter-add; SS2D's sequence path uses it too.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mambaad_lib.ops.selective_scan import resolve_backend, selective_scan


class _PermuteSequences(torch.autograd.Function):
    """out[b, k, c, t] = x[b, k (or 0), c, index[k, t]]; the gradient gathers by ``inverse``."""

    @staticmethod
    def forward(ctx, x, index, inverse):
        batch, _, channels, length = x.shape
        directions = index.shape[0]
        ctx.save_for_backward(inverse)
        ctx.broadcast = x.shape[1] == 1 and directions > 1
        expanded = (batch, directions, channels, length)
        return torch.gather(x.expand(expanded), 3, index.view(1, directions, 1, length).expand(expanded))

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        directions, length = inverse.shape
        grad_x = torch.gather(grad, 3, inverse.view(1, directions, 1, length).expand(grad.shape))
        if ctx.broadcast:
            grad_x = grad_x.sum(dim=1, keepdim=True)  # the K directions read one shared map
        return grad_x, None, None


def permute_sequences(x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
    """Reorder the last dimension of every direction by its own permutation.

    Args:
        x: (b, K, c, L), or (b, 1, c, L) shared by every direction.
        index: (K, L) long, a permutation per row: ``out[..., t] = x[..., index[k, t]]``.
        inverse: (K, L) long, the inverse permutations (``torch.argsort(index, -1)``).
    Returns:
        (b, K, c, L). Its backward gathers the gradient by ``inverse`` (summed over K when
        ``x`` was shared), with no zero-filled buffer and no scatter.
    """
    return _PermuteSequences.apply(x, index, inverse)


def selective_scan_directions_reference(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
    orders: Tensor | None = None, delta_weight: Tensor | None = None, backend: str = "auto",
) -> Tensor:
    """:func:`selective_scan_directions` by permuting into sequences and back around
    :func:`~mambaad_lib.ops.selective_scan` (``backend``); shapes as there."""
    batch, length, channels = u.shape
    directions = delta.shape[2]
    if delta_weight is not None:
        delta = torch.einsum("blkr,kdr->blkd", delta, delta_weight)
    if orders is None:
        orders = torch.arange(length, device=u.device).expand(directions, length)
    orders = orders.to(u.device)
    inverse = torch.argsort(orders, dim=-1)

    def sequences(x: Tensor) -> Tensor:  # (b, L, K|1, c) -> (b, K, c, L) in each direction's order
        return permute_sequences(x.permute(0, 2, 3, 1), orders, inverse)

    xs = sequences(u.unsqueeze(2))  # (b, K, d, L)
    ys = selective_scan(
        xs.reshape(batch, directions * channels, length),
        sequences(delta).reshape(batch, directions * channels, length),
        A, sequences(B), sequences(C), D=D, delta_bias=delta_bias, delta_softplus=delta_softplus,
        backend=backend)  # (b, K*d, L)
    grid = permute_sequences(ys.view(batch, directions, channels, length), inverse, orders).sum(dim=1)
    return grid.transpose(1, 2)  # (b, L, d)


def selective_scan_directions(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
    orders: Tensor | None = None, delta_weight: Tensor | None = None, backend: str = "auto",
) -> Tensor:
    """K selective scans of one token map, each in its own token order, summed on the grid.

    With ``seq_k = u[:, orders[k]]`` (and delta, B, C likewise per direction) and
    ``scan_k`` the selective scan of :func:`~mambaad_lib.ops.selective_scan` with direction
    k's parameters (rows ``k*d .. k*d + d - 1`` of A, D, delta_bias)::

        out[:, orders[k, t]] = sum over k of scan_k(seq_k)[t]

    Args:
        u: (b, L, d) token map, read by every direction.
        delta: (b, L, K, d) step sizes per direction (before bias and softplus), in token order;
            with ``delta_weight``, (b, L, K, r) low-rank factors of them.
        A: (K*d, n); B, C: (b, L, K, n) per direction, in token order.
        D, delta_bias: (K*d,), optional.
        orders: (K, L) long, each row a permutation of 0..L-1; None = every direction in
            token order.
        delta_weight: (K, d, r), optional: the step sizes are then
            ``einsum("blkr,kdr->blkd", delta, delta_weight)`` (SS2D's dt projection). The
            fused kernel forms them block by block and never stores the (b, L, K, d) tensor.
        backend: ``"auto"`` or a backend name; ``cpu`` runs the fused kernel, every other
            backend the reference composition.
    Returns:
        (b, L, d) in u's dtype.
    """
    rank = None if delta_weight is None else delta_weight.shape[-1]
    if u.dim() != 3 or delta.dim() != 4 or delta.shape[:2] != u.shape[:2] or \
            delta.shape[3] != (u.shape[2] if rank is None else rank):
        raise ValueError(f"u must be (b, L, d) and delta (b, L, K, {'d' if rank is None else 'r'}), "
                         f"got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, length, channels = u.shape
    directions = delta.shape[2]
    if delta_weight is not None and tuple(delta_weight.shape) != (directions, channels, rank):
        raise ValueError(f"delta_weight must be (K, d, r) = {(directions, channels, rank)}, "
                         f"got {tuple(delta_weight.shape)}")
    if A.dim() != 2 or A.shape[0] != directions * channels:
        raise ValueError(f"A must be (K*d={directions * channels}, n), got {tuple(A.shape)}")
    for name, M in (("B", B), ("C", C)):
        if tuple(M.shape) != (batch, length, directions, A.shape[1]):
            raise ValueError(f"{name} must be (b, L, K, n) = {(batch, length, directions, A.shape[1])}, "
                             f"got {tuple(M.shape)}")
    if orders is not None and tuple(orders.shape) != (directions, length):
        raise ValueError(f"orders must be (K, L) = {(directions, length)}, got {tuple(orders.shape)}")
    if resolve_backend(backend, u.device) == "cpu":
        from mambaad_lib.ops.cpu import selective_scan_directions_cpu

        return selective_scan_directions_cpu(u, delta, A, B, C, D=D, delta_bias=delta_bias,
                                             delta_softplus=delta_softplus, orders=orders, delta_weight=delta_weight)
    return selective_scan_directions_reference(u, delta, A, B, C, D=D, delta_bias=delta_bias,
                                               delta_softplus=delta_softplus, orders=orders,
                                               delta_weight=delta_weight, backend=backend)
