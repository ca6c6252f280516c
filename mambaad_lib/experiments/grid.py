"""Training the rows of a notebook's grid through the engine, and flattening their results.

A *row* is one labelled configuration (``model.*`` options of a base model, or a method);
its run id is the label's :func:`slug` plus the seed, so re-executing a notebook finds the
finished run of an identical config and reuses it (``reused`` in the row, with the commit
that made it) instead of training again. Rows of the shared experiment (settings with
``shared``, which several notebooks train alike) are named by their configuration instead
(:func:`run_name`), so the second notebook to ask for one finds the first one's run.
Nothing here trains by itself: the engine does.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mambaad_lib.engine import runner
from mambaad_lib.engine.config import RunConfig, config_to_dict
from mambaad_lib.engine.convergence import convergence
from mambaad_lib.experiments.context import Context
from mambaad_lib.experiments.settings import SHARED_EXPERIMENT, TrainingSettings
from mambaad_lib.metrics import METRIC_KEYS
from mambaad_lib.models import build_mambaad
from mambaad_lib.models.costs import count_flops, count_parameters
from mambaad_lib.utils.schema import to_plain


def slug(text: str) -> str:
    """A file-name-safe run id from a row label (``"R34 [3,4,6,3]"`` -> ``r34-3-4-6-3``)."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not cleaned:
        raise ValueError(f"row label {text!r} has no letters or digits to name its run")
    return cleaned


def run_name(config: RunConfig, label: str) -> str:
    """The run id of a row: ``<label slug>-seed<seed>``, or in the shared experiment
    ``<method>-<first 10 hex digits of the config's SHA-256>-seed<seed>`` (the whole config
    but its seed and output folders, ``paths``; the dataset folder counts), the same in every
    notebook that trains this configuration. Any change to the config's fields or defaults
    renames the runs: their old files are then orphans, which a test refuses in ``results/``."""
    if config.experiment != SHARED_EXPERIMENT:
        return f"{slug(label)}-seed{config.seed}"
    plain = config_to_dict(config)
    plain.pop("seed")
    plain.pop("paths")
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:10]
    return f"{slug(config.method)}-{digest}-seed{config.seed}"


