"""Reading images and masks with errors that name the file.

Masks of the standard layout are 8-bit single-channel images with 0 for background and 255
for defect pixels. Readers are tolerant (any non-zero pixel is a defect); the validator and
the converters are strict.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["MASK_VALUES", "load_image", "load_mask", "mask_value_problem"]

MASK_VALUES = (0, 255)


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not in a worker later
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"{what} file {str(path)!r} cannot be read as an image: {error}") from error


def load_image(path: str | os.PathLike) -> Image.Image:
    """An RGB ``PIL.Image`` (grey and RGBA files are converted)."""
    return _open(Path(path), "image").convert("RGB")


def load_mask(path: str | os.PathLike) -> Image.Image:
    """A single-channel (mode ``L``) ``PIL.Image``; RGB masks must have equal channels.

    Raises:
        ValueError: unreadable, or a colour mask whose channels differ.
    """
    path = Path(path)
    mask = _open(path, "mask")
    if mask.mode in ("L", "1", "P"):
        return mask.convert("L")
    if mask.mode in ("I", "I;16", "I;16B", "F"):
        values = np.asarray(mask)
        if values.min() < 0 or values.max() > 255:
            raise ValueError(f"mask file {str(path)!r} has values outside 0..255 "
                             f"(min {values.min()}, max {values.max()})")
        return Image.fromarray(values.astype(np.uint8), mode="L")
    channels = np.asarray(mask.convert("RGB"))
    if not (np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])):
        raise ValueError(f"mask file {str(path)!r} is a colour image with differing channels; "
                         f"expected a single-channel mask")
    return Image.fromarray(channels[..., 0], mode="L")


def mask_value_problem(mask: Image.Image | np.ndarray, path: str | os.PathLike) -> str | None:
    """Why ``mask`` is not a standard 0/255 mask, or ``None`` when it is."""
    values = np.unique(np.asarray(mask))
    extra = [int(v) for v in values if int(v) not in MASK_VALUES]
    if extra:
        shown = ", ".join(map(str, extra[:8])) + (" ..." if len(extra) > 8 else "")
        return f"mask file {str(path)!r} has values other than 0 and 255: {shown}"
    return None
