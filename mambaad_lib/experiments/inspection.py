"""Looking inside finished runs: predictions again, curves, example maps, timing, GLASS's feature space.

Runs are reloaded from the checkpoints their results files name (``runs/`` is not
committed: a notebook re-executed elsewhere trains them again).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from mambaad_lib.data import denormalize
from mambaad_lib.data.subsets import dataset_items
from mambaad_lib.engine import runner
from mambaad_lib.engine.config import config_from_dict
from mambaad_lib.engine.evaluate import Predictions, predict_dataset
from mambaad_lib.engine.results import read_record
from mambaad_lib.engine.seeding import seed_everything
from mambaad_lib.methods import AnomalyMethod
from mambaad_lib.metrics import image_curves
from mambaad_lib.metrics.defect_types import group_by_las_likeness, per_defect_type_metrics
from mambaad_lib.models import build_mambaad
from mambaad_lib.models.costs import count_flops
from mambaad_lib.utils.files import atomic_write_json
from mambaad_lib.utils.resources import PACKAGE_DIR


def run_models(results_file: str | Path) -> list[tuple[Any, str]]:
    """(run config, checkpoint) of every model of a finished run: one for a unified method,
    one per class for a per-class method.

    Raises:
        FileNotFoundError: a checkpoint is gone (checkpoints live in ``runs/``, which is not
            committed; rerun the notebook with reuse disabled to train it again).
    """
    record = read_record(results_file)
    if record is None:
        raise ValueError(f"{str(results_file)!r} is not a mambaad-companion results file")
    config = config_from_dict(record["config"])
    if record.get("classes"):
        models = [(runner.for_classes(config, [cls_name]), entry["checkpoint"])
                  for cls_name, entry in record["classes"].items()]
    else:
        models = [(config, (record.get("training") or {}).get("checkpoint") or record["evaluation"]["checkpoint"])]
    for _, checkpoint in models:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint!r} of {str(results_file)!r} does not exist "
                                    "(rerun the notebook with reuse disabled to train it again)")
    return models


def load_run(results_file: str | Path) -> tuple[AnomalyMethod, Dataset]:
    """The (first) model of a finished run, loaded for inference, and its test split."""
    config, checkpoint = run_models(results_file)[0]
    method, _ = runner.load_for_inference(checkpoint, config)
    return method, runner.build_datasets(config, splits=("test",))["test"]


def predict_run(results_file: str | Path, progress: bool = False) -> tuple[Predictions, Dataset]:
    """Reload a finished run's model(s) and predict its test split (per class for per-class
    methods, concatenated in class order).

    Returns:
        (:class:`~mambaad_lib.engine.evaluate.Predictions`, the test dataset in the same order).
    """
    parts, tests = [], []
    for config, checkpoint in run_models(results_file):
        method, _ = runner.load_for_inference(checkpoint, config)
        test = runner.build_datasets(config, splits=("test",))["test"]
        parts.append(predict_dataset(method, test, config.eval.batch_size, progress=progress))
        tests.append(test)
    if len(parts) == 1:
        return parts[0], tests[0]

    def joined(name: str) -> np.ndarray | None:
        values = [getattr(part, name) for part in parts]
        return None if any(value is None for value in values) else np.concatenate(values)

    merged = Predictions(joined("maps"), joined("scores"), joined("labels"), joined("masks"),
                         [name for part in parts for name in part.class_names],
                         [path for part in parts for path in part.image_paths],
                         {"n_images": sum(part.timing["n_images"] for part in parts)},
                         joined("soft_masks"), joined("has_mask"))
    return merged, ConcatDataset(tests)


def _thin(values: np.ndarray, limit: int) -> list[float]:
    """At most ``limit`` evenly spaced points of a curve, always keeping both ends."""
    if len(values) <= limit:
        return values.tolist()
    keep = np.unique(np.linspace(0, len(values) - 1, limit).round().astype(int))
    return values[keep].tolist()


def roc_pr_curves(scores: Any, labels: Any, groups: Sequence[str] | None = None,
                  limit: int = 200) -> dict[str, dict[str, Any]]:
    """ROC and precision-recall curves of image scores (:func:`mambaad_lib.metrics.image_curves`),
    per group and pooled.

    Args:
        scores (N,), labels (N,) 0/1; groups: a class name per image (None: pooled only).
        limit: points kept per curve (thinned evenly), so the JSON stays small.
    Returns:
        ``{name: {fpr, tpr, precision, recall, auroc, ap}}``; groups without both normal and
        anomalous images are left out. ``"all classes (pooled)"`` pools every image.
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    selections = {"all classes (pooled)": np.ones(len(scores), dtype=bool)}
    if groups is not None:
        groups = np.asarray(groups)
        selections.update({str(name): groups == name for name in dict.fromkeys(groups.tolist())})
    curves = {}
    for name, chosen in selections.items():
        if not 0 < labels[chosen].sum() < chosen.sum():
            continue
        points = image_curves(scores[chosen], labels[chosen])
        curves[name] = {key: _thin(points[key], limit) for key in ("fpr", "tpr", "precision", "recall")}
        curves[name].update(auroc=points["auroc"], ap=points["ap"])
    return curves


