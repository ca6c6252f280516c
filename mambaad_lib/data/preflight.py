"""Checks of the selected data that run before training, in seconds: bad data stops a run
before its first epoch instead of after its last.

:func:`preflight` reads image *headers* (format, size, mode), not pixels, plus the last bytes
of PNG and JPEG files (a complete file ends with its format's end marker; only a file that
does not is decoded, to tell a truncated file from one with trailing bytes). It reports:

- class names that cannot be folder names (they name example figures and per-class run
  folders; see :mod:`mambaad_lib.utils.names`);
- classes without normal training images (an error unless ``allow_empty_classes``: a
  unified model then never saw the class, a per-class method cannot train it);
- test classes with only normal or only anomalous images (their image AUROC/AP are
  undefined, so the class would report NaN metrics);
- test images and masks that are missing, unreadable, truncated, floating-point, or masks
  whose size differs from their image's; training images that are missing or unreadable.

:mod:`mambaad_lib.data.validate` (``mambaad validate-data``) is the thorough check of a whole
dataset: it decodes every pixel and checks mask values too.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from mambaad_lib.data.io import image_mode_problem, load_image, load_mask
from mambaad_lib.data.meta import item_has_mask
from mambaad_lib.data.subsets import dataset_items
from mambaad_lib.utils.names import name_problem

__all__ = ["DataProblemsError", "PreflightReport", "preflight"]

MAX_LISTED_PROBLEMS = 30
# The bytes a complete file of the format ends with (PNG: the IEND chunk with its CRC; JPEG: EOI).
_END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9"}
_TAIL_BYTES = 64


class DataProblemsError(ValueError):
    """The selected data cannot be trained or evaluated on; the message lists every problem."""


@dataclass
class PreflightReport:
    """What :func:`preflight` found.

    Attributes:
        problems: one line per error.
        notes: facts worth knowing that are not errors (e.g. allowed empty classes).
        files_checked: images and masks whose headers were read.
    """

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files_checked: int = 0

    def raise_for_problems(self, what: str) -> None:
        """Raise :class:`DataProblemsError` listing the problems (``what`` names the data)."""
        if not self.problems:
            return
        listed = "\n  ".join(self.problems[:MAX_LISTED_PROBLEMS])
        more = len(self.problems) - MAX_LISTED_PROBLEMS
        raise DataProblemsError(f"{len(self.problems)} problem(s) in {what}, found before training:\n  {listed}"
                                + (f"\n  ... and {more} more (mambaad validate-data lists every problem)"
                                   if more > 0 else ""))


def _complete(path: Path, image_format: str | None) -> bool:
    marker = _END_MARKERS.get(image_format or "")
    if marker is None:
        return True
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - _TAIL_BYTES))
        return marker in handle.read()


def _header(path: Path, what: str) -> tuple[str | None, tuple[int, int] | None]:
    """(problem, None) or (None, (width, height)) of an image or mask file, from its header."""
    loader = load_image if what == "image" else load_mask
    if not path.is_file():
        try:
            loader(path)  # raises the reader's own message (missing file, broken link)
        except (FileNotFoundError, ValueError) as error:
            return str(error), None
    try:
        with Image.open(path) as image:
            size, mode, image_format = image.size, image.mode, image.format
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        return f"{what} file {str(path)!r} cannot be read as an image: {error}", None
    problem = image_mode_problem(mode, path) if what == "image" else None
    if problem:
        return problem, None
    if not _complete(path, image_format):
        try:  # no end marker: decode to tell trailing bytes (fine) from a truncated file
            loader(path)
        except (FileNotFoundError, ValueError) as error:
            return f"{error} (is the file truncated?)", None
    return None, size


def _check_test_item(root: Path, item: dict[str, Any]) -> tuple[list[str], int]:
    problem, image_size = _header(root / item["img_path"], "image")
    if problem:
        return [problem], 1
    if not (item["anomaly"] and item_has_mask(item)):
        return [], 1
    mask_file = root / item["mask_path"]
    problem, mask_size = _header(mask_file, "mask")
    if problem:
        return [f"{problem} (mask of {item['img_path']!r})"], 2
    if mask_size != image_size:
        return [f"mask file {str(mask_file)!r} is {mask_size[0]}x{mask_size[1]} but its image "
                f"{item['img_path']!r} is {image_size[0]}x{image_size[1]}"], 2
    return [], 2


def _class_problems(test: Sequence[dict[str, Any]], train: Sequence[dict[str, Any]] | None,
                    classes: Sequence[str], allow_empty_classes: bool, report: PreflightReport) -> None:
    report.problems += [problem for cls_name in classes if (problem := name_problem(cls_name, "class name"))]
    labels: dict[str, Counter] = {cls_name: Counter() for cls_name in classes}
    for item in test:
        labels.setdefault(item["cls_name"], Counter())[item["anomaly"]] += 1
    for cls_name, counts in labels.items():
        if counts and not (counts[0] and counts[1]):
            missing, present = ("anomalous", "normal") if counts[0] else ("normal", "anomalous")
            report.problems.append(
                f"class {cls_name!r}: the test split has no {missing} images (only {sum(counts.values())} "
                f"{present}), so its image AUROC/AP would be undefined (NaN); add {missing} test images or "
                "leave the class out (--classes / data.classes)")
    if train is None:
        return
    trained = Counter(item["cls_name"] for item in train if not item["anomaly"])
    empty = [cls_name for cls_name in classes if not trained[cls_name]]
    if empty and not allow_empty_classes:
        report.problems.append(
            f"class(es) {', '.join(map(repr, empty))} have no normal training images; leave them out "
            "(--classes / data.classes) or allow them (--allow-empty-classes / data.allow_empty_classes: true)")
    elif empty:
        report.notes.append(f"class(es) {', '.join(map(repr, empty))} have no normal training images "
                            "(allowed by data.allow_empty_classes)")


def preflight(root: str | os.PathLike, test: Dataset, train: Dataset | None = None, *,
              allow_empty_classes: bool = False) -> PreflightReport:
    """Check the selected test (and training) data before a run starts (see the module doc).

    Args:
        root: the dataset root the items' paths are relative to.
        test: the test split as the run will use it (an :class:`~mambaad_lib.data.AnomalyDataset`
            or subsets of one, e.g. with ``data.test_per_class`` applied).
        train: the training split (normal images), or None when only evaluating.
        allow_empty_classes: classes without training images are a note, not a problem.
    """
    root = Path(root)
    report = PreflightReport()
    test_items = dataset_items(test)
    train_items = dataset_items(train) if train is not None else None
    classes = list(dict.fromkeys([*getattr(test, "classes", []), *(getattr(train, "classes", []) or [])]))
    _class_problems(test_items, train_items, classes, allow_empty_classes, report)
    for item in test_items:
        problems, checked = _check_test_item(root, item)
        report.problems += problems
        report.files_checked += checked
    for item in train_items or []:
        problem, _ = _header(root / item["img_path"], "image")
        report.files_checked += 1
        if problem:
            report.problems.append(problem)
    return report
