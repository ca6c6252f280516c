"""Pixel metrics as the released MambaAD / ADer evaluation computes them.

Reproduced behaviour (read off the release's evaluator, implemented independently):

- pixel AUROC and AP: exact, as scikit-learn (identical to the ``standard`` protocol);
- pixel F1-max: the maps are min-max normalised over all maps passed in (one class in
  the per-class evaluation), ``norm = (map - min) / (max - min)`` in the maps' dtype; at
  each of the 21 thresholds ``numpy.arange(0, 1 + 1e-3, 0.05)`` the pixels with
  ``norm > t`` (strict) are predicted defective and
  ``F1 = 2 P R / (P + R + 1e-8)`` with ``P = TP / (pred + 1e-8)``,
  ``R = TP / (positives + 1e-8)``; the best of the 21 is reported;
- AU-PRO: thresholds ``numpy.arange(min, max, (max - min) / 100)`` (100 values, the
  maximum excluded), prediction ``map > t``; at each, PRO = mean over 8-connected
  ground-truth regions of the covered fraction and FPR on normal pixels; the points with
  ``FPR < 0.3`` (strict, as in the release code) are kept, their FPRs min-max rescaled to
  [0, 1], and the trapezoidal area under PRO over the rescaled FPR is the score (no
  division by 0.3, no interpolation at 0.3, no (0, 0) anchor).

Thresholds are compared in float64 (NumPy >= 2 promotion of the release expressions).
Degenerate cases the release crashes on or returns NaN for are NaN here with an
:class:`~.inputs.UndefinedMetricWarning`: constant maps (no AU-PRO thresholds) and fewer
than two distinct kept FPR values.

The counts at each threshold come from the same single sort as the exact metrics: the
number of pixels above a threshold is found by bisection on the sorted scores, and the
true positives and region overlaps at that count are read during the sweep.
"""
from __future__ import annotations

import numpy as np

from .curves import AveragePrecision, RocAuc
from .inputs import warn_undefined
from .pixel_data import PixelData, nan_pixel_metrics
from .ranking import ThresholdBlock, sweep

ADER_F1_THRESHOLDS = np.arange(0.0, 1.0 + 1e-3, 0.05)  # 0, 0.05, ..., 1.0 as the release builds them
ADER_PRO_STEPS = 100
ADER_FPR_LIMIT = 0.3
_EPS = 1e-8


class CountRecorder:
    """Records true positives and overlaps where the predicted-positive count hits ``counts``.

    Every count of "pixels above a threshold" ends a run of tied scores, so each requested
    count coincides with one threshold of the sweep (count 0 means nothing predicted).

    Args:
        counts: (q,) int64 predicted-positive counts.
    """

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.tp = np.zeros(self.counts.size, dtype=np.int64)
        self.overlap = np.zeros(self.counts.size, dtype=np.float64)
        self._seen = self.counts == 0

    def update(self, block: ThresholdBlock) -> None:
        where = np.minimum(np.searchsorted(block.count, self.counts), block.count.size - 1)
        hit = block.count[where] == self.counts
        self.tp[hit] = block.tp[where[hit]]
        if block.overlap is not None:
            self.overlap[hit] = block.overlap[where[hit]]
        self._seen |= hit

    def check_complete(self) -> None:
        if not self._seen.all():  # an internal invariant, not a user error
            raise RuntimeError("CountRecorder: a requested count does not end a run of tied scores")


def _f1_with_eps(tp: np.ndarray, predicted: np.ndarray, n_pos: int) -> np.ndarray:
    precision = tp / (predicted + _EPS)
    recall = tp / (n_pos + _EPS)
    return 2.0 * precision * recall / (precision + recall + _EPS)


def _rescaled_pro_area(fpr: np.ndarray, pro: np.ndarray) -> float:
    """ADer's area: keep FPR < 0.3, rescale FPR to [0, 1], trapezoid (threshold order)."""
    keep = fpr < ADER_FPR_LIMIT
    x, y = fpr[keep], pro[keep]
    if x.size < 2 or x.max() == x.min():
        warn_undefined("ADer AU-PRO", "fewer than two distinct FPR values below 0.3 among its thresholds")
        return float("nan")
    x = (x - x.min()) / (x.max() - x.min())
    # thresholds ascend, so FPR descends: the area is minus the signed trapezoid sum
    return float(-np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _f1_counts(data: PixelData) -> np.ndarray:
    """Pixels predicted defective at each of the 21 F1 thresholds on the min-max normalised maps, (21,) int64."""
    low, high = data.maps.min(), data.maps.max()  # scalars in the maps' dtype
    with np.errstate(invalid="ignore", divide="ignore"):  # constant maps: 0/0 -> NaN -> never above
        return data.ranked.count_where(
            lambda v: ((v - low) / (high - low)).astype(np.float64) > ADER_F1_THRESHOLDS, ADER_F1_THRESHOLDS.size)


def ader_pixel_f1max(data: PixelData) -> float:
    """The release's pixel F1-max alone (21 thresholds on min-max normalised maps).

    Args:
        data: prepared maps and masks with defect and normal pixels (``undefined_reason`` None).
    """
    counts = _f1_counts(data)
    at_counts = CountRecorder(counts)
    sweep(data.ranked, [at_counts])
    at_counts.check_complete()
    return float(_f1_with_eps(at_counts.tp, counts, data.ranked.n_pos).max())


def ader_pixel_metrics(data: PixelData) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max and AU-PRO under the released ADer protocol.

    Args:
        data: prepared maps and masks (:func:`~.pixel_data.prepare_pixels`); the F1
            normalisation uses the min and max over all of ``data.maps``.

    Returns:
        ``{"p_auroc", "p_ap", "p_f1max", "p_aupro"}``.
    """
    if data.undefined_reason is not None:
        return nan_pixel_metrics(data.undefined_reason)
    ranked = data.ranked
    low, high = data.maps.min(), data.maps.max()  # scalars in the maps' dtype
    f1_counts = _f1_counts(data)
    pro_thresholds = np.arange(low, high, (high - low) / ADER_PRO_STEPS) if high > low else np.zeros(0)
    pro_counts = ranked.count_where(lambda v: v.astype(np.float64) > pro_thresholds, pro_thresholds.size)

    auroc, ap = RocAuc(ranked.n_pos, ranked.n_neg), AveragePrecision(ranked.n_pos)
    at_counts = CountRecorder(np.concatenate([f1_counts, pro_counts]))
    sweep(ranked, [auroc, ap, at_counts], positive_weight=data.regions.weight)
    at_counts.check_complete()

    n_f1 = f1_counts.size
    f1 = _f1_with_eps(at_counts.tp[:n_f1], f1_counts, ranked.n_pos)
    if pro_thresholds.size == 0:
        warn_undefined("ADer AU-PRO", "the maps are constant")
        p_aupro = float("nan")
    else:
        fpr = (pro_counts - at_counts.tp[n_f1:]) / ranked.n_neg
        pro = at_counts.overlap[n_f1:] / data.regions.count
        p_aupro = _rescaled_pro_area(fpr, pro)
    return {"p_auroc": auroc.value, "p_ap": ap.value, "p_f1max": float(f1.max()), "p_aupro": p_aupro}
