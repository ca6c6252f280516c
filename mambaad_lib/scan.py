"""Scan orders: how a 2-D grid of tokens becomes the 1-D sequences a selective scan reads.

An *order* is a permutation of raster indices: for a (H, W) grid flattened row-major as
``x_flat`` (index ``h * W + w``), the sequence is ``seq = x_flat[..., order]``, and
``x_flat[..., order] = seq`` (or a gather with ``torch.argsort(order)``) undoes it.

Five orders (Table 3 of the paper):

========  =====================================================  ======================
name      path                                                   grids
========  =====================================================  ======================
sweep     raster, row by row, left to right                      any H x W
scan      snake / boustrophedon: even rows left to right,        any H x W
          odd rows right to left
zorder    Morton curve: sort cells by the bit interleaving of    power-of-two sides
          (h, w), w in the low bit
zigzag    JPEG anti-diagonals ``h + w = s``, going down-left on  any H x W
          odd s and up-right on even s (0, 1, W, 2W, W+1, 2, ...)
hilbert   Hilbert curve, oriented as numpy-hilbert-curve's       square, power-of-two
          ``decode`` read as (w, h): starts 0, W, W+1, 1, ...    side
========  =====================================================  ======================

Eight *directions* (the paper's order): four views of the grid -- identity, H/W transpose,
``rot90`` (k=1 over (H, W)) and the transpose of that rotation -- each traversed with the
order computed on the view's own shape, first forward, then reversed:
``forward, reverse, wh_forward, wh_reverse, rot90_forward, rot90_reverse, wh_rot90_forward,
wh_rot90_reverse``. ``directions=k`` keeps the first k of them.

The transpose of the rot90 view is a left-right mirror of the grid, so curves that are
their own mirror image reversed repeat directions: for ``hilbert`` (any side) directions 6, 7
equal 1, 0, and for ``scan`` over an even number of columns directions 4, 5 equal 3, 2; eight
hilbert directions are six distinct sequences (as in the release). sweep, zorder and zigzag
give eight distinct ones.

The released checkpoints stack their 8 directions as the 4 forward views followed by the 4
reversed ones; :data:`RELEASE_DIRECTION_INDEX` maps our direction j to the release's.

Index tensors are built with numpy (so a ``torch.device("meta")`` context cannot leak into
the cache), cached with :func:`functools.lru_cache`, and returned as fresh CPU copies.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Union

import numpy as np
import torch
from torch import Tensor

SCAN_METHODS: tuple[str, ...] = ("sweep", "scan", "zorder", "zigzag", "hilbert")
DIRECTION_NAMES: tuple[str, ...] = (
    "forward", "reverse", "wh_forward", "wh_reverse",
    "rot90_forward", "rot90_reverse", "wh_rot90_forward", "wh_rot90_reverse",
)
VALID_DIRECTION_COUNTS: tuple[int, ...] = (1, 2, 4, 8)
# Our direction j holds the release checkpoint's direction RELEASE_DIRECTION_INDEX[j]
# (release: k = 0..3 the four views forward, k = 4..7 the same reversed).
RELEASE_DIRECTION_INDEX: tuple[int, ...] = (0, 4, 1, 5, 2, 6, 3, 7)

ScanSpec = Union[str, Mapping[str, int]]


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _check_grid(name: str, height: int, width: int) -> None:
    for label, side in (("height", height), ("width", width)):
        if not isinstance(side, (int, np.integer)) or isinstance(side, bool) or side < 1:
            raise ValueError(f"{label} must be a positive integer, got {side!r}")
    if name in ("zorder", "hilbert") and not (_is_power_of_two(height) and _is_power_of_two(width)):
        raise ValueError(
            f"scan {name!r} needs power-of-two grid sides, got {height}x{width}")
    if name == "hilbert" and height != width:
        raise ValueError(f"scan 'hilbert' needs a square grid, got {height}x{width}")


def _raster_cells(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every raster index, each (H*W,)."""
    rows, cols = np.divmod(np.arange(height * width, dtype=np.int64), width)
    return rows, cols


def _sweep(height: int, width: int) -> np.ndarray:
    return np.arange(height * width, dtype=np.int64)


def _snake(height: int, width: int) -> np.ndarray:
    grid = np.arange(height * width, dtype=np.int64).reshape(height, width)
    grid[1::2] = grid[1::2, ::-1]
    return grid.reshape(-1)


def _zorder(height: int, width: int) -> np.ndarray:
    rows, cols = _raster_cells(height, width)
    key = np.zeros_like(rows)
    for bit in range(max(height, width).bit_length()):
        key |= ((cols >> bit) & 1) << (2 * bit)
        key |= ((rows >> bit) & 1) << (2 * bit + 1)
    return np.argsort(key, kind="stable")


def _zigzag(height: int, width: int) -> np.ndarray:
    rows, cols = _raster_cells(height, width)
    diagonal = rows + cols
    # Odd anti-diagonals run down-left (row increasing), even ones up-right (row decreasing).
    within = np.where(diagonal % 2 == 1, rows, -rows)
    return np.lexsort((within, diagonal))


