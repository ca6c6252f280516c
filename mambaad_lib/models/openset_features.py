"""Cached multi-scale features and the labelled batches DevNet, DRA and AHL train on.

AHL trains on cached feature maps only (mala-lab/AHL's released code): every normal training
image, its three pseudo-anomalous versions and the labelled anomalies go through the frozen
encoder once, at two scales (the image and the image downsized by 2, nearest neighbour as
in DRA). Training batches are then gathered from the cache.

Batch rule (released code): 16 normal + 16 pseudo + 16 seen anomalies (``per_kind``); with
one kind missing, 24 + 24 of the two present; every kind is drawn from successive random
permutations (so anomalies repeat when there are few). DRA also gets ``n_reference`` random
normal training features per batch (the composite head's reference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambaad_lib.models.devnet import NORMAL, PSEUDO, SEEN
from mambaad_lib.models.encoders import FrozenResNetEncoder


class MultiScaleFeatures(nn.Module):
    """Frozen encoder features at ``n_scales`` input scales: image / 2**s for s = 0..n_scales-1.

    Args:
        encoder: a frozen encoder returning [f1, f2, f3].
        level: which of its maps is the feature map (2 = layer3, stride 16).
        n_scales: number of scales (2 in DRA/AHL).
    """

    def __init__(self, encoder: FrozenResNetEncoder, level: int = 2, n_scales: int = 2) -> None:
        super().__init__()
        if not 0 <= level < len(encoder.channels):
            raise ValueError(f"feature_level must be in [0, {len(encoder.channels) - 1}], got {level}")
        if n_scales < 1:
            raise ValueError(f"n_scales must be >= 1, got {n_scales}")
        self.encoder = encoder
        self.level = level
        self.n_scales = n_scales

    @property
    def channels(self) -> int:
        return self.encoder.channels[self.level]

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) normalised images -> per scale s a (B, C, H / (16 * 2**s), ...) map (level 2)."""
        maps = []
        for scale in range(self.n_scales):
            scaled = images if scale == 0 else F.interpolate(images, scale_factor=0.5 ** scale, mode="nearest")
            maps.append(self.encoder(scaled)[self.level])
        return maps


@dataclass
class FeatureBank:
    """Cached features, one tensor per scale: ``normal`` (N, C, h, w), ``pseudo[generator]``
    (N, C, h, w) (row i = normal image i's pseudo-anomalous version), ``anomalies`` (M, C, h, w)."""

    normal: list[Tensor]
    pseudo: dict[str, list[Tensor]]
    anomalies: list[Tensor]

    @property
    def n_normal(self) -> int:
        return self.normal[0].shape[0]

    @property
    def n_anomalies(self) -> int:
        return self.anomalies[0].shape[0]

    def gather(self, kinds: np.ndarray, indices: np.ndarray, generators: list[str | None]) -> list[Tensor]:
        """Features of samples given by kind (0/1/2), row index and pseudo generator: per scale (B, C, h, w)."""
        out = []
        for scale in range(len(self.normal)):
            rows = []
            for kind, index, generator in zip(kinds, indices, generators):
                source = {NORMAL: self.normal, SEEN: self.anomalies}.get(int(kind))
                source = self.pseudo[generator] if source is None else source
                rows.append(source[scale][int(index)])
            out.append(torch.stack(rows))
        return out


@dataclass
class SampleSet:
    """Which cached samples a training set holds: normal rows, pseudo rows per generator, anomaly rows."""

    normal: np.ndarray
    anomalies: np.ndarray
    pseudo: dict[str, np.ndarray] = field(default_factory=dict)

    def members(self) -> list[tuple[int, int, str | None]]:
        """(kind, row, generator) of every sample."""
        out = [(NORMAL, int(i), None) for i in self.normal] + [(SEEN, int(i), None) for i in self.anomalies]
        for generator, rows in self.pseudo.items():
            out += [(PSEUDO, int(i), generator) for i in rows]
        return out


class _Cycle:
    """Indices from successive random permutations of ``n`` (seeded by a torch generator)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator, self.queue = n, generator, []

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if not self.queue:
                self.queue = torch.randperm(self.n, generator=self.generator).tolist()
            out.append(self.queue.pop())
        return out


class BatchSampler:
    """Labelled batches from a :class:`SampleSet` by the per-kind rule (module docstring).

    ``kinds``: which kinds may appear (e.g. DevNet's base training uses normal and seen only).
    """

    def __init__(self, bank: FeatureBank, samples: SampleSet, per_kind: int, generator: torch.Generator,
                 n_reference: int = 0) -> None:
        self.bank, self.per_kind, self.generator, self.n_reference = bank, per_kind, generator, n_reference
        groups: dict[int, list[tuple[int, int, str | None]]] = {NORMAL: [], SEEN: [], PSEUDO: []}
        for member in samples.members():
            groups[member[0]].append(member)
        self.groups = {kind: members for kind, members in groups.items() if members}
        if not self.groups:
            raise ValueError("a training set without samples")
        self.cycles = {kind: _Cycle(len(members), generator) for kind, members in self.groups.items()}

    def sample(self) -> tuple[list[Tensor], Tensor, list[Tensor] | None]:
        """(features per scale (B, C, h, w), labels (B,), reference normals per scale or None)."""
        count = self.per_kind * 3 // len(self.groups)
        chosen = [self.groups[kind][i] for kind in sorted(self.groups) for i in self.cycles[kind].take(count)]
        kinds = np.array([member[0] for member in chosen])
        features = self.bank.gather(kinds, np.array([member[1] for member in chosen]), [m[2] for m in chosen])
        return features, torch.as_tensor(kinds), self.reference()

    def reference(self) -> list[Tensor] | None:
        """``n_reference`` random normal training features per scale, or None."""
        if not self.n_reference:
            return None
        rows = torch.randperm(self.bank.n_normal, generator=self.generator)[:self.n_reference]
        return [features[rows] for features in self.bank.normal]

    def __iter__(self) -> Iterator[tuple[list[Tensor], Tensor, list[Tensor] | None]]:
        while True:
            yield self.sample()
