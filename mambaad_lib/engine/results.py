"""Results files: the schema the notebooks and the book read, writing and loading them.

One JSON file per run at ``results/<experiment>/<profile>/<run_id>.json``, written
atomically. Schema ``mambaad-companion/results`` version 2::

    schema, schema_version       "mambaad-companion/results", 2
    run_id, experiment, profile  names (the file's location)
    kind                         "train" (trained then evaluated) or "evaluate" (a checkpoint evaluated)
    created                      ISO-8601 UTC time the file was written
    method, traits               "mambaad", "glass", ...; the method's traits (learning type,
                                 per class, one pass, resumable)
    seed, device                 the run's seed; "cpu" / "cuda" (resolved, never "auto")
    execution                    {world_size, nodes, backend, per_process_batch, precision}: the
                                 processes the command ran in (torchrun: world_size > 1, backend
                                 "nccl"/"gloo"; one process: 1 and null), the training images per
                                 process and step (train.batch_size / world_size; null for
                                 "evaluate") and the training precision ("fp32", "bf16", "fp16";
                                 evaluation is always fp32); null in files written before it existed
                                 (one process, fp32)
    scan_backend                 resolved selective-scan backend ("cpu", "mamba_ssm", ...) or null
    environment                  {torch, torchvision, numpy, python, platform, cuda (or null),
                                  package_version, git_commit, git_dirty, git_dirty_paths,
                                  captured}: the code's commit and whether it had changes, read
                                  when the run started, ignoring the folders runs write
                                  (RUN_OUTPUT_PATHS)
    config                       the full run config (every section, as validated)
    run_dir                      the run's folder (checkpoints), null for "evaluate"
    encoder                      {weights, encoder_weights, batchnorm_reestimated_on, warning?}:
                                 ``weights`` = {choice, source, file_name, sha256, url,
                                 sha256_matches_name} of the encoder's weights as loaded (the
                                 release's timm file for ``imagenet``, ``torchvision``, a local
                                 file, or ``none``: random, flagged in the warning text); null for
                                 methods without a frozen encoder
    data                         {root, name, classes, n_train, n_calibration, n_test}: n_calibration =
                                 normal images the run calibrated on (held out of training by
                                 train.calibration_share, or of train.calibration_dir); null for
                                 "evaluate"
    model                        {parameters: {total, trainable, frozen}, flops?: {total, scan},
                                  architecture, ...}
    training                     null for "evaluate"; else {epochs, steps, wall_time_s,
                                  epoch_losses, final_loss, resumed_from, checkpoint,
                                  convergence: {tail_epochs, late_improvement, plateaued, rule}
                                  (:mod:`.convergence`), ...}; per-class methods: {per_class_models,
                                  wall_time_s, epoch_losses (mean over the class models),
                                  convergence (plateaued when every class model is)}
    evaluation                   {n_images, wall_time_s, model_time_s, images_per_s,
                                  model_images_per_s, peak_memory_bytes, peak_memory_kind,
                                  checkpoint}
    metrics                      {protocol: {per_class: [{cls_name, i_auroc, i_ap, i_f1max,
                                  p_auroc, p_ap, p_f1max, p_aupro, mAD}], mean: {...}}}, values
                                  in [0, 1]; a metric that cannot be computed is null
    ground_truth                 {protocol: {masks: "nearest" | "bilinear", labels_from_masks}}:
                                 the masks each protocol evaluated (nearest, > 0; or the release's
                                 bilinear, > 0.5) and whether image labels were the masks' maxima
    metrics_untrained            same shape, the model before training (when
                                 train.evaluate_untrained), else null
    evaluations                  with eval.every_epochs: [{epoch, step, final, metrics}] of every
                                 evaluation during training, the last the final model's
    best_over_evaluations        per protocol, each metric's maximum over those evaluations with its
                                 epoch ({label, protocol: {mean, per_class}}): "selected on the test
                                 set, as the release prints", never the headline; null for < 2
    openset                      open-set methods: the split (setting, labelled images), else null
    thresholds                   decisions on the test split (unified models; per-class methods
                                 under classes.<cls>): {calibration: the model's stored
                                 calibration or null, at_calibrated_threshold: counts, precision,
                                 recall, F1 and share of normal images flagged at its image
                                 threshold, f1_optimal: {threshold, f1, precision, recall} chosen
                                 on the test labels (reported, never stored), note}; null in
                                 records written before it existed
                                 (mambaad_lib.engine.calibration)
    classes                      per-class methods: {cls: {run_dir, checkpoint, training,
                                 encoder, model, thresholds}} of each class's model, else null
    examples                     PNG paths relative to the results file's folder
    notes                        sentences a reader of the numbers needs (e.g. metrics not computed)
    threads                      CPU thread settings when the record was made
                                 (:func:`mambaad_lib.utils.threads.thread_settings`: intra_op_threads,
                                 chosen_by, available_cpus, load_average, environment, ...); torch's
                                 own CPU ops may round differently at another thread count
    wall_time_s                  whole command, seconds

Records without ``encoder.weights`` (written before it was recorded) get it from their config
by :func:`encoder_entry`: ``imagenet`` then meant torchvision's ``IMAGENET1K_V1`` weights.
Records without ``ground_truth`` evaluated nearest masks and dataset labels in every protocol.

Version 1 files (before ``traits``, ``run_dir``, ``openset``, ``classes``, ``evaluations``,
``best_over_evaluations``, ``notes``, ``threads`` and the start-time provenance) load with those fields filled by :func:`upgrade_record`; their ``git_dirty``
counted the run's own outputs.
"""
from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torchvision

