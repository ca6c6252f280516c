"""Convert the RGB part of MVTec-3D-AD into the standard layout (point clouds are ignored).

Source: ``SRC/<class>/{train,validation,test}/<defect>/{rgb,gt,xyz}/NNN.*``; images are
``rgb/*.png``, masks ``gt/*.png`` (test only). Normal test images come with all-zero masks,
which the standard layout drops. ``validation/good`` is ignored by default; with
``--validation merge`` its images join the training set as ``val_NNN.png``.

    python -m data_prep.mvtec3d --src /data/mvtec_3d_anomaly_detection --root data
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from data_prep.common import (VALIDATION_MODES, ConversionError, Entry, add_validation_option, convert_entries,
                              converter_parser, labeled_test_entries, list_images, normal_train_entries, run_converter,
                              train_class_folders)
from mambaad_lib.data.meta import NORMAL_SPECIE

__all__ = ["VALIDATION_MODES", "list_mvtec3d", "convert", "main"]


def _rgb_images(specie_dir: Path) -> list[Path]:
    rgb = specie_dir / "rgb"
    if not rgb.is_dir():
        raise ConversionError(f"{str(specie_dir)!r} has no rgb/ folder (MVTec-3D layout expected)")
    return list_images(rgb)


def _rgb_mask(specie_dir: Path, image: Path) -> Path | None:
    candidate = specie_dir / "gt" / f"{image.stem}.png"
    return candidate if candidate.is_file() else None


def list_mvtec3d(src: str | os.PathLike, validation: str = "ignore") -> list[Entry]:
    """Entries of an MVTec-3D-AD tree (RGB images and ground-truth masks only)."""
    entries = []
    for cls_dir in train_class_folders(src, validation):
        train, validation_good = cls_dir / "train" / NORMAL_SPECIE, cls_dir / "validation" / NORMAL_SPECIE
        entries += normal_train_entries(
            cls_dir.name, _rgb_images(train) if train.is_dir() else [],
            _rgb_images(validation_good) if validation == "merge" and validation_good.is_dir() else [], validation)
        entries += labeled_test_entries(cls_dir.name, cls_dir / "test", _rgb_mask, images_of=_rgb_images)
    return entries


def convert(src: str | os.PathLike, root: str | os.PathLike, name: str = "mvtec3d", link: bool = False,
            dry_run: bool = False, mask_mode: str = "binary", missing_mask: str = "error",
            validation: str = "ignore") -> dict:
    """Convert MVTec-3D-AD (RGB) at ``src`` into ``ROOT/<name>``; returns the counts."""
    entries = list_mvtec3d(src, validation)
    return convert_entries(entries, src, root, name, link=link, dry_run=dry_run, mask_mode=mask_mode,
                           missing_mask=missing_mask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = converter_parser("mvtec3d", __doc__.splitlines()[0], default_name="mvtec3d")
    add_validation_option(parser)
    return run_converter(convert, parser, argv, extra=lambda args: {"validation": args.validation})


if __name__ == "__main__":
    raise SystemExit(main())
