"""Image and pixel anomaly-detection metrics under three named protocols.

Public API:

- :func:`compute_metrics` (image AUROC/AP/F1-max, pixel AUROC/AP/F1-max/AU-PRO, mAD) with
  ``protocol="standard"`` (exact definitions), ``"ader"`` (the released MambaAD / ADer
  evaluation) or ``"adeval"`` (MMAD's release: pixel AUROC/AP/AU-PRO from the optional
  ``adeval`` package); the differences are listed in :mod:`.protocols`;
- :func:`protocol_ground_truth`, the labels and masks each protocol evaluates (nearest vs
  the release's bilinear masks, dataset labels vs mask maxima), and :data:`DEFAULT_PROTOCOLS`
  (those that need no optional package);
- :func:`aupro`, the exact MVTec-AD AU-PRO;
- :func:`per_class_metrics` / :class:`ClassMetrics`, per-class evaluation and class mean
  (``has_mask=`` marks anomalous images without a mask: image metrics only for their
  classes, with ``ClassMetrics.notes`` and ``ClassMetrics.images_without_mask``);
- :func:`check_protocol`, a protocol name checked (and its optional package importable);
- :data:`METRIC_KEYS`, the eight result keys in table order.

Modules, one job each: ``inputs`` (conversion, validation), ``ranking`` (the single sort
and the threshold sweep), ``curves`` (AUROC, AP, F1-max accumulators), ``pixel_data``
(validated pixels and ground-truth regions), ``aupro``, ``image``, ``pixel`` (standard),
``ader`` (release protocol), ``adeval_protocol`` (MMAD's), ``protocols`` (registry and
dispatch), ``ground_truth`` (masks and labels per protocol), ``aggregate`` (per class).
"""
from .aggregate import ClassMetrics, class_mean, per_class_metrics
from .aupro import aupro
from .image import image_curves, image_metrics
from .inputs import UndefinedMetricWarning
from .ground_truth import binarize_soft_masks, protocol_ground_truth
from .pixel import pixel_metrics
from .protocols import DEFAULT_PROTOCOLS, METRIC_KEYS, PROTOCOLS, Protocol, check_protocol, compute_metrics

__all__ = [
    "DEFAULT_PROTOCOLS",
    "METRIC_KEYS",
    "PROTOCOLS",
    "ClassMetrics",
    "class_mean",
    "Protocol",
    "UndefinedMetricWarning",
    "aupro",
    "binarize_soft_masks",
    "check_protocol",
    "compute_metrics",
    "image_curves",
    "image_metrics",
    "per_class_metrics",
    "pixel_metrics",
    "protocol_ground_truth",
]
