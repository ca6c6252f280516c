"""The standard dataset layout's meta file: ``ROOT/meta_<name>.json``.

Layout (as in the MMAD/ADer convention)::

    ROOT/<name>/<class>/train/good/*            normal training images
    ROOT/<name>/<class>/test/good/*             normal test images
    ROOT/<name>/<class>/test/<defect>/*         anomalous test images, one folder per defect type
    ROOT/<name>/<class>/ground_truth/<defect>/* their masks (8-bit, 0 background / 255 defect)
    ROOT/meta_<name>.json

The meta file is ``{"train": {cls: [item, ...]}, "test": {cls: [item, ...]}}`` where an item
is ``{"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}``: paths relative to
``ROOT`` with forward slashes, ``mask_path`` empty for normal images, ``specie_name`` the
defect folder (``good`` for normal images) and ``anomaly`` 0 or 1.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mambaad_lib.utils.files import atomic_write_json

__all__ = ["SPLITS", "ITEM_KEYS", "NORMAL_SPECIE", "meta_path", "dataset_dir", "make_item",
           "check_meta", "read_meta", "write_meta"]

SPLITS = ("train", "test")
ITEM_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
NORMAL_SPECIE = "good"


def meta_path(root: str | os.PathLike, name: str) -> Path:
    """``ROOT/meta_<name>.json``."""
    return Path(root) / f"meta_{name}.json"


def dataset_dir(root: str | os.PathLike, name: str) -> Path:
    """``ROOT/<name>``, the folder holding one sub-folder per class."""
    return Path(root) / name


def make_item(img_path: str, mask_path: str, cls_name: str, specie_name: str) -> dict[str, Any]:
    """One meta entry; ``anomaly`` follows from ``specie_name`` (``good`` is normal)."""
    return {"img_path": img_path, "mask_path": mask_path, "cls_name": cls_name,
            "specie_name": specie_name, "anomaly": int(specie_name != NORMAL_SPECIE)}


def check_meta(meta: Any, source: str = "meta") -> list[str]:
    """Every structural problem of a meta dict (empty when it follows the standard)."""
    if not isinstance(meta, dict):
        return [f"{source}: expected a JSON object with keys 'train' and 'test', got {type(meta).__name__}"]
    problems = []
    for split in SPLITS:
        if split not in meta:
            problems.append(f"{source}: missing the '{split}' split")
            continue
        if not isinstance(meta[split], dict):
            problems.append(f"{source}: '{split}' must map class names to lists of items")
            continue
        for cls_name, items in meta[split].items():
            if not isinstance(items, list):
                problems.append(f"{source}: {split}/{cls_name} must be a list of items")
                continue
            for index, item in enumerate(items):
                where = f"{source}: {split}/{cls_name}[{index}]"
                if not isinstance(item, dict):
                    problems.append(f"{where} is not an object")
                    continue
                missing = [key for key in ITEM_KEYS if key not in item]
                if missing:
                    problems.append(f"{where} lacks {', '.join(missing)}")
                    continue
                if item["anomaly"] not in (0, 1) or isinstance(item["anomaly"], bool):
                    problems.append(f"{where}: anomaly must be 0 or 1, got {item['anomaly']!r}")
                if item["cls_name"] != cls_name:
                    problems.append(f"{where}: cls_name {item['cls_name']!r} differs from its class key")
                for key in ("img_path", "mask_path"):
                    if not isinstance(item[key], str):
                        problems.append(f"{where}: {key} must be a string")
                    elif Path(item[key]).is_absolute() or ".." in Path(item[key]).parts:
                        problems.append(f"{where}: {key} {item[key]!r} must be relative to the root")
                if item["anomaly"] == 1 and not item["mask_path"]:
                    problems.append(f"{where}: anomalous image {item['img_path']!r} has no mask_path")
    return problems


def read_meta(root: str | os.PathLike, name: str) -> dict:
    """Read and check ``ROOT/meta_<name>.json``.

    Raises:
        FileNotFoundError: the root folder or the meta file does not exist.
        ValueError: the file is not JSON or does not follow the standard layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist or is not a folder")
    path = meta_path(root, name)
    if not path.is_file():
        found = sorted(p.name for p in root.glob("meta_*.json"))
        raise FileNotFoundError(
            f"meta file {str(path)!r} not found (dataset {name!r}); meta files in the root: "
            f"{found or 'none'}. Convert a dataset with `python -m data_prep.<converter>` or build "
            f"the synthetic one with `python -m data_prep.synthetic --root {root}`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"meta file {str(path)!r} is not valid JSON: {error}") from error
    problems = check_meta(meta, str(path))
    if problems:
        raise ValueError("\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    return meta


def write_meta(root: str | os.PathLike, name: str, meta: dict) -> Path:
    """Check ``meta`` and write it atomically to ``ROOT/meta_<name>.json``; returns the path."""
    problems = check_meta(meta, f"meta for dataset {name!r}")
    if problems:
        raise ValueError("\n".join(problems[:20]))
    Path(root).mkdir(parents=True, exist_ok=True)
    return atomic_write_json(meta_path(root, name), meta)
