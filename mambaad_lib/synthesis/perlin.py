"""Seeded, vectorised 2-D Perlin (gradient) noise and the thresholded masks built from it.

Perlin noise places a random unit gradient at every lattice point; the value at a pixel is
the quintic-faded bilinear blend of the dot products between the gradients of its cell's
four corners and the pixel's offsets from them. A lattice of ``scale = (sy, sx)`` cells
across the image gives blobs about ``H / sy`` by ``W / sx`` pixels wide.

The field is evaluated at (optionally rotated) pixel coordinates directly, so a rotated
field is exact everywhere (no resampling of a raster, no blank corners) and the image size
need not be a multiple of the lattice size. Values are multiplied by sqrt(2), the usual
normalisation of 2-D gradient noise, which puts them in [-1, 1]; the GLASS/DRAEM mask
threshold of 0.5 refers to this range.

Everything draws from a ``numpy.random.Generator``: the same seed gives the same bytes.
"""
from __future__ import annotations

from typing import Union

import numpy as np

__all__ = ["RandomSource", "as_generator", "perlin_noise", "perlin_mask"]

RandomSource = Union[int, np.random.Generator, None]


def as_generator(random: RandomSource) -> np.random.Generator:
    """A numpy ``Generator`` from a seed, an existing generator (used as is) or ``None`` (seed 0)."""
    if isinstance(random, np.random.Generator):
        return random
    if random is None:
        return np.random.default_rng(0)
    if isinstance(random, (int, np.integer)) and not isinstance(random, bool):
        return np.random.default_rng(int(random))
    raise ValueError(f"random must be an int seed, a numpy Generator or None, got {type(random).__name__}")


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or any(int(v) != v or int(v) < 1 for v in pair):
        raise ValueError(f"{what} must be a positive int or a pair of positive ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic 6t^5 - 15t^4 + 10t^3: zero first and second derivative at 0 and 1."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: int | tuple[int, int], scale: int | tuple[int, int],
                 random: RandomSource = None, angle: float = 0.0) -> np.ndarray:
    """A Perlin noise field.

    Args:
        shape: output size ``(H, W)`` (or one int for a square).
        scale: lattice cells across the image, ``(sy, sx)`` or one int.
        random: seed or ``numpy.random.Generator`` for the lattice gradients.
        angle: rotation of the field in degrees (counter-clockwise, about the image centre).

    Returns:
        float32 array (H, W) with values in [-1, 1].
    """
    height, width = _pair(shape, "shape")
    cells_y, cells_x = _pair(scale, "scale")
    generator = as_generator(random)

    # Pixel coordinates about the centre, rotated, then expressed in lattice units.
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float64) - (height - 1) / 2.0,
                         np.arange(width, dtype=np.float64) - (width - 1) / 2.0, indexing="ij")
    theta = np.deg2rad(angle)
    cos, sin = np.cos(theta), np.sin(theta)
    lattice_y = (cos * ys - sin * xs + height / 2.0) * (cells_y / height)  # (H, W)
    lattice_x = (sin * ys + cos * xs + width / 2.0) * (cells_x / width)    # (H, W)

    cell_y, cell_x = np.floor(lattice_y), np.floor(lattice_x)
    frac_y, frac_x = lattice_y - cell_y, lattice_x - cell_x
    # Gradients only for the lattice points the (rotated) image touches.
    row = (cell_y - cell_y.min()).astype(np.int64)
    col = (cell_x - cell_x.min()).astype(np.int64)
    gradient_angles = generator.uniform(0.0, 2.0 * np.pi, size=(row.max() + 2, col.max() + 2))
    grad_y, grad_x = np.sin(gradient_angles), np.cos(gradient_angles)

    def corner(dy: int, dx: int) -> np.ndarray:
        # dot(gradient at corner, offset of the pixel from that corner): (H, W)
        r, c = row + dy, col + dx
        return grad_y[r, c] * (frac_y - dy) + grad_x[r, c] * (frac_x - dx)

    blend_y, blend_x = _fade(frac_y), _fade(frac_x)
    top = corner(0, 0) + blend_x * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + blend_x * (corner(1, 1) - corner(1, 0))
    noise = np.sqrt(2.0) * (top + blend_y * (bottom - top))
    return np.clip(noise, -1.0, 1.0).astype(np.float32)


def perlin_mask(shape: int | tuple[int, int], random: RandomSource = None, min_scale_exp: int = 0,
                max_scale_exp: int = 6, threshold: float = 0.5, rotate: bool = True) -> np.ndarray:
    """A random Perlin blob mask as used by DRAEM and GLASS local anomaly synthesis.

    The lattice size is ``(2**ky, 2**kx)`` with ``ky`` and ``kx`` drawn independently and
    uniformly from the integers ``min_scale_exp <= k < max_scale_exp`` (numpy's exclusive
    upper bound, as the GLASS release draws them; pass ``max_scale_exp=7`` to include 64
    cells). With ``rotate`` the field is turned by an angle uniform in [-90, 90) degrees.
    The mask is ``noise > threshold``; it can be empty (rare at the defaults), callers that
    need pixels redraw.

    Returns:
        bool array (H, W).
    """
    if not 0 <= min_scale_exp < max_scale_exp:
        raise ValueError(f"need 0 <= min_scale_exp < max_scale_exp, got {min_scale_exp}, {max_scale_exp}")
    if not -1.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [-1, 1), got {threshold}")
    generator = as_generator(random)
    exp_y, exp_x = generator.integers(min_scale_exp, max_scale_exp, size=2)
    angle = generator.uniform(-90.0, 90.0) if rotate else 0.0
    noise = perlin_noise(shape, (2 ** int(exp_y), 2 ** int(exp_x)), generator, angle=angle)
    return noise > threshold