def _hilbert(height: int, width: int) -> np.ndarray:
    side = height
    position = np.arange(side * side, dtype=np.int64)
    # Classic iterative Hilbert decoding (curve index -> (x, y)), vectorised over positions.
    x = np.zeros_like(position)
    y = np.zeros_like(position)
    remaining = position.copy()
    step = 1
    while step < side:
        rx = (remaining >> 1) & 1
        ry = (remaining ^ rx) & 1
        flip = (ry == 0) & (rx == 1)
        x = np.where(flip, step - 1 - x, x)
        y = np.where(flip, step - 1 - y, y)
        swap = ry == 0
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        x += step * rx
        y += step * ry
        remaining >>= 2
        step <<= 1
    # x is the column and y the row: the release's index a + s * b.
    return x + side * y


_BUILDERS = {"sweep": _sweep, "scan": _snake, "zorder": _zorder, "zigzag": _zigzag, "hilbert": _hilbert}


def _check_method(name: object) -> str:
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ValueError(f"scan must be one of {list(SCAN_METHODS)} (or a mapping of them to "
                         f"direction counts), got {name!r}")
    return name


@lru_cache(maxsize=None)
def _order(name: str, height: int, width: int) -> np.ndarray:
    _check_grid(name, height, width)
    order = _BUILDERS[name](height, width)
    order.setflags(write=False)
    return order


def _views(height: int, width: int) -> list[np.ndarray]:
    """The four views of the raster-index grid, in direction order."""
    grid = np.arange(height * width, dtype=np.int64).reshape(height, width)
    rotated = np.rot90(grid, k=1, axes=(0, 1))  # same convention as torch.rot90(k=1, dims=(0, 1))
    return [grid, grid.T, rotated, rotated.T]


@lru_cache(maxsize=None)
def _directions(name: str, height: int, width: int, count: int) -> np.ndarray:
    sequences = []
    for view in _views(height, width)[: (count + 1) // 2]:
        forward = view.reshape(-1)[_order(name, *view.shape)]
        sequences += [forward, forward[::-1]]
    stacked = np.stack(sequences[:count])
    stacked.setflags(write=False)
    return stacked


def scan_order(name: str, height: int, width: int) -> Tensor:
    """The raster indices of a (height, width) grid in scan ``name``'s visiting order.

    Returns:
        LongTensor (H*W,), a permutation: ``seq = x_flat[..., order]``.
    Raises:
        ValueError: unknown name, or a grid the order is not defined for.
    """
    return torch.from_numpy(_order(_check_method(name), int(height), int(width)).copy())


def direction_counts(scan: ScanSpec, directions: int = 8) -> tuple[tuple[str, int], ...]:
    """Normalise a scan spec to ``((method, count), ...)``, validating names and counts.

    ``scan`` is a method name (then ``directions`` is its count) or a mapping such as
    ``{"zigzag": 4, "hilbert": 4}``, whose counts must sum to ``directions``.
    """
    if directions not in VALID_DIRECTION_COUNTS or isinstance(directions, bool):
        raise ValueError(f"directions must be one of {list(VALID_DIRECTION_COUNTS)}, got {directions!r}")
    if isinstance(scan, Mapping):
        parts = tuple((_check_method(name), count) for name, count in scan.items() if count != 0)
        for name, count in parts:
            if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or not 0 < count <= 8:
                raise ValueError(f"scan mapping counts must be integers in 1..8, got {name!r}: {count!r}")
        total = sum(count for _, count in parts)
        if total not in VALID_DIRECTION_COUNTS:
            raise ValueError(f"scan mapping counts must sum to one of {list(VALID_DIRECTION_COUNTS)}, "
                             f"got {dict(parts)} (sum {total})")
        if total != directions:
            raise ValueError(f"scan mapping {dict(parts)} gives {total} directions but directions={directions}; "
                             f"pass directions={total}")
        return tuple((name, int(count)) for name, count in parts)
    return ((_check_method(scan), directions),)


def scan_directions(scan: ScanSpec, height: int, width: int, directions: int = 8) -> Tensor:
    """The sequences of every scan direction of a (height, width) grid.

    Args:
        scan: a method name (its first ``directions`` directions, paper order) or a mapping
            method -> count (each method contributes its first ``count`` directions, in
            mapping order; counts summing to ``directions``).
        height, width: grid size.
        directions: 1, 2, 4 or 8.
    Returns:
        LongTensor (directions, H*W); row k is a permutation of raster indices.
    """
    height, width = int(height), int(width)
    parts = [_directions(name, height, width, count) for name, count in direction_counts(scan, directions)]
    return torch.from_numpy(np.concatenate(parts, axis=0))


def inverse_orders(orders: Tensor) -> Tensor:
    """Inverse permutations along the last dimension: ``seq[..., inverse] = x_flat``."""
    return torch.argsort(orders, dim=-1)
