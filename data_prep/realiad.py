"""Convert Real-IAD (single-view setting) into the standard layout.

Source: images under an image root (default ``SRC/realiad_1024``, else the first of
``realiad_512``, ``realiad_256``, ``SRC`` itself) as ``<class>/{OK,NG}/...``, and one split
JSON per class in a JSON folder (default ``SRC/realiad_jsons_sv``)::

    {"meta": {"prefix": "<class>/", "normal_class": "OK", ...},
     "train": [{"category", "anomaly_class", "image_path", "mask_path"}, ...],
     "test": [...]}

Key sets differ between releases, so keys are read defensively (``image_path``/``img_path``,
``mask_path``/``mask``, ``anomaly_class``/``defect_type``, ``category``/``cls_name``; the class
defaults to the JSON file's name) and paths are tried under ``<image root>/<prefix>``,
``<image root>/<class>`` and ``<image root>``. The defect folder is the item's
``anomaly_class`` (Real-IAD's two-letter codes, e.g. ``AK``); normal items go to ``good``.

    python -m data_prep.realiad --src /data/Real-IAD --root data
"""
from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from data_prep.common import (MISSING_MASK_HINT, MISSING_MASK_MODES, ConversionError, Entry, convert_entries,
                              converter_parser, require_dir, run_converter)
from mambaad_lib.data.meta import NORMAL_SPECIE, SPLITS

__all__ = ["IMAGE_ROOT_CANDIDATES", "list_realiad", "convert", "main"]

IMAGE_ROOT_CANDIDATES = ("realiad_1024", "realiad_512", "realiad_256", "realiad_raw")
DEFAULT_JSON_DIR = "realiad_jsons_sv"
IMAGE_KEYS = ("image_path", "img_path", "image")
MASK_KEYS = ("mask_path", "mask")
ANOMALY_KEYS = ("anomaly_class", "defect_type", "anomaly_type")
CLASS_KEYS = ("category", "cls_name", "class")
NORMAL_NAMES = {"ok", "good", "normal"}


def _first(item: dict, keys: Sequence[str]) -> Any:
    for key in keys:
        if item.get(key) not in (None, ""):
            return item[key]
    return None


def _default_image_root(src: Path) -> Path:
    for candidate in IMAGE_ROOT_CANDIDATES:
        if (src / candidate).is_dir():
            return src / candidate
    return src


def _resolve(relative: str, bases: Sequence[Path]) -> Path | None:
    for base in bases:
        path = base / PurePosixPath(relative.replace("\\", "/"))
        if path.is_file():
            return path
    return None


