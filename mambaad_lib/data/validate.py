"""Check a whole dataset in the standard layout and report every problem at once.

    mambaad validate-data --root data --name mvtec      (or python -m data_prep.validate ...)

Checks: the meta file exists and follows the layout; class names can be folder names (they
name per-class run folders and example figures); every image exists and decodes (16-bit
images are accepted, see :mod:`mambaad_lib.data.io`);
anomalous images have a mask (unless the meta says ``"missing_mask": "keep"``) and normal
ones none; masks decode, are single-channel, hold only 0 and 255 and have their image's
size; no image is listed twice; unlabeled (prediction-only) images decode.

Besides problems, :func:`check_dataset` returns notes: facts that are not errors but change
what evaluation reports (anomalous images kept without a mask, unlabeled image sets).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from mambaad_lib.data.io import load_image, load_mask, mask_value_problem
from mambaad_lib.data.meta import (MISSING_MASK_KEY, SPLITS, UNLABELED_KEY, check_meta, item_has_mask,
                                   keeps_missing_masks, meta_path)
from mambaad_lib.utils.names import name_problem

__all__ = ["DatasetReport", "check_dataset", "validate_dataset"]


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found.

    Attributes:
        problems: one line per error (the dataset is usable only when empty).
        notes: one line per fact worth knowing that is not an error.
        images_without_mask: ``{"<split>/<class>": n}`` anomalous images kept without a mask.
    """

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images_without_mask: dict[str, int] = field(default_factory=dict)


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
    if not item_has_mask(item):
        return []  # check_meta allowed it: the meta keeps missing masks
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


def _notes(meta: dict, without_mask: dict[str, int]) -> list[str]:
    notes = []
    if without_mask:
        listed = ", ".join(f"{where} {n}" for where, n in without_mask.items())
        notes.append(f"{sum(without_mask.values())} anomalous image(s) without a mask, kept as the meta says "
                     f"\"{MISSING_MASK_KEY}\": \"keep\" ({listed}); image metrics cover them, pixel metrics of "
                     f"these classes are not computed")
    elif keeps_missing_masks(meta):
        notes.append(f"the meta says \"{MISSING_MASK_KEY}\": \"keep\" but every anomalous image has a mask")
    for set_name, per_class in meta.get(UNLABELED_KEY, {}).items():
        count = sum(len(paths) for paths in per_class.values())
        notes.append(f"unlabeled set {set_name!r}: {count} image(s) in {len(per_class)} class(es), for prediction "
                     f"only (never evaluated)")
    return notes


def check_dataset(root: str | os.PathLike, name: str) -> DatasetReport:
    """Problems and notes of dataset ``name`` under ``root``."""
    root = Path(root)
    report = DatasetReport()
    if not root.is_dir():
        report.problems.append(f"dataset root {str(root)!r} does not exist or is not a folder")
        return report
    path = meta_path(root, name)
    if not path.is_file():
        report.problems.append(f"meta file {str(path)!r} not found")
        return report
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        report.problems.append(f"meta file {str(path)!r} is not valid JSON: {error}")
        return report
    report.problems += check_meta(meta, str(path))
    if report.problems:
        return report  # item-level checks need a well-formed meta
    unlabeled_classes = [cls_name for per_class in meta.get(UNLABELED_KEY, {}).values() for cls_name in per_class]
    class_names = dict.fromkeys([*meta["train"], *meta["test"], *unlabeled_classes])
    report.problems += [problem for cls_name in class_names if (problem := name_problem(cls_name, "class name"))]
    items = [item for split in SPLITS for per_class in meta[split].values() for item in per_class]
    unlabeled = [image for per_class in meta.get(UNLABELED_KEY, {}).values()
                 for paths in per_class.values() for image in paths]
    if not items:
        report.problems.append(f"meta file {str(path)!r} lists no images")
    listed: set[str] = set()

    def register(image: str) -> None:
        if image in listed:
            report.problems.append(f"image {image!r} is listed more than once")
        listed.add(image)

    for item in tqdm(items, desc=f"validating {name}", unit="image", disable=None):
        register(item["img_path"])
        report.problems.extend(_check_item(root, item))
    for image in tqdm(unlabeled, desc=f"validating {name} (unlabeled)", unit="image", disable=None):
        register(image)
        try:  # an unlabeled image only has to decode
            load_image(root / image)
        except (FileNotFoundError, ValueError) as error:
            report.problems.append(str(error))
    for split in SPLITS:
        for cls_name, per_class in meta[split].items():
            missing = sum(not item_has_mask(item) for item in per_class)
            if missing:
                report.images_without_mask[f"{split}/{cls_name}"] = missing
    report.notes = _notes(meta, report.images_without_mask)
    return report


def validate_dataset(root: str | os.PathLike, name: str) -> list[str]:
    """Every problem of dataset ``name`` under ``root`` (an empty list when it is fine)."""
    return check_dataset(root, name).problems
