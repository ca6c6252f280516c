"""Image-level metrics: AUROC, AP and F1-max of one score per image.

Definitions are scikit-learn's (``roc_auc_score``, ``average_precision_score``, best F1
along ``precision_recall_curve``); both protocols share them. With a single class among
the labels all three are reported as NaN with an
:class:`~.inputs.UndefinedMetricWarning`.
"""
from __future__ import annotations

from typing import Any

from .curves import AveragePrecision, CurvePoints, F1Max, RocAuc
from .inputs import as_binary, as_scores, check_same_shape, warn_undefined
from .ranking import RankedScores, sweep

IMAGE_KEYS = ("i_auroc", "i_ap", "i_f1max")


def image_metrics(image_scores: Any, image_labels: Any) -> dict[str, float]:
    """Image AUROC, AP and F1-max.

    Args:
        image_scores: (N,) finite scores, higher = more anomalous.
        image_labels: (N,) binary {0, 1}, 1 = anomalous.

    Returns:
        ``{"i_auroc", "i_ap", "i_f1max"}`` as fractions in [0, 1] (NaN for one class).
    """
    scores = as_scores(image_scores, "image_scores", ndim=1)
    labels = as_binary(image_labels, "image_labels", ndim=1)
    check_same_shape(scores, "image_scores", labels, "image_labels")
    ranked = RankedScores(scores, labels)
    if ranked.n_pos == 0 or ranked.n_neg == 0:
        warn_undefined("image AUROC, AP and F1-max", "image_labels hold a single class")
        return dict.fromkeys(IMAGE_KEYS, float("nan"))
    auroc, ap, f1 = RocAuc(ranked.n_pos, ranked.n_neg), AveragePrecision(ranked.n_pos), F1Max(ranked.n_pos)
    sweep(ranked, [auroc, ap, f1])
    return {"i_auroc": auroc.value, "i_ap": ap.value, "i_f1max": f1.value}


def image_curves(image_scores: Any, image_labels: Any) -> dict[str, Any]:
    """ROC and precision-recall curve points of image scores, with their AUROC and AP.

    Args:
        image_scores: (N,) finite scores, higher = more anomalous.
        image_labels: (N,) binary {0, 1}, both classes present.
    Returns:
        ``{"fpr", "tpr", "precision", "recall"}`` (float64 arrays, see
        :class:`~.curves.CurvePoints`) and ``"auroc"``, ``"ap"``.
    Raises:
        ValueError: the labels hold a single class (no curve exists).
    """
    scores = as_scores(image_scores, "image_scores", ndim=1)
    labels = as_binary(image_labels, "image_labels", ndim=1)
    check_same_shape(scores, "image_scores", labels, "image_labels")
    ranked = RankedScores(scores, labels)
    if ranked.n_pos == 0 or ranked.n_neg == 0:
        raise ValueError("image_labels hold a single class: ROC and precision-recall curves need both")
    points, auroc, ap = CurvePoints(ranked.n_pos, ranked.n_neg), RocAuc(ranked.n_pos, ranked.n_neg), \
        AveragePrecision(ranked.n_pos)
    sweep(ranked, [points, auroc, ap])
    return {**points.points(), "auroc": auroc.value, "ap": ap.value}
