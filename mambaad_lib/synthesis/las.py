"""Local Anomaly Synthesis (LAS), the image-level half of GLASS.

A LAS sample is a normal image with a Perlin-shaped region replaced by a partly transparent,
augmented foreign texture:

1. **Mask.** Two Perlin masks (scales 2^k, k uniform in [min_scale_exp, max_scale_exp),
   threshold, random rotation; :func:`mambaad_lib.synthesis.perlin.perlin_mask`) are
   combined by one of ``single`` (the first only), ``union`` or ``intersection``, chosen
   uniformly, then restricted to the foreground. An empty result is redrawn up to
   ``max_attempts`` times (see :data:`NONEMPTY_RATE` for the measured rate).
2. **Texture.** A texture from a :class:`~mambaad_lib.synthesis.textures.TextureSource`,
   transformed by 3 distinct augmentations in random order from one of two lists
   (``LASConfig.augmentations``):

   - ``glass`` (default; the release's ``rand_augmenter`` in ``datasets/mvtec.py``): the
     texture is resized, keeping its aspect ratio, so that it covers the image, then gets 3 of
     :data:`GLASS_AUGMENTATIONS` (colour jitter of contrast, of brightness, of saturation and
     hue; horizontal flip; vertical flip; grayscale; autocontrast; equalise; rotation by up
     to 45 degrees with black corners), then is centre-cropped to the image size;
   - ``draem`` (DRAEM's list, :data:`DRAEM_AUGMENTATIONS`: gamma, brightness, sharpness,
     hue/saturation, solarise, posterise, invert, equalise, rotation): the texture is
     stretched to the image size first.
3. **Blend.** ``out = img*(1-m) + (1-beta)*tex*m + beta*img*m`` with
   ``beta ~ N(0.5, 0.1)`` clipped to [0.2, 0.8] (:func:`blend`).

Foreground rule. Textures (carpet, wood, ...) use the whole image. Object classes use the
dataset's foreground mask when it has one, else :func:`estimate_foreground`: pixels whose
colour differs from the image border's median colour by more than an Otsu threshold, closed
and hole-filled. When there is no clear object (more than 30% of the border band is above
the threshold, as in a texture, or the foreground covers under 1% or over 99% of the image)
the whole image is used.

:class:`LocalAnomalySynthesizer`'s ``__call__`` takes and returns ImageNet-normalised
batches, the datasets' output (GLASS's training step, and MambaAD's ``las_augment`` in
:mod:`mambaad_lib.methods.mambaad_las`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from scipy import ndimage
from skimage.filters import threshold_otsu

from mambaad_lib.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD
from mambaad_lib.synthesis.perlin import perlin_mask
from mambaad_lib.synthesis.textures import TextureSource, resolve_texture_source

COMBINE_MODES = ("single", "union", "intersection")
AUGMENTATION_LISTS = ("glass", "draem")

# Guaranteed-by-test lower bound on the fraction of non-empty LAS masks with the default
# LASConfig. Measured over 1000 seeds on 64x64 images: one draw is non-empty in 93% of cases
# on a full foreground and 79% on a centred foreground covering 25% of the image; with
# max_attempts=10 redraws all 1000 were non-empty in both cases.
NONEMPTY_RATE = 0.99


@dataclass
class LASConfig:
    """Parameters of Local Anomaly Synthesis (defaults are GLASS's)."""

    min_scale_exp: int = 0
    max_scale_exp: int = 6
    threshold: float = 0.5
    rotate: bool = True
    combine_modes: tuple[str, ...] = COMBINE_MODES
    beta_mean: float = 0.5
    beta_std: float = 0.1
    beta_min: float = 0.2
    beta_max: float = 0.8
    n_augmentations: int = 3
    augmentations: str = "glass"
    max_attempts: int = 10

    def __post_init__(self) -> None:
        unknown = set(self.combine_modes) - set(COMBINE_MODES)
        if not self.combine_modes or unknown:
            raise ValueError(f"combine_modes must be a non-empty subset of {COMBINE_MODES}, "
                             f"got {self.combine_modes}")
        if not 0 <= self.min_scale_exp < self.max_scale_exp:
            raise ValueError(f"need 0 <= min_scale_exp < max_scale_exp (exclusive upper bound), "
                             f"got {self.min_scale_exp}, {self.max_scale_exp}")
        if not 0.0 <= self.beta_min <= self.beta_max <= 1.0:
            raise ValueError(f"need 0 <= beta_min <= beta_max <= 1, got {self.beta_min}, {self.beta_max}")
        if self.augmentations not in AUGMENTATION_LISTS:
            raise ValueError(f"augmentations must be one of {AUGMENTATION_LISTS}, got {self.augmentations!r}")
        available = len(_AUGMENTATION_TABLES[self.augmentations])
        if not 0 <= self.n_augmentations <= available:
            raise ValueError(f"n_augmentations must be in [0, {available}], got {self.n_augmentations}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")


# ----------------------------------------------------------------------------- masks
def _as_bool_mask(mask: np.ndarray | torch.Tensor | None, shape: tuple[int, int], name: str) -> np.ndarray | None:
    """(H, W) or (1, H, W) mask -> bool (H, W) array, checked against ``shape``."""
    if mask is None:
        return None
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != tuple(shape):
        raise ValueError(f"{name} has shape {array.shape}, expected {tuple(shape)} (the image's height and width)")
    return array > 0.5 if array.dtype != bool else array


def las_mask(shape: tuple[int, int], rng: np.random.Generator, config: LASConfig | None = None,
             foreground: np.ndarray | torch.Tensor | None = None) -> tuple[np.ndarray, str]:
    """A LAS mask: bool (H, W), and the combination mode that produced it.

    ``foreground``: bool/0-1 (H, W) or (1, H, W) of the same size, or None for the whole
    image. Redraws an empty mask up to ``config.max_attempts`` times; returns an empty mask
    if all attempts fail (e.g. an empty foreground).
    """
    config = config or LASConfig()
    foreground = _as_bool_mask(foreground, shape, "foreground")

    def one_perlin() -> np.ndarray:
        return np.asarray(perlin_mask(tuple(shape), rng, min_scale_exp=config.min_scale_exp,
                                      max_scale_exp=config.max_scale_exp, threshold=config.threshold,
                                      rotate=config.rotate)) > 0.5

    mode = config.combine_modes[0]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(config.max_attempts):
        mode = config.combine_modes[int(rng.integers(len(config.combine_modes)))]
        mask = one_perlin()
        if mode == "union":
            mask = mask | one_perlin()
        elif mode == "intersection":
            mask = mask & one_perlin()
        if foreground is not None:
            mask = mask & foreground
        if mask.any():
            break
    return mask, mode


def estimate_foreground(image: torch.Tensor, border: float = 0.04, min_fraction: float = 0.01,
                        max_fraction: float = 0.99, max_border_fraction: float = 0.3) -> torch.Tensor:
    """Object foreground of an RGB image in [0, 1]: bool (H, W) (see the module's rule).

    The background colour is the median of a border band ``border`` x the image side wide;
    pixels farther from it than an Otsu threshold are foreground, then closed and hole-filled.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    array = image.detach().cpu().permute(1, 2, 0).numpy().astype(np.float32)  # (H, W, 3)
    height, width = array.shape[:2]
    band = max(1, int(round(border * min(height, width))))
    border_pixels = np.concatenate([array[:band].reshape(-1, 3), array[-band:].reshape(-1, 3),
                                    array[:, :band].reshape(-1, 3), array[:, -band:].reshape(-1, 3)])
    distance = np.linalg.norm(array - np.median(border_pixels, axis=0), axis=-1)  # (H, W)
    whole = torch.ones(height, width, dtype=torch.bool)
    if np.ptp(distance) < 1e-6:
        return whole
    foreground = distance > threshold_otsu(distance)
    border_band = np.ones_like(foreground)
    border_band[band:-band, band:-band] = False
    if foreground[border_band].mean() > max_border_fraction:  # the border is no background: a texture
        return whole
    foreground = ndimage.binary_closing(foreground, structure=np.ones((5, 5)), iterations=1)
    foreground = ndimage.binary_fill_holes(foreground)
    if not min_fraction <= foreground.mean() <= max_fraction:
        return whole
    return torch.from_numpy(foreground)


# ----------------------------------------------------------------------- augmentations
def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _gamma(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return TF.adjust_gamma(image, float(rng.uniform(0.5, 2.0)))


def _brightness(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return image * float(rng.uniform(0.8, 1.2)) + float(rng.uniform(-30, 30)) / 255.0


def _sharpness(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return TF.adjust_sharpness(image, float(rng.uniform(0.0, 2.0)))


def _hue_saturation(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    shifted = TF.adjust_hue(image, float(rng.uniform(-0.2, 0.2)))
    return TF.adjust_saturation(shifted, float(rng.uniform(0.5, 1.5)))


def _solarize(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return TF.solarize(image, float(rng.uniform(32, 128)) / 255.0)


def _posterize(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return TF.posterize(_to_uint8(image), int(rng.integers(2, 6))).float() / 255.0


def _invert(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return TF.invert(image)


def _equalize(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return TF.equalize(_to_uint8(image)).float() / 255.0


def _rotate(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    # Reflect-pad before rotating so that the corners are texture, not black fill.
    height, width = image.shape[-2:]
    pad_h, pad_w = int(np.ceil(0.21 * height)), int(np.ceil(0.21 * width))
    padded = torch.nn.functional.pad(image[None], (pad_w, pad_w, pad_h, pad_h), mode="reflect")[0]
    rotated = TF.rotate(padded, float(rng.uniform(-45, 45)), interpolation=TF.InterpolationMode.BILINEAR)
    return rotated[:, pad_h:pad_h + height, pad_w:pad_w + width]


# DRAEM's colour and geometry augmentations (its release's imgaug list; also DRA's pseudo anomalies).
DRAEM_AUGMENTATIONS: dict[str, Callable[[torch.Tensor, np.random.Generator], torch.Tensor]] = {
    "gamma": _gamma, "brightness": _brightness, "sharpness": _sharpness,
    "hue_saturation": _hue_saturation, "solarize": _solarize, "posterize": _posterize,
    "invert": _invert, "equalize": _equalize, "rotate": _rotate,
}


def _jitter_contrast(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return TF.adjust_contrast(image, float(rng.uniform(0.8, 1.2)))


def _jitter_brightness(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return TF.adjust_brightness(image, float(rng.uniform(0.8, 1.2)))


def _jitter_saturation_hue(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    # ColorJitter(saturation=(0.8, 1.2), hue=(-0.2, 0.2)) applies its two factors in random order.
    saturation, hue = float(rng.uniform(0.8, 1.2)), float(rng.uniform(-0.2, 0.2))
    operations = [lambda x: TF.adjust_saturation(x, saturation), lambda x: TF.adjust_hue(x, hue)]
    for index in rng.permutation(2):
        image = operations[index](image)
    return image


def _autocontrast(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return TF.autocontrast(image)


def _rotate_black_corners(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    # RandomAffine(degrees=(-45, 45)): nearest-neighbour rotation about the centre, black fill.
    return TF.rotate(image, float(rng.uniform(-45, 45)), interpolation=TF.InterpolationMode.NEAREST, fill=0.0)


# The GLASS release's list (datasets/mvtec.py, rand_augmenter), all with probability 1.
GLASS_AUGMENTATIONS: dict[str, Callable[[torch.Tensor, np.random.Generator], torch.Tensor]] = {
    "contrast": _jitter_contrast, "brightness": _jitter_brightness, "saturation_hue": _jitter_saturation_hue,
    "horizontal_flip": lambda image, rng: TF.horizontal_flip(image),
    "vertical_flip": lambda image, rng: TF.vertical_flip(image),
    "grayscale": lambda image, rng: TF.rgb_to_grayscale(image, num_output_channels=3),
    "autocontrast": _autocontrast, "equalize": _equalize, "rotate": _rotate_black_corners,
}

_AUGMENTATION_TABLES = {"glass": GLASS_AUGMENTATIONS, "draem": DRAEM_AUGMENTATIONS}


def augment_texture(texture: torch.Tensor, rng: np.random.Generator, n_augmentations: int = 3,
                    augmentations: str = "draem") -> tuple[torch.Tensor, list[str]]:
    """Apply ``n_augmentations`` distinct augmentations of list ``augmentations`` (``glass``
    or ``draem``) in random order.

    texture: (3, H, W) float in [0, 1]. Returns the augmented texture (clamped to [0, 1])
    and the names of the augmentations applied.
    """
    if augmentations not in _AUGMENTATION_TABLES:
        raise ValueError(f"augmentations must be one of {AUGMENTATION_LISTS}, got {augmentations!r}")
    table = _AUGMENTATION_TABLES[augmentations]
    names = list(table)
    chosen = [names[i] for i in rng.choice(len(names), size=n_augmentations, replace=False)]
    for name in chosen:
        texture = table[name](texture, rng).clamp(0.0, 1.0)
    return texture, chosen


def cover_and_crop(texture: torch.Tensor, size: tuple[int, int],
                   augment: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> torch.Tensor:
    """The release's texture geometry: resize (3, h, w), keeping the aspect ratio, so that it
    covers ``size`` = (H, W), apply ``augment``, centre-crop to (3, H, W)."""
    height, width = texture.shape[-2:]
    scale = max(size[0] / height, size[1] / width)
    covering = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
    if covering != (height, width):
        texture = F.interpolate(texture[None], size=covering, mode="bilinear", align_corners=False,
                                antialias=True)[0].clamp(0.0, 1.0)
    return TF.center_crop(augment(texture), list(size))


# ------------------------------------------------------------------------- blending
def sample_beta(rng: np.random.Generator, config: LASConfig | None = None) -> float:
    """Opacity of the original image inside the mask: N(mean, std) clipped to [min, max]."""
    config = config or LASConfig()
    return float(np.clip(rng.normal(config.beta_mean, config.beta_std), config.beta_min, config.beta_max))


def blend(image: torch.Tensor, texture: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """GLASS blending: ``image*(1-m) + (1-beta)*texture*m + beta*image*m``.

    image, texture: (..., 3, H, W); mask: broadcastable (..., 1, H, W) in [0, 1].
    """
    return image * (1 - mask) + (1 - beta) * texture * mask + beta * image * mask


# ---------------------------------------------------------------------- synthesizer
@dataclass
class LASSample:
    """One synthesis: image (3, H, W) in [0, 1], mask (1, H, W) in {0, 1}, the augmented
    texture (3, H, W), the opacity ``beta``, the mask combination mode and augmentations."""

    image: torch.Tensor
    mask: torch.Tensor
    texture: torch.Tensor
    beta: float
    mode: str
    augmentations: list[str]


class LocalAnomalySynthesizer:
    """Seeded LAS for single images (:meth:`synthesize`) and normalised batches (``__call__``).

    Args:
        textures: where textures come from; ``None`` = the bundled scikit-image patches.
        config: mask, augmentation and blending parameters.
        probability: fraction of batch items that ``__call__`` corrupts (the others are
            returned unchanged with an empty mask).
    """

    def __init__(self, textures: TextureSource | None = None, config: LASConfig | None = None,
                 probability: float = 1.0) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        self.textures = textures if textures is not None else resolve_texture_source(None)
        self.config = config or LASConfig()
        self.probability = probability

    def synthesize(self, image: torch.Tensor, rng: np.random.Generator,
                   foreground: torch.Tensor | np.ndarray | None = None) -> LASSample:
        """LAS on one image (3, H, W) in [0, 1]; ``foreground`` (H, W) or (1, H, W) or None."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image must be (3, H, W) RGB in [0, 1], got shape {tuple(image.shape)}")
        size = (int(image.shape[-2]), int(image.shape[-1]))
        mask_array, mode = las_mask(size, rng, self.config, foreground)
        names: list[str] = []
        kind, count = self.config.augmentations, self.config.n_augmentations
        if kind == "glass":
            def augment(texture: torch.Tensor) -> torch.Tensor:
                augmented, chosen = augment_texture(texture, rng, count, kind)
                names.extend(chosen)
                return augmented

            texture = cover_and_crop(self.textures.draw(rng), size, augment).to(image.dtype)
        else:
            texture, names = augment_texture(self.textures.sample(rng, size), rng, count, kind)
            texture = texture.to(image.dtype)
        beta = sample_beta(rng, self.config)
        mask = torch.from_numpy(mask_array).to(image.dtype)[None]  # (1, H, W)
        return LASSample(blend(image, texture, mask, beta), mask, texture, beta, mode, names)

    def __call__(self, images: torch.Tensor, rng: np.random.Generator,
                 foregrounds: torch.Tensor | None = None, normalized: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """LAS on a batch: images (B, 3, H, W) -> (images (B, 3, H, W), masks (B, 1, H, W)).

        ``normalized``: the batch is ImageNet-normalised (the datasets' output) and is
        returned normalised; otherwise it is in [0, 1]. ``foregrounds``: (B, 1, H, W) or None.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if foregrounds is not None and foregrounds.shape[0] != images.shape[0]:
            raise ValueError(f"foregrounds has {foregrounds.shape[0]} items, images has {images.shape[0]}")
        mean, std = _imagenet_stats(images)
        outputs, masks = images.clone(), torch.zeros_like(images[:, :1])
        for index in range(images.shape[0]):
            if rng.random() >= self.probability:
                continue  # left bit-identical
            clean = (images[index] * std[0] + mean[0]).clamp(0, 1) if normalized else images[index]
            foreground = None if foregrounds is None else foregrounds[index]
            sample = self.synthesize(clean, rng, foreground)
            outputs[index] = (sample.image - mean[0]) / std[0] if normalized else sample.image
            masks[index] = sample.mask
        return outputs, masks


def _imagenet_stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std shaped (1, 3, 1, 1) on ``like``'s device and dtype."""
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    return mean, std


def build_las(texture_dir: str | None = None, config: LASConfig | None = None, probability: float = 1.0,
              patch_size: int = 128) -> LocalAnomalySynthesizer:
    """Factory: LAS with the user's texture folder (DTD) or the bundled textures."""
    return LocalAnomalySynthesizer(resolve_texture_source(texture_dir, patch_size), config, probability)
