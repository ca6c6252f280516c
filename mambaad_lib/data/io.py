"""Reading images and masks with errors that name the file.

Images become 8-bit RGB. 16-bit greyscale files (PIL modes ``I;16``, ``I;16B``, ``I``...) are
scaled from their full range 0..65535 to 0..255 (value / 257, rounded), never clipped;
16-bit colour PNGs are reduced to 8 bits by PIL itself; floating-point images are refused.

Masks of the standard layout are 8-bit single-channel images with 0 for background and 255
for defect pixels. Readers are tolerant (any non-zero pixel is a defect); the validator and
the converters are strict.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["MASK_VALUES", "image_mode_problem", "load_image", "load_mask", "mask_value_problem", "to_8bit"]

MASK_VALUES = (0, 255)
SIXTEEN_BIT_MAX = 65535


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        if path.is_symlink():
            raise FileNotFoundError(f"{what} file {str(path)!r} is a symbolic link to {os.readlink(path)!r}, "
                                    "which does not exist")
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not in a worker later
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"{what} file {str(path)!r} cannot be read as an image: {error}") from error


def _integer_grey(mode: str) -> bool:
    return mode == "I" or mode.startswith("I;")


def image_mode_problem(mode: str, path: str | os.PathLike) -> str | None:
    """Why an image of PIL ``mode`` cannot be used (known from its header alone), or None."""
    if mode.startswith("F"):
        return (f"image file {str(path)!r} holds floating-point pixels (mode {mode}); convert it to an 8- or "
                "16-bit image first")
    return None


def to_8bit(image: Image.Image, path: str | os.PathLike) -> Image.Image:
    """``image`` with 8-bit values: integer greyscale (16-bit) scaled from 0..65535 to 0..255
    (mode ``L``); other modes unchanged.

    Raises:
        ValueError: floating-point pixels, or integer pixels outside 0..65535 (the message
            names the file).
    """
    problem = image_mode_problem(image.mode, path)
    if problem:
        raise ValueError(problem)
    if not _integer_grey(image.mode):
        return image
    values = np.asarray(image)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > SIXTEEN_BIT_MAX:
        raise ValueError(f"image file {str(path)!r} holds {image.mode} values {low}..{high}, outside the 16-bit "
                         f"range 0..{SIXTEEN_BIT_MAX}; convert it to an 8-bit image first")
    scaled = np.rint(values.astype(np.float64) * (255.0 / SIXTEEN_BIT_MAX)).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def load_image(path: str | os.PathLike) -> Image.Image:
    """An 8-bit RGB ``PIL.Image`` (grey, 16-bit grey and RGBA files are converted, see the module doc).

    Raises:
        FileNotFoundError: no such file (or a broken symbolic link).
        ValueError: unreadable, floating-point or out-of-range pixels (naming the file).
    """
    return to_8bit(_open(Path(path), "image"), path).convert("RGB")


def load_mask(path: str | os.PathLike) -> Image.Image:
    """A single-channel (mode ``L``) ``PIL.Image``; RGB masks must have equal channels.

    Raises:
        ValueError: unreadable, or a colour mask whose channels differ.
    """
    path = Path(path)
    mask = _open(path, "mask")
    if mask.mode in ("L", "1", "P"):
        return mask.convert("L")
    if _integer_grey(mask.mode) or mask.mode == "F":
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
