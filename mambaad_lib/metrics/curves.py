"""Threshold-curve summaries that read a :func:`~.ranking.sweep`, one block at a time.

Each class accumulates one number over the thresholds in descending order, with the
definitions of scikit-learn:

- :class:`RocAuc`: trapezoidal area under the ROC curve through (0, 0) and every distinct
  threshold (``roc_auc_score``). Summed in exact int64 arithmetic: twice the area times
  P * N is an integer.
- :class:`AveragePrecision`: sum over thresholds of (recall step) * precision
  (``average_precision_score``, no interpolation).
- :class:`F1Max`: the largest 2 * TP / (TP + FP + P) over all thresholds, i.e. the best F1
  along ``precision_recall_curve``.

:class:`CurvePoints` keeps the curves themselves (ROC and precision-recall points), for plots.
"""
from __future__ import annotations

import numpy as np

from .ranking import ThresholdBlock


class RocAuc:
    """Area under the ROC curve. Args: n_pos, n_neg: positives and negatives (both > 0)."""

    def __init__(self, n_pos: int, n_neg: int) -> None:
        self.n_pos, self.n_neg = n_pos, n_neg
        self._twice_area = 0  # sum of (fp_k - fp_{k-1}) * (tp_k + tp_{k-1}), exact
        self._tp_prev, self._fp_prev = 0, 0

    def update(self, block: ThresholdBlock) -> None:
        fp = block.count - block.tp
        d_fp = np.diff(fp, prepend=self._fp_prev)
        tp_pair = block.tp + np.concatenate(([self._tp_prev], block.tp[:-1]))
        self._twice_area += int(np.dot(d_fp, tp_pair))
        self._tp_prev, self._fp_prev = int(block.tp[-1]), int(fp[-1])

    @property
    def value(self) -> float:
        return self._twice_area / (2.0 * self.n_pos * self.n_neg)


class AveragePrecision:
    """Average precision. Args: n_pos: number of positives (> 0)."""

    def __init__(self, n_pos: int) -> None:
        self.n_pos = n_pos
        self._sum = 0.0
        self._tp_prev = 0

    def update(self, block: ThresholdBlock) -> None:
        d_tp = np.diff(block.tp, prepend=self._tp_prev)
        steps = np.flatnonzero(d_tp)  # recall moves only where positives enter
        self._sum += float(np.dot(d_tp[steps], block.tp[steps] / block.count[steps]))
        self._tp_prev = int(block.tp[-1])

    @property
    def value(self) -> float:
        return self._sum / self.n_pos


class F1Max:
    """Maximum F1 over all thresholds. Args: n_pos: number of positives (> 0)."""

    def __init__(self, n_pos: int) -> None:
        self.n_pos = n_pos
        self.value = 0.0

    def update(self, block: ThresholdBlock) -> None:
        f1 = 2.0 * block.tp / (block.count + self.n_pos)
        self.value = max(self.value, float(f1.max()))


class CurvePoints:
    """The ROC and precision-recall points at every distinct threshold, highest first.

    ``fpr``/``tpr`` start at (0, 0) (scikit-learn's ``roc_curve`` with
    ``drop_intermediate=False``); ``precision``/``recall`` are the points of
    ``precision_recall_curve`` in descending-threshold order. Args: n_pos, n_neg (both > 0).
    """

    def __init__(self, n_pos: int, n_neg: int) -> None:
        self.n_pos, self.n_neg = n_pos, n_neg
        self._tp: list[np.ndarray] = []
        self._count: list[np.ndarray] = []

    def update(self, block: ThresholdBlock) -> None:
        self._tp.append(block.tp)
        self._count.append(block.count)

    def points(self) -> dict[str, np.ndarray]:
        """``{"fpr", "tpr", "precision", "recall"}`` as float64 arrays."""
        tp = np.concatenate(self._tp).astype(np.float64)
        count = np.concatenate(self._count).astype(np.float64)
        return {"fpr": np.concatenate(([0.0], (count - tp) / self.n_neg)),
                "tpr": np.concatenate(([0.0], tp / self.n_pos)),
                "precision": tp / count, "recall": tp / self.n_pos}
