"""The release's evaluation transforms: Resize to a square, CenterCrop, ImageNet normalisation.

Images are resized bilinearly to ``image_size x image_size`` and centre-cropped to
``crop_size``. Masks get the same geometry in two ways, one per metric protocol:

- :func:`transform_mask` (protocol ``standard``): nearest-neighbour resizing, then {0, 1}
  with any non-zero pixel a defect;
- :func:`transform_mask_soft` (protocols ``ader`` and ``adeval``, as the MambaAD/ADer
  release does it): the mask is first made 0/255 (any non-zero pixel a defect, at full
  resolution), then resized *bilinearly* (PIL, as torchvision's ``Resize`` on a PIL image)
  and centre-cropped; the result keeps PIL's 0..255 values. The release's ``ToTensor``
  divides them by 255 and its trainer binarises at > 0.5, i.e. values >= 128
  (:func:`mambaad_lib.metrics.binarize_soft_masks`).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from mambaad_lib.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "transform_image", "transform_mask", "transform_mask_soft", "denormalize"]


def _geometry(image: Image.Image, image_size: int, crop_size: int,
              interpolation: InterpolationMode) -> Image.Image:
    resized = TF.resize(image, [image_size, image_size], interpolation=interpolation)
    return TF.center_crop(resized, [crop_size, crop_size])


def transform_image(image: Image.Image, image_size: int, crop_size: int) -> torch.Tensor:
    """RGB PIL image -> normalised float tensor (3, crop_size, crop_size)."""
    tensor = TF.to_tensor(_geometry(image, image_size, crop_size, InterpolationMode.BILINEAR))
    return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)


def transform_mask(mask: Image.Image, image_size: int, crop_size: int) -> torch.Tensor:
    """Single-channel PIL mask -> float tensor (1, crop_size, crop_size) with values {0, 1}."""
    array = np.asarray(_geometry(mask, image_size, crop_size, InterpolationMode.NEAREST)) > 0
    return torch.from_numpy(array.astype(np.float32))[None]


def transform_mask_soft(mask: Image.Image, image_size: int, crop_size: int) -> torch.Tensor:
    """Single-channel PIL mask -> uint8 tensor (1, crop_size, crop_size), 0..255: the release's
    bilinearly resized mask before binarisation (defect edges take intermediate values)."""
    binary = Image.fromarray(((np.asarray(mask) > 0) * np.uint8(255)).astype(np.uint8), mode="L")
    array = np.asarray(_geometry(binary, image_size, crop_size, InterpolationMode.BILINEAR))
    return torch.from_numpy(array.copy())[None]


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: (..., 3, H, W) -> same shape in [0, 1] (for figures)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0.0, 1.0)
