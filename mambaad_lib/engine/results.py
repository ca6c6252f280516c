"""Results files: the schema the notebooks and the book read, writing and loading them.

One JSON file per run at ``results/<experiment>/<profile>/<run_id>.json``, written
atomically. Schema ``mambaad-companion/results`` version 1::

    schema, schema_version       "mambaad-companion/results", 1
    run_id, experiment, profile  names (the file's location)
    kind                         "train" (trained then evaluated) or "evaluate" (a checkpoint evaluated)
    created                      ISO-8601 UTC time the file was written
    method                       "mambaad", "glass", ...
    seed, device                 the run's seed; "cpu" / "cuda" (resolved, never "auto")
    scan_backend                 resolved selective-scan backend ("cpu", "mamba_ssm", ...) or null
    environment                  {torch, torchvision, numpy, python, platform, cuda (or null),
                                  git_commit, git_dirty, package_version}
    config                       the full run config (every section, as validated)
    encoder                      {encoder_weights, batchnorm_reestimated_on, warning?}: a random
                                 encoder is flagged here and in the warning text
    data                         {root, name, classes, n_train, n_test}
    model                        {parameters: {total, trainable, frozen}, flops: {total, scan},
                                  architecture}
    training                     null for "evaluate"; else {epochs, steps, wall_time_s,
                                  epoch_losses, final_loss, resumed_from, checkpoint}
    evaluation                   {n_images, wall_time_s, model_time_s, images_per_s,
                                  model_images_per_s, peak_memory_bytes, peak_memory_kind,
                                  checkpoint}
    metrics                      {protocol: {per_class: [{cls_name, i_auroc, i_ap, i_f1max,
                                  p_auroc, p_ap, p_f1max, p_aupro, mAD}], mean: {...}}} for the
                                  protocols "standard" (exact definitions) and "ader" (the
                                  release's approximations); values in [0, 1], NaN written as null
    metrics_untrained            same shape, the model before training (when
                                 train.evaluate_untrained), else null
    examples                     PNG paths relative to the results file's folder
    wall_time_s                  whole command, seconds
"""
from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

import mambaad_lib
from mambaad_lib.utils.files import atomic_write_json
from mambaad_lib.metrics import METRIC_KEYS
from mambaad_lib.utils.resources import repository_root

SCHEMA = "mambaad-companion/results"
SCHEMA_VERSION = 1


def results_path(results_dir: str | Path, experiment: str, profile: str, run_id: str) -> Path:
    """``<results_dir>/<experiment>/<profile>/<run_id>.json``."""
    return Path(results_dir) / experiment / profile / f"{run_id}.json"


def _git(*args: str) -> str | None:
    root = repository_root()
    if root is None:
        return None
    try:
        completed = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Versions, platform and the code's git commit (null outside a git checkout)."""
    import torchvision

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "package_version": mambaad_lib.__version__,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "git_commit": commit, "git_dirty": None if status is None else bool(status),
    }


def new_record(**fields: Any) -> dict[str, Any]:
    """A results record with the schema header, creation time and environment filled in."""
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(), **fields}


def write_results(path: str | Path, record: dict[str, Any]) -> Path:
    """Write a record atomically (the folder must exist and be writable)."""
    return atomic_write_json(path, record)


def load_results(folder: str | Path) -> list[dict[str, Any]]:
    """Every results record under ``folder`` (recursively), sorted by path.

    Each record gains ``_path`` (its file). Files of another schema are skipped.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: a file is not valid JSON, or has a newer schema version.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"results folder {str(folder)!r} does not exist")
    files = [folder] if folder.is_file() else sorted(folder.rglob("*.json"))
    records = []
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"results file {str(path)!r} is not valid JSON: {error}") from None
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            continue
        if record.get("schema_version", 0) > SCHEMA_VERSION:
            raise ValueError(f"results file {str(path)!r} has schema version {record['schema_version']}, "
                             f"newer than this library reads ({SCHEMA_VERSION})")
        records.append({**record, "_path": str(path)})
    return records


def results_table(records: Iterable[dict[str, Any]] | str | Path, protocol: str = "standard",
                  per_class: bool = False, untrained: bool = False) -> list[dict[str, Any]]:
    """Flat rows (one per run, or per run and class) for tables and data frames.

    Args:
        records: records from :func:`load_results`, or a folder to load.
        protocol: ``standard`` or ``ader``.
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
