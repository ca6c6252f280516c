"""Image and pixel anomaly-detection metrics under two named protocols.

Public API:

- :func:`compute_metrics` (image AUROC/AP/F1-max, pixel AUROC/AP/F1-max/AU-PRO, mAD) with
  ``protocol="standard"`` (exact definitions) or ``"ader"`` (the released MambaAD / ADer
  evaluation); the differences are listed in :mod:`.protocols`;
- :func:`aupro`, the exact MVTec-AD AU-PRO;
- :func:`per_class_metrics` / :class:`ClassMetrics`, per-class evaluation and class mean
  (``has_mask=`` marks anomalous images without a mask: image metrics only for their
  classes, with ``ClassMetrics.notes`` and ``ClassMetrics.images_without_mask``);
- :data:`METRIC_KEYS`, the eight result keys in table order.

Modules, one job each: ``inputs`` (conversion, validation), ``ranking`` (the single sort
and the threshold sweep), ``curves`` (AUROC, AP, F1-max accumulators), ``pixel_data``
(validated pixels and ground-truth regions), ``aupro``, ``image``, ``pixel`` (standard),
``ader`` (release protocol), ``protocols`` (dispatch), ``aggregate`` (per class).
"""
from .aggregate import ClassMetrics, class_mean, per_class_metrics
from .aupro import aupro
from .image import image_metrics
from .inputs import UndefinedMetricWarning
from .pixel import pixel_metrics
from .protocols import METRIC_KEYS, PROTOCOLS, compute_metrics

__all__ = [
    "METRIC_KEYS",
    "PROTOCOLS",
    "ClassMetrics",
    "class_mean",
    "UndefinedMetricWarning",
    "aupro",
    "compute_metrics",
    "image_metrics",
    "per_class_metrics",
    "pixel_metrics",
]
