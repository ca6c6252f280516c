"""AHL's three pseudo-anomaly generators on images in [0, 1] (AHL, arXiv:2310.12790).

- ``cutpaste``: a patch (area U(0.02, 0.15) of the image, aspect ratio log-uniform in
  [0.3, 1/0.3]) cut from the image itself, colour-jittered (brightness, contrast,
  saturation and hue, each by up to 0.1), pasted elsewhere; then the whole image is rotated
  by an angle uniform in +-``rotation_degrees`` (180 in the released code);
- ``cutmix``: the same, with the patch cut from another normal image of the class;
- ``draem``: a DRAEM Perlin mask (:func:`~mambaad_lib.synthesis.perlin.perlin_mask`) filled
  with an augmented texture blended with opacity beta ~ U(0, 0.8), after rotating the base
  image by up to +-90 degrees with probability 0.3. Textures and their augmentations are
  GLASS/LAS's (:mod:`mambaad_lib.synthesis.las`, bundled scikit-image patches or a DTD folder).

All randomness comes from the ``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF

from mambaad_lib.synthesis.las import augment_texture, blend
from mambaad_lib.synthesis.perlin import perlin_mask
from mambaad_lib.synthesis.textures import TextureSource

GENERATORS = ("draem", "cutpaste", "cutmix")
DRAEM_ROTATION_PROBABILITY = 0.3


def _patch_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
    """(patch height, patch width) by CutPaste's area and aspect-ratio rule."""
    area = rng.uniform(0.02, 0.15) * height * width
    aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
    patch_h = int(np.clip(round(math.sqrt(area * aspect)), 1, height - 1))
    patch_w = int(np.clip(round(math.sqrt(area / aspect)), 1, width - 1))
    return patch_h, patch_w


def _jitter(patch: torch.Tensor, rng: np.random.Generator, strength: float = 0.1) -> torch.Tensor:
    patch = TF.adjust_brightness(patch, float(rng.uniform(1 - strength, 1 + strength)))
    patch = TF.adjust_contrast(patch, float(rng.uniform(1 - strength, 1 + strength)))
    patch = TF.adjust_saturation(patch, float(rng.uniform(1 - strength, 1 + strength)))
    return TF.adjust_hue(patch, float(rng.uniform(-strength, strength))).clamp(0, 1)


def _rotate(image: torch.Tensor, degrees: float) -> torch.Tensor:
    return TF.rotate(image, degrees, interpolation=TF.InterpolationMode.BILINEAR)


def cut_paste(image: torch.Tensor, rng: np.random.Generator, source: torch.Tensor | None = None,
              rotation_degrees: float = 180.0) -> torch.Tensor:
    """CutPaste (``source`` None) or AHL's CutMix (patch from ``source``): (3, H, W) -> (3, H, W)."""
    source = image if source is None else source
    height, width = image.shape[-2:]
    patch_h, patch_w = _patch_box(height, width, rng)
    top, left = int(rng.integers(0, height - patch_h + 1)), int(rng.integers(0, width - patch_w + 1))
    patch = _jitter(source[:, top:top + patch_h, left:left + patch_w], rng)
    to_top, to_left = int(rng.integers(0, height - patch_h + 1)), int(rng.integers(0, width - patch_w + 1))
    out = image.clone()
    out[:, to_top:to_top + patch_h, to_left:to_left + patch_w] = patch
    if rotation_degrees > 0:
        out = _rotate(out, float(rng.uniform(-rotation_degrees, rotation_degrees)))
    return out


def draem(image: torch.Tensor, rng: np.random.Generator, textures: TextureSource) -> torch.Tensor:
    """DRAEM-style texture blob: (3, H, W) in [0, 1] -> (3, H, W)."""
    size = (int(image.shape[-2]), int(image.shape[-1]))
    if rng.random() < DRAEM_ROTATION_PROBABILITY:
        image = _rotate(image, float(rng.uniform(-90, 90)))
    mask = perlin_mask(size, rng)
    while not mask.any():  # empty masks are rare; a pseudo anomaly must differ from its image
        mask = perlin_mask(size, rng)
    texture, _ = augment_texture(textures.sample(rng, size).to(image.dtype), rng, 3)
    beta = float(rng.uniform(0.0, 0.8))
    return blend(image, texture, torch.from_numpy(mask).to(image.dtype)[None], beta).clamp(0, 1)


def pseudo_anomalies(images: torch.Tensor, generator: str, rng: np.random.Generator, textures: TextureSource,
                     rotation_degrees: float = 180.0) -> torch.Tensor:
    """One pseudo-anomalous version of every image (N, 3, H, W) in [0, 1] by ``generator``.

    CutMix takes each patch from another image of ``images`` chosen uniformly (needs N >= 2).
    """
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {list(GENERATORS)}, got {generator!r}")
    outputs = []
    for index, image in enumerate(images):
        if generator == "draem":
            outputs.append(draem(image, rng, textures))
            continue
        source = None
        if generator == "cutmix":
            if len(images) < 2:
                raise ValueError("cutmix needs at least two normal images")
            other = int(rng.integers(0, len(images) - 1))
            source = images[other + (other >= index)]
        outputs.append(cut_paste(image, rng, source, rotation_degrees))
    return torch.stack(outputs)
