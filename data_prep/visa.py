"""Convert VisA into the standard layout, following its one-class split ``split_csv/1cls.csv``.

Source: ``SRC/<class>/Data/Images/{Normal,Anomaly}/*.JPG``, ``SRC/<class>/Data/Masks/Anomaly/*.png``
and ``SRC/split_csv/1cls.csv`` with columns ``object,split,label,image,mask`` (paths relative to
``SRC``). VisA has no defect types: anomalous test images go to ``test/anomaly``. Its masks
hold small class indices, so they are binarised with ``> 0`` and written as 0/255 PNGs.

    python -m data_prep.visa --src /data/VisA_20220922 --root data
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

from data_prep.common import ConversionError, Entry, convert_entries, converter_parser, require_dir, run_converter
from mambaad_lib.data.meta import NORMAL_SPECIE, SPLITS

__all__ = ["SPLIT_CSV", "CSV_COLUMNS", "ANOMALY_SPECIE", "list_visa", "convert", "main"]

SPLIT_CSV = "split_csv/1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
ANOMALY_SPECIE = "anomaly"
LABELS = {"normal": NORMAL_SPECIE, "anomaly": ANOMALY_SPECIE}


def list_visa(src: str | os.PathLike, split_csv: str = SPLIT_CSV) -> list[Entry]:
    """Entries listed by the split CSV.

    Raises:
        FileNotFoundError: ``src`` or the CSV is missing.
        ConversionError: missing columns or bad rows (every bad row is listed by line number).
    """
    src = require_dir(Path(src), "source dataset folder")
    csv_path = src / split_csv
    if not csv_path.is_file():
        raise FileNotFoundError(f"VisA split file {str(csv_path)!r} not found (expected {SPLIT_CSV} under the source)")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConversionError(f"{str(csv_path)!r} lacks the column(s) {missing}; header must be "
                                  f"{','.join(CSV_COLUMNS)}")
        rows = list(reader)
    entries, problems = [], []
    for line, row in enumerate(rows, start=2):
        split, label = row["split"].strip().lower(), row["label"].strip().lower()
        if split not in SPLITS or label not in LABELS:
            problems.append(f"{csv_path}:{line}: split must be train/test and label normal/anomaly, "
                            f"got {row['split']!r}, {row['label']!r}")
            continue
        specie = LABELS[label]
        if split == "train" and specie != NORMAL_SPECIE:
            problems.append(f"{csv_path}:{line}: an anomalous training image; the standard layout trains "
                            f"on normal images only")
            continue
        mask_field = (row["mask"] or "").strip()
        # An anomalous row without a mask is left to --missing-mask (error, skip or keep).
        mask = src / mask_field if specie != NORMAL_SPECIE and mask_field else None
        entries.append(Entry(row["object"].strip(), split, specie, src / row["image"].strip(), mask))
    if problems:
        raise ConversionError(f"{len(problems)} bad row(s):\n  " + "\n  ".join(problems[:50]))
    return entries


def convert(src: str | os.PathLike, root: str | os.PathLike, name: str = "visa", link: bool = False,
            dry_run: bool = False, mask_mode: str = "nonzero", missing_mask: str = "error",
            split_csv: str = SPLIT_CSV) -> dict:
    """Convert VisA at ``src`` into ``ROOT/<name>``; returns the counts per class and split."""
    entries = list_visa(src, split_csv)
    return convert_entries(entries, src, root, name, link=link, dry_run=dry_run, mask_mode=mask_mode,
                           missing_mask=missing_mask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = converter_parser("visa", __doc__.splitlines()[0], default_name="visa", default_mask_mode="nonzero")
    parser.add_argument("--split-csv", default=SPLIT_CSV, help=f"split file relative to --src (default {SPLIT_CSV})")
    return run_converter(convert, parser, argv, extra=lambda args: {"split_csv": args.split_csv})


if __name__ == "__main__":
    raise SystemExit(main())
