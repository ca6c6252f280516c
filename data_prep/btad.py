"""Convert BTAD (beanTech Anomaly Detection) into the standard layout.

Source, one folder per product (``01``, ``02``, ``03``)::

    SRC/<NN>/train/ok/*.{bmp,png}          normal training images
    SRC/<NN>/test/ok/*                     normal test images
    SRC/<NN>/test/ko/*                     anomalous test images
    SRC/<NN>/ground_truth/ko/<stem>.{png,bmp}   their masks

BTAD's normal folder is ``ok`` (it becomes ``good``); its only defect type is ``ko``. Image
and mask formats differ between products, so a mask is looked up by the image's stem with
any image extension (``<stem>_mask.*`` is accepted too). Masks are rewritten as 0/255
PNGs; a mask with more than one non-zero value is refused unless ``--mask-mode nonzero``.

    python -m data_prep.btad --src /data/BTech_Dataset_transformed --root data
"""
from __future__ import annotations

import os
from typing import Sequence

from data_prep.common import convert_entries, converter_parser, run_converter
from data_prep.folder import list_mvtec_layout

__all__ = ["BTAD_CLASSES", "NORMAL_FOLDER", "convert", "main"]

BTAD_CLASSES = ("01", "02", "03")
NORMAL_FOLDER = "ok"


def convert(src: str | os.PathLike, root: str | os.PathLike, name: str = "btad", link: bool = False,
            dry_run: bool = False, mask_mode: str = "binary", missing_mask: str = "error") -> dict:
    """Convert BTAD at ``src`` into ``ROOT/<name>``; returns the counts per class and split."""
    entries = list_mvtec_layout(src, mask_suffixes=("", "_mask"), normal_names=NORMAL_FOLDER)
    return convert_entries(entries, src, root, name, link=link, dry_run=dry_run, mask_mode=mask_mode,
                           missing_mask=missing_mask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = converter_parser("btad", __doc__.splitlines()[0], default_name="btad")
    return run_converter(convert, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
