"""The two evaluation protocols and :func:`compute_metrics`, the one entry point.

``protocol="standard"``: the exact definitions (scikit-learn AUROC / AP, F1-max over every
threshold of the PR curve, MVTec-AD AU-PRO integrated to FPR 0.3).
``protocol="ader"``: the released MambaAD / ADer evaluation that produced the paper's
numbers. The image metrics and pixel AUROC / AP are identical; the differences:

======================  ====================================  ===========================================
metric                  standard                              ader (release)
======================  ====================================  ===========================================
pixel F1-max            max over every distinct threshold     maps min-max normalised over the maps passed
                        of the PR curve, raw scores           in (one class); 21 thresholds 0, 0.05, ..., 1
                                                              with ``norm > t``; F1 with 1e-8 in the
                                                              denominators
AU-PRO thresholds       every distinct score                  100 evenly spaced, from min (included) to
                                                              max (excluded), ``map > t``
AU-PRO FPR range        [0, 0.3], curve from (0, 0),          points with FPR < 0.3 only, no (0, 0) anchor,
                        interpolated at 0.3                   no interpolation
AU-PRO normalisation    area / 0.3                            kept FPRs min-max rescaled to [0, 1] before
                                                              the trapezoid
======================  ====================================  ===========================================

Both protocols return fractions in [0, 1] and ``mAD`` = mean of the seven metrics.
Metrics undefined on a single class (all images normal, or masks without defect pixels)
are NaN with an :class:`~.inputs.UndefinedMetricWarning`; mAD is then NaN too.
"""
from __future__ import annotations

import math
from typing import Any

from .ader import ader_pixel_metrics
from .image import IMAGE_KEYS, image_metrics
from .inputs import to_numpy
from .pixel import standard_pixel_metrics
from .pixel_data import PIXEL_KEYS, prepare_pixels

METRIC_KEYS = IMAGE_KEYS + PIXEL_KEYS + ("mAD",)
PROTOCOLS = {"standard": standard_pixel_metrics, "ader": ader_pixel_metrics}


def check_protocol(protocol: str) -> str:
    """Raise a ValueError unless ``protocol`` names a known protocol."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {sorted(PROTOCOLS)}, got {protocol!r}")
    return protocol


def compute_metrics(
    image_scores: Any,
    image_labels: Any,
    anomaly_maps: Any,
    masks: Any,
    protocol: str = "standard",
) -> dict[str, float]:
    """The seven MambaAD metrics and their mean, under a named protocol.

    Args:
        image_scores: (N,) finite image scores (higher = more anomalous).
        image_labels: (N,) binary {0, 1}.
        anomaly_maps: (N, H, W) finite float maps at full resolution (float32 is fastest).
        masks: (N, H, W) binary {0, 1} ground truth.
        protocol: ``"standard"`` (exact definitions) or ``"ader"`` (released evaluation).

    Returns:
        dict with the keys of :data:`METRIC_KEYS` in order, fractions in [0, 1].
    """
    pixel_protocol = PROTOCOLS[check_protocol(protocol)]
    image = image_metrics(image_scores, image_labels)
    n_scores, maps_shape = len(image_scores), to_numpy(anomaly_maps, "anomaly_maps").shape
    if maps_shape and maps_shape[0] != n_scores:
        raise ValueError(f"image_scores has {n_scores} entries but anomaly_maps holds {maps_shape[0]} maps "
                         f"(shape {tuple(maps_shape)}); they must match")
    data = prepare_pixels(anomaly_maps, masks)
    metrics = {**image, **pixel_protocol(data)}
    seven = [metrics[key] for key in METRIC_KEYS[:-1]]
    metrics["mAD"] = math.fsum(seven) / len(seven)
    return {key: float(metrics[key]) for key in METRIC_KEYS}