import mambaad_lib
from mambaad_lib.metrics import METRIC_KEYS
from mambaad_lib.utils.files import atomic_write_json
from mambaad_lib.utils.resources import repository_root
from mambaad_lib.utils.threads import thread_settings

SCHEMA = "mambaad-companion/results"
SCHEMA_VERSION = 2
# What runs and book builds write inside a checkout: changes there do not make the code dirty.
RUN_OUTPUT_PATHS = ("results/", "runs/", "data/", "book/experiments/", "_toc.yml", "_build/", "_rerun/")
# Fields added in schema version 2, with the value a version-1 record stands for.
_V2_DEFAULTS: dict[str, Any] = {"traits": None, "run_dir": None, "openset": None, "classes": None, "notes": [],
                                "evaluations": [], "best_over_evaluations": None, "threads": None, "thresholds": None,
                                "execution": None}
# Before records named each protocol's ground truth, every protocol evaluated nearest-resized
# masks binarised at > 0 and the dataset's image labels.
GROUND_TRUTH_BEFORE_RECORDED = {"masks": "nearest", "labels_from_masks": False}


def results_path(results_dir: str | Path, experiment: str, profile: str, run_id: str) -> Path:
    """``<results_dir>/<experiment>/<profile>/<run_id>.json``."""
    return Path(results_dir) / experiment / profile / f"{run_id}.json"


def _git(root: Path, *args: str) -> str | None:
    try:
        completed = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.rstrip("\n") if completed.returncode == 0 else None


def code_provenance(ignore: Sequence[str] = RUN_OUTPUT_PATHS) -> dict[str, Any]:
    """The checkout's commit and whether tracked files outside ``ignore`` have changes.

    ``git_dirty_paths`` lists (up to 20 of) the changed paths; outside a git checkout every
    field is null.
    """
    root = repository_root()
    commit = _git(root, "rev-parse", "HEAD") if root is not None else None
    if commit is None:
        return {"git_commit": None, "git_dirty": None, "git_dirty_paths": None}
    status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    dirty = [path for path in changed if not any(path == prefix or path.startswith(prefix) for prefix in ignore)]
    return {"git_commit": commit, "git_dirty": bool(dirty), "git_dirty_paths": dirty[:20]}


