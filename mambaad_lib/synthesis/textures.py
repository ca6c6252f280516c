"""Texture sources for Local Anomaly Synthesis (LAS).

GLASS fills its Perlin masks with textures from the Describable Textures Dataset (DTD).
DTD cannot be downloaded offline, so two sources share one interface:

- :meth:`TextureSource.from_dir`: every image file under a folder (a DTD copy, or any
  folder of pictures the user has), searched recursively;
- :meth:`TextureSource.bundled`: sample images shipped inside scikit-image (Hubble deep
  field, motorcycle, moon, cells, ...; :data:`BUNDLED_TEXTURE_FILES`), cut into square
  patches so that each sample is a local texture rather than a whole scene.

A source hands out float RGB textures in [0, 1], drawn with a numpy ``Generator`` so that
LAS stays deterministic per seed: as stored (:meth:`TextureSource.draw`; GLASS's LAS then
resizes, augments and centre-crops them) or stretched to a requested size
(:meth:`TextureSource.sample`, DRAEM's way).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# scikit-image sample files used as the offline texture bank. The photographs that the
# synthetic benchmark (data_prep.synthetic_*) renders its normal classes and its "patch"
# defects from (brick, grass, gravel, immunohistochemistry, retina, logo, coins, chelsea,
# coffee, astronaut, rocket) are deliberately left out: LAS must not train on the very
# textures that the test defects are made of. Files missing from an installed
# scikit-image version are skipped.
BUNDLED_TEXTURE_FILES = (
    "hubble_deep_field.jpg", "motorcycle_left.png", "color.png", "phantom.png", "moon.png",
    "camera.png", "cell.png", "clock_motion.png", "page.png",
)


def _load_rgb(path: Path) -> torch.Tensor:
    """Read an image file as a float RGB tensor (3, H, W) in [0, 1]."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"texture file {path} cannot be read as an image: {error}") from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _resize(texture: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (3, h, w) to (3, *size)."""
    if tuple(texture.shape[-2:]) == tuple(size):
        return texture
    resized = F.interpolate(texture[None], size=size, mode="bilinear", align_corners=False)
    return resized[0].clamp(0.0, 1.0)


@lru_cache(maxsize=4)
def _bundled_patches(patch_size: int, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """Cut scikit-image's sample images into patches (cached: decoding takes seconds)."""
    import skimage  # a core dependency; imported here to keep module import light

    data_dir = Path(skimage.__file__).parent / "data"
    patches: list[torch.Tensor] = []
    for name in names:
        path = data_dir / name
        if not path.is_file():
            continue
        image = _load_rgb(path)  # (3, H, W)
        height, width = image.shape[-2:]
        for top in range(0, height - patch_size + 1, patch_size):
            for left in range(0, width - patch_size + 1, patch_size):
                patches.append(image[:, top:top + patch_size, left:left + patch_size].clone())
    return tuple(patches)


@dataclass
class TextureSource:
    """A bank of textures, either files on disk or in-memory patches.

    Exactly one of ``files`` and ``patches`` is non-empty. ``description`` says where the
    textures come from (it goes into results files).
    """

    files: tuple[Path, ...] = ()
    patches: tuple[torch.Tensor, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if bool(self.files) == bool(self.patches):
            raise ValueError("TextureSource needs exactly one of `files` or `patches`")

    def __len__(self) -> int:
        return len(self.files) or len(self.patches)

    @classmethod
    def from_dir(cls, texture_dir: str | os.PathLike) -> "TextureSource":
        """All image files under ``texture_dir`` (recursive, sorted for determinism)."""
        root = Path(texture_dir)
        if not root.exists():
            raise FileNotFoundError(f"texture dir {root} does not exist (a DTD copy or any image folder; "
                                    f"texture_dir: null uses the textures bundled with scikit-image)")
        if not root.is_dir():
            raise ValueError(f"texture dir {root} is not a directory")
        if not os.access(root, os.R_OK | os.X_OK):
            raise ValueError(f"texture dir {root} is not readable (check its permissions)")
        try:
            files = sorted(
                path for path in root.rglob("*")
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
            )
        except PermissionError as error:
            raise ValueError(f"texture dir {root} cannot be listed: {error}") from error
        if not files:
            raise ValueError(
                f"texture dir {root} contains no image files (expected {', '.join(IMAGE_EXTENSIONS)})"
            )
        return cls(files=tuple(files), description=f"dir:{root}")

    @classmethod
    def bundled(cls, patch_size: int = 128, names: Sequence[str] = BUNDLED_TEXTURE_FILES) -> "TextureSource":
        """Non-overlapping ``patch_size`` patches of scikit-image's bundled sample images."""
        if patch_size < 8:
            raise ValueError(f"patch_size must be at least 8, got {patch_size}")
        patches = _bundled_patches(patch_size, tuple(names))
        if not patches:
            raise ValueError(
                "no bundled textures found in scikit-image's data folder; pass a texture dir (--texture-dir)"
            )
        return cls(patches=patches, description=f"bundled:scikit-image:{patch_size}px")

    def draw(self, rng: np.random.Generator) -> torch.Tensor:
        """One texture, chosen uniformly, at its own size: (3, h, w) float in [0, 1]."""
        index = int(rng.integers(len(self)))
        return _load_rgb(self.files[index]) if self.files else self.patches[index]

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> torch.Tensor:
        """One texture, chosen uniformly, stretched to ``size``: (3, H, W) float in [0, 1]."""
        return _resize(self.draw(rng), size)


def resolve_texture_source(texture_dir: str | os.PathLike | None = None, patch_size: int = 128) -> TextureSource:
    """The user's texture folder when given (DTD or any images), else the bundled patches."""
    if texture_dir is None or str(texture_dir) == "":
        return TextureSource.bundled(patch_size=patch_size)
    return TextureSource.from_dir(texture_dir)
