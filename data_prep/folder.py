"""Convert any dataset already in MVTec-style folders (Uni-Medical, a COCO-AD split, your own data).

Expected source layout::

    SRC/<class>/train/good/*.{png,jpg,...}
    SRC/<class>/test/good/*
    SRC/<class>/test/<defect>/*
    SRC/<class>/ground_truth/<defect>/<stem>_mask.<ext>   (or <stem>.<ext>)

Every sub-folder of ``SRC`` with a ``train`` or ``test`` folder is a class. COCO-AD ships
one such tree per split: convert each split as its own dataset name.

    python -m data_prep.folder --src /data/uni_medical --root data --name unimedical
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from data_prep.common import (IMAGE_EXTENSIONS, ConversionError, Entry, convert_entries, converter_parser,
                              list_images, require_dir, run_converter)
from mambaad_lib.data.meta import NORMAL_SPECIE

__all__ = ["list_mvtec_layout", "convert", "main"]


def _find_mask(ground_truth: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        for extension in IMAGE_EXTENSIONS:
            for candidate in (ground_truth / f"{stem}{suffix}{extension}",
                              ground_truth / f"{stem}{suffix}{extension.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def list_mvtec_layout(src: str | os.PathLike, mask_suffixes: Sequence[str] = ("_mask", "")) -> list[Entry]:
    """Entries of an MVTec-style tree; a mask is looked up as ``<stem><suffix>.<ext>``.

    Raises:
        FileNotFoundError: ``src`` is not a folder.
        ConversionError: no class folders, or a ``train`` folder holding more than ``good``.
    """
    src = require_dir(Path(src), "source dataset folder")
    classes = sorted(p for p in src.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir()))
    if not classes:
        raise ConversionError(f"no class folders (with train/ or test/ inside) under {str(src)!r}")
    entries = []
    for cls_dir in classes:
        train = cls_dir / "train"
        if train.is_dir():
            extra = sorted(p.name for p in train.iterdir() if p.is_dir() and p.name != NORMAL_SPECIE)
            if extra:
                raise ConversionError(f"{str(train)!r} holds {extra} besides good/: the standard layout "
                                      f"trains on normal images only")
            if (train / NORMAL_SPECIE).is_dir():
                entries += [Entry(cls_dir.name, "train", NORMAL_SPECIE, image)
                            for image in list_images(train / NORMAL_SPECIE)]
        test = cls_dir / "test"
        if not test.is_dir():
            continue
        for specie_dir in sorted(p for p in test.iterdir() if p.is_dir()):
            for image in list_images(specie_dir):
                mask = None
                if specie_dir.name != NORMAL_SPECIE:
                    mask = _find_mask(cls_dir / "ground_truth" / specie_dir.name, image.stem, mask_suffixes)
                entries.append(Entry(cls_dir.name, "test", specie_dir.name, image, mask))
    return entries


def convert(src: str | os.PathLike, root: str | os.PathLike, name: str = "folder", link: bool = False,
            dry_run: bool = False, mask_mode: str = "binary") -> dict:
    """Convert an MVTec-style tree at ``src`` into ``ROOT/<name>``; returns the counts
    (see :func:`data_prep.common.convert_entries`)."""
    return convert_entries(list_mvtec_layout(src), src, root, name, link=link, dry_run=dry_run,
                           mask_mode=mask_mode)


def main(argv: Sequence[str] | None = None) -> int:
    parser = converter_parser("folder", __doc__.splitlines()[0], default_name="folder")
    return run_converter(convert, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
