"""Normal images of the synthetic benchmark, rendered from photographs bundled with scikit-image.

Two kinds of class (as in MVTec-AD):

- **textures** (``brick``, ``grass``, ``gravel``, ``tissue``): a random crop (50-60 % of the
  photograph's side) of one texture photograph, resized to the output size, tinted, with
  small brightness and per-channel colour jitter. Every pixel is foreground.
- **objects** (``retina``, ``logo``, ``coin``): one photographed object cut out of its
  picture, centred on a plain background with a small pose jitter (rotation +-10 deg,
  scale +-5 %, shift +-3 % of the side) and lighting jitter (gain 0.9-1.1, per-channel +-3 %).
  The foreground is the object; :func:`foreground_mask` recovers it from any image of the
  class (background = the colour of the image border).

All parameters live in :data:`NORMAL_JITTER` and the class tables below; they are fixed
(see ``book/datasets.md``) and must not be tuned to flatter a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import skimage.data
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image

__all__ = ["TEXTURE_CLASSES", "OBJECT_CLASSES", "NORMAL_JITTER", "NormalJitter", "Rendered",
           "render_normal", "foreground_mask", "load_rgb"]

SPRITE_SIDE = 512  # cached object cut-outs are at most this large; outputs are resized from them


@dataclass(frozen=True)
class NormalJitter:
    """Variation between normal images (fractions of the output side where spatial)."""

    texture_crop: tuple[float, float] = (0.5, 0.6)    # crop side / photograph side
    brightness: tuple[float, float] = (0.92, 1.08)    # texture gain
    object_gain: tuple[float, float] = (0.9, 1.1)     # object lighting gain
    channel_gain: float = 0.03                         # +- per-channel gain (colour jitter)
    rotation_deg: float = 10.0                         # +- object rotation
    scale: tuple[float, float] = (0.95, 1.05)          # object scale
    shift: float = 0.03                                # +- object centre shift
    background_jitter: float = 0.02                    # +- background colour per channel
    noise_sigma: float = 0.006                         # sensor noise (std, on [0, 1])


NORMAL_JITTER = NormalJitter()


@dataclass(frozen=True)
class TextureClass:
    source: str                       # scikit-image sample name
    tint: tuple[float, float, float]  # multiplies grey photographs (1, 1, 1 keeps colour ones)


@dataclass(frozen=True)
class ObjectClass:
    sprite: Callable[[], Image.Image]      # RGBA cut-out, square, alpha 0/255
    background: tuple[float, float, float]
    size: float                            # object side / output side


@lru_cache(maxsize=None)
def load_rgb(source: str) -> np.ndarray:
    """A scikit-image sample as read-only uint8 RGB (H, W, 3) (grey samples are repeated); cached."""
    array = getattr(skimage.data, source)()
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    array = np.ascontiguousarray(array[..., :3]).astype(np.uint8)
    array.flags.writeable = False
    return array


def _largest_component(mask: np.ndarray, avoid_border: bool = False) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    if avoid_border:
        border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
        sizes = np.array([0 if label in border else size for label, size in zip(range(1, count + 1), sizes)])
    return labels == (int(np.argmax(sizes)) + 1)


def _cut_out(rgb: np.ndarray, alpha: np.ndarray, margin: int = 4) -> Image.Image:
    """Square RGBA sprite around ``alpha``, at most SPRITE_SIDE pixels."""
    rows, cols = np.nonzero(alpha)
    top, bottom = max(rows.min() - margin, 0), min(rows.max() + margin + 1, alpha.shape[0])
    left, right = max(cols.min() - margin, 0), min(cols.max() + margin + 1, alpha.shape[1])
    rgba = np.dstack([rgb[top:bottom, left:right], alpha[top:bottom, left:right].astype(np.uint8) * 255])
    side = max(rgba.shape[:2])
    square = np.zeros((side, side, 4), np.uint8)
    y0, x0 = (side - rgba.shape[0]) // 2, (side - rgba.shape[1]) // 2
    square[y0:y0 + rgba.shape[0], x0:x0 + rgba.shape[1]] = rgba
    sprite = Image.fromarray(square, mode="RGBA")
    if side > SPRITE_SIDE:
        sprite = sprite.resize((SPRITE_SIDE, SPRITE_SIDE), Image.Resampling.LANCZOS)
    return sprite


@lru_cache(maxsize=None)
def _retina_sprite() -> Image.Image:
    rgb = load_rgb("retina")
    alpha = _largest_component(ndimage.binary_fill_holes(rgb.max(axis=2) > 20))
    return _cut_out(rgb, alpha)


@lru_cache(maxsize=None)
def _logo_sprite() -> Image.Image:
    rgb = load_rgb("logo")  # drawn on opaque white; the disc is the hull of its non-white pixels
    alpha = convex_hull_image(rgb.min(axis=2) < 235)
    return _cut_out(rgb, alpha)


@lru_cache(maxsize=None)
def _coin_sprite() -> Image.Image:
    grey = skimage.data.coins()
    coins = ndimage.binary_fill_holes(grey > threshold_otsu(grey))
    alpha = _largest_component(coins, avoid_border=True)
    bronze = np.clip(grey[..., None] * np.array([1.05, 0.88, 0.66]), 0, 255).astype(np.uint8)
    # The coin is only ~60 px wide: enlarge it first, with a smoothed outline, so that
    # 256-px images do not show a staircase edge.
    factor = 4
    size = (grey.shape[1] * factor, grey.shape[0] * factor)
    rgb = np.asarray(Image.fromarray(bronze).resize(size, Image.Resampling.BICUBIC))
    soft = ndimage.gaussian_filter(alpha.astype(np.float32), sigma=1.0)
    alpha = np.asarray(Image.fromarray(soft, mode="F").resize(size, Image.Resampling.BILINEAR)) > 0.5
    return _cut_out(rgb, alpha, margin=2 * factor)


TEXTURES = {
    "brick": TextureClass("brick", (1.0, 0.72, 0.58)),
    "grass": TextureClass("grass", (0.72, 0.95, 0.55)),
    "gravel": TextureClass("gravel", (0.95, 0.92, 0.85)),
    "tissue": TextureClass("immunohistochemistry", (1.0, 1.0, 1.0)),
}
OBJECTS = {
    "retina": ObjectClass(_retina_sprite, (0.02, 0.02, 0.02), 0.86),
    "logo": ObjectClass(_logo_sprite, (0.16, 0.17, 0.2), 0.8),
    "coin": ObjectClass(_coin_sprite, (0.24, 0.24, 0.26), 0.72),
}
TEXTURE_CLASSES = tuple(TEXTURES)
OBJECT_CLASSES = tuple(OBJECTS)


@dataclass
class Rendered:
    """A normal image before sensor noise: ``image`` float (H, W, 3) in [0, 1],
    ``foreground`` bool (H, W), ``background`` (3,) for objects (``None`` for textures)."""

    image: np.ndarray
    foreground: np.ndarray
    background: np.ndarray | None


def _channel_gains(rng: np.random.Generator, jitter: NormalJitter) -> np.ndarray:
    return 1.0 + rng.uniform(-jitter.channel_gain, jitter.channel_gain, size=3)


def _render_texture(spec: TextureClass, size: int, rng: np.random.Generator, jitter: NormalJitter) -> Rendered:
    photo = load_rgb(spec.source)
    height, width = photo.shape[:2]
    crop = int(round(min(height, width) * rng.uniform(*jitter.texture_crop)))
    top, left = rng.integers(0, height - crop + 1), rng.integers(0, width - crop + 1)
    patch = Image.fromarray(photo[top:top + crop, left:left + crop]).resize((size, size), Image.Resampling.BILINEAR)
    gain = rng.uniform(*jitter.brightness) * _channel_gains(rng, jitter) * np.asarray(spec.tint)
    image = np.clip(np.asarray(patch, np.float32) / 255.0 * gain, 0.0, 1.0).astype(np.float32)
    return Rendered(image, np.ones((size, size), bool), None)


def _render_object(spec: ObjectClass, size: int, rng: np.random.Generator, jitter: NormalJitter) -> Rendered:
    angle = rng.uniform(-jitter.rotation_deg, jitter.rotation_deg)
    side = max(2, int(round(size * spec.size * rng.uniform(*jitter.scale))))
    shift = rng.uniform(-jitter.shift, jitter.shift, size=2) * size
    sprite = spec.sprite().resize((side, side), Image.Resampling.BILINEAR)
    sprite = sprite.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    corner = (int(round((size - sprite.width) / 2 + shift[1])), int(round((size - sprite.height) / 2 + shift[0])))
    canvas.paste(sprite, corner)
    rgba = np.asarray(canvas, np.float32) / 255.0
    alpha = rgba[..., 3:]
    obj = np.clip(rgba[..., :3] * rng.uniform(*jitter.object_gain) * _channel_gains(rng, jitter), 0.0, 1.0)
    background = np.clip(np.asarray(spec.background)
                         + rng.uniform(-jitter.background_jitter, jitter.background_jitter, size=3), 0.0, 1.0)
    image = obj * alpha + background * (1.0 - alpha)
    return Rendered(image.astype(np.float32), alpha[..., 0] > 0.5, background.astype(np.float32))


def render_normal(cls_name: str, size: int, rng: np.random.Generator,
                  jitter: NormalJitter = NORMAL_JITTER) -> Rendered:
    """One normal image of ``cls_name`` (before sensor noise)."""
    if cls_name in TEXTURES:
        return _render_texture(TEXTURES[cls_name], size, rng, jitter)
    if cls_name in OBJECTS:
        return _render_object(OBJECTS[cls_name], size, rng, jitter)
    raise ValueError(f"unknown synthetic class {cls_name!r}; classes: {TEXTURE_CLASSES + OBJECT_CLASSES}")


FOREGROUND_TOLERANCE = 0.12  # max channel difference from the border colour that still counts as background


def foreground_mask(image: np.ndarray, cls_name: str) -> np.ndarray:
    """Foreground of an image of a synthetic class (for GLASS-style synthesis restricted to it).

    Textures: every pixel. Objects: pixels whose colour differs from the median colour of the
    image border by more than :data:`FOREGROUND_TOLERANCE` (any channel), holes filled, the
    largest connected region kept.

    Args:
        image: (H, W, 3) uint8 or float in [0, 1].

    Returns:
        bool (H, W).
    """
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {array.shape}")
    if cls_name in TEXTURES:
        return np.ones(array.shape[:2], bool)
    if cls_name not in OBJECTS:
        raise ValueError(f"unknown synthetic class {cls_name!r}; classes: {TEXTURE_CLASSES + OBJECT_CLASSES}")
    values = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)
    border = np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]])
    differs = np.abs(values - np.median(border, axis=0)).max(axis=2) > FOREGROUND_TOLERANCE
    return _largest_component(ndimage.binary_fill_holes(differs))
