"""Evaluation: maps and scores for a test split, metrics in both protocols, timing, examples."""
from __future__ import annotations

import io
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mambaad_lib.data import denormalize
from mambaad_lib.engine.distributed import SINGLE, Distributed
from mambaad_lib.engine.figures import example_panel, normalize_map
from mambaad_lib.methods.base import AnomalyMethod
from mambaad_lib.metrics import per_class_metrics, protocol_ground_truth
from mambaad_lib.utils.files import atomic_write_bytes


@dataclass
class Predictions:
    """Everything predicted on a test split, in dataset order.

    ``maps`` (N,H,W) float32; ``scores`` (N,); ``labels`` (N,) 0/1; ``masks`` (N,H,W) bool;
    ``class_names`` and ``image_paths`` one per image; ``timing`` dict; ``soft_masks`` (N,H,W)
    uint8, the release's bilinearly resized masks (dataset ``mask_soft``; None when the dataset
    has none), which the ``ader``/``adeval`` protocols evaluate; ``has_mask`` (N,) bool, False
    for anomalous images without a mask (None: every image has its ground truth).
    """

    maps: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    class_names: list[str]
    image_paths: list[str]
    timing: dict[str, Any]
    soft_masks: np.ndarray | None = None
    has_mask: np.ndarray | None = None


def _peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_memory_kind": "cuda max_memory_allocated during evaluation"}
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
    return {"peak_memory_bytes": int(kilobytes * scale),
            "peak_memory_kind": "process peak resident set size (CPU)"}


def predict_dataset(method: AnomalyMethod, dataset: Dataset, batch_size: int, num_workers: int = 0,
                    progress: bool = True, desc: str = "evaluate",
                    parallel: Distributed | None = None) -> Predictions | None:
    """Run ``method.predict`` over ``dataset`` (items as from :class:`AnomalyDataset`).

    Under torchrun (``parallel`` with W processes) process r predicts batches r, r + W, ...
    of the one-process order (every image in the batch it has in one process) and rank 0
    gathers them in dataset order: rank 0 returns the one-process predictions, the other
    processes None. Timing then counts every image: wall time on rank 0 (gathering
    included), model time and peak memory of the slowest / largest process.
    """
    parallel = parallel or SINGLE
    if len(dataset) == 0:
        raise ValueError("the test set is empty: no test images were found")
    if method.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(method.device)
    batches = [list(range(start, min(start + batch_size, len(dataset))))
               for start in range(0, len(dataset), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches[parallel.rank::parallel.world_size], num_workers=num_workers)
    parts = []  # one dict of numpy arrays / lists per batch
    model_seconds = 0.0
    started = time.perf_counter()
    bars = progress and parallel.is_main
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not bars, leave=False, dynamic_ncols=True):
        tick = time.perf_counter()
        batch_maps, batch_scores = method.predict(batch["image"])  # (B,1,H,W), (B,)
        if method.device.type == "cuda":
            torch.cuda.synchronize(method.device)
        model_seconds += time.perf_counter() - tick
        part = {"maps": batch_maps[:, 0].float().cpu().numpy(), "scores": batch_scores.float().cpu().numpy(),
                "labels": np.asarray(batch["label"]), "masks": batch["mask"][:, 0].numpy() > 0.5,
                "class_names": list(batch["cls_name"]), "paths": list(batch["img_path"])}
        if "mask_soft" in batch:
            part["soft_masks"] = batch["mask_soft"][:, 0].numpy()
        if "has_mask" in batch:
            part["has_mask"] = np.asarray(batch["has_mask"], dtype=bool)
        parts.append(part)
    gathered = parallel.gather_to_main((parts, model_seconds, _peak_memory(method.device)))
    if gathered is None:
        return None
    # Batch i was predicted by process i % W, as its (i // W)-th batch.
    ordered = [gathered[index % parallel.world_size][0][index // parallel.world_size] for index in range(len(batches))]
    total_seconds = time.perf_counter() - started
    model_seconds = max(seconds for _, seconds, _ in gathered)
    memory = max((peak for _, _, peak in gathered), key=lambda peak: peak["peak_memory_bytes"])

    def joined(key: str) -> np.ndarray | None:
        return np.concatenate([part[key] for part in ordered]) if key in ordered[0] else None

    class_names = [name for part in ordered for name in part["class_names"]]
    n_images = len(class_names)
    timing = {"n_images": n_images, "wall_time_s": total_seconds, "model_time_s": model_seconds,
              "images_per_s": n_images / max(total_seconds, 1e-9),
              "model_images_per_s": n_images / max(model_seconds, 1e-9), **memory}
    return Predictions(joined("maps"), joined("scores"), joined("labels").astype(np.int64), joined("masks"),
                       class_names, [path for part in ordered for path in part["paths"]], timing,
                       joined("soft_masks"), joined("has_mask"))


def compute_protocol_metrics(predictions: Predictions, protocols: Sequence[str]) -> dict[str, Any]:
    """``{protocol: {"per_class": [{cls_name, metric...}], "mean": {metric...}, "notes": {row: text}}}``.

    Metrics that cannot be computed (pixel metrics of classes with anomalous images without
    masks) are None, and ``notes`` says why, per class row and for the ``mean`` row.
    """
    metrics = {}
    for protocol in protocols:
        labels, masks = protocol_ground_truth(protocol, predictions.labels, predictions.masks, predictions.soft_masks,
                                              predictions.has_mask)
        result = per_class_metrics(predictions.scores, labels, predictions.maps, masks, predictions.class_names,
                                   protocol=protocol, has_mask=predictions.has_mask)
        metrics[protocol] = {"per_class": [_plain(row) for row in result.per_class], "mean": _plain(result.mean),
                             "notes": dict(result.notes)}
    return metrics


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars -> Python floats (JSON)."""
    return {key: float(value) if isinstance(value, (float, np.floating)) else value for key, value in row.items()}


def pick_examples(predictions: Predictions, count: int) -> list[int]:
    """Up to ``count`` anomalous test images, one class after another (round robin)."""
    by_class: dict[str, list[int]] = {}
    for index, (name, label) in enumerate(zip(predictions.class_names, predictions.labels)):
        if label == 1:
            by_class.setdefault(name, []).append(index)
    chosen: list[int] = []
    queues = list(by_class.values())
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


def save_examples(predictions: Predictions, dataset: Dataset, indices: Sequence[int], folder: Path) -> list[Path]:
    """Write ``image | ground truth | overlay`` PNGs; the colour range is shared by all maps."""
    if not indices:
        return []
    low, high = float(predictions.maps.min()), float(np.quantile(predictions.maps, 0.999))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for rank, index in enumerate(indices):
        item = dataset[index]
        image = denormalize(item["image"]).permute(1, 2, 0).numpy()  # (H,W,3) in [0,1]
        panel = example_panel(image, normalize_map(predictions.maps[index], low, high), predictions.masks[index])
        name = f"{rank:02d}_{predictions.class_names[index]}_{Path(predictions.image_paths[index]).stem}.png"
        buffer = io.BytesIO()
        panel.save(buffer, format="PNG")
        written.append(atomic_write_bytes(folder / name, buffer.getvalue()))
    return written
