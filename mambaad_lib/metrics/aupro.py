"""AU-PRO, the area under the per-region-overlap curve (MVTec-AD definition).

Definition (Bergmann et al., MVTec-AD; the official evaluation and anomalib agree):

- regions: the connected components of each ground-truth mask, 8-connectivity, counted
  over all images;
- at a threshold t, PRO(t) = mean over regions of the fraction of the region's pixels
  with score >= t; FPR(t) = fraction of normal pixels with score >= t;
- thresholds: every distinct score; the curve starts at (0, 0);
- AU-PRO = (trapezoidal area under PRO over FPR in [0, fpr_limit], the curve linearly
  interpolated at ``fpr_limit``) / ``fpr_limit``.

Computation: PRO(t) * n_regions is a running sum, over the defect pixels in descending
score order, of 1 / size(region of the pixel); the whole curve therefore comes out of
the same single sort that gives ROC and PR (:func:`~.ranking.sweep`).

Undefined cases: with no defect pixel (no region) or no normal pixel the curve is
undefined and :func:`aupro` returns NaN with an :class:`~.inputs.UndefinedMetricWarning`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .inputs import warn_undefined
from .pixel_data import prepare_pixels
from .ranking import ThresholdBlock, sweep


class ProCurveArea:
    """Normalised area under PRO(FPR) up to ``fpr_limit``, read from a sweep with overlaps.

    Args:
        n_neg: number of normal pixels (> 0).
        n_regions: number of ground-truth regions (> 0).
        fpr_limit: upper integration limit in (0, 1].
    """

    def __init__(self, n_neg: int, n_regions: int, fpr_limit: float) -> None:
        self.n_neg, self.n_regions, self.fpr_limit = n_neg, n_regions, fpr_limit
        self._area = 0.0
        self._fpr_prev, self._pro_prev = 0.0, 0.0
        self._done = False
        # smallest false-positive count whose FPR, computed as below, exceeds the limit
        fp_beyond = int(fpr_limit * n_neg)
        while fp_beyond / n_neg <= fpr_limit:
            fp_beyond += 1
        while fp_beyond > 0 and (fp_beyond - 1) / n_neg > fpr_limit:
            fp_beyond -= 1
        self._fp_beyond_limit = fp_beyond

    def update(self, block: ThresholdBlock) -> None:
        if self._done:
            return
        fp = block.count - block.tp
        # FPR only grows: the points up to the first one beyond the limit are all we read
        stop = int(np.searchsorted(fp, self._fp_beyond_limit)) + 1
        fpr = np.concatenate(([self._fpr_prev], fp[:stop] / self.n_neg))
        pro = np.concatenate(([self._pro_prev], block.overlap[:stop] / self.n_regions))
        # the points up to the limit, then the first one beyond it for the interpolation
        inside = int(np.searchsorted(fpr, self.fpr_limit, side="right"))
        self._area += float(np.dot(np.diff(fpr[:inside]), (pro[1:inside] + pro[: inside - 1]) / 2.0))
        if inside < fpr.size:
            x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
            y_limit = y0 + (y1 - y0) * (self.fpr_limit - x0) / (x1 - x0)
            self._area += (self.fpr_limit - x0) * (y0 + y_limit) / 2.0
            self._done = True
        self._fpr_prev, self._pro_prev = float(fpr[-1]), float(pro[-1])

    @property
    def value(self) -> float:
        return float(self._area / self.fpr_limit)


def check_fpr_limit(fpr_limit: float) -> float:
    """Validate the AU-PRO integration limit."""
    if not 0.0 < float(fpr_limit) <= 1.0:
        raise ValueError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit}")
    return float(fpr_limit)


def aupro(anomaly_maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Exact AU-PRO of anomaly maps against ground-truth masks.

    Args:
        anomaly_maps: (N, H, W) float scores, numpy or torch, finite.
        masks: (N, H, W) binary {0, 1} ground truth.
        fpr_limit: integration limit on the false-positive rate, in (0, 1].

    Returns:
        AU-PRO in [0, 1]; NaN (with a warning) when there is no defect or no normal pixel.
    """
    fpr_limit = check_fpr_limit(fpr_limit)
    data = prepare_pixels(anomaly_maps, masks)
    if data.undefined_reason is not None:
        warn_undefined("AU-PRO", data.undefined_reason)
        return float("nan")
    area = ProCurveArea(data.ranked.n_neg, data.regions.count, fpr_limit)
    sweep(data.ranked, [area], positive_weight=data.regions.weight)
    return area.value
