"""The evaluation protocols, the ground truth each uses, and :func:`compute_metrics`.

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

``protocol="adeval"``: MMAD's release (ADer's evaluator with ``use_adeval=True``): as
``ader``, but pixel AUROC, AP and AU-PRO come from the ``adeval`` package, binned on 50
strips (:mod:`.adeval_protocol`; needs the ``adeval`` extra).

Ground truth (:class:`Protocol` ``masks`` and ``labels_from_masks``; applied by
:func:`~.ground_truth.protocol_ground_truth`): ``standard`` evaluates masks resized
nearest-neighbour and binarised at > 0, with the dataset's image labels; ``ader`` and
``adeval`` evaluate, as the release, masks resized bilinearly and binarised at > 0.5, and
take each image's label as the maximum of that mask. :func:`compute_metrics` evaluates the
labels and masks it is given.

Every protocol returns fractions in [0, 1] and ``mAD`` = mean of the seven metrics.
Metrics undefined on a single class (all images normal, or masks without defect pixels)
are NaN with an :class:`~.inputs.UndefinedMetricWarning`; mAD is then NaN too.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .adeval_protocol import adeval_pixel_metrics, import_adeval
from .ader import ader_pixel_metrics
from .image import IMAGE_KEYS, image_metrics
from .inputs import to_numpy
from .pixel import standard_pixel_metrics
from .pixel_data import PIXEL_KEYS, PixelData, prepare_pixels

METRIC_KEYS = IMAGE_KEYS + PIXEL_KEYS + ("mAD",)


@dataclass(frozen=True)
class Protocol:
    """A named evaluation protocol.

    Attributes:
        pixel_metrics: prepared pixels -> ``{"p_auroc", "p_ap", "p_f1max", "p_aupro"}``.
        masks: which resized masks it evaluates: ``"nearest"`` (binarised at > 0) or
            ``"bilinear"`` (binarised at > 0.5).
        labels_from_masks: image labels are the maximum of the masks (the release) rather
            than the dataset's labels.
        extra: the optional dependency group it needs (``pip install '.[<extra>]'``), or None.
    """

    pixel_metrics: Callable[[PixelData], dict[str, float]]
    masks: str
    labels_from_masks: bool
    extra: str | None = None


PROTOCOLS: dict[str, Protocol] = {
    "standard": Protocol(standard_pixel_metrics, masks="nearest", labels_from_masks=False),
    "ader": Protocol(ader_pixel_metrics, masks="bilinear", labels_from_masks=True),
    "adeval": Protocol(adeval_pixel_metrics, masks="bilinear", labels_from_masks=True, extra="adeval"),
}
# The protocols every installation can run (no optional package): a sensible default list.
DEFAULT_PROTOCOLS = tuple(name for name, protocol in PROTOCOLS.items() if protocol.extra is None)


def check_protocol(protocol: str) -> str:
    """Raise a ValueError unless ``protocol`` names a known protocol, an ImportError (with the
    install command) when it needs an optional package that is missing."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {sorted(PROTOCOLS)}, got {protocol!r}")
    if PROTOCOLS[protocol].extra == "adeval":
        import_adeval()
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
        masks: (N, H, W) binary {0, 1} ground truth (for ``ader``/``adeval`` the release's:
            :func:`~.ground_truth.protocol_ground_truth`).
        protocol: ``"standard"`` (exact definitions), ``"ader"`` (MambaAD's released
            evaluation) or ``"adeval"`` (MMAD's; needs the ``adeval`` extra).

    Returns:
        dict with the keys of :data:`METRIC_KEYS` in order, fractions in [0, 1].
    """
    pixel_protocol = PROTOCOLS[check_protocol(protocol)].pixel_metrics
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
