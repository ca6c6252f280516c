"""Pixel-level inputs, prepared once: validation, the single sort, ground-truth regions.

Both protocols and every pixel metric start from a :class:`PixelData`, so the N*H*W
pixels are validated, sorted and region-labelled exactly once per evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .inputs import as_binary, as_scores, check_same_shape, warn_undefined
from .ranking import RankedScores

PIXEL_KEYS = ("p_auroc", "p_ap", "p_f1max", "p_aupro")

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Regions:
    """Connected ground-truth regions of a mask stack, seen from the defect pixels.

    Attributes:
        inverse_size: (P,) float64, for each defect pixel in input (flat) order,
            1 / size of the region it belongs to.
        count: number of regions over all images.
    """

    inverse_size: np.ndarray
    count: int

    def weight(self, ordinal: np.ndarray) -> np.ndarray:
        """1 / size(region) of defect pixels given by their input-order rank, (p,) float64."""
        return self.inverse_size[ordinal]


def label_regions(masks: np.ndarray) -> Regions:
    """Find the 8-connected regions of every mask of a (N, H, W) bool stack.

    Each image is labelled inside the bounding box of its defect pixels only: the row-major
    order of defect pixels in the box equals their flat order in the stack, and the
    labelling work shrinks from N*H*W pixels to the (usually small) boxes.
    """
    rows_hit = masks.any(axis=2)  # (N, H)
    cols_hit = masks.any(axis=1)  # (N, W)
    inverse_size = np.empty(int(np.count_nonzero(masks)), dtype=np.float64)
    filled, count = 0, 0
    for image in np.flatnonzero(rows_hit.any(axis=1)):
        rows, cols = np.flatnonzero(rows_hit[image]), np.flatnonzero(cols_hit[image])
        box = masks[image, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        ids, n_regions = ndimage.label(box, structure=_EIGHT_CONNECTED)
        defect_ids = ids[box]  # region id of each defect pixel, row-major = input order
        sizes = np.bincount(defect_ids)
        inverse_size[filled : filled + defect_ids.size] = 1.0 / sizes[defect_ids]
        filled += defect_ids.size
        count += n_regions
    return Regions(inverse_size=inverse_size, count=count)


@dataclass(frozen=True)
class PixelData:
    """Validated maps and masks, sorted once, with their ground-truth regions.

    Attributes:
        maps: (N, H, W) float32 or float64 scores as given (no copy for those dtypes).
        masks: (N, H, W) bool ground truth (no copy for bool input).
        ranked: the flattened scores sorted with their labels.
        regions: 8-connected ground-truth regions (count 0 without defect pixels).
    """

    maps: np.ndarray
    masks: np.ndarray
    ranked: RankedScores
    regions: Regions

    @property
    def undefined_reason(self) -> str | None:
        """Why the pixel metrics are undefined (a single class of pixel), or None."""
        if self.ranked.n_pos == 0:
            return "masks hold no defect pixel"
        if self.ranked.n_neg == 0:
            return "masks hold no normal pixel"
        return None


def prepare_pixels(anomaly_maps: Any, masks: Any) -> PixelData:
    """Validate (N, H, W) maps and binary masks, sort the pixels, label the regions."""
    maps = as_scores(anomaly_maps, "anomaly_maps", ndim=3)
    gt = as_binary(masks, "masks", ndim=3)
    check_same_shape(maps, "anomaly_maps", gt, "masks")
    ranked = RankedScores(maps.reshape(-1), gt.reshape(-1))
    regions = label_regions(gt)
    return PixelData(maps=maps, masks=gt, ranked=ranked, regions=regions)


def nan_pixel_metrics(reason: str) -> dict[str, float]:
    """All pixel metrics as NaN, with the warning that says why."""
    warn_undefined("pixel AUROC, AP, F1-max and AU-PRO", reason)
    return dict.fromkeys(PIXEL_KEYS, float("nan"))