def environment(provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, platform and the code's provenance (:func:`code_provenance`, read now unless given)."""
    return {
        "package_version": mambaad_lib.__version__,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "captured": "run start" if provenance is not None else "file written",
        **(provenance if provenance is not None else code_provenance()),
    }


def new_record(provenance: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A results record with the schema header, creation time and environment filled in."""
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(provenance), **_V2_DEFAULTS, "threads": thread_settings(), **fields}


def write_results(path: str | Path, record: dict[str, Any]) -> Path:
    """Write a record atomically (the folder must exist and be writable)."""
    return atomic_write_json(path, {key: value for key, value in record.items() if not key.startswith("_")})


def encoder_entry(encoder: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The ``encoder`` entry with ``weights`` filled in for files written before it was recorded.

    Args:
        encoder: the entry as stored (``weights`` may be missing).
        config: the run's config as a plain dict (its ``model.encoder_weights`` setting).
    """
    if "weights" in encoder:
        return encoder
    setting = str((config.get("model") or {}).get("encoder_weights", "none"))
    if setting.lower() == "none":
        weights = {"choice": "none", "source": "none (random initialisation)"}
    elif setting == "imagenet":
        weights = {"choice": "torchvision", "source": "torchvision IMAGENET1K_V1 (what 'imagenet' loaded before "
                                                      "results files recorded the encoder's weights)"}
    else:
        weights = {"choice": "file", "source": f"local file {setting}"}
    return {**encoder, "weights": {"file_name": None, "sha256": None, "url": None, "sha256_matches_name": None,
                                   **weights}}


def upgrade_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record of any older schema version in the current layout (missing fields get the
    value the older file stands for)."""
    upgraded = {**_V2_DEFAULTS, **record}
    if "ground_truth" not in upgraded:
        upgraded["ground_truth"] = {protocol: dict(GROUND_TRUTH_BEFORE_RECORDED)
                                    for protocol in (upgraded.get("metrics") or {})}
    if isinstance(upgraded.get("encoder"), dict) and isinstance(upgraded.get("config"), dict):
        upgraded["encoder"] = encoder_entry(upgraded["encoder"], upgraded["config"])
    return upgraded


def read_record(path: str | Path) -> dict[str, Any] | None:
    """One results file (upgraded, with ``_path``), or None when the JSON is of another schema.

    Raises:
        ValueError: not valid JSON, or a newer schema version.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"results file {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        return None
    if record.get("schema_version", 0) > SCHEMA_VERSION:
        raise ValueError(f"results file {str(path)!r} has schema version {record['schema_version']}, "
                         f"newer than this library reads ({SCHEMA_VERSION})")
    return {**upgrade_record(record), "_path": str(path)}


def load_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every results record under ``folder`` (recursively; or one file), sorted by path.

    Each record gains ``_path`` (its file). Files of another schema are skipped.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: a file is not valid JSON, or has a newer schema version.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"results folder {str(folder)!r} does not exist")
    files = [folder] if folder.is_file() else sorted(folder.rglob("*.json"))
    return [record for record in map(read_record, files) if record is not None]


def results_table(records: Iterable[dict[str, Any]] | str | Path, protocol: str = "standard",
                  per_class: bool = False, untrained: bool = False) -> list[dict[str, Any]]:
    """Flat rows (one per run, or per run and class) for tables and data frames.

    Args:
        records: records from :func:`load_results`, or a folder to load.
        protocol: a metric protocol (``standard``, ``ader``).
        per_class: one row per class instead of the class mean.
        untrained: read ``metrics_untrained`` instead of ``metrics``.
    Returns:
        dicts with run_id, experiment, profile, method, seed, device, scan_backend,
        (cls_name,) and the metric keys. ``pandas.DataFrame(rows)`` makes a data frame.
    """
    if isinstance(records, (str, Path)):
        records = load_results(records)
    rows = []
    for record in records:
        metrics = record.get("metrics_untrained" if untrained else "metrics") or {}
        if protocol not in metrics:
            continue
        head = {key: record.get(key) for key in
                ("run_id", "experiment", "profile", "method", "seed", "device", "scan_backend")}
        entries = metrics[protocol]["per_class"] if per_class else [metrics[protocol]["mean"]]
        for entry in entries:
            row = dict(head)
            if per_class:
                row["cls_name"] = entry["cls_name"]
            row.update({key: entry.get(key) for key in METRIC_KEYS})
            rows.append(row)
    return rows
