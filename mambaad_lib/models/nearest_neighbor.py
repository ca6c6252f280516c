"""Nearest-neighbour baseline: a memory bank of normal patch features (PatchCore without coreset).

Training stores the frozen patch features (:mod:`mambaad_lib.models.patch_features`) of the
normal training images; a patch's anomaly score is the Euclidean distance to its nearest
stored patch. With ``max_bank_size`` the bank is a seeded uniform random subsample (the
cheap stand-in for PatchCore's greedy coreset). Nothing is trained by gradient descent, so
this baseline tells whether a trained detector (GLASS, MambaAD) adds anything over the
frozen features it is built on.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from mambaad_lib.models.patch_features import PatchFeatureExtractor, anomaly_map_from_patches, flatten_patches


def nearest_distances(queries: Tensor, bank: Tensor, chunk_size: int = 4096) -> Tensor:
    """Distance of each query (N, D) to its nearest bank row (M, D): (N,), computed in chunks."""
    if bank.numel() == 0:
        raise ValueError("the memory bank is empty: fit the nearest-neighbour model on normal images first")
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"query width {queries.shape[1]} differs from the memory bank's {bank.shape[1]}")
    best = []
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start:start + chunk_size]
        best.append(torch.cdist(block, bank).amin(dim=1))  # (n,)
    return torch.cat(best)


class PatchMemoryBank(nn.Module):
    """Normal patch features (M, D) and the count of patches seen, kept as buffers (they
    travel in the state dict)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("bank", torch.zeros(0, dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return self.bank.shape[0]

    @torch.no_grad()
    def add(self, features: Tensor, capacity: int | None = None, rng: np.random.Generator | None = None) -> None:
        """Stream rows (n, D) into the bank; with ``capacity`` keep a uniform sample of all rows seen.

        Reservoir sampling (Vitter's algorithm R): row number ``i`` of the stream (0-based)
        fills a free slot directly; once the bank is full it replaces slot ``j ~ U{0..i}``
        when ``j < capacity``. The sample is the same whatever the batch size.
        """
        if features.ndim != 2 or features.shape[1] != self.bank.shape[1]:
            raise ValueError(f"features must be (n, {self.bank.shape[1]}), got {tuple(features.shape)}")
        features = features.detach().to(self.bank)
        seen = int(self.seen)
        if capacity is None:
            self.bank = torch.cat([self.bank, features])
        else:
            if rng is None:
                raise ValueError("a capacity needs a numpy Generator `rng` for the random sample")
            free = max(0, capacity - len(self))
            bank = torch.cat([self.bank, features[:free]])
            rest = features[free:]
            stream_index = np.arange(seen + free, seen + features.shape[0])
            slots = rng.integers(0, stream_index + 1) if rest.shape[0] else np.zeros(0, dtype=np.int64)
            # When a slot is drawn twice the later row wins, as in the sequential algorithm.
            accepted = np.flatnonzero(slots < capacity)[::-1]
            _, first_in_reversed = np.unique(slots[accepted], return_index=True)
            winners = np.sort(accepted[first_in_reversed])
            if winners.size:
                bank[torch.from_numpy(slots[winners])] = rest[torch.from_numpy(winners)]
            self.bank = bank
        self.seen = torch.tensor(seen + features.shape[0], dtype=torch.long, device=self.seen.device)

    def resize_for(self, state: dict[str, Tensor], prefix: str) -> None:
        """Make room for a saved bank of another size before ``load_state_dict``."""
        saved = state.get(prefix + "bank")
        if saved is not None and saved.ndim == 2 and saved.shape[1] == self.bank.shape[1]:
            self.bank = torch.zeros_like(saved, device=self.bank.device)

    def forward(self, queries: Tensor) -> Tensor:
        return nearest_distances(queries, self.bank)  # (N, D) -> (N,)


class NearestNeighborNet(nn.Module):
    """Frozen patch features + memory bank; no trainable parameters."""

    def __init__(self, features: PatchFeatureExtractor) -> None:
        super().__init__()
        self.features = features
        self.memory = PatchMemoryBank(features.dim)

    @torch.no_grad()
    def patch_scores(self, images: Tensor) -> Tensor:
        """Nearest-neighbour distance per patch: (B, h, w)."""
        features = self.features(images)  # (B, D, h, w)
        distances = self.memory(flatten_patches(features))
        return distances.view(images.shape[0], *features.shape[-2:])

    @torch.no_grad()
    def predict(self, images: Tensor, sigma: float = 4.0) -> tuple[Tensor, Tensor]:
        """Anomaly maps (B, 1, H, W) and image scores (B,) = max patch distance."""
        scores = self.patch_scores(images)
        return anomaly_map_from_patches(scores, images.shape[-2:], sigma), scores.flatten(1).amax(dim=1)
