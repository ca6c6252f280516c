"""The synthetic benchmark: an MVTec-format dataset built offline in seconds.

    from mambaad_lib.data.synthetic import make_synthetic_dataset
    make_synthetic_dataset("data", name="synthetic", seed=0)      # or: mambaad synth --profile demo

Seven classes rendered from photographs bundled with scikit-image (textures: brick, grass,
gravel, tissue; objects: retina, logo, coin; see :mod:`mambaad_lib.data.synthetic.sources`) and six
defect types with exact pixel masks (scratch, hole, stain, crack, cut, patch; see
:mod:`mambaad_lib.data.synthetic.defects`). Defaults: 60 training and 40 test images per class
(16 normal, 24 anomalous: 4 of each defect type), 256 x 256.

Determinism: every image has its own generator seeded from (seed, class name, split,
index), so the same arguments give the same bytes, and a class's images do not depend on
which other classes are generated. Test item ``i`` (after the normal ones) gets defect
type ``DEFECT_TYPES[(i + class index) % 6]``, so small sets still cover every type across
classes. Test items' ``specie_name`` is their defect type (``good`` for normal images).
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from mambaad_lib.data.synthetic.defects import DEFECT_TYPES, apply_defect
from mambaad_lib.data.synthetic.sources import (NORMAL_JITTER, OBJECT_CLASSES, TEXTURE_CLASSES, foreground_mask,
                                         render_normal)
from mambaad_lib.data.meta import NORMAL_SPECIE, SPLITS, dataset_dir, make_item, meta_path, write_meta
from mambaad_lib.utils.files import atomic_write_json

__all__ = ["CLASSES", "TEXTURE_CLASSES", "OBJECT_CLASSES", "DEFECT_TYPES", "GOOD_TEST_FRACTION",
           "GENERATOR_VERSION", "make_synthetic_dataset", "synthesize_image", "image_rng",
           "species_of_test_split", "foreground_mask"]

CLASSES = TEXTURE_CLASSES + OBJECT_CLASSES
GOOD_TEST_FRACTION = 0.4
GENERATOR_VERSION = 1
PNG_COMPRESSION = 1  # zlib level: fast to write; files stay byte-identical for a seed
CONFIG_FILE = "synthetic_config.json"  # in ROOT/<name>/: marks a generated tree and its arguments


def image_rng(seed: int, cls_name: str, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` of ``cls_name``: independent of every other image."""
    key = [int(seed), zlib.crc32(cls_name.encode()), SPLITS.index(split), int(index)]
    return np.random.default_rng(np.random.SeedSequence(key))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def species_of_test_split(cls_name: str, n_test: int) -> list[str]:
    """The ``specie_name`` of each test image of ``cls_name``: normal first, then defect types in turn."""
    n_good = min(n_test, max(1, int(round(n_test * GOOD_TEST_FRACTION)))) if n_test > 1 else n_test
    offset = CLASSES.index(cls_name)
    return [NORMAL_SPECIE] * n_good + [DEFECT_TYPES[(i + offset) % len(DEFECT_TYPES)]
                                       for i in range(n_test - n_good)]


