"""Datasets in the standard layout: meta files, image/mask reading, transforms, the loader.

See ``book/datasets.md`` for the layout, the converters (``data_prep``) and the synthetic
benchmark.
"""
from mambaad_lib.data.dataset import AnomalyDataset
from mambaad_lib.data.io import load_image, load_mask
from mambaad_lib.data.meta import NORMAL_SPECIE, SPLITS, check_meta, make_item, meta_path, read_meta, write_meta
from mambaad_lib.data.preflight import DataProblemsError, PreflightReport, preflight
from mambaad_lib.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, denormalize, transform_image, transform_mask,
                                         transform_mask_soft)

__all__ = [
    "AnomalyDataset", "read_meta", "write_meta", "check_meta", "make_item", "meta_path",
    "load_image", "load_mask", "transform_image", "transform_mask", "transform_mask_soft", "denormalize",
    "IMAGENET_MEAN", "IMAGENET_STD", "SPLITS", "NORMAL_SPECIE", "preflight", "PreflightReport", "DataProblemsError",
]
