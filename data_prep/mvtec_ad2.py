"""Convert MVTec AD 2 into the standard layout; its private test sets for prediction only.

Source, one folder per class (``can``, ``fabric``, ``fruit_jelly``, ``rice``,
``sheet_metal``, ``vial``, ``wallplugs``, ``walnuts``)::

    SRC/<class>/train/good/*.png
    SRC/<class>/validation/good/*.png
    SRC/<class>/test_public/{good,bad}/*.png
    SRC/<class>/test_public/ground_truth/bad/<stem>_mask.png
    SRC/<class>/test_private/*.png            no labels, no masks
    SRC/<class>/test_private_mixed/*.png      no labels, no masks (seen and unseen lighting)

``test_public`` becomes the ``test`` split (defect type ``bad``): the only AD 2 images
with labels, so the only ones any metric is computed on. The private sets have no public
ground truth (they are scored by the MVTec benchmark server), so they are never put in a
split: with ``--private include`` (default) they are copied to
``ROOT/<name>/<class>/test_private[_mixed]/`` and listed under the meta's ``"unlabeled"``
key, which the loader and the evaluation ignore; predict on them with
``mambaad predict ROOT/<name>/<class>/test_private``. ``--private ignore`` leaves them out.
``validation/good`` is ignored by default (published apart from ``train``; anomalib's data
module uses it as a validation split, not for training); ``--validation merge`` adds it to
training as ``val_<name>``. Dataset: Heckler-Kram et al., arXiv:2503.21622.

    python -m data_prep.mvtec_ad2 --src /data/mvtec_ad_2 --root data
"""
from __future__ import annotations

import os
from typing import Sequence

from data_prep.common import (Entry, add_validation_option, convert_entries, converter_parser, labeled_test_entries,
                              list_images, normal_train_entries, run_converter, train_class_folders)
from data_prep.folder import find_mask
from mambaad_lib.data.meta import NORMAL_SPECIE

__all__ = ["AD2_CLASSES", "PUBLIC_TEST", "PRIVATE_SETS", "PRIVATE_MODES", "list_mvtec_ad2", "convert", "main"]

AD2_CLASSES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
PUBLIC_TEST = "test_public"
PRIVATE_SETS = ("test_private", "test_private_mixed")
PRIVATE_MODES = ("include", "ignore")


def list_mvtec_ad2(src: str | os.PathLike, validation: str = "ignore", private: str = "include") -> list[Entry]:
    """Entries of an MVTec AD 2 tree: train, the public test set and (``private="include"``)
    the private test sets as unlabeled entries."""
    if private not in PRIVATE_MODES:
        raise ValueError(f"private must be one of {PRIVATE_MODES}, got {private!r}")
    entries = []
    for cls_dir in train_class_folders(src, validation):
        entries += normal_train_entries(cls_dir.name, list_images(cls_dir / "train" / NORMAL_SPECIE, missing_ok=True),
                                        list_images(cls_dir / "validation" / NORMAL_SPECIE, missing_ok=True),
                                        validation)
        ground_truth = cls_dir / PUBLIC_TEST / "ground_truth"
        entries += labeled_test_entries(
            cls_dir.name, cls_dir / PUBLIC_TEST,
            lambda specie_dir, image: find_mask(ground_truth / specie_dir.name, image.stem, ("_mask",)),
            skip=("ground_truth",))
        if private == "include":
            entries += [Entry(cls_dir.name, set_name, None, image) for set_name in PRIVATE_SETS
                        for image in list_images(cls_dir / set_name, missing_ok=True)]
    return entries


def convert(src: str | os.PathLike, root: str | os.PathLike, name: str = "mvtec_ad2", link: bool = False,
            dry_run: bool = False, mask_mode: str = "binary", missing_mask: str = "error",
            validation: str = "ignore", private: str = "include") -> dict:
    """Convert MVTec AD 2 at ``src`` into ``ROOT/<name>``; returns the counts per class and
    split (the private sets as ``{set: {"unlabeled": n}}``)."""
    entries = list_mvtec_ad2(src, validation, private)
    return convert_entries(entries, src, root, name, link=link, dry_run=dry_run, mask_mode=mask_mode,
                           missing_mask=missing_mask)


def main(argv: Sequence[str] | None = None) -> int:
    parser = converter_parser("mvtec_ad2", __doc__.splitlines()[0], default_name="mvtec_ad2")
    add_validation_option(parser)
    parser.add_argument("--private", choices=PRIVATE_MODES, default="include",
                        help=f"{', '.join(PRIVATE_SETS)} (no labels): 'include' (default) copies them for "
                             "prediction only, listed under the meta's 'unlabeled' key; 'ignore' leaves them out")
    return run_converter(convert, parser, argv, extra=lambda args: {"validation": args.validation,
                                                                     "private": args.private})


if __name__ == "__main__":
    raise SystemExit(main())
