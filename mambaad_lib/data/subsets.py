"""Parts of a dataset: the first images of each class, an index subset, the items behind them.

The engine caps splits (``data.train_per_class``/``test_per_class``) and takes the labelled
anomalies of open-set methods out of a test split; both are ``torch.utils.data.Subset``s
that keep the dataset's ``classes``. :func:`dataset_items` reads the meta items of any such
view in order.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch.utils.data import ConcatDataset, Dataset, Subset

__all__ = ["dataset_items", "first_per_class", "subset"]


def dataset_items(dataset: Dataset) -> list[dict[str, Any]]:
    """Meta items (``img_path``, ``cls_name``, ``specie_name``, ...) of an
    :class:`~mambaad_lib.data.AnomalyDataset` or of (nested) subsets or concatenations of
    them, in dataset order."""
    if isinstance(dataset, Subset):
        inner = dataset_items(dataset.dataset)
        return [inner[index] for index in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [item for part in dataset.datasets for item in dataset_items(part)]
    return list(dataset.items)


def subset(dataset: Dataset, indices: Sequence[int]) -> Subset:
    """``Subset(dataset, indices)`` that keeps the dataset's ``classes``."""
    part = Subset(dataset, list(indices))
    part.classes = dataset.classes  # type: ignore[attr-defined]
    return part


def first_per_class(dataset: Dataset, per_class: int | None) -> Dataset:
    """The first ``per_class`` items of every class (meta order), or the dataset itself for None."""
    if per_class is None:
        return dataset
    counts: dict[str, int] = {}
    keep = []
    for index, item in enumerate(dataset_items(dataset)):
        counts[item["cls_name"]] = counts.get(item["cls_name"], 0) + 1
        if counts[item["cls_name"]] <= per_class:
            keep.append(index)
    return subset(dataset, keep)
