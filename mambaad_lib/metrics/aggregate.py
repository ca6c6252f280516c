"""Per-class evaluation and the mean over classes (the paper's "unified" tables).

Each class is evaluated on its own images only: its image metrics, its pixel metrics,
and, under ``protocol="ader"``, its own min-max normalisation of the maps, exactly as
the release evaluates one class at a time. The table row "mean" is the plain mean over
classes of each metric (NaN if any class is NaN, so that an undefined class is never
silently dropped); its mAD is the mean of the seven means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .inputs import to_numpy
from .protocols import METRIC_KEYS, check_protocol, compute_metrics


@dataclass
class ClassMetrics:
    """Metrics of every class and their mean.

    Attributes:
        per_class: one dict per class, in order of first appearance, with ``"cls_name"``
            and the keys of :data:`~.protocols.METRIC_KEYS`.
        mean: mean over classes of each metric key; ``mean["mAD"]`` is the mean of the
            seven metric means.
        protocol: the protocol that produced the numbers.
    """

    per_class: list[dict[str, Any]]
    mean: dict[str, float]
    protocol: str

    def to_rows(self) -> list[dict[str, Any]]:
        """Per-class rows, then a ``"mean"`` row; ready for ``pandas.DataFrame(rows)``."""
        return [dict(row) for row in self.per_class] + [{"cls_name": "mean", **self.mean}]


def _class_indices(class_names: Sequence[str], n_images: int) -> dict[str, np.ndarray]:
    if isinstance(class_names, str):
        raise ValueError("class_names: expected one class name per image, got a single string")
    names = [str(name) for name in class_names]
    if len(names) != n_images:
        raise ValueError(f"class_names has {len(names)} entries but there are {n_images} images; they must match")
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name, []).append(index)
    return {name: np.asarray(indices) for name, indices in groups.items()}


def _select(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` of ``array``: a view when they are contiguous, else a copy."""
    if indices[-1] - indices[0] + 1 == indices.size:
        return array[indices[0] : indices[-1] + 1]
    return array[indices]


def per_class_metrics(
    image_scores: Any,
    image_labels: Any,
    anomaly_maps: Any,
    masks: Any,
    class_names: Sequence[str],
    protocol: str = "standard",
) -> ClassMetrics:
    """Evaluate each class separately, then average over classes.

    Args:
        image_scores: (N,) image scores.
        image_labels: (N,) binary image labels.
        anomaly_maps: (N, H, W) float maps.
        masks: (N, H, W) binary masks.
        class_names: length-N sequence of class names (str).
        protocol: ``"standard"`` or ``"ader"``.

    Returns:
        a :class:`ClassMetrics`.
    """
    check_protocol(protocol)
    arrays = [to_numpy(value, name) for value, name in ((image_scores, "image_scores"), (image_labels, "image_labels"),
                                                         (anomaly_maps, "anomaly_maps"), (masks, "masks"))]
    n_images = len(arrays[0]) if arrays[0].ndim else 0
    if n_images == 0:
        raise ValueError(f"image_scores: expected a non-empty (N,) array, got shape {tuple(arrays[0].shape)}")
    for array, name in zip(arrays[1:], ("image_labels", "anomaly_maps", "masks")):
        if array.ndim == 0 or len(array) != n_images:
            raise ValueError(f"{name} has shape {tuple(array.shape)} but image_scores has {n_images} entries; "
                             "their first dimensions must match")
    per_class = []
    for name, indices in _class_indices(class_names, n_images).items():
        metrics = compute_metrics(*(_select(array, indices) for array in arrays), protocol=protocol)
        per_class.append({"cls_name": name, **metrics})
    return ClassMetrics(per_class=per_class, mean=class_mean(per_class), protocol=protocol)


def class_mean(per_class: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The table's "mean" row of per-class rows: the plain mean over classes of each metric
    (NaN if any class has NaN or None), and mAD = the mean of the seven means.

    Also merges classes evaluated separately (one model per class).
    """
    if not per_class:
        raise ValueError("class_mean needs at least one class row")

    def value(row: dict[str, Any], key: str) -> float:
        return math.nan if row.get(key) is None else float(row[key])

    mean = {key: math.fsum(value(row, key) for row in per_class) / len(per_class) for key in METRIC_KEYS[:-1]}
    mean["mAD"] = math.fsum(mean.values()) / len(mean)
    return mean
