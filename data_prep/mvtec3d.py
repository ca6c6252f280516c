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
                              converter_parser, list_images, normal_train_entries, require_dir, run_converter)
from mambaad_lib.data.meta import NORMAL_SPECIE

__all__ = ["VALIDATION_MODES", "list_mvtec3d", "convert", "main"]


def _rgb_images(specie_dir: Path) -> list[Path]:
    rgb = specie_dir / "rgb"
    if not rgb.is_dir():
        raise ConversionError(f"{str(specie_dir)!r} has no rgb/ folder (MVTec-3D layout expected)")
    return list_images(rgb)


def list_mvtec3d(src: str | os.PathLike, validation: str = "ignore") -> list[Entry]:
    """Entries of an MVTec-3D-AD tree (RGB images and ground-truth masks only)."""
    if validation not in VALIDATION_MODES:
        raise ValueError(f"validation must be one of {VALIDATION_MODES}, got {validation!r}")
    src = require_dir(Path(src), "source dataset folder")
    classes = sorted(p for p in src.iterdir() if p.is_dir() and (p / "train").is_dir())
    if not classes:
        raise ConversionError(f"no class folders (with train/ inside) under {str(src)!r}")
    entries = []
    for cls_dir in classes:
        train, validation_good = cls_dir / "train" / NORMAL_SPECIE, cls_dir / "validation" / NORMAL_SPECIE
        entries += normal_train_entries(
            cls_dir.name, _rgb_images(train) if train.is_dir() else [],
            _rgb_images(validation_good) if validation == "merge" and validation_good.is_dir() else [], validation)
        test = cls_dir / "test"
        if not test.is_dir():
            continue
        for specie_dir in sorted(p for p in test.iterdir() if p.is_dir()):
            for image in _rgb_images(specie_dir):
                mask = None
                if specie_dir.name != NORMAL_SPECIE:
                    candidate = specie_dir / "gt" / f"{image.stem}.png"
                    mask = candidate if candidate.is_file() else None
                entries.append(Entry(cls_dir.name, "test", specie_dir.name, image, mask))
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
