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

Two optional top-level keys; a meta file without them (every file written before they
existed) means their defaults:

``"missing_mask"``: ``"error"`` (default) or ``"keep"``. By default every anomalous item
    must have a ``mask_path``. ``"keep"`` (written by a converter run with
    ``--missing-mask keep``) allows anomalous items with an empty ``mask_path``: they count
    for image metrics, and the pixel metrics of their class are not computed.
``"unlabeled"``: ``{set_name: {cls: [img_path, ...]}}``, images without labels kept for
    prediction only (e.g. MVTec AD 2's ``test_private`` and ``test_private_mixed``, stored
    under ``ROOT/<name>/<class>/<set_name>/``). Set names are never ``train`` or ``test``,
    so the loader and every evaluation ignore them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mambaad_lib.utils.files import atomic_write_json

__all__ = ["SPLITS", "ITEM_KEYS", "NORMAL_SPECIE", "MISSING_MASK_KEY", "MISSING_MASK_VALUES", "UNLABELED_KEY",
           "meta_path", "dataset_dir", "make_item", "keeps_missing_masks", "item_has_mask", "check_meta",
           "read_meta", "write_meta"]

SPLITS = ("train", "test")
ITEM_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
NORMAL_SPECIE = "good"
MISSING_MASK_KEY = "missing_mask"
MISSING_MASK_VALUES = ("error", "keep")
UNLABELED_KEY = "unlabeled"


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


def keeps_missing_masks(meta: dict) -> bool:
    """True when the meta allows anomalous items without a mask (``"missing_mask": "keep"``)."""
    return meta.get(MISSING_MASK_KEY, "error") == "keep"


def item_has_mask(item: dict) -> bool:
    """False only for an anomalous item without a mask; normal items have a (blank) mask."""
    return not item["anomaly"] or bool(item["mask_path"])


def _relative_path_problem(path: Any, where: str) -> str | None:
    if not isinstance(path, str):
        return f"{where} must be a string"
    if Path(path).is_absolute() or ".." in Path(path).parts:
        return f"{where} {path!r} must be relative to the root"
    return None


def _check_unlabeled(unlabeled: Any, source: str) -> list[str]:
    if not isinstance(unlabeled, dict):
        return [f"{source}: '{UNLABELED_KEY}' must map set names to {{class: [image path, ...]}}"]
    problems = []
    for set_name, per_class in unlabeled.items():
        where = f"{source}: {UNLABELED_KEY}/{set_name}"
        if set_name in SPLITS:
            problems.append(f"{where}: an unlabeled set cannot be named like the split {set_name!r}")
        if not isinstance(per_class, dict):
            problems.append(f"{where} must map class names to lists of image paths")
            continue
        for cls_name, paths in per_class.items():
            if not isinstance(paths, list):
                problems.append(f"{where}/{cls_name} must be a list of image paths")
                continue
            problems += [problem for index, path in enumerate(paths)
                         if (problem := _relative_path_problem(path, f"{where}/{cls_name}[{index}]"))]
    return problems


def check_meta(meta: Any, source: str = "meta") -> list[str]:
    """Every structural problem of a meta dict (empty when it follows the standard)."""
    if not isinstance(meta, dict):
        return [f"{source}: expected a JSON object with keys 'train' and 'test', got {type(meta).__name__}"]
    problems = []
    if meta.get(MISSING_MASK_KEY, "error") not in MISSING_MASK_VALUES:
        problems.append(f"{source}: '{MISSING_MASK_KEY}' must be one of {MISSING_MASK_VALUES}, "
                        f"got {meta[MISSING_MASK_KEY]!r}")
    if UNLABELED_KEY in meta:
        problems += _check_unlabeled(meta[UNLABELED_KEY], source)
    keep = keeps_missing_masks(meta)
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
                problems += [problem for key in ("img_path", "mask_path")
                             if (problem := _relative_path_problem(item[key], f"{where}: {key}"))]
                if item["anomaly"] == 1 and not item["mask_path"] and not keep:
                    problems.append(f"{where}: anomalous image {item['img_path']!r} has no mask_path (a dataset "
                                    f"converted with --missing-mask keep says \"{MISSING_MASK_KEY}\": \"keep\")")
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
