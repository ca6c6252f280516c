"""Per-sample random draws that do not depend on how a batch is split across processes.

Under ``torchrun`` every process trains on its shard of each global batch: rows
``offset .. offset + B/W`` of the B images the one-process run would see together. Layers
that draw random numbers per sample (drop path, dropout, Gumbel noise) draw through
:func:`per_sample_draw`. Inside :func:`batch_shard` (the engine enters it around every
training step of a distributed run) the draw is made for the whole global batch from
torch's generator, which every process seeds alike and advances alike, and each process
keeps its own rows: sample ``i`` of a global batch gets the same numbers whatever the world
size. Outside it (one process) the draw is made for the batch the layer sees, exactly the
draw these layers made before distributed training existed, so single-process numbers are
unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

# (offset, rows of this process, rows of the global batch) while a distributed step runs.
_SHARD: ContextVar[tuple[int, int, int] | None] = ContextVar("mambaad_batch_shard", default=None)


@contextmanager
def batch_shard(offset: int, local_size: int, global_size: int) -> Iterator[None]:
    """Within the block, per-sample draws cover ``global_size`` rows and keep rows
    ``offset .. offset + local_size`` (this process's images of the global batch)."""
    if not 0 <= offset and offset + local_size <= global_size:
        raise ValueError(f"shard rows {offset}..{offset + local_size} lie outside a global batch of {global_size}")
    token = _SHARD.set((offset, local_size, global_size))
    try:
        yield
    finally:
        _SHARD.reset(token)


def per_sample_draw(local_size: int, draw: Callable[[int], Tensor]) -> Tensor:
    """Random numbers for ``local_size`` samples: ``draw(n)`` returns them for n samples
    (first dimension n). In a :func:`batch_shard` block, ``draw`` runs for the global batch
    and this process's rows are returned.

    Raises:
        ValueError: in a shard block, a tensor whose first dimension is not this process's
            batch (a per-sample draw on something that is not a batch of training images).
    """
    shard = _SHARD.get()
    if shard is None:
        return draw(local_size)
    offset, rows, total = shard
    if local_size != rows:
        raise ValueError(f"a per-sample random draw for {local_size} rows inside a distributed training step "
                         f"whose process holds {rows} images: the layer's first dimension must be the batch")
    return draw(total)[offset:offset + rows]


class SampleDropout(nn.Module):
    """``nn.Dropout`` whose mask is drawn per sample through :func:`per_sample_draw`.

    Same draw and arithmetic as ``torch.nn.functional.dropout`` on CPU in one process
    (a Bernoulli(1 - p) mask in the input's dtype, scaled by 1 / (1 - p)).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = per_sample_draw(x.shape[0], lambda n: x.new_empty((n, *x.shape[1:])).bernoulli_(keep))
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def gumbel_softmax_hard(logits: Tensor, dim: int = -1) -> Tensor:
    """``F.gumbel_softmax(logits, tau=1, hard=True, dim=dim)`` with its Gumbel noise drawn per
    sample (first dimension) through :func:`per_sample_draw`; one process: the same draw
    and result as torch's function."""
    gumbels = per_sample_draw(logits.shape[0], lambda n: -torch.empty(
        (n, *logits.shape[1:]), dtype=logits.dtype, device=logits.device).exponential_().log())
    soft = (logits + gumbels).softmax(dim)
    index = soft.max(dim, keepdim=True)[1]
    hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft  # straight-through: hard forward, soft gradient
