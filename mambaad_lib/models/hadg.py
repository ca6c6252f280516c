"""Heterogeneous Anomaly Distribution Generation (AHL, arXiv:2310.12790, Sec. 3).

1. k-means (C = 3) on the flattened scale-0 features of the normal training images
   (``cluster_on="pooled"``: on their global average, a departure for small random-encoder
   maps, where a few outlier images otherwise take clusters of their own);
   clusters with at most 2 members are dropped; with m clusters left there are m(m-1)
   episodes, the ordered pairs (0,1), (0,2), (1,2), then (1,0), (2,0), (2,1) (support
   cluster first, query cluster second).
2. Each episode is a support set and a query set, fixed for the whole training:
   - normals: paper = the members of the two clusters; ``release_compat`` = the released
     code's bug (issue #6): "cluster i" is the first |cluster i| normal images of the list;
   - seen anomalies (M > 1): a random half (floor(M/2)) for support; paper = the other half
     for query (disjoint); ``release_compat`` = the other half plus 2 random members of the
     support half. With M = 1 the single anomaly is in both;
   - pseudo anomalies: paper = support and query from two different generators (drawn
     uniformly, the query's from the other two); ``release_compat`` = one generator shared.
     Every normal of a set is independently replaced, with probability 0.5, by its own
     pseudo-anomalous version (label 2).
3. ``holistic_episode`` (paper version A, appendix B.1) appends a 7th episode: all normals
   randomly halved into support/query. The released code builds it but never uses it.

All draws come from one ``numpy.random.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from mambaad_lib.models.openset_features import SampleSet
from mambaad_lib.models.pseudo_anomalies import GENERATORS

MIN_CLUSTER_SIZE = 3  # the released code drops clusters with <= 2 members
CLUSTER_INPUTS = ("flattened", "pooled")


@dataclass
class HADGConfig:
    n_clusters: int = 3
    cluster_on: str = "flattened"
    pseudo_probability: float = 0.5
    holistic_episode: bool = False

    def __post_init__(self) -> None:
        if self.cluster_on not in CLUSTER_INPUTS:
            raise ValueError(f"hadg.cluster_on must be one of {list(CLUSTER_INPUTS)}, got {self.cluster_on!r}")
        if self.n_clusters < 2:
            raise ValueError(f"hadg.n_clusters must be >= 2 (episodes pair two clusters), got {self.n_clusters}")
        if not 0.0 <= self.pseudo_probability <= 1.0:
            raise ValueError(f"hadg.pseudo_probability must be in [0, 1], got {self.pseudo_probability}")


@dataclass
class Episode:
    """One generated dataset D_i: support set, query set, and what they were drawn from."""

    support: SampleSet
    query: SampleSet
    clusters: tuple[int, int] | None  # (support, query) cluster ids; None for the holistic episode
    generators: tuple[str, str]


def cluster_normals(features: np.ndarray, n_clusters: int, seed: int) -> list[np.ndarray]:
    """k-means on (N, D) normal features -> the member rows of every kept cluster (> 2 members), sorted.

    Raises:
        ValueError: fewer than two clusters survive (no episode can be formed).
    """
    if len(features) < n_clusters:
        raise ValueError(f"k-means with {n_clusters} clusters needs at least {n_clusters} normal images, "
                         f"got {len(features)}")
    labels = KMeans(n_clusters=n_clusters, random_state=seed, n_init=10).fit_predict(features)
    clusters = [np.flatnonzero(labels == cluster) for cluster in range(n_clusters)]
    kept = [members for members in clusters if len(members) >= MIN_CLUSTER_SIZE]
    if len(kept) < 2:
        raise ValueError(f"k-means left {len(kept)} cluster(s) with >= {MIN_CLUSTER_SIZE} members "
                         f"(sizes {[len(c) for c in clusters]}); AHL needs two. Use more normal images.")
    return kept


def episode_pairs(n_clusters: int) -> list[tuple[int, int]]:
    """Ordered cluster pairs in the released order: forward pairs i < j, then the same reversed."""
    forward = [(i, j) for i in range(n_clusters) for j in range(i + 1, n_clusters)]
    return forward + [(j, i) for i, j in forward]


def split_anomalies(n_anomalies: int, rng: np.random.Generator, release_compat: bool) -> tuple[np.ndarray, np.ndarray]:
    """(support rows, query rows) of the M labelled anomalies by the rule of the module docstring."""
    if n_anomalies == 1:
        return np.array([0]), np.array([0])
    order = rng.permutation(n_anomalies)
    support, rest = order[:n_anomalies // 2], order[n_anomalies // 2:]
    if release_compat:
        rest = np.concatenate([rng.choice(support, size=min(2, len(support)), replace=False), rest])
    return np.sort(support), np.sort(rest)


def choose_generators(rng: np.random.Generator, release_compat: bool) -> tuple[str, str]:
    """(support generator, query generator): different (paper) or one shared (released code)."""
    first = GENERATORS[int(rng.integers(len(GENERATORS)))]
    if release_compat:
        return first, first
    others = [name for name in GENERATORS if name != first]
    return first, others[int(rng.integers(len(others)))]


def _sample_set(normals: np.ndarray, anomalies: np.ndarray, generator: str, probability: float,
                rng: np.random.Generator) -> SampleSet:
    replaced = rng.random(len(normals)) < probability
    return SampleSet(normal=np.sort(normals[~replaced]), anomalies=anomalies,
                     pseudo={generator: np.sort(normals[replaced])} if replaced.any() else {})


def build_episodes(clusters: list[np.ndarray], n_anomalies: int, config: HADGConfig, rng: np.random.Generator,
                   release_compat: bool = False) -> list[Episode]:
    """The T episodes from the kept clusters (member rows into the normal training features)."""
    if release_compat:  # issue #6: the normals of "cluster i" are a prefix of the file list
        groups = [np.arange(len(members)) for members in clusters]
    else:
        groups = [np.asarray(members) for members in clusters]
    plans: list[tuple[np.ndarray, np.ndarray, tuple[int, int] | None]] = [
        (groups[s], groups[q], (s, q)) for s, q in episode_pairs(len(groups))]
    if config.holistic_episode:
        everything = rng.permutation(np.concatenate(groups) if not release_compat else
                                     np.arange(sum(len(c) for c in clusters)))
        half = len(everything) // 2
        plans.append((everything[:half], everything[half:], None))
    episodes = []
    for support_normals, query_normals, pair in plans:
        support_anomalies, query_anomalies = split_anomalies(n_anomalies, rng, release_compat)
        generators = choose_generators(rng, release_compat)
        support = _sample_set(support_normals, support_anomalies, generators[0], config.pseudo_probability, rng)
        query = _sample_set(query_normals, query_anomalies, generators[1], config.pseudo_probability, rng)
        episodes.append(Episode(support, query, pair, generators))
    return episodes