def _entries_of_json(path: Path, image_root: Path, missing_mask: str, problems: list[str],
                     missing: list[str]) -> list[Entry]:
    """Entries of one class JSON; appends problems.

    An anomalous item whose mask is absent (no path, or a path to no file) goes to
    ``missing``, naming the JSON item, under ``missing_mask="error"``; otherwise it is an
    entry without a mask that :func:`~data_prep.common.convert_entries` skips or keeps.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(f"{path}: not readable JSON ({error})")
        return []
    if not isinstance(document, dict) or not all(isinstance(document.get(s), list) for s in SPLITS):
        problems.append(f"{path}: expected an object with 'train' and 'test' lists")
        return []
    meta = document.get("meta") if isinstance(document.get("meta"), dict) else {}
    normal_names = NORMAL_NAMES | {str(meta.get("normal_class", "OK")).lower()}
    entries = []
    for split in SPLITS:
        for index, item in enumerate(document[split]):
            where = f"{path} {split}[{index}]"
            if not isinstance(item, dict):
                problems.append(f"{where}: not an object")
                continue
            cls_name = str(_first(item, CLASS_KEYS) or path.stem)
            image_rel, mask_rel = _first(item, IMAGE_KEYS), _first(item, MASK_KEYS)
            anomaly_class = _first(item, ANOMALY_KEYS)
            if image_rel is None or anomaly_class is None:
                problems.append(f"{where}: needs an image path ({'/'.join(IMAGE_KEYS)}) and an anomaly class "
                                f"({'/'.join(ANOMALY_KEYS)}); keys present: {sorted(item)}")
                continue
            specie = NORMAL_SPECIE if str(anomaly_class).lower() in normal_names else str(anomaly_class)
            if split == "train" and specie != NORMAL_SPECIE:
                problems.append(f"{where}: an anomalous training image; the standard layout trains on normal "
                                f"images only (use the single-view split {DEFAULT_JSON_DIR})")
                continue
            prefix = str(meta.get("prefix", "") or "")
            bases = [image_root / prefix, image_root / cls_name, image_root]
            image = _resolve(str(image_rel), bases)
            if image is None:
                problems.append(f"{where}: image {image_rel!r} not found under any of {[str(b) for b in bases]}")
                continue
            mask = None
            if specie != NORMAL_SPECIE:
                mask = _resolve(str(mask_rel), bases) if mask_rel is not None else None
                if mask is None and missing_mask == "error":
                    missing.append(f"{where}: anomalous image {image_rel!r} has no mask "
                                    f"({'path ' + repr(mask_rel) + ' not found' if mask_rel else 'no mask path'})")
                    continue
            entries.append(Entry(cls_name, split, specie, image, mask))
    return entries


def list_realiad(src: str | os.PathLike, json_dir: str | os.PathLike | None = None,
                 image_root: str | os.PathLike | None = None, missing_mask: str = "error") -> list[Entry]:
    """Entries of every class JSON in ``json_dir`` (relative paths are taken under ``src``).

    ``missing_mask="error"`` reports anomalous items without a mask by their JSON item;
    otherwise they are listed without a mask, for ``convert_entries`` to skip or keep.
    """
    if missing_mask not in MISSING_MASK_MODES:
        raise ValueError(f"missing_mask must be one of {MISSING_MASK_MODES}, got {missing_mask!r}")
    src = require_dir(Path(src), "source dataset folder")
    json_folder = require_dir(src / (json_dir or DEFAULT_JSON_DIR), "Real-IAD JSON folder")
    images = require_dir(src / image_root if image_root else _default_image_root(src), "Real-IAD image root")
    json_files = sorted(json_folder.glob("*.json"))
    if not json_files:
        raise ConversionError(f"no *.json split files in {str(json_folder)!r}")
    entries, problems, missing = [], [], []
    for path in json_files:
        entries += _entries_of_json(path, images, missing_mask, problems, missing)
    if problems or missing:
        listed = "\n  ".join((problems + missing)[:50])
        raise ConversionError(f"{len(problems) + len(missing)} problem(s) in the split files:\n  {listed}"
                              + (MISSING_MASK_HINT if missing else ""))
    return entries


def convert(src: str | os.PathLike, root: str | os.PathLike, name: str = "realiad", link: bool = False,
            dry_run: bool = False, mask_mode: str = "binary", missing_mask: str = "error",
            json_dir: str | None = None, image_root: str | None = None) -> dict:
    """Convert Real-IAD at ``src`` into ``ROOT/<name>``; returns the counts per class and split."""
    entries = list_realiad(src, json_dir, image_root, missing_mask)
    return convert_entries(entries, src, root, name, link=link, dry_run=dry_run, mask_mode=mask_mode,
                           missing_mask=missing_mask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = converter_parser("realiad", __doc__.splitlines()[0], default_name="realiad")
    parser.add_argument("--json-dir", default=None,
                        help=f"folder of per-class split JSONs, relative to --src (default {DEFAULT_JSON_DIR})")
    parser.add_argument("--image-root", default=None,
                        help=f"image folder relative to --src (default: first of {IMAGE_ROOT_CANDIDATES}, else --src)")
    return run_converter(convert, parser, argv, extra=lambda args: {
        "json_dir": args.json_dir, "image_root": args.image_root})


if __name__ == "__main__":
    raise SystemExit(main())
