"""One model per class (GLASS, PatchCore-style baselines) on top of the unified-model engine.

The engine trains one model on all configured classes (MambaAD's unified setting). GLASS
and the nearest-neighbour baseline are per-class methods: :func:`train_per_class` runs the
engine once per class (``data.classes = [cls]``), each run with its own checkpoint folder
and results file (``<method>-<cls>-seed<seed>``). :func:`predict_runs` reloads the runs and
predicts their test splits, and :func:`defect_type_comparison` turns several methods' runs
into the per-defect-type table of the synthesis chapter, written atomically as JSON.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mambaad_lib.engine.config import RunConfig, config_to_dict
from mambaad_lib.engine.evaluate import Predictions, predict_dataset
from mambaad_lib.utils.files import atomic_write_json
from mambaad_lib.engine.results import results_path
from mambaad_lib.engine.runner import RunOutcome, build_datasets, load_for_inference, train
from mambaad_lib.metrics.defect_types import dataset_species, group_by_las_likeness, per_defect_type_metrics


def _for_classes(config: RunConfig, classes: Sequence[str] | None) -> RunConfig:
    data = dataclasses.replace(config.data, classes=list(classes) if classes else None)
    return dataclasses.replace(config, data=data)


def configured_classes(config: RunConfig) -> list[str]:
    """The classes a config selects (all classes of the training split when ``data.classes`` is null)."""
    return list(build_datasets(config, splits=("train",))["train"].classes)


def train_or_reuse(config: RunConfig, run_id: str, progress: bool = True) -> RunOutcome:
    """``runner.train`` unless a finished run ``run_id`` with exactly this config already has
    its results file and final checkpoint (then that run is returned, nothing is retrained)."""
    results_file = results_path(config.paths.results_dir, config.experiment, config.profile, run_id)
    if results_file.is_file():
        record = json.loads(results_file.read_text(encoding="utf-8"))
        checkpoint = Path((record.get("training") or {}).get("checkpoint") or "")
        if record.get("config") == json.loads(json.dumps(config_to_dict(config))) and checkpoint.is_file():
            return RunOutcome(results_file, checkpoint.parent, record)
    return train(config, run_id=run_id, progress=progress)


def train_per_class(config: RunConfig, progress: bool = True) -> list[RunOutcome]:
    """Train and evaluate one model per configured class (finished identical runs are reused);
    returns the runs in class order."""
    return [train_or_reuse(_for_classes(config, [cls_name]), f"{config.method}-{cls_name}-seed{config.seed}", progress)
            for cls_name in configured_classes(config)]


def predict_runs(config: RunConfig, outcomes: Sequence[RunOutcome], progress: bool = True
                 ) -> tuple[Predictions, list[str]]:
    """Predictions of finished runs on their own test splits, concatenated, and the ``specie_name``s.

    Each run is reloaded from its final checkpoint with the classes it was trained on.
    """
    parts, species = [], []
    for outcome in outcomes:
        classes = outcome.record["config"]["data"]["classes"]
        run_config = _for_classes(config, classes)
        method, _ = load_for_inference(outcome.record["training"]["checkpoint"], run_config)
        test = build_datasets(run_config, splits=("test",))["test"]
        parts.append(predict_dataset(method, test, run_config.eval.batch_size, progress=progress))
        species += dataset_species(test)
    merged = Predictions(
        np.concatenate([p.maps for p in parts]), np.concatenate([p.scores for p in parts]),
        np.concatenate([p.labels for p in parts]), np.concatenate([p.masks for p in parts]),
        [name for p in parts for name in p.class_names], [path for p in parts for path in p.image_paths],
        {"n_images": sum(p.timing["n_images"] for p in parts)})
    return merged, species


def defect_type_comparison(runs: Mapping[str, tuple[RunConfig, Sequence[RunOutcome]]], out_file: str | Path,
                           progress: bool = True) -> dict[str, Any]:
    """Per-defect-type image/pixel AUROC of several methods, written to ``out_file`` (JSON).

    Args:
        runs: label -> (config, finished runs): one unified run or one run per class.
        out_file: where the table goes (folder created if needed).
    Returns:
        ``{"methods": {label: {"per_defect_type": rows, "groups": groups, "results_files": [...]}}}``.
    """
    table: dict[str, Any] = {"methods": {}}
    for label, (config, outcomes) in runs.items():
        predictions, species = predict_runs(config, outcomes, progress)
        rows = per_defect_type_metrics(predictions.scores, predictions.labels, predictions.maps, predictions.masks,
                                       predictions.class_names, species)
        table["methods"][label] = {"method": config.method, "per_defect_type": rows,
                                   "groups": group_by_las_likeness(rows),
                                   "results_files": [str(outcome.results_file) for outcome in outcomes]}
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_file, table)
    return table


def synthesis_demo(results_dir: str | Path = "results", progress: bool = True,
                   overrides: Mapping[str, Any] | None = None,
                   mambaad_results: str | Path | None = None) -> dict[str, Any]:
    """The synthesis chapter's comparison on the synthetic benchmark (CPU, random encoder).

    MambaAD (``demo`` profile, one unified model), GLASS (``glass_demo``, one model per class)
    and the nearest-neighbour baseline (``glass_nearest_neighbor_demo``, per class), all on
    the ``demo`` profile's data section (same classes, images and size), under experiment
    ``glass_synthesis``; finished identical runs are reused. The per-defect-type table goes
    to ``<results_dir>/glass_synthesis/demo/defect_types.json``. ``overrides`` (dotted keys)
    apply to all three configs, e.g. ``{"data.root": "data"}``. ``mambaad_results``: the
    results file of a finished ``demo`` run to use instead of training MambaAD again (its
    config, data section included, is used as is).
    """
    from mambaad_lib.engine.config import load_config

    common = {"experiment": "glass_synthesis", "profile": "demo", "paths.results_dir": str(results_dir),
              **dict(overrides or {})}
    if mambaad_results is not None:
        record = json.loads(Path(mambaad_results).read_text(encoding="utf-8"))
        mambaad = load_config(None, base=record["config"])
        mambaad_run = RunOutcome(Path(mambaad_results), None, record)
    else:
        mambaad = load_config("demo", common)
        mambaad_run = train_or_reuse(mambaad, f"mambaad-unified-seed{mambaad.seed}", progress)
    same_data = {f"data.{key}": value for key, value in config_to_dict(mambaad)["data"].items()}
    runs: dict[str, tuple[RunConfig, Sequence[RunOutcome]]] = {}
    for label, profile in (("GLASS", "glass_demo"), ("nearest neighbour", "glass_nearest_neighbor_demo")):
        config = load_config(profile, {**common, **same_data})
        runs[label] = (config, train_per_class(config, progress))
    runs["MambaAD"] = (mambaad, [mambaad_run])
    out_file = Path(results_dir) / "glass_synthesis" / "demo" / "defect_types.json"
    return defect_type_comparison(runs, out_file, progress)
