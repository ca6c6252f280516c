"""Convert MPDD (Metal Parts Defect Detection) into the standard layout.

MPDD is published in the MVTec-AD layout: ``SRC/<class>/train/good/*.png``,
``SRC/<class>/test/<defect>/*.png`` (``good`` included) and
``SRC/<class>/ground_truth/<defect>/<stem>_mask.png``, for the six classes of
:data:`MPDD_CLASSES` (any subset converts). Masks must hold 0 and one defect value.

    python -m data_prep.mpdd --src /data/MPDD --root data
"""
from __future__ import annotations

import os
from typing import Sequence

from data_prep.common import convert_entries, converter_parser, run_converter
from data_prep.folder import list_mvtec_layout

__all__ = ["MPDD_CLASSES", "convert", "main"]

MPDD_CLASSES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")


def convert(src: str | os.PathLike, root: str | os.PathLike, name: str = "mpdd", link: bool = False,
            dry_run: bool = False, mask_mode: str = "binary", missing_mask: str = "error") -> dict:
    """Convert MPDD at ``src`` into ``ROOT/<name>``; returns the counts per class and split."""
    entries = list_mvtec_layout(src, mask_suffixes=("_mask",))
    return convert_entries(entries, src, root, name, link=link, dry_run=dry_run, mask_mode=mask_mode,
                           missing_mask=missing_mask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = converter_parser("mpdd", __doc__.splitlines()[0], default_name="mpdd")
    return run_converter(convert, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
