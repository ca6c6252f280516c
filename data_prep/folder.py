"""Convert any dataset already in MVTec-style folders (Uni-Medical, a COCO-AD split, your own data).

Expected source layout (folder names in angle brackets are options)::

    SRC/<class>/train/<normal>/*.{png,jpg,bmp,...}       normal training images
    SRC/<class>/test/<normal>/*                          normal test images
    SRC/<class>/test/<defect>/*                          every other test folder is a defect type
    SRC/<class>/<ground_truth>/<defect>/<stem>_mask.<ext>   (or <stem>.<ext>)

``--normal-name`` (default ``good``; e.g. ``ok`` for BTAD-like data, repeatable) names the
normal folders, which become ``good`` in the standard layout; ``--ground-truth-name``
(default ``ground_truth``) the mask folder; ``--mask-suffix`` the mask name suffixes tried
in order (default ``_mask`` then none). Every sub-folder of ``SRC`` with a ``train`` or
``test`` folder is a class. COCO-AD ships one such tree per split: convert each split as
its own dataset name.

    python -m data_prep.folder --src /data/uni_medical --root data --name unimedical
    python -m data_prep.folder --src /data/my_parts --root data --name parts --normal-name ok
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from data_prep.common import (IMAGE_EXTENSIONS, ConversionError, Entry, convert_entries, converter_parser,
                              list_images, require_dir, run_converter)
from mambaad_lib.data.meta import NORMAL_SPECIE

__all__ = ["DEFAULT_MASK_SUFFIXES", "find_mask", "list_mvtec_layout", "convert", "main"]

DEFAULT_MASK_SUFFIXES = ("_mask", "")


def find_mask(ground_truth: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    """The first ``<ground_truth>/<stem><suffix>.<ext>`` that exists (suffixes in order, any
    image extension in either case), or ``None``."""
    for suffix in suffixes:
        for extension in IMAGE_EXTENSIONS:
            for candidate in (ground_truth / f"{stem}{suffix}{extension}",
                              ground_truth / f"{stem}{suffix}{extension.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def list_mvtec_layout(src: str | os.PathLike, mask_suffixes: Sequence[str] = DEFAULT_MASK_SUFFIXES,
                      normal_names: str | Sequence[str] = NORMAL_SPECIE,
                      ground_truth: str = "ground_truth") -> list[Entry]:
    """Entries of an MVTec-style tree; a mask is looked up as ``<stem><suffix>.<ext>``.

    Args:
        src: the tree's root (one folder per class).
        mask_suffixes: suffixes tried in order after the image stem.
        normal_names: name(s) of the normal folders under ``train/`` and ``test/``; their
            images go to ``good``.
        ground_truth: name of the mask folder beside ``train/`` and ``test/``.

    Raises:
        FileNotFoundError: ``src`` is not a folder.
        ConversionError: no class folders, a ``train`` folder holding more than the normal
            folder, or a defect folder named ``good`` while normal images use another name.
    """
    src = require_dir(Path(src), "source dataset folder")
    normal_names = _names(normal_names)
    classes = sorted(p for p in src.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir()))
    if not classes:
        raise ConversionError(f"no class folders (with train/ or test/ inside) under {str(src)!r}")
    entries = []
    for cls_dir in classes:
        train = cls_dir / "train"
        if train.is_dir():
            extra = sorted(p.name for p in train.iterdir() if p.is_dir() and p.name not in normal_names)
            if extra:
                raise ConversionError(f"{str(train)!r} holds {extra} besides {'/, '.join(normal_names)}/: the "
                                      f"standard layout trains on normal images only (--normal-name names the "
                                      f"normal folders)")
            for normal in normal_names:
                if (train / normal).is_dir():
                    entries += [Entry(cls_dir.name, "train", NORMAL_SPECIE, image)
                                for image in list_images(train / normal)]
        test = cls_dir / "test"
        if not test.is_dir():
            continue
        for specie_dir in sorted(p for p in test.iterdir() if p.is_dir()):
            normal = specie_dir.name in normal_names
            if not normal and specie_dir.name == NORMAL_SPECIE:
                raise ConversionError(f"{str(specie_dir)!r} would be a defect type named {NORMAL_SPECIE!r}, the "
                                      f"standard layout's normal folder; add --normal-name {NORMAL_SPECIE}")
            for image in list_images(specie_dir):
                if normal:
                    entries.append(Entry(cls_dir.name, "test", NORMAL_SPECIE, image))
                else:
                    mask = find_mask(cls_dir / ground_truth / specie_dir.name, image.stem, mask_suffixes)
                    entries.append(Entry(cls_dir.name, "test", specie_dir.name, image, mask))
    return entries


def convert(src: str | os.PathLike, root: str | os.PathLike, name: str = "folder", link: bool = False,
            dry_run: bool = False, mask_mode: str = "binary", missing_mask: str = "error",
            normal_names: str | Sequence[str] = NORMAL_SPECIE, ground_truth: str = "ground_truth",
            mask_suffixes: Sequence[str] = DEFAULT_MASK_SUFFIXES) -> dict:
    """Convert an MVTec-style tree at ``src`` into ``ROOT/<name>``; returns the counts
    (see :func:`data_prep.common.convert_entries`; the folder options as in
    :func:`list_mvtec_layout`)."""
    entries = list_mvtec_layout(src, mask_suffixes, normal_names, ground_truth)
    return convert_entries(entries, src, root, name, link=link, dry_run=dry_run, mask_mode=mask_mode,
                           missing_mask=missing_mask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = converter_parser("folder", __doc__.splitlines()[0], default_name="folder")
    parser.add_argument("--normal-name", action="append", metavar="NAME",
                        help=f"name of the normal folders in train/ and test/ (default {NORMAL_SPECIE}; repeatable, "
                             f"e.g. --normal-name ok)")
    parser.add_argument("--ground-truth-name", default="ground_truth", metavar="NAME",
                        help="name of the mask folder in each class (default ground_truth)")
    parser.add_argument("--mask-suffix", action="append", metavar="SUFFIX",
                        help="mask name = image stem + SUFFIX + any image extension; repeatable, tried in order "
                             "(default: _mask, then the bare stem)")
    return run_converter(convert, parser, argv, extra=lambda args: {
        "normal_names": args.normal_name or NORMAL_SPECIE, "ground_truth": args.ground_truth_name,
        "mask_suffixes": tuple(args.mask_suffix) if args.mask_suffix else DEFAULT_MASK_SUFFIXES})


if __name__ == "__main__":
    raise SystemExit(main())
