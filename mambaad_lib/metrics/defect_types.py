"""Detection quality per defect type: which kinds of anomaly a method catches.

For every class and defect type ``d``, image AUROC compares the class's normal test images
with its images of type ``d``; pixel AUROC uses the pixels of those same images. Values are
then averaged over the classes that have the type (per-class models give scores on
per-class scales, so pooling classes would mix scales).

GLASS's LAS pastes Perlin-shaped blobs of foreign texture; defects that are thin or
structural (:data:`LAS_UNLIKE_DEFECTS`: scratches, cracks, cuts) are not what it imitates,
so tables report them apart from the region/texture-like ones (hole, stain, patch).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from mambaad_lib.data.meta import NORMAL_SPECIE
from mambaad_lib.metrics.image import image_metrics

LAS_UNLIKE_DEFECTS = ("scratch", "crack", "cut")


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of 1-D scores (NaN unless both labels occur)."""
    if not 0 < labels.sum() < labels.size:
        return float("nan")
    return image_metrics(scores.ravel(), labels.ravel())["i_auroc"]


def per_defect_type_metrics(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray,
                            class_names: Sequence[str], species: Sequence[str],
                            has_mask: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Image and pixel AUROC per defect type, averaged over classes.

    Args:
        scores (N,), labels (N,) 0/1, maps (N, H, W), masks (N, H, W) bool: predictions on a
            test split (e.g. :class:`~mambaad_lib.engine.evaluate.Predictions` fields).
        class_names, species: ``cls_name`` and ``specie_name`` of each image.
        has_mask (N,) bool: False for anomalous images without a mask; their pixels are left
            out of pixel AUROC (None: every image has its mask).
    Returns:
        one row per defect type (first-seen order): ``defect_type``, ``las_like`` (bool),
        ``i_auroc``, ``p_auroc``, ``n_classes``, ``n_images`` (defective images of that type).
    """
    class_names, species = np.asarray(class_names), np.asarray(species)
    with_mask = np.ones(len(species), dtype=bool) if has_mask is None else np.asarray(has_mask, dtype=bool)
    if not len(scores) == len(labels) == len(maps) == len(masks) == len(class_names) == len(species):
        raise ValueError("scores, labels, maps, masks, class_names and species must have one entry per image")
    per_type: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    order = list(dict.fromkeys(s for s in species if s != NORMAL_SPECIE))
    for cls_name in dict.fromkeys(class_names):
        normal = (class_names == cls_name) & (species == NORMAL_SPECIE)
        for defect in order:
            chosen = (class_names == cls_name) & (species == defect)
            if not chosen.any() or not normal.any():
                continue
            keep = normal | chosen
            per_type[defect]["i_auroc"].append(_auroc(np.asarray(labels)[keep], np.asarray(scores)[keep]))
            pixels = keep & with_mask
            per_type[defect]["p_auroc"].append(_auroc(np.asarray(masks)[pixels].astype(np.int64),
                                                      np.asarray(maps)[pixels]))
            per_type[defect]["n_images"].append(int(chosen.sum()))
    return [{"defect_type": defect, "las_like": defect not in LAS_UNLIKE_DEFECTS,
             "i_auroc": float(np.nanmean(per_type[defect]["i_auroc"])),
             "p_auroc": float(np.nanmean(per_type[defect]["p_auroc"])),
             "n_classes": len(per_type[defect]["i_auroc"]), "n_images": int(sum(per_type[defect]["n_images"]))}
            for defect in order if defect in per_type]


def group_by_las_likeness(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean image/pixel AUROC of the LAS-like and the LAS-unlike defect types (rows as above)."""
    groups = []
    for las_like, label in ((True, "region/texture-like (hole, stain, patch...)"),
                            (False, "thin/structural (" + ", ".join(LAS_UNLIKE_DEFECTS) + ")")):
        members = [row for row in rows if row["las_like"] == las_like]
        if members:
            groups.append({"group": label, "las_like": las_like,
                           "defect_types": [row["defect_type"] for row in members],
                           "i_auroc": float(np.nanmean([row["i_auroc"] for row in members])),
                           "p_auroc": float(np.nanmean([row["p_auroc"] for row in members]))})
    return groups
