"""``AnomalyDataset``: one split of a dataset in the standard layout, read through its meta file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from mambaad_lib.data.io import load_image, load_mask
from mambaad_lib.data.meta import SPLITS, item_has_mask, read_meta
from mambaad_lib.data.transforms import transform_image, transform_mask, transform_mask_soft

__all__ = ["AnomalyDataset"]


class AnomalyDataset(Dataset):
    """Images, masks and labels of ``split`` of dataset ``name`` under ``root``.

    Args:
        root: dataset root holding ``meta_<name>.json`` and ``<name>/``.
        name: dataset name (``mvtec``, ``visa``, ``synthetic``, ...).
        split: ``"train"`` or ``"test"``.
        classes: class names to keep (default: every class of the split, in meta order).
        image_size: side of the square resize.
        crop_size: side of the centre crop taken after resizing.

    Items are dicts:
        ``image`` float (3, crop, crop), ImageNet-normalised; ``mask`` float (1, crop, crop)
        in {0, 1}, resized nearest-neighbour (the ``standard`` protocol's ground truth);
        ``mask_soft`` uint8 (1, crop, crop) in 0..255, resized bilinearly as the release does
        (the ``ader``/``adeval`` ground truth after binarisation, see
        :func:`~mambaad_lib.data.transforms.transform_mask_soft`); both masks are zeros for
        normal images; ``has_mask`` bool, False only for an anomalous image without a mask
        (datasets converted with ``--missing-mask keep``), whose masks are all zero so that
        batches still collate: evaluation must not read them as ground truth (pass the flags
        to :func:`mambaad_lib.metrics.per_class_metrics`); ``label`` int 0/1; ``cls_name``;
        ``specie_name``; ``img_path`` (relative to ``root``, as in the meta).

    Attributes:
        images_without_mask: ``{cls_name: n}`` anomalous images without a mask per class of
            the selection (only classes that have some; empty for fully masked datasets).

    Raises:
        FileNotFoundError: missing root or meta file (at construction), missing image or
            mask file (when the item is read).
        ValueError: bad split, unknown class, malformed meta, an anomalous item without a
            mask path unless the meta says ``"missing_mask": "keep"`` (at construction);
            unreadable image or mask, or a mask whose size differs from its image (when the
            item is read).
    """

    def __init__(self, root: str | os.PathLike, name: str, split: str,
                 classes: Sequence[str] | None = None, image_size: int = 256, crop_size: int = 256):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0 < crop_size <= image_size:
            raise ValueError(f"need 0 < crop_size <= image_size, got crop_size={crop_size}, "
                             f"image_size={image_size}")
        self.root = Path(root)
        self.name = name
        self.split = split
        self.image_size = image_size
        self.crop_size = crop_size
        by_class = read_meta(self.root, name)[split]
        if classes is None:
            self.classes = list(by_class)
        else:
            if isinstance(classes, str):
                classes = [classes]
            unknown = [c for c in classes if c not in by_class]
            if unknown:
                raise ValueError(f"classes {unknown} are not in the {split} split of dataset {name!r} "
                                 f"under {str(self.root)!r}; available: {sorted(by_class)}")
            self.classes = list(dict.fromkeys(classes))
        self.items: list[dict[str, Any]] = [item for c in self.classes for item in by_class[c]]
        self.images_without_mask: dict[str, int] = {}
        for item in self.items:
            if not item_has_mask(item):
                self.images_without_mask[item["cls_name"]] = self.images_without_mask.get(item["cls_name"], 0) + 1

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        image = load_image(self.root / item["img_path"])
        has_mask = item_has_mask(item)
        if item["anomaly"] and has_mask:
            mask_file = self.root / item["mask_path"]
            mask = load_mask(mask_file)
            if mask.size != image.size:
                raise ValueError(f"mask file {str(mask_file)!r} is {mask.size[0]}x{mask.size[1]} but its "
                                 f"image {item['img_path']!r} is {image.size[0]}x{image.size[1]}")
            mask_tensor = transform_mask(mask, self.image_size, self.crop_size)
            soft_mask = transform_mask_soft(mask, self.image_size, self.crop_size)
        else:
            mask_tensor = torch.zeros(1, self.crop_size, self.crop_size)
            soft_mask = torch.zeros(1, self.crop_size, self.crop_size, dtype=torch.uint8)
        return {
            "image": transform_image(image, self.image_size, self.crop_size),  # (3, crop, crop)
            "mask": mask_tensor,                                                 # (1, crop, crop)
            "has_mask": has_mask,
            "mask_soft": soft_mask,                                              # (1, crop, crop) uint8
            "label": int(item["anomaly"]),
            "cls_name": item["cls_name"],
            "specie_name": item["specie_name"],
            "img_path": item["img_path"],
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, name={self.name!r}, split={self.split!r}, "
                f"classes={len(self.classes)}, items={len(self)})")