def map_examples(predictions: Predictions, dataset: Dataset, per_class: int = 1) -> dict[str, list[Any]]:
    """Image, ground truth and map of the highest-scored anomalous test images of every class.

    Returns:
        ``{"images": [(H,W,3) in [0,1]], "masks": [(H,W) bool], "maps": [(H,W)], "titles": [...]}``,
        ready for :func:`mambaad_lib.viz.plot_anomaly_grid`.
    """
    picked = []
    for name in dict.fromkeys(predictions.class_names):
        indices = [i for i, (c, y) in enumerate(zip(predictions.class_names, predictions.labels)) if c == name and y]
        picked += sorted(indices, key=lambda i: -predictions.scores[i])[:per_class]
    examples: dict[str, list[Any]] = {"images": [], "masks": [], "maps": [], "titles": []}
    for index in picked:
        examples["images"].append(denormalize(dataset[index]["image"]).permute(1, 2, 0).numpy())
        examples["masks"].append(predictions.masks[index])
        examples["maps"].append(np.asarray(predictions.maps[index]))
        examples["titles"].append(f"{predictions.class_names[index]}: "
                                  f"{Path(predictions.image_paths[index]).parent.name}")
    return examples


def defect_type_comparison(results_files: Mapping[str, str | Path], out_file: str | Path,
                           progress: bool = False) -> dict[str, Any]:
    """Per-defect-type image/pixel AUROC of several methods' finished runs, written to ``out_file`` (JSON).

    Args:
        results_files: label -> results file of a finished run (unified or per class).
        out_file: where the table goes (folder created if needed).
    Returns:
        ``{"methods": {label: {"method", "per_defect_type": rows, "groups": groups, "results_file"}}}``.
    """
    table: dict[str, Any] = {"methods": {}}
    for label, results_file in results_files.items():
        predictions, test = predict_run(results_file, progress)
        species = [item["specie_name"] for item in dataset_items(test)]
        rows = per_defect_type_metrics(predictions.scores, predictions.labels, predictions.maps, predictions.masks,
                                       predictions.class_names, species, predictions.has_mask)
        table["methods"][label] = {"method": read_record(results_file)["method"],
                                   "per_defect_type": rows, "groups": group_by_las_likeness(rows),
                                   "results_file": str(results_file)}
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_file, table)
    return table


# ---- timing ---------------------------------------------------------------------------------


