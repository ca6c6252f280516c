"""The ground truth each protocol evaluates: which resized masks, and where image labels come from.

Datasets give two resized masks per image (:class:`~mambaad_lib.data.AnomalyDataset`):
``mask``, resized nearest-neighbour and binarised at > 0, and ``mask_soft``, resized
bilinearly as the MambaAD/ADer release does it (0..255, defect edges in between).

- ``standard``: ``mask``, and the dataset's image labels.
- ``ader`` and ``adeval`` (the release): ``mask_soft`` / 255 > 0.5 (the release's
  ``ToTensor`` then its trainer's ``imgs_mask > 0.5``), and each image's label is the
  maximum of that mask (ADer's evaluator: ``gt_sp = gt_px.max(axis=(1, 2))``). A defect so
  small that no pixel of the bilinear mask exceeds 0.5 therefore makes its image count as
  normal, as in the release.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .inputs import as_binary, to_numpy
from .protocols import PROTOCOLS, check_protocol

SOFT_MASK_THRESHOLD = 0.5


def binarize_soft_masks(soft_masks: Any) -> np.ndarray:
    """Bilinearly resized masks -> bool masks, ``value > 0.5`` as the release.

    Args:
        soft_masks: (N, H, W) uint8 on the 0..255 scale (divided by 255 in float32, as
            ``ToTensor`` does) or float in [0, 1].
    Returns:
        (N, H, W) bool.
    Raises:
        ValueError: another dtype, or float values outside [0, 1].
    """
    array = to_numpy(soft_masks, "soft_masks")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255) > SOFT_MASK_THRESHOLD
    if array.dtype.kind != "f":
        raise ValueError(f"soft_masks: expected uint8 (0..255) or float (0..1) values, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"soft_masks: float masks must lie in [0, 1], got values in "
                         f"[{array.min():g}, {array.max():g}] (uint8 masks are read on the 0..255 scale)")
    return array > SOFT_MASK_THRESHOLD


def protocol_ground_truth(protocol: str, labels: Any, masks: Any, soft_masks: Any = None, has_mask: Any = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The image labels and binary masks that ``protocol`` evaluates.

    Args:
        protocol: a key of :data:`~.protocols.PROTOCOLS`.
        labels: (N,) the dataset's binary image labels.
        masks: (N, H, W) binary masks resized nearest-neighbour (dataset ``mask``).
        soft_masks: (N, H, W) bilinearly resized masks (dataset ``mask_soft``); needed by
            ``ader`` and ``adeval``.
        has_mask: (N,) bool, False for anomalous images without a mask: their label stays the
            dataset's (the release's rule would read their blank mask as "normal").
    Returns:
        (labels (N,) int64, masks (N, H, W) bool).
    Raises:
        ValueError: ``soft_masks`` missing for a protocol that needs them, or shapes that
            do not match.
    """
    rule = PROTOCOLS[check_protocol(protocol)]
    labels = as_binary(labels, "labels", ndim=1)
    if rule.masks == "nearest":
        return labels.astype(np.int64), as_binary(masks, "masks", ndim=3)
    if soft_masks is None:
        raise ValueError(f"protocol {protocol!r} evaluates the release's bilinearly resized masks, but none "
                         f"were given (datasets provide them as the item key 'mask_soft'); evaluate this "
                         f"data with protocol 'standard' only")
    binary = binarize_soft_masks(soft_masks)
    if binary.ndim != 3 or binary.shape[0] != labels.shape[0]:
        raise ValueError(f"soft_masks has shape {tuple(binary.shape)} but there are {labels.shape[0]} labels; "
                         f"expected (N, H, W) with N = {labels.shape[0]}")
    if rule.labels_from_masks:
        from_masks = binary.any(axis=(1, 2))
        labels = from_masks if has_mask is None else np.where(as_binary(has_mask, "has_mask", ndim=1), from_masks,
                                                               labels)
    return labels.astype(np.int64), binary
