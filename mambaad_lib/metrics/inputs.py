"""Input conversion and validation shared by every metric.

Every public metric accepts numpy arrays or torch tensors. Validation happens here, once,
so that bad input fails with a ``ValueError`` naming the argument and what was expected,
never deep inside a sort or inside scikit-learn.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on the given labels (e.g. only one class) and is reported as NaN."""


def warn_undefined(metric_names: str, reason: str) -> None:
    """Warn that ``metric_names`` are returned as NaN because of ``reason``."""
    warnings.warn(f"{metric_names} undefined ({reason}); returning NaN.", UndefinedMetricWarning, stacklevel=3)


def to_numpy(value: Any, name: str) -> np.ndarray:
    """Return ``value`` as a numpy array without copying where possible.

    Torch tensors are detached and moved to the CPU; bfloat16 (which numpy lacks) becomes
    float32. Lists and scalars go through ``np.asarray``.
    """
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a numpy array or torch tensor, got {type(value).__name__}") from exc


def _check_ndim(array: np.ndarray, name: str, ndim: int) -> None:
    if array.ndim != ndim:
        hint = " (squeeze the channel axis: maps and masks are (N, H, W))" if ndim == 3 and array.ndim == 4 else ""
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(array.shape)}{hint}")


def as_scores(value: Any, name: str, ndim: int) -> np.ndarray:
    """Validate real-valued, finite scores of ``ndim`` dimensions.

    float32 and float64 are kept as they are (float32 is the fast path); float16 is widened
    to float32 and integer or bool scores to float64, both exactly.

    Returns:
        array of the same shape, dtype float32 or float64.
    """
    array = to_numpy(value, name)
    _check_ndim(array, name, ndim)
    if array.size == 0:
        raise ValueError(f"{name}: is empty (shape {tuple(array.shape)})")
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype.kind in "biu":
        array = array.astype(np.float64)
    elif array.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: expected real-valued scores, got dtype {array.dtype}")
    # min and max propagate NaN and expose +-inf without a boolean temporary of the input's size.
    low, high = array.min(), array.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(f"{name}: contains {bad} NaN or infinite value(s); scores must be finite")
    return array


def as_binary(value: Any, name: str, ndim: int) -> np.ndarray:
    """Validate labels or masks with values in {0, 1} (bool, integer or float).

    Returns:
        bool array of the same shape (a view when the input is already bool).
    """
    array = to_numpy(value, name)
    _check_ndim(array, name, ndim)
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected binary values {{0, 1}}, got dtype {array.dtype}")
    positive = array == 1
    n_binary = int(np.count_nonzero(positive)) + int(np.count_nonzero(array == 0))
    if n_binary != array.size:
        others = np.unique(array[(array != 0) & (array != 1)])[:5]
        hint = " (0/255 masks: divide by 255)" if np.any(others == 255) else ""
        raise ValueError(f"{name}: must be binary {{0, 1}}; found other values such as {others.tolist()}{hint}")
    return positive


def check_same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    """Raise a ValueError unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"{a_name} has shape {tuple(a.shape)} but {b_name} has shape {tuple(b.shape)}; they must match")
