"""The release's evaluation transforms: Resize to a square, CenterCrop, ImageNet normalisation.

Images are resized bilinearly to ``image_size x image_size`` and centre-cropped to
``crop_size``; masks get the same geometry with nearest-neighbour resizing and become
{0, 1} (any non-zero pixel is a defect).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "transform_image", "transform_mask", "denormalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: (..., 3, H, W) -> same shape in [0, 1] (for figures)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0.0, 1.0)