def run_row(config: RunConfig, label: str, shared_cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration (or reuse its finished identical run); a :func:`result_row`."""
    outcome = runner.train(config, run_id=run_name(config, label), reuse=True, progress=False,
                           shared_cache=shared_cache)
    row = result_row({**outcome.record, "_path": str(outcome.results_file)}, label)
    row["reused"] = outcome.reused
    return row


def result_row(record: Mapping[str, Any], label: str) -> dict[str, Any]:
    """A flat row from one engine results record: metrics of every protocol in [0, 1], costs,
    times and provenance."""
    model = record.get("model") or {}
    parameters = model.get("parameters") or {}
    flops = model.get("flops") or {}
    training = record.get("training") or {}
    evaluation = record.get("evaluation") or {}
    environment = record.get("environment") or {}
    # A unified run's verdict is recomputed with today's rule (a reused run may have been judged
    # by an older one); per-class runs keep theirs, which combines every class model's curve.
    verdict = (training.get("convergence") if training.get("per_class_models") else
               convergence(training.get("epoch_losses"))) or {}
    row: dict[str, Any] = {
        "label": label, "trained": True, "run_id": record["run_id"], "results_file": record.get("_path"),
        "method": record.get("method"), "seed": record.get("seed"), "architecture": model.get("architecture"),
        "params_m": parameters["total"] / 1e6 if "total" in parameters else None,
        "trainable_m": parameters["trainable"] / 1e6 if "trainable" in parameters else None,
        "flops_g": flops.get("total"), "scan_flops_g": flops.get("scan"),
        "image_size": record["config"]["data"]["crop_size"],
        "train_time_s": training.get("wall_time_s"), "final_loss": training.get("final_loss"),
        "epoch_losses": training.get("epoch_losses"),
        "plateaued": verdict.get("plateaued"), "late_improvement": verdict.get("late_improvement"),
        "images_per_s": evaluation.get("model_images_per_s"), "scan_backend": record.get("scan_backend"),
        "encoder": (record.get("encoder") or {}).get("encoder_weights"),
        "git_commit": environment.get("git_commit"), "git_dirty": environment.get("git_dirty"),
    }
    for protocol, values in (record.get("metrics") or {}).items():
        row.update({f"{protocol}.{key}": values["mean"].get(key) for key in METRIC_KEYS})
    for protocol, values in (record.get("metrics_untrained") or {}).items():
        row.update({f"untrained.{protocol}.{key}": values["mean"].get(key) for key in METRIC_KEYS})
    return row


def cost_row(label: str, image_size: int = 256, **model: Any) -> dict[str, Any]:
    """Parameters (M) and GFLOPs of ``build_mambaad(**model)`` at ``image_size``, without training.

    The model is built on the meta device (no memory, no initialisation), so even the
    WideResNet50 model costs a fraction of a second.
    """
    with torch.device("meta"):
        network = build_mambaad(image_size=image_size, **{key: _tuple(value) for key, value in model.items()})
    parameters = count_parameters(network)
    flops = count_flops(network, image_size=image_size)
    return {"label": label, "trained": False, "params_m": parameters["total"] / 1e6,
            "trainable_m": parameters["trainable"] / 1e6, "flops_g": flops["total"], "scan_flops_g": flops["scan"],
            "image_size": image_size}


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def run_grid(ctx: Context, rows: Sequence[Mapping[str, Any]], settings: TrainingSettings,
             trained_labels: Iterable[str], progress: bool = True) -> list[dict[str, Any]]:
    """Train the rows whose label is in ``trained_labels`` on every seed of ``ctx``; every row
    also gets :func:`cost_row` at the paper's size.

    Trained rows report the parameters/FLOPs of the model actually trained (the settings'
    base model with the row's options, at the settings' image size), one row per seed.
    Every row carries ``params_m_256``/``flops_g_256``: the row's options on the paper's model
    (ResNet34 [3,4,6,3], kernels 5/7, unless the row says otherwise) at 256x256, the numbers
    to put beside the paper's.
    """
    trained = set(trained_labels)
    unknown = trained - {row["label"] for row in rows}
    if unknown:
        raise ValueError(f"rows to train {sorted(unknown)} are not in the grid {[row['label'] for row in rows]}")
    results = []
    cells = [(row, seed) for row in rows for seed in (ctx.seeds if row["label"] in trained else (None,))]
    for row, seed in tqdm(cells, desc="grid", unit="run", disable=not progress):
        options = {key: value for key, value in row.items() if key != "label"}
        paper_size = cost_row(row["label"], 256, **options)
        if seed is not None:
            result = run_row(ctx.config(settings=settings, model=options, seed=seed), row["label"])
        else:
            result = dict(paper_size)
        result["params_m_256"], result["flops_g_256"] = paper_size["params_m"], paper_size["flops_g"]
        result["model"] = to_plain({**settings.architecture, **options})
        results.append(result)
    return results


def method_means(records: Sequence[Mapping[str, Any]], protocol: str = "standard") -> dict[str, float | None]:
    """Mean over the per-class entries of one method's results records (one unified run, or
    one record of per-class models) of every metric."""
    entries = [entry for record in records for entry in record["metrics"][protocol]["per_class"]]
    means = {}
    for key in METRIC_KEYS:
        values = [entry[key] for entry in entries if entry.get(key) is not None]
        means[key] = float(np.mean(values)) if values else None
    return means


# ---- the open-set grid of notebook 08 --------------------------------------------------------

# Row label -> (method, AHL's base model or None).
OPENSET_GRID_METHODS = {"DevNet": ("devnet", None), "DRA": ("dra", None),
                        "AHL (DevNet)": ("ahl", "devnet"), "AHL (DRA)": ("ahl", "dra")}


def openset_grid(ctx: Context, classes: Sequence[str], settings: Sequence[Mapping[str, Any]],
                 methods: Sequence[str] | None = None, overrides: Mapping[str, Any] | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate every (seed, class, setting, method) of the open-set grid.

    Args:
        ctx: the notebook's context (profile size, data, seeds, folders).
        classes: classes to run (one model per class).
        settings: ``model.openset`` dicts, e.g. ``{"setting": "hard", "n_anomalies": 10,
            "known_type": "stain"}``.
        methods: labels of :data:`OPENSET_GRID_METHODS` (default all four).
        overrides: dotted config keys applied to every run.
    Returns:
        one row per run: label, method, setting, known_type, cls_name, seed, i_auroc, i_ap,
        p_auroc, results_file, reused.

    The runs of one (seed, class) share a feature cache, and an AHL run starts g from the
    trained heads of the same cell's DevNet/DRA run when that run is in the grid (the heads
    AHL would otherwise retrain with the same recipe).
    """
    labels = list(methods or OPENSET_GRID_METHODS)
    unknown = [label for label in labels if label not in OPENSET_GRID_METHODS]
    if unknown:
        raise ValueError(f"unknown grid methods {unknown}; known: {list(OPENSET_GRID_METHODS)}")
    rows = []
    cells = [(seed, cls_name, setting) for seed in ctx.seeds for cls_name in classes for setting in settings]
    for seed, cls_name, setting in tqdm(cells, desc="open-set grid", unit="cell", disable=not progress):
        cache: dict[str, Any] = {}
        for label in labels:
            method, base = OPENSET_GRID_METHODS[label]
            options = {**dict(overrides or {}), "data.classes": [cls_name],
                       **{f"model.openset.{key}": value for key, value in setting.items()}}
            if base is not None:
                options["model.base"] = base
            config = ctx.config(method, seed=seed, **options)
            known = f"-{setting['known_type']}" if setting.get("known_type") else ""
            row_label = f"{label}-{cls_name}-{setting['setting']}{known}"
            outcome = runner.train(config, run_id=f"{slug(row_label)}-seed{seed}", reuse=True, progress=False,
                                   shared_cache=cache)
            mean = outcome.record["metrics"]["standard"]["mean"]
            rows.append({"label": label, "method": method, "setting": setting["setting"],
                         "known_type": setting.get("known_type"), "cls_name": cls_name, "seed": seed,
                         "i_auroc": mean["i_auroc"], "i_ap": mean["i_ap"], "p_auroc": mean["p_auroc"],
                         "results_file": str(outcome.results_file), "reused": outcome.reused})
    return rows


def summarize_openset(rows: Sequence[Mapping[str, Any]], metric: str = "i_auroc") -> list[dict[str, Any]]:
    """Mean and std over seeds of the per-seed average (over classes and known types) of ``metric``,
    per (setting, method label): the papers' "mean over classes, mean +- std over three runs"."""
    groups: dict[tuple[str, str], dict[int, list[float]]] = {}
    for row in rows:
        groups.setdefault((row["setting"], row["label"]), {}).setdefault(row["seed"], []).append(row[metric])
    out = []
    for (setting, label), per_seed in sorted(groups.items()):
        values = np.array([np.mean(v) for v in per_seed.values()])
        out.append({"setting": setting, "label": label, f"{metric}_mean": float(values.mean()),
                    f"{metric}_std": float(values.std(ddof=0)), "n_seeds": len(values),
                    "n_runs": sum(len(v) for v in per_seed.values())})
    return out
