"""Convert MVTec LOCO AD (logical and structural anomalies) into the standard layout.

Source, one folder per class (``breakfast_box``, ``juice_bottle``, ``pushpins``,
``screw_bag``, ``splicing_connectors``)::

    SRC/<class>/train/good/*.png
    SRC/<class>/validation/good/*.png
    SRC/<class>/test/{good,logical_anomalies,structural_anomalies}/*.png
    SRC/<class>/ground_truth/<type>/<stem>/000.png, 001.png, ...

An anomalous image's ground truth is a folder of partial masks, one per defect region
(each holds 0 and the defect's own value); they are merged by union (``> 0``) into one
0/255 mask. The defect types stay ``logical_anomalies`` and ``structural_anomalies``, so
results can be broken down by kind. ``validation/good`` is ignored by default: the
dataset (Bergmann et al., IJCV 2022) publishes it apart from ``train``, and anomalib's data
module uses it as a validation split, not for training; ``--validation merge`` adds it to
training as ``val_<name>``.

The official LOCO localisation metric, sPRO with per-defect saturation thresholds
(``defects_config.json``), is not computed: pixel metrics here are the standard ones on
the merged mask.

    python -m data_prep.mvtec_loco --src /data/mvtec_loco_anomaly_detection --root data
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from data_prep.common import (Entry, add_validation_option, convert_entries, converter_parser, labeled_test_entries,
                              list_images, normal_train_entries, run_converter, train_class_folders)
from mambaad_lib.data.meta import NORMAL_SPECIE

__all__ = ["LOCO_CLASSES", "list_mvtec_loco", "convert", "main"]

LOCO_CLASSES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")


def _partial_masks(folder: Path) -> Path | tuple[Path, ...] | None:
    """The mask(s) in one image's ground-truth folder: one path, a tuple to merge, or None."""
    masks = tuple(list_images(folder, missing_ok=True))
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else masks


def list_mvtec_loco(src: str | os.PathLike, validation: str = "ignore") -> list[Entry]:
    """Entries of an MVTec LOCO AD tree; anomalous images carry their partial masks."""
    entries = []
    for cls_dir in train_class_folders(src, validation):
        entries += normal_train_entries(cls_dir.name, list_images(cls_dir / "train" / NORMAL_SPECIE, missing_ok=True),
                                        list_images(cls_dir / "validation" / NORMAL_SPECIE, missing_ok=True),
                                        validation)
        ground_truth = cls_dir / "ground_truth"
        entries += labeled_test_entries(
            cls_dir.name, cls_dir / "test",
            lambda specie_dir, image: _partial_masks(ground_truth / specie_dir.name / image.stem))
    return entries


def convert(src: str | os.PathLike, root: str | os.PathLike, name: str = "mvtec_loco", link: bool = False,
            dry_run: bool = False, mask_mode: str = "binary", missing_mask: str = "error",
            validation: str = "ignore") -> dict:
    """Convert MVTec LOCO AD at ``src`` into ``ROOT/<name>``; returns the counts per class and split."""
    entries = list_mvtec_loco(src, validation)
    return convert_entries(entries, src, root, name, link=link, dry_run=dry_run, mask_mode=mask_mode,
                           missing_mask=missing_mask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = converter_parser("mvtec_loco", __doc__.splitlines()[0], default_name="mvtec_loco")
    add_validation_option(parser)
    return run_converter(convert, parser, argv, extra=lambda args: {"validation": args.validation})


if __name__ == "__main__":
    raise SystemExit(main())
