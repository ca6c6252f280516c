"""Check a whole dataset in the standard layout and report every problem at once.

    mambaad validate-data --root data --name mvtec      (or python -m data_prep.validate ...)

Checks: the meta file exists and follows the layout; every image exists and decodes;
anomalous images have a mask and normal ones none; masks decode, are single-channel,
hold only 0 and 255 and have their image's size; no image is listed twice.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

from mambaad_lib.data.io import load_image, load_mask, mask_value_problem
from mambaad_lib.data.meta import SPLITS, check_meta, meta_path

__all__ = ["validate_dataset"]


def _check_item(root: Path, item: dict) -> list[str]:
    try:
        image = load_image(root / item["img_path"])
    except (FileNotFoundError, ValueError) as error:
        return [str(error)]
    if not item["anomaly"]:
        if item["mask_path"]:
            return [f"normal image {item['img_path']!r} has a mask_path ({item['mask_path']!r}); "
                    f"normal images must have an empty mask_path"]
        return []
    mask_file = root / item["mask_path"]
    try:
        mask = load_mask(mask_file)
    except (FileNotFoundError, ValueError) as error:
        return [f"{error} (mask of {item['img_path']!r})"]
    problems = []
    if mask.size != image.size:
        problems.append(f"mask file {str(mask_file)!r} is {mask.size[0]}x{mask.size[1]} but its image "
                        f"{item['img_path']!r} is {image.size[0]}x{image.size[1]}")
    value_problem = mask_value_problem(mask, mask_file)
    if value_problem:
        problems.append(value_problem)
    return problems


def validate_dataset(root: str | os.PathLike, name: str) -> list[str]:
    """Every problem of dataset ``name`` under ``root`` (an empty list when it is fine)."""
    root = Path(root)
    if not root.is_dir():
        return [f"dataset root {str(root)!r} does not exist or is not a folder"]
    path = meta_path(root, name)
    if not path.is_file():
        return [f"meta file {str(path)!r} not found"]
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return [f"meta file {str(path)!r} is not valid JSON: {error}"]
    problems = check_meta(meta, str(path))
    if problems:
        return problems  # item-level checks need a well-formed meta
    items = [item for split in SPLITS for per_class in meta[split].values() for item in per_class]
    if not items:
        problems.append(f"meta file {str(path)!r} lists no images")
    listed: set[str] = set()
    for item in tqdm(items, desc=f"validating {name}", unit="image", disable=None):
        if item["img_path"] in listed:
            problems.append(f"image {item['img_path']!r} is listed more than once")
        listed.add(item["img_path"])
        problems.extend(_check_item(root, item))
    return problems
