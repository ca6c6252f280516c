"""Pixel metrics as MMAD's release computes them: ADer's evaluator with ``use_adeval=True``.

MMAD's config sets ``use_adeval=True``; ADer's ``util/metric.py`` then takes pixel AUROC,
pixel AP and AU-PRO from the ``adeval`` package (PyPI ``adeval``, 1.1.0; install the
``adeval`` extra), built per class as
``EvalAccumulatorCuda(min(image scores) - 1e-7, max(image scores) + 1e-7, maps.min(),
maps.max(), skip_pixel_aupro=False, nstrips=50)`` fed with every map and its binary mask.
The image metrics and pixel F1-max stay those of the ``ader`` protocol.

What adeval computes (read off its source; this module calls the package, it does not
re-implement it):

- every pixel score goes into one of 50 equal-width bins between the class's map minimum
  and maximum (plus two overflow bins); ROC and PR curves have one point per bin edge
  (prediction ``score >= edge``) and their areas are trapezoids over those 51 points, so
  AUROC and AP are binned approximations of the exact values;
- AU-PRO weighs each defect pixel by 1 / size of its 8-connected region (OpenCV), i.e. the
  per-region overlap on the same 51 edges, integrates PRO over FPR up to 0.3 with a
  trapezoid interpolated at 0.3, and divides by 0.3.

On a CUDA machine the release's ``EvalAccumulatorCuda`` is used, elsewhere adeval's NumPy
``EvalAccumulator``; both bin on the same edges, except that adeval 1.1.0's CUDA histogram
counts the pixels equal to the maximum twice (once in the last bin, once in the overflow
bin), a difference of a few pixels in millions. The image accumulator, unused here, gets
the map range as its bounds.

adeval 1.1.0 calls ``numpy.trapz``, which NumPy 2.4 removed (it is ``numpy.trapezoid``
since NumPy 2.0); :func:`adeval_pixel_metrics` provides the alias for the duration of the
call when it is missing.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import numpy as np

from .ader import ader_pixel_f1max
from .inputs import warn_undefined
from .pixel_data import PixelData, nan_pixel_metrics

ADEVAL_NSTRIPS = 50  # ADer's Evaluator: EvalAccumulatorCuda(..., nstrips=50)
ADEVAL_INSTALL_HINT = "pip install 'mambaad-companion[adeval]' (or pip install adeval)"


def import_adeval() -> ModuleType:
    """The ``adeval`` package, or an ImportError that says how to install it."""
    try:
        import adeval
    except ImportError as error:
        raise ImportError(f"the metric protocol 'adeval' needs the optional package adeval: "
                          f"{ADEVAL_INSTALL_HINT}") from error
    return adeval


@contextmanager
def _numpy_trapz() -> Iterator[None]:
    """Let adeval 1.1.0's ``np.trapz`` calls work on NumPy >= 2.4, where only ``np.trapezoid`` exists."""
    if hasattr(np, "trapz"):
        yield
        return
    np.trapz = np.trapezoid
    try:
        yield
    finally:
        del np.trapz


def _accumulate(adeval: ModuleType, maps: np.ndarray, masks: np.ndarray, low: float, high: float) -> dict:
    """adeval's summary of (N, H, W) maps against (N, H, W) uint8 masks, on CUDA when available."""
    import torch

    if torch.cuda.is_available():
        accumulator = adeval.EvalAccumulatorCuda(low, high, low, high, skip_pixel_aupro=False,
                                                 nstrips=ADEVAL_NSTRIPS)
        accumulator.add_anomap_batch(torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda())
    else:
        accumulator = adeval.EvalAccumulator(low, high, low, high, skip_pixel_aupro=False, nstrips=ADEVAL_NSTRIPS)
        accumulator.add_anomap_batch(maps, masks)
    # The sample and image accumulators stay empty: their 0/0 curves are computed and discarded.
    with _numpy_trapz(), np.errstate(invalid="ignore", divide="ignore"):
        return accumulator.summary()


def adeval_pixel_metrics(data: PixelData) -> dict[str, float]:
    """Pixel AUROC, AP and AU-PRO from adeval (as MMAD's release), pixel F1-max as ``ader``.

    Args:
        data: prepared maps and masks (:func:`~.pixel_data.prepare_pixels`) of one class;
            adeval's bins span the min and max over all of ``data.maps``.

    Returns:
        ``{"p_auroc", "p_ap", "p_f1max", "p_aupro"}``.
    Raises:
        ImportError: adeval is not installed (the message says how to install it).
    """
    adeval = import_adeval()
    if data.undefined_reason is not None:
        return nan_pixel_metrics(data.undefined_reason)
    p_f1max = ader_pixel_f1max(data)
    low, high = float(data.maps.min()), float(data.maps.max())
    if not low < high:  # the release's accumulator asserts on this
        warn_undefined("adeval pixel AUROC, AP and AU-PRO", "the maps are constant")
        return {"p_auroc": float("nan"), "p_ap": float("nan"), "p_f1max": p_f1max, "p_aupro": float("nan")}
    masks = np.ascontiguousarray(data.masks, dtype=np.uint8)  # OpenCV's components need uint8
    summary = _accumulate(adeval, np.ascontiguousarray(data.maps), masks, low, high)
    return {"p_auroc": float(summary["p_auroc"]), "p_ap": float(summary["p_aupr"]), "p_f1max": p_f1max,
            "p_aupro": float(summary["p_aupro"])}