def synthesize_image(cls_name: str, specie_name: str, size: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image of the benchmark.

    Returns:
        ``(image uint8 (H, W, 3), mask bool (H, W), normal uint8 (H, W, 3))``: the image, its
        defect mask (all False for ``good``) and the same image without the defect.
    """
    rendered = render_normal(cls_name, size, rng)
    noise = rng.normal(0.0, NORMAL_JITTER.noise_sigma, size=rendered.image.shape).astype(np.float32)
    normal = _to_uint8(rendered.image + noise)
    if specie_name == NORMAL_SPECIE:
        return normal, np.zeros((size, size), bool), normal
    defective, mask = apply_defect(specie_name, rendered.image, rendered.foreground, rendered.background, rng)
    return _to_uint8(defective + noise), mask, normal


def _config(seed: int, image_size: int, n_train: int, n_test: int, classes: Sequence[str]) -> dict:
    return {"generator": "data_prep.synthetic", "version": GENERATOR_VERSION, "seed": seed,
            "image_size": image_size, "n_train": n_train, "n_test": n_test, "classes": list(classes)}


def _check_arguments(image_size: int, n_train: int, n_test: int, classes: Sequence[str] | None) -> list[str]:
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be at least 1, got {n_train}, {n_test}")
    if classes is None:
        return list(CLASSES)
    if isinstance(classes, str):
        classes = [classes]
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise ValueError(f"unknown synthetic classes {unknown or classes}; available: {list(CLASSES)}")
    return [c for c in CLASSES if c in classes]


def make_synthetic_dataset(root: str | os.PathLike, name: str = "synthetic", seed: int = 0, image_size: int = 256,
                           n_train: int = 60, n_test: int = 40, classes: Sequence[str] | None = None,
                           overwrite: bool = False) -> Path:
    """Build the synthetic benchmark as ``ROOT/<name>/`` and ``ROOT/meta_<name>.json``.

    Args:
        root: dataset root (created if needed).
        name: dataset name.
        seed: base seed; the same arguments always give the same bytes.
        image_size: side of the square images.
        n_train, n_test: images per class (test: 40 % normal, the rest anomalous).
        classes: a subset of :data:`CLASSES` (default all; kept in :data:`CLASSES` order).
        overwrite: regenerate even if a dataset with these arguments exists. Without it, an
            existing complete dataset with the same arguments is reused and one with other
            arguments is an error.

    Returns:
        The meta file's path.

    Raises:
        ValueError: bad arguments, or an existing dataset made with other arguments.
        FileExistsError: ``ROOT/<name>`` exists but was not made by this generator.
    """
    classes = _check_arguments(image_size, n_train, n_test, classes)
    root = Path(root)
    folder, meta_file = dataset_dir(root, name), meta_path(root, name)
    config = _config(seed, image_size, n_train, n_test, classes)
    marker = folder / CONFIG_FILE
    if folder.exists() and not marker.is_file():
        raise FileExistsError(f"{str(folder)!r} exists and was not made by data_prep.synthetic; "
                              f"choose another --name or root")
    if marker.is_file() and not overwrite:
        existing = json.loads(marker.read_text(encoding="utf-8"))
        if existing != config:
            raise ValueError(f"{str(folder)!r} holds a synthetic dataset made with {existing}; pass "
                             f"overwrite=True (--overwrite) to rebuild it with {config}")
        if meta_file.is_file():
            return meta_file
    if folder.exists():
        shutil.rmtree(folder)
    meta_file.unlink(missing_ok=True)
    folder.mkdir(parents=True)
    atomic_write_json(marker, config)

    meta = {split: {} for split in SPLITS}
    jobs = [(c, "train", i, NORMAL_SPECIE) for c in classes for i in range(n_train)]
    jobs += [(c, "test", i, s) for c in classes for i, s in enumerate(species_of_test_split(c, n_test))]
    per_folder: dict[tuple[str, str, str], int] = {}
    for cls_name, split, index, specie in tqdm(jobs, desc=f"synthesising {name}", unit="image", disable=None):
        image, mask, _ = synthesize_image(cls_name, specie, image_size, image_rng(seed, cls_name, split, index))
        number = per_folder.get((cls_name, split, specie), 0)
        per_folder[(cls_name, split, specie)] = number + 1
        image_file = folder / cls_name / split / specie / f"{number:03d}.png"
        image_file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_file, compress_level=PNG_COMPRESSION)
        mask_rel = ""
        if specie != NORMAL_SPECIE:
            mask_file = folder / cls_name / "ground_truth" / specie / f"{number:03d}_mask.png"
            mask_file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(mask_file, compress_level=PNG_COMPRESSION)
            mask_rel = mask_file.relative_to(root).as_posix()
        meta[split].setdefault(cls_name, []).append(
            make_item(image_file.relative_to(root).as_posix(), mask_rel, cls_name, specie))
    return write_meta(root, name, meta)
