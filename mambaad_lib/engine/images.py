"""A user's own images: finding them, reading them with checks, and the geometry between an
image and the model's input (forward for the model, backward for its anomaly map).

**The model's input.** An image of any size W x H is resized (bilinear, aspect ratio not
kept) to ``image_size`` x ``image_size``, centre-cropped to ``crop_size`` (the offset
``o = round((image_size - crop_size) / 2)``, as torchvision's ``center_crop``) and
ImageNet-normalised: :func:`mambaad_lib.data.transform_image`, the datasets' transform.

**The map, back at the image's resolution** (:meth:`ImageGeometry.map_to_image`). A map of
h x w values covers the crop. Pixel centres map through the same two steps backwards: the
centre of image pixel ``x`` lies at resized coordinate ``(x + 0.5) * image_size / W - 0.5``,
at crop coordinate ``that - o`` and at map coordinate ``(crop + 0.5) * w / crop_size - 0.5``
(likewise for rows); the map is sampled there bilinearly, edge values held at its border.
With ``crop_size == image_size`` this is exactly ``F.interpolate(map, (H, W), mode="bilinear",
align_corners=False)``. Pixels outside the crop were never seen by the model: they are NaN
(use ``numpy.nanmax`` and friends), not an invented continuation of the map.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from mambaad_lib.data import transform_image
from mambaad_lib.data.io import to_8bit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MIN_SIDE = 8
ACCEPTED_MODES = ("RGB", "L")

# What Predictor.predict and the calibration accept as one image.
ImageInput = Union[str, Path, Image.Image, np.ndarray]


def collect_images(inputs: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """Image files named directly or found in folders (sorted; subfolders with ``recursive``).

    Raises:
        FileNotFoundError: an input that does not exist, or a folder without images.
    """
    files: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            candidates = entry.rglob("*") if recursive else entry.iterdir()
            found = sorted(path for path in candidates if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"folder {str(entry)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"input {str(entry)!r} does not exist")
    return files


def describe_input(item: Any) -> str:
    """How messages name an input: its path, or its kind."""
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, np.ndarray):
        return f"array {item.shape} {item.dtype}"
    return type(item).__name__


def _checked_mode(image: Image.Image, name: str) -> Image.Image:
    image = to_8bit(image, name)  # 16-bit greyscale scaled as the datasets' images are; floats refused
    if image.mode not in ACCEPTED_MODES:
        raise ValueError(f"{name}: image mode {image.mode} with {len(image.getbands())} channel(s) "
                         f"({''.join(image.getbands())}); expected RGB (3 channels) or greyscale. "
                         "Convert it first, e.g. Image.open(p).convert('RGB').save(q)")
    if min(image.size) < MIN_SIDE:
        raise ValueError(f"{name}: image is {image.size[0]}x{image.size[1]}, too small to analyse")
    return image.convert("RGB")


def load_input(item: ImageInput) -> Image.Image:
    """One input as an RGB PIL image, or a ``ValueError`` naming it and saying what is wrong.

    Accepted: a path to an image file, a PIL image, or a uint8 numpy array ``(H, W, 3)`` (RGB)
    or ``(H, W)`` (greyscale). RGB and greyscale (replicated to three channels, as the
    datasets do) only, 16-bit greyscale scaled to 8 bits as the datasets' images are
    (:func:`~mambaad_lib.data.io.to_8bit`); images with alpha, CMYK, floating-point or palette
    images are refused rather than silently converted.
    """
    name = describe_input(item)
    if isinstance(item, (str, Path)):
        try:
            with Image.open(item) as opened:
                opened.load()  # decode now: a truncated file fails here
                image = opened.copy()
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise ValueError(f"{name}: cannot be read as an image ({error})") from None
        return _checked_mode(image, name)
    if isinstance(item, Image.Image):
        return _checked_mode(item, name)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] == 3)):
            raise ValueError(f"{name}: expected a uint8 array of shape (H, W, 3) (RGB) or (H, W) (greyscale)")
        return _checked_mode(Image.fromarray(item), name)
    raise ValueError(f"{name}: expected an image path, a PIL image or a uint8 numpy array")


@dataclass(frozen=True)
class ImageGeometry:
    """The resize-and-centre-crop of a model's input (see the module docstring).

    ``resize=False`` accepts only images that are already ``crop_size`` x ``crop_size``.
    """

    image_size: int
    crop_size: int
    resize: bool = True

    def to_model(self, image: Image.Image, name: str = "image") -> torch.Tensor:
        """RGB PIL image -> ImageNet-normalised (3, crop_size, crop_size)."""
        if not self.resize and image.size != (self.crop_size, self.crop_size):
            raise ValueError(f"{name}: image is {image.size[0]}x{image.size[1]}, the model takes "
                             f"{self.crop_size}x{self.crop_size}; resize it or drop --no-resize")
        if not self.resize:
            return transform_image(image, self.crop_size, self.crop_size)
        return transform_image(image, self.image_size, self.crop_size)

    def _sample_points(self, out_length: int, map_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates of ``out_length`` image pixel centres along one axis, and which
        of them lie inside the crop."""
        size, crop = (self.image_size, self.crop_size) if self.resize else (self.crop_size, self.crop_size)
        offset = int(round((size - crop) / 2.0))  # torchvision's center_crop rounding
        resized = (np.arange(out_length, dtype=np.float64) + 0.5) * size / out_length - 0.5
        in_crop = resized - offset
        inside = (in_crop >= -0.5) & (in_crop <= crop - 0.5)
        return (in_crop + 0.5) * map_length / crop - 0.5, inside

    def map_to_image(self, anomaly_map: np.ndarray, width: int, height: int) -> np.ndarray:
        """A map (h, w) over the crop -> (height, width) float32 over the whole image, NaN
        outside the crop (bilinear, as described in the module docstring)."""
        map_height, map_width = anomaly_map.shape
        values = anomaly_map.astype(np.float32, copy=False)
        rows, rows_inside = self._sample_points(height, map_height)
        cols, cols_inside = self._sample_points(width, map_width)

        def corners(coords: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            coords = np.clip(coords, 0.0, length - 1)
            low = np.floor(coords).astype(np.int64)
            high = np.minimum(low + 1, length - 1)
            return low, high, (coords - low).astype(np.float32)

        r0, r1, wr = corners(rows, map_height)
        c0, c1, wc = corners(cols, map_width)
        top = values[r0][:, c0] * (1 - wc) + values[r0][:, c1] * wc
        bottom = values[r1][:, c0] * (1 - wc) + values[r1][:, c1] * wc
        out = top * (1 - wr)[:, None] + bottom * wr[:, None]
        out[~(rows_inside[:, None] & cols_inside[None, :])] = np.nan
        return out.astype(np.float32, copy=False)


class ImageFolder(Dataset):
    """Image files as model inputs: items ``{"image": (3, crop, crop), "img_path": str}``
    (e.g. a folder of normal images for calibration); ``folder`` names where they came from."""

    def __init__(self, files: Sequence[Path], geometry: ImageGeometry, folder: Path | None = None) -> None:
        self.files = list(files)
        self.geometry = geometry
        self.folder = folder

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        return {"image": self.geometry.to_model(load_input(path), str(path)), "img_path": str(path)}
