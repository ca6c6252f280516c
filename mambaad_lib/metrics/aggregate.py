"""Per-class evaluation and the mean over classes (the paper's "unified" tables).

Each class is evaluated on its own images only: its image metrics, its pixel metrics,
and, under ``protocol="ader"``, its own min-max normalisation of the maps, exactly as
the release evaluates one class at a time. The table row "mean" is the plain mean over
classes of each metric (NaN if any class is NaN, so that an undefined class is never
silently dropped); its mAD is the mean of the seven means.

Anomalous images without a ground-truth mask (``has_mask`` False, datasets converted
with ``--missing-mask keep``) count for the image metrics of their class. The pixel
metrics of a class that has any such image are not computed: they are ``None`` (not NaN,
no warning), as is its mAD, and a note says why. Scoring only the masked images would
report a different test set under the same name, and treating the unmasked ones as
defect-free would count their defects as false positives. The mean of a pixel metric is
taken over the classes that have it; when that is not every class, the mean's mAD is
``None`` (its seven means would cover different classes); when no class has it, the
mean is ``None``. Every such case is named in :attr:`ClassMetrics.notes`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .image import image_metrics
from .inputs import as_binary, to_numpy
from .pixel_data import PIXEL_KEYS
from .protocols import METRIC_KEYS, check_protocol, compute_metrics

MEAN_ROW = "mean"


@dataclass
class ClassMetrics:
    """Metrics of every class and their mean.

    Attributes:
        per_class: one dict per class, in order of first appearance, with ``"cls_name"``
            and the keys of :data:`~.protocols.METRIC_KEYS`; pixel metrics and mAD are
            ``None`` for a class with anomalous images without a mask.
        mean: mean over classes of each metric key (over the classes that have it);
            ``mean["mAD"]`` is the mean of the seven metric means, ``None`` unless every
            class has every metric.
        protocol: the protocol that produced the numbers.
        images_without_mask: ``{cls_name: n}`` anomalous images without a mask, for the
            classes that have any (empty when every anomalous image has a mask).
        notes: ``{cls_name or "mean": text}`` why values are ``None``, e.g.
            ``"pixel metrics not computed (3 images without masks)"``; empty when none are.
    """

    per_class: list[dict[str, Any]]
    mean: dict[str, float | None]
    protocol: str
    images_without_mask: dict[str, int] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def to_rows(self) -> list[dict[str, Any]]:
        """Per-class rows, then a ``"mean"`` row; ready for ``pandas.DataFrame(rows)``.

        When there are notes every row gets a ``"note"`` column (empty where nothing is
        missing), so a table says which classes lack masks.
        """
        rows = [dict(row) for row in self.per_class] + [{"cls_name": MEAN_ROW, **self.mean}]
        if self.notes:
            for row in rows:
                row["note"] = self.notes.get(row["cls_name"], "")
        return rows


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


def _image_only(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Image metrics of a class whose pixel metrics cannot be computed; pixel keys and mAD None."""
    metrics: dict[str, float | None] = {key: float(value) for key, value in image_metrics(scores, labels).items()}
    metrics.update(dict.fromkeys(PIXEL_KEYS + ("mAD",)))
    return {key: metrics[key] for key in METRIC_KEYS}


def class_mean(per_class: Sequence[dict[str, Any]], notes: dict[str, str] | None = None) -> dict[str, float | None]:
    """The table's "mean" row of per-class rows: the mean of each metric over the classes that
    have it (see the module docstring); a note for the mean row goes into ``notes``.

    Also merges classes evaluated separately (one model per class).
    """
    if not per_class:
        raise ValueError("class_mean needs at least one class row")
    notes = {} if notes is None else notes
    mean: dict[str, float | None] = {}
    for key in METRIC_KEYS[:-1]:
        values = [row[key] for row in per_class if row[key] is not None]
        mean[key] = math.fsum(values) / len(values) if values else None
    with_pixels = [row["cls_name"] for row in per_class if row[PIXEL_KEYS[0]] is not None]
    if len(with_pixels) == len(per_class):
        mean["mAD"] = math.fsum(mean.values()) / len(mean)
        return mean
    mean["mAD"] = None
    if with_pixels:
        notes[MEAN_ROW] = (f"pixel metrics are means over the {len(with_pixels)} of {len(per_class)} classes with "
                           f"masks ({', '.join(with_pixels)}); mAD not computed")
    else:
        notes[MEAN_ROW] = "pixel metrics and mAD not computed (no class has masks for all its anomalous images)"
    return mean


def _without_mask(has_mask: Any, labels: np.ndarray, n_images: int) -> np.ndarray:
    """(N,) bool: anomalous images without a mask; validates ``has_mask``."""
    if has_mask is None:
        return np.zeros(n_images, dtype=bool)
    flags = as_binary(has_mask, "has_mask", ndim=1)
    if len(flags) != n_images:
        raise ValueError(f"has_mask has {len(flags)} entries but image_scores has {n_images}; they must match")
    normal_without = int(np.count_nonzero(~flags & ~labels))
    if normal_without:
        raise ValueError(f"has_mask is False for {normal_without} normal image(s); a normal image's mask is its "
                         "blank ground truth, so has_mask must be True")
    return ~flags


def per_class_metrics(
    image_scores: Any,
    image_labels: Any,
    anomaly_maps: Any,
    masks: Any,
    class_names: Sequence[str],
    protocol: str = "standard",
    has_mask: Any = None,
) -> ClassMetrics:
    """Evaluate each class separately, then average over classes.

    Args:
        image_scores: (N,) image scores.
        image_labels: (N,) binary image labels.
        anomaly_maps: (N, H, W) float maps.
        masks: (N, H, W) binary masks (any content where ``has_mask`` is False).
        class_names: length-N sequence of class names (str).
        protocol: ``"standard"`` or ``"ader"``.
        has_mask: optional (N,) bool, False for anomalous images without a ground-truth
            mask (the ``has_mask`` of :class:`~mambaad_lib.data.AnomalyDataset` items);
            default: every image has its mask. Normal images must be True.

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
    without_mask = _without_mask(has_mask, as_binary(arrays[1], "image_labels", ndim=1), n_images)
    per_class, images_without_mask, notes = [], {}, {}
    for name, indices in _class_indices(class_names, n_images).items():
        missing = int(np.count_nonzero(without_mask[indices]))
        if missing:
            images_without_mask[name] = missing
            without = "1 image without a mask" if missing == 1 else f"{missing} images without masks"
            notes[name] = f"pixel metrics not computed ({without})"
            metrics = _image_only(*(_select(array, indices) for array in arrays[:2]))
        else:
            metrics = compute_metrics(*(_select(array, indices) for array in arrays), protocol=protocol)
        per_class.append({"cls_name": name, **metrics})
    mean = class_mean(per_class, notes)
    return ClassMetrics(per_class=per_class, mean=mean, protocol=protocol,
                        images_without_mask=images_without_mask, notes=notes)