def _interleaved_best_seconds(calls: Mapping[str, Callable[[], Any]], repeats: int,
                              synchronize: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Best-of-``repeats`` seconds of every call, the calls taking turns (one of each per round,
    after one warm-up round), so a load change on a shared machine affects all of them alike.

    The one timing routine of the book: :func:`time_models` (models' ``anomaly_map``) and
    :func:`compare_inference_speed` (methods' ``predict``) both go through it.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    best = {label: float("inf") for label in calls}
    for round_index in range(repeats + 1):
        for label, call in calls.items():
            started = time.perf_counter()
            call()
            synchronize()
            if round_index:  # round 0 warms caches and kernels up
                best[label] = min(best[label], time.perf_counter() - started)
    return best


def time_models(image_size: int, models: Mapping[str, Mapping[str, Any]], batch_size: int = 1, repeats: int = 3,
                device: str = "cpu", seed: int = 0) -> dict[str, dict[str, Any]]:
    """Inference time of random-weight MambaAD models (``label -> build_mambaad options``,
    e.g. ``{"R18": {"backbone": "resnet18"}}``, ``scan_backend`` included) on one random
    batch (B, 3, image_size, image_size), timed in turns (:func:`_interleaved_best_seconds`).

    Returns per label ``image_size``, ``batch_size``, ``seconds`` (one ``anomaly_map`` call),
    ``images_per_s``, ``repeats``, the resolved ``scan_backend`` and the GFLOPs at this size.
    """
    networks = {}
    for label, options in models.items():
        seed_everything(seed)
        plain = {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}
        networks[label] = build_mambaad(image_size=image_size, **plain).to(device).eval()
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        best = _interleaved_best_seconds({label: (lambda net=net: net.anomaly_map(images))
                                          for label, net in networks.items()}, repeats, synchronize)
    return {label: {"image_size": image_size, "batch_size": batch_size, "seconds": best[label],
                    "images_per_s": batch_size / best[label], "repeats": repeats,
                    "scan_backend": networks[label].scan_backend,
                    "flops_g": count_flops(networks[label], image_size)["total"]} for label in networks}


def time_inference(image_size: int, batch_size: int = 1, repeats: int = 3, scan_backend: str = "auto",
                   device: str = "cpu", seed: int = 0, **model: Any) -> dict[str, Any]:
    """:func:`time_models` of one model (``model``: ``build_mambaad`` options)."""
    return time_models(image_size, {"model": {**model, "scan_backend": scan_backend}}, batch_size, repeats,
                       device, seed)["model"]


def compare_inference_speed(methods: Mapping[str, AnomalyMethod], images: torch.Tensor, repeats: int = 3
                            ) -> dict[str, float]:
    """Images per second of ``method.predict(images)`` for every method, best of ``repeats``,
    timed in turns (:func:`_interleaved_best_seconds`): the ratios are the result to read."""
    def synchronize() -> None:
        for method in methods.values():
            if method.device.type == "cuda":
                torch.cuda.synchronize(method.device)

    best = _interleaved_best_seconds({label: (lambda method=method: method.predict(images))
                                      for label, method in methods.items()}, repeats, synchronize)
    return {label: images.shape[0] / seconds for label, seconds in best.items()}


def load_benchmark(name: str, folder: str | Path | None = None) -> dict[str, Any] | None:
    """``results/benchmarks/<name>.json`` of the checkout (written by ``benchmarks/*.py``), or None."""
    path = Path(folder or PACKAGE_DIR.parent / "results" / "benchmarks") / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ---- GLASS's feature space --------------------------------------------------------------------


@torch.no_grad()
def discriminator_contrast(results_file: str | Path, batch_size: int = 16) -> list[dict[str, Any]]:
    """Whether a trained GLASS run's discriminator is inverted: per class model, its mean output
    on the test images' patches that contain a defect pixel vs on every other patch.

    A patch (one cell of the discriminator's (h, w) grid) counts as defective when any pixel of
    its cell is in the ground-truth mask. Returns one row per model: ``{"cls_name",
    "defect_patches", "defect_mean", "other_mean"}`` (``defect_mean`` None without defects).
    """
    rows = []
    for config, checkpoint in run_models(results_file):
        method, _ = runner.load_for_inference(checkpoint, config)
        method.train(False)
        test = runner.build_datasets(config, splits=("test",))["test"]
        sums, counts = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
        for start in range(0, len(test), batch_size):
            items = [test[index] for index in range(start, min(start + batch_size, len(test)))]
            images = torch.stack([item["image"] for item in items]).to(method.device)
            masks = torch.stack([item["mask"].float().reshape(1, *images.shape[-2:]) for item in items])
            scores = method.net.patch_scores(images).cpu().double()  # (B, h, w)
            defect = torch.nn.functional.adaptive_max_pool2d(masks, scores.shape[-2:])[:, 0] > 0.5
            for slot, selected in enumerate((defect, ~defect)):
                sums[slot] += scores[selected].sum()
                counts[slot] += int(selected.sum())
        means = [float(sums[slot] / counts[slot]) if counts[slot] else None for slot in range(2)]
        rows.append({"cls_name": ",".join(config.data.classes or []) or None, "defect_patches": int(counts[0]),
                     "defect_mean": means[0], "other_mean": means[1]})
    return rows


def gas_projection(results_file: str | Path, n_images: int = 4, max_points: int = 600,
                   seed: int = 0) -> dict[str, Any]:
    """Normal, GAS and LAS patch features of a trained GLASS run, projected on 2 principal axes.

    Adapted features of ``n_images`` normal training images of the run's first class are the
    normal set; GAS features come from the run's trained discriminator by its gradient ascent;
    LAS features are the adapted patches of LAS versions of the same images that fall inside
    the synthesized defects (:meth:`~mambaad_lib.methods.glass.GLASSMethod.feature_sets`). The
    principal axes are those of the normal set. Returns ``{"points": {name: (n, 2) list},
    "scores": {name: mean discriminator output}}``.
    """
    config, checkpoint = run_models(results_file)[0]
    method, _ = runner.load_for_inference(checkpoint, config)
    train = runner.build_datasets(config, splits=("train",))["train"]
    images = torch.stack([train[i]["image"] for i in range(min(n_images, len(train)))])  # (B,3,H,W)
    sets = method.feature_sets(images, seed)
    normal = sets["normal"]
    centre = normal.mean(0, keepdim=True)
    _, _, axes = torch.linalg.svd(normal - centre, full_matrices=False)  # rows: principal axes
    generator = np.random.default_rng(seed)
    points, scores = {}, {}
    with torch.no_grad():
        for name, features in sets.items():
            if len(features) == 0:
                continue
            keep = generator.permutation(len(features))[:max_points]
            chosen = features[torch.as_tensor(keep, device=features.device)]
            points[name] = ((chosen - centre) @ axes[:2].T).cpu().numpy().tolist()
            scores[name] = float(method.net.discriminator(chosen).mean())
    return {"points": points, "scores": scores, "results_file": str(results_file)}
