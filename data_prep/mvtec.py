"""Convert MVTec-AD (as downloaded) into the standard layout.

Source: ``SRC/<class>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``
for the 15 classes (any subset converts). Masks must be 0/255.

    python -m data_prep.mvtec --src /data/mvtec_anomaly_detection --root data
"""
from __future__ import annotations

import os
from typing import Sequence

from data_prep.common import convert_entries, converter_parser, run_converter
from data_prep.folder import list_mvtec_layout

__all__ = ["MVTEC_CLASSES", "convert", "main"]

MVTEC_CLASSES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                 "screw", "tile", "toothbrush", "transistor", "wood", "zipper")


def convert(src: str | os.PathLike, root: str | os.PathLike, name: str = "mvtec", link: bool = False,
            dry_run: bool = False, mask_mode: str = "binary", missing_mask: str = "error") -> dict:
    """Convert MVTec-AD at ``src`` into ``ROOT/<name>``; returns the counts per class and split."""
    entries = list_mvtec_layout(src, mask_suffixes=("_mask",))
    return convert_entries(entries, src, root, name, link=link, dry_run=dry_run, mask_mode=mask_mode,
                           missing_mask=missing_mask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = converter_parser("mvtec", __doc__.splitlines()[0], default_name="mvtec")
    return run_converter(convert, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
