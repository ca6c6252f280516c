"""Defects of the synthetic benchmark, each with an exact pixel mask.

A painter proposes a region and the colours it would give every pixel; the defect is
``where(mask, proposal, image)`` with ``mask = region & allowed``. So the mask is exactly
the set of pixels that may change: nothing outside it is touched. ``allowed`` is the
object's foreground (the whole image for textures), except for ``cut`` on objects, whose
region is a bite out of the object's edge replaced by background.

Each defect is redrawn (same generator, so still deterministic) until its mask covers at
least ``min_area`` of the image and the mean absolute change inside the mask is at least
``min_visibility``: every defect is visible, none is invisible on a lucky background.

Sizes are fractions of the image side, so a 64-px image gets the same defects, smaller.
All values live in :data:`DEFECT_PARAMS`, fixed and documented in ``book/datasets.md``;
they must not be tuned to make a model look better.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.draw import line, polygon

from mambaad_lib.data.synthetic.sources import load_rgb
from mambaad_lib.synthesis.perlin import perlin_mask

__all__ = ["DEFECT_TYPES", "DEFECT_PARAMS", "DefectParams", "apply_defect"]

DEFECT_TYPES = ("scratch", "hole", "stain", "crack", "cut", "patch")

Range = tuple[float, float]


@dataclass(frozen=True)
class DefectParams:
    """Fixed defect parameters (lengths and sizes are fractions of the image side)."""

    # scratch: a thin quadratic Bezier curve, lighter or darker than what it crosses
    scratch_length: Range = (0.25, 0.5)
    scratch_bend: float = 0.25            # control-point offset / length
    scratch_width: float = 0.006          # at least 1 px
    scratch_strength: Range = (0.6, 0.85)  # blend weight towards black or white
    # hole / spot: a filled ellipse, dark on bright surfaces and bright on dark ones
    hole_radius: Range = (0.025, 0.05)
    hole_strength: Range = (0.75, 0.9)
    # colour stain: a lobed blob tinted with one of four stain colours
    stain_radius: Range = (0.05, 0.1)
    stain_lobes: tuple[int, int] = (3, 6)
    stain_lobe_radius: Range = (0.5, 1.0)   # lobe radii / R
    stain_lobe_spread: float = 0.5          # lobe centres ~ N(0, spread * R)
    stain_alpha: Range = (0.45, 0.7)
    stain_colours: tuple[tuple[float, float, float], ...] = (
        (0.55, 0.27, 0.07), (0.12, 0.2, 0.6), (0.85, 0.7, 0.1), (0.15, 0.45, 0.15))
    # crack: a jagged random walk with an optional branch, 1-2 px wide
    crack_length: Range = (0.2, 0.4)
    crack_step: float = 0.03
    crack_turn_deg: float = 35.0
    crack_branch_probability: float = 0.5
    crack_branch_length: float = 0.4        # / trunk length
    crack_branch_angle_deg: Range = (30.0, 60.0)
    crack_width: float = 0.004
    crack_strength: Range = (0.65, 0.8)
    # cut / missing piece: objects lose a disc-shaped bite at their edge (background shows);
    # textures get a straight-edged gash filled with a dark depth
    cut_radius: Range = (0.08, 0.14)
    cut_length: Range = (0.2, 0.35)
    cut_width: Range = (0.03, 0.06)
    cut_depth: Range = (0.04, 0.14)
    cut_surface: float = 0.1                # share of the texture still visible in a gash
    # foreign texture patch: a Perlin-shaped region filled with another photograph
    patch_window: Range = (0.15, 0.3)
    patch_scale_exp: tuple[int, int] = (1, 3)   # lattice 2**k cells across the window, k in {1, 2}
    patch_threshold: float = 0.3
    patch_keep: Range = (0.0, 0.3)               # fraction of the original kept under the patch
    patch_crop: Range = (0.1, 0.3)               # foreign crop side / foreign photograph side
    patch_sources: tuple[str, ...] = ("chelsea", "coffee", "astronaut", "rocket")
    # every defect
    margin: float = 0.04                # centres keep this distance from the image/object border
    min_area: float = 0.0005            # mask area / image area (and at least 4 px)
    min_visibility: float = 0.08        # mean |change| inside the mask, on [0, 1]
    max_tries: int = 100


DEFECT_PARAMS = DefectParams()


def _luminance(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _towards_contrast(image: np.ndarray, region: np.ndarray, strength: float, pivot: float) -> np.ndarray:
    """Blend towards black where the region is bright (mean luminance > pivot), else towards white."""
    target = 0.03 if _luminance(image)[region].mean() > pivot else 0.95
    return image * (1.0 - strength) + target * strength


def _stroke(shape: tuple[int, int], points: np.ndarray, width: int) -> np.ndarray:
    """Pixels of the polyline through ``points`` (N, 2) in (y, x), ``width`` px thick."""
    mask = np.zeros(shape, bool)
    rounded = np.round(points).astype(int)
    for (y0, x0), (y1, x1) in zip(rounded[:-1], rounded[1:]):
        rows, cols = line(y0, x0, y1, x1)
        keep = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        mask[rows[keep], cols[keep]] = True
    if width > 1:
        mask = ndimage.binary_dilation(mask, structure=np.ones((width, width), bool))
    return mask


def _width(fraction: float, side: int) -> int:
    return max(1, int(round(fraction * side)))


def _pick(candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.nonzero(candidates)
    index = rng.integers(len(rows))
    return np.array([rows[index], cols[index]], dtype=np.float64)


def _scratch(image, centre, side, rng, p: DefectParams, context):
    length = rng.uniform(*p.scratch_length) * side
    direction = rng.uniform(0, np.pi)
    half = 0.5 * length * np.array([np.sin(direction), np.cos(direction)])
    normal = np.array([half[1], -half[0]]) / (0.5 * length)
    control = centre + normal * rng.uniform(-p.scratch_bend, p.scratch_bend) * length
    t = np.linspace(0.0, 1.0, max(8, int(length)))[:, None]
    curve = (1 - t) ** 2 * (centre - half) + 2 * (1 - t) * t * control + t ** 2 * (centre + half)
    region = _stroke(image.shape[:2], curve, _width(p.scratch_width, side))
    return region, lambda r: _towards_contrast(image, r, rng.uniform(*p.scratch_strength), 0.5)


def _ellipse(shape, centre, radii, angle) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    dy, dx = rows - centre[0], cols - centre[1]
    u = dy * np.cos(angle) + dx * np.sin(angle)
    v = -dy * np.sin(angle) + dx * np.cos(angle)
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1.0


def _hole(image, centre, side, rng, p: DefectParams, context):
    radii = rng.uniform(*p.hole_radius, size=2) * side
    region = _ellipse(image.shape[:2], centre, np.maximum(radii, 1.0), rng.uniform(0, np.pi))
    return region, lambda r: _towards_contrast(image, r, rng.uniform(*p.hole_strength), 0.35)


def _stain(image, centre, side, rng, p: DefectParams, context):
    radius = rng.uniform(*p.stain_radius) * side
    region = np.zeros(image.shape[:2], bool)
    for _ in range(rng.integers(p.stain_lobes[0], p.stain_lobes[1] + 1)):
        offset = rng.normal(0.0, p.stain_lobe_spread * radius, size=2)
        lobe = rng.uniform(*p.stain_lobe_radius, size=2) * radius
        region |= _ellipse(image.shape[:2], centre + offset, np.maximum(lobe, 1.0), rng.uniform(0, np.pi))
    colour = np.asarray(p.stain_colours[rng.integers(len(p.stain_colours))], np.float32)
    alpha = rng.uniform(*p.stain_alpha)
    return region, lambda r: image * (1.0 - alpha) + colour * alpha


def _crack(image, centre, side, rng, p: DefectParams, context):
    step = max(1.0, p.crack_step * side)

    def walk(start, heading, length):
        points, position = [start], start.copy()
        for _ in range(max(2, int(length / step))):
            heading += np.deg2rad(rng.uniform(-p.crack_turn_deg, p.crack_turn_deg))
            position = position + step * np.array([np.sin(heading), np.cos(heading)])
            points.append(position)
        return np.array(points)

    length = rng.uniform(*p.crack_length) * side
    heading = rng.uniform(0, 2 * np.pi)
    trunk = walk(centre - 0.5 * length * np.array([np.sin(heading), np.cos(heading)]), heading, length)
    width = _width(p.crack_width, side)
    region = _stroke(image.shape[:2], trunk, width)
    if rng.uniform() < p.crack_branch_probability:
        start = trunk[rng.integers(1, len(trunk) - 1)]
        turn = rng.choice([-1, 1]) * np.deg2rad(rng.uniform(*p.crack_branch_angle_deg))
        branch = walk(start, heading + turn, p.crack_branch_length * length)
        region |= _stroke(image.shape[:2], branch, width)
    return region, lambda r: _towards_contrast(image, r, rng.uniform(*p.crack_strength), 0.3)


def _cut(image, centre, side, rng, p: DefectParams, context):
    background = context["background"]
    if background is not None:  # object: a bite out of the edge, the background shows through
        radius = rng.uniform(*p.cut_radius) * side
        region = _ellipse(image.shape[:2], centre, (radius, radius), 0.0)
        return region, lambda r: np.broadcast_to(background, image.shape)
    length, width = rng.uniform(*p.cut_length) * side, rng.uniform(*p.cut_width) * side
    angle = rng.uniform(0, np.pi)
    along = 0.5 * length * np.array([np.sin(angle), np.cos(angle)])
    across = 0.5 * width * np.array([np.cos(angle), -np.sin(angle)])
    corners = np.array([centre - along - across, centre - along + across,
                        centre + along + across, centre + along - across])
    rows, cols = polygon(corners[:, 0], corners[:, 1], shape=image.shape[:2])
    region = np.zeros(image.shape[:2], bool)
    region[rows, cols] = True
    depth = rng.uniform(*p.cut_depth)
    return region, lambda r: depth + p.cut_surface * image


def _patch(image, centre, side, rng, p: DefectParams, context):
    window = max(4, int(round(rng.uniform(*p.patch_window) * side)))
    blob = perlin_mask((window, window), rng, min_scale_exp=p.patch_scale_exp[0],
                       max_scale_exp=p.patch_scale_exp[1], threshold=p.patch_threshold)
    photo = load_rgb(p.patch_sources[rng.integers(len(p.patch_sources))])
    crop = int(min(photo.shape[:2]) * rng.uniform(*p.patch_crop))
    top, left = rng.integers(0, photo.shape[0] - crop + 1), rng.integers(0, photo.shape[1] - crop + 1)
    texture = np.asarray(Image.fromarray(photo[top:top + crop, left:left + crop])
                         .resize((window, window), Image.Resampling.BILINEAR), np.float32) / 255.0
    height, width = image.shape[:2]
    y0, x0 = int(centre[0]) - window // 2, int(centre[1]) - window // 2
    # Place the window, clipped to the image.
    ys, xs = slice(max(y0, 0), min(y0 + window, height)), slice(max(x0, 0), min(x0 + window, width))
    inner = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    region = np.zeros((height, width), bool)
    region[ys, xs] = blob[inner]
    proposal = image.copy()
    keep = rng.uniform(*p.patch_keep)
    proposal[ys, xs] = keep * image[ys, xs] + (1.0 - keep) * texture[inner]
    return region, lambda r: proposal


PAINTERS = {"scratch": _scratch, "hole": _hole, "stain": _stain, "crack": _crack, "cut": _cut, "patch": _patch}


def _inner(foreground: np.ndarray, margin: float) -> np.ndarray:
    """Foreground pixels at least ``margin`` px from its edge and from the image border."""
    padded = np.pad(foreground, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1] >= margin


def apply_defect(kind: str, image: np.ndarray, foreground: np.ndarray, background: np.ndarray | None,
                 rng: np.random.Generator, params: DefectParams = DEFECT_PARAMS) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of type ``kind``.

    Args:
        image: float (H, W, 3) in [0, 1], the normal image.
        foreground: bool (H, W), where defects may appear (all True for textures).
        background: (3,) background colour of an object class, ``None`` for textures.
        rng: the image's generator.

    Returns:
        ``(defective image (H, W, 3) of ``image``'s dtype, mask bool (H, W))``; pixels outside
        the mask equal ``image`` exactly.
    """
    if kind not in PAINTERS:
        raise ValueError(f"unknown defect type {kind!r}; types: {DEFECT_TYPES}")
    height, width = image.shape[:2]
    side = min(height, width)
    if kind == "cut" and background is not None:
        candidates = foreground & ~ndimage.binary_erosion(foreground)  # the object's outline
    else:
        candidates = _inner(foreground, params.margin * side)
    if not candidates.any():
        candidates = foreground
    min_pixels = max(4, int(params.min_area * height * width))
    context = {"background": background}
    for _ in range(params.max_tries):
        region, paint = PAINTERS[kind](image, _pick(candidates, rng), side, rng, params, context)
        mask = region & foreground
        if mask.sum() < min_pixels:
            continue
        proposal = np.clip(paint(mask), 0.0, 1.0)
        defective = np.where(mask[..., None], proposal, image).astype(image.dtype)
        if np.abs(defective - image)[mask].mean() >= params.min_visibility:
            return defective, mask
    raise RuntimeError(f"could not place a visible {kind!r} defect in {params.max_tries} tries "
                       f"(image {height}x{width}, foreground {int(foreground.sum())} px)")
