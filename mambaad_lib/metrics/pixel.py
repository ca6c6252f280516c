"""Pixel-level metrics under the exact definitions: AUROC, AP, F1-max and AU-PRO.

All four come out of one sort of the N*H*W pixel scores (:mod:`.ranking`): ROC, PR and
F1 read the running true-positive counts, AU-PRO also the running per-region overlap.
Nothing is subsampled. With no defect pixel or no normal pixel all four are NaN with an
:class:`~.inputs.UndefinedMetricWarning`.
"""
from __future__ import annotations

from typing import Any

from .aupro import ProCurveArea, check_fpr_limit
from .curves import AveragePrecision, F1Max, RocAuc
from .pixel_data import PixelData, nan_pixel_metrics, prepare_pixels
from .ranking import sweep


def standard_pixel_metrics(data: PixelData, fpr_limit: float = 0.3) -> dict[str, float]:
    """Exact pixel AUROC, AP, F1-max and AU-PRO of prepared pixels, in one sweep."""
    if data.undefined_reason is not None:
        return nan_pixel_metrics(data.undefined_reason)
    ranked = data.ranked
    auroc, ap, f1 = RocAuc(ranked.n_pos, ranked.n_neg), AveragePrecision(ranked.n_pos), F1Max(ranked.n_pos)
    pro = ProCurveArea(ranked.n_neg, data.regions.count, fpr_limit)
    sweep(ranked, [auroc, ap, f1, pro], positive_weight=data.regions.weight)
    return {"p_auroc": auroc.value, "p_ap": ap.value, "p_f1max": f1.value, "p_aupro": pro.value}


def pixel_metrics(anomaly_maps: Any, masks: Any, fpr_limit: float = 0.3) -> dict[str, float]:
    """Exact pixel AUROC, AP, F1-max and AU-PRO from a single sort.

    Args:
        anomaly_maps: (N, H, W) finite float scores.
        masks: (N, H, W) binary {0, 1}.
        fpr_limit: AU-PRO integration limit in (0, 1].

    Returns:
        ``{"p_auroc", "p_ap", "p_f1max", "p_aupro"}`` as fractions in [0, 1].
    """
    fpr_limit = check_fpr_limit(fpr_limit)
    return standard_pixel_metrics(prepare_pixels(anomaly_maps, masks), fpr_limit)
