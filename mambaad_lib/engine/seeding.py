"""Seeds and random-number-generator state: what makes runs repeatable and resumable.

Four sources of randomness matter: torch (weight init, drop path), numpy, Python's
``random`` and the order in which training images are visited. The data order does not
come from a global generator: each epoch's permutation is a pure function of (seed, epoch),
so a resumed run can rebuild it without having saved it.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool = True) -> None:
    """Ask torch for deterministic kernels (warn, do not fail, where none exists).

    On CUDA, cuBLAS also needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first use.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled


def rng_state() -> dict[str, Any]:
    """Snapshot of every global generator, for checkpoints."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's key array as a tensor: checkpoints then load with torch.load(weights_only=True)
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), position, has_gauss,
                         cached_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_permutation(n_items: int, seed: int, epoch: int) -> list[int]:
    """The order in which epoch ``epoch`` visits ``n_items`` training items.

    Depends only on (seed, epoch), never on global RNG state, so an interrupted and resumed
    run visits exactly the same batches as an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n_items, generator=generator).tolist()


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Every global generator as it was before the block: work inside it (e.g. an evaluation
    between epochs, whose data loader draws a seed) leaves the training's random streams untouched."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
