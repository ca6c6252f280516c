"""One run pipeline for every method: what ``mambaad train`` and ``mambaad evaluate`` do.

:func:`train` owns a whole run, whatever the method: the run folder and its lock, seeding,
the data (for open-set methods, the labelled anomalies taken out of the test split),
preparation of the encoder, the optional evaluation before training, fitting (the method's
own :meth:`~mambaad_lib.methods.AnomalyMethod.fit`, which for most methods is this engine's
step loop), checkpoints, resumption, evaluation in every configured metric protocol,
example figures and the results file. Per-class methods (``per_class`` trait) get one model
per class under the same run (``runs/<experiment>/<run_id>/<class>/``) and one results file
whose per-class metrics come from each class's own model.

Every entry point checks its inputs (dataset meta, names, writable folders, checkpoint fit)
before any long work starts and writes its outputs atomically, so a failed command leaves
nothing half-written behind.

Started by torchrun, :func:`train` and :func:`evaluate` run in every process of the group
(:mod:`mambaad_lib.engine.distributed`): each process trains on its share of every batch
and predicts its share of the test split; rank 0 alone locks the run folder and writes
checkpoints, results and examples, and every process returns rank 0's record.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from mambaad_lib.data import AnomalyDataset, meta_path
from mambaad_lib.data.openset import split_openset
from mambaad_lib.data.preflight import preflight
from mambaad_lib.data.subsets import dataset_items, first_per_class, subset
from mambaad_lib.engine.calibration import (
    Calibration, calibrate_run, read_calibration, run_calibration_images, threshold_report)
from mambaad_lib.engine import distributed
from mambaad_lib.engine.checkpoint import FINAL, LAST, PREVIOUS, latest_run_dir, load_checkpoint
from mambaad_lib.engine.config import RunConfig, config_from_dict, config_to_dict
from mambaad_lib.engine.convergence import convergence
from mambaad_lib.engine.evaluate import (
    Predictions, compute_protocol_metrics, pick_examples, predict_dataset, save_examples)
from mambaad_lib.engine.results import (code_provenance, encoder_entry, new_record, read_record, results_path,
                                         write_results)
from mambaad_lib.engine.runs import (CONFIG, LOCK, RunLock, check_name, check_not_in_use, is_finished, mark_finished,
                                     new_run_id)
from mambaad_lib.engine.seeding import preserved_rng, seed_everything, set_deterministic
from mambaad_lib.engine.trainer import Trainer
from mambaad_lib.methods import AnomalyMethod, LearningType, TrainingData, get_method, get_method_class
from mambaad_lib.metrics import PROTOCOLS, class_mean
from mambaad_lib.models.encoders import WEIGHT_CHOICES, fetch_published_weights, published_weights
from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.utils.files import atomic_write_text, ensure_writable_dir

logger = logging.getLogger(__name__)

# Config sections that may differ between an interrupted run and its resumption.
RESUME_FREE_KEYS = ("paths", "device", "eval", "data.num_workers", "data.root", "data.allow_empty_classes")
CLASS_RESULTS = "results.json"  # a per-class method's record of one class, in the class's run folder


@dataclass
class RunOutcome:
    """What a train or evaluate command produced (``reused``: an identical finished run was
    found and nothing was trained)."""

    results_file: Path
    run_dir: Path | None
    record: dict[str, Any]
    reused: bool = False


@dataclass
class _Fitted:
    """One model fitted and evaluated on its test split."""

    method: AnomalyMethod
    datasets: dict[str, Dataset]
    predictions: Predictions
    metrics: dict[str, Any]
    extras: dict[str, Any]
    training: dict[str, Any]
    openset: dict[str, Any] | None
    calibration: Calibration | None = None
    n_calibration: int | None = None  # images calibrated on in this run (None: evaluation of a checkpoint)


# ---- devices and data --------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def build_datasets(config: RunConfig, splits: Sequence[str] = ("train", "test")) -> dict[str, Dataset]:
    """The configured splits; training uses the normal (``label`` 0) images of every class.

    Raises:
        FileNotFoundError: no meta file (with the commands that create one).
    """
    data = config.data
    meta = meta_path(data.root, data.name)
    if not meta.is_file():
        raise FileNotFoundError(
            f"dataset {data.name!r} has no meta file {str(meta)!r}; create it with "
            f"'mambaad prep <dataset> SRC --root {data.root}' or 'mambaad synth --root {data.root}', "
            "or point --data-root/--dataset at an existing one")
    datasets = {}
    for split in splits:
        dataset = AnomalyDataset(data.root, data.name, split, classes=data.classes,
                                 image_size=data.image_size, crop_size=data.crop_size)
        if split == "train":
            dataset.items = [item for item in dataset.items if not item["anomaly"]]
        cap = data.train_per_class if split == "train" else data.test_per_class
        datasets[split] = first_per_class(dataset, cap)
    return datasets


def check_data(config: RunConfig, datasets: dict[str, Dataset]) -> None:
    """Stop before any work when the selected data cannot give a valid run
    (:func:`~mambaad_lib.data.preflight.preflight`: image headers, mask sizes, class names,
    empty classes, test classes with one label only).

    Raises:
        DataProblemsError: listing every problem.
    """
    report = preflight(config.data.root, datasets["test"], datasets.get("train"),
                       allow_empty_classes=config.data.allow_empty_classes)
    for note in report.notes:
        logger.warning("%s", note)
    report.raise_for_problems(f"dataset {config.data.name!r} under {config.data.root!r}")


def configured_classes(config: RunConfig) -> list[str]:
    """The classes a config selects (all classes of the training split when ``data.classes`` is null)."""
    return list(build_datasets(config, splits=("train",))["train"].classes)


def for_classes(config: RunConfig, classes: Sequence[str] | None) -> RunConfig:
    """``config`` restricted to ``classes`` (None: every class)."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, classes=list(classes) if classes else None))


def take_labelled_anomalies(test: Dataset, config: RunConfig) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """Open-set methods: (evaluation set, labelled anomalies, facts) of a one-class test split,
    by the rule of ``model.openset`` (:func:`mambaad_lib.data.openset.split_openset`)."""
    items = dataset_items(test)
    split = split_openset(items, config.model.openset)
    facts = {**split.summary(), "labelled_paths": [items[index]["img_path"] for index in split.labelled]}
    return subset(test, split.test), subset(test, split.labelled), facts


def _image_batches(dataset: Dataset, batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch in loader:
        yield batch["image"]


def _evaluate(method: AnomalyMethod, dataset: Dataset, config: RunConfig, progress: bool,
              desc: str) -> tuple[Predictions | None, dict[str, Any] | None]:
    """Predictions and metrics; under torchrun every process predicts its share and rank 0
    gets them all (other processes: None, None)."""
    predictions = predict_dataset(method, dataset, config.eval.batch_size, config.data.num_workers,
                                  progress=progress, desc=desc, parallel=distributed.current())
    if predictions is None:
        return None, None
    return predictions, compute_protocol_metrics(predictions, config.eval.protocols)


def _log_metrics(title: str, metrics: dict[str, Any] | None) -> None:
    for protocol, values in (metrics or {}).items():
        shown = " ".join(f"{key}={value:.4f}" if value is not None else f"{key}=nan"
                         for key, value in values["mean"].items())
        logger.info("%s [%s protocol] %s", title, protocol, shown)


# ---- run folders and resumption ------------------------------------------------------------


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _config_differences(config: RunConfig, stored: dict[str, Any]) -> list[str]:
    """``key: stored vs now`` for every setting that must not change when a run resumes."""
    def free(key: str) -> bool:
        return any(key == free_key or key.startswith(free_key + ".") for free_key in RESUME_FREE_KEYS)

    now, then = _flat(config_to_dict(config)), _flat(_with_defaults(stored))
    return [f"{key}: stored {then.get(key)!r} vs now {now.get(key)!r}"
            for key in sorted(set(now) | set(then)) if not free(key) and now.get(key) != then.get(key)]


def _with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config with keys added since it was written set to their defaults (which stand
    for what the older code did), so that it compares equal to the same config today."""
    try:
        return json.loads(json.dumps(config_to_dict(config_from_dict(stored))))
    except ConfigError:
        return stored


def _stored_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder of this library (no {CONFIG})")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def resolve_resume(resume: str | Path, config: RunConfig) -> Path:
    """``latest`` / a run id / a run folder / a checkpoint inside one -> the run folder to continue.

    ``latest`` is the newest *unfinished* run of ``config.experiment`` whose stored config
    matches ``config``; a finished run is never resumed (its results would be overwritten).

    Raises:
        FileNotFoundError: nothing to resume.
        ConfigError: the run has finished, or its config differs from ``config``.
    """
    experiment_dir = Path(config.paths.runs_dir) / config.experiment
    text = str(resume)
    if text == "latest":
        candidates = sorted((path.parent for path in experiment_dir.glob(f"*/{CONFIG}")),
                            key=lambda folder: (folder / CONFIG).stat().st_mtime, reverse=True)
        for folder in candidates:
            if not is_finished(folder) and not _config_differences(config, _stored_config(folder)):
                return folder
        raise FileNotFoundError(f"--resume latest: no unfinished run with this config under "
                                f"{str(experiment_dir)!r}; start one without --resume")
    candidate = Path(text)
    folders = [candidate.parent, candidate.parent.parent] if candidate.is_file() else \
        [candidate, experiment_dir / text]
    folder = next((path for path in folders if (path / CONFIG).is_file()), None)
    if folder is None:
        raise FileNotFoundError(f"--resume {text!r}: no run folder, run id or checkpoint inside one "
                                f"(looked under {str(experiment_dir)!r})")
    if is_finished(folder):
        raise ConfigError(f"--resume {text!r}: run {folder.name} has finished; its results stay as they are "
                          "(train a new run, or evaluate its final.pt)")
    differences = _config_differences(config, _stored_config(folder))
    if differences:
        raise ConfigError(f"cannot resume {str(folder)!r}: the config differs from the interrupted run's "
                          f"({'; '.join(differences)}); resume with the same options (or omit --profile to reuse "
                          "the stored config)")
    return folder


def resume_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a (class) run folder resumes from: ``last.pt``, or ``last.prev.pt`` when
    the newest is damaged (truncated, corrupt, refused as unsafe); None when the run never
    checkpointed.

    Raises:
        ValueError: the folder holds checkpoints but none can be used (each one's reason).
    """
    reasons = []
    for name in (LAST, PREVIOUS):
        path = folder / name
        if not path.is_file():
            continue
        try:
            load_checkpoint(path, pass_on=True)  # the trainer restores it next: read once
        except ValueError as error:
            logger.warning("%s cannot be used (%s); trying the previous checkpoint", path, error)
            reasons.append(str(error))
            continue
        return path
    if reasons:
        raise ValueError(f"cannot resume {str(folder)!r}: none of its checkpoints can be used: {'; '.join(reasons)}")
    return None


def find_reusable(config: RunConfig, run_id: str) -> dict[str, Any] | None:
    """The record of a finished run ``run_id`` trained with exactly ``config`` whose checkpoints
    still exist, or None."""
    path = results_path(config.paths.results_dir, config.experiment, config.profile, run_id)
    record = read_record(path) if path.is_file() else None
    if record is None or record.get("kind") != "train":
        return None
    if _with_defaults(record.get("config") or {}) != json.loads(json.dumps(config_to_dict(config))):
        return None
    checkpoints = [entry["checkpoint"] for entry in (record.get("classes") or {}).values()] or \
        [(record.get("training") or {}).get("checkpoint") or ""]
    return record if all(Path(path).is_file() for path in checkpoints) else None


# ---- train -----------------------------------------------------------------------------


def train(config: RunConfig, run_id: str | None = None, resume: str | Path | None = None,
          progress: bool = True, callbacks: Sequence[Callable[[Trainer], None]] = (), reuse: bool = False,
          overwrite: bool = False, shared_cache: dict[str, Any] | None = None) -> RunOutcome:
    """Train a method, evaluate it on the test split and write the results file.

    Args:
        config: validated run config.
        run_id: name of the run (default: method, seed, time and a random suffix).
        resume: ``latest``, a run id, a run folder or a checkpoint in one: continue that
            unfinished run (with ``run_id``, both must name the same run).
        progress: tqdm bars.
        callbacks: passed to the step loop (called after every step).
        reuse: return a finished run ``run_id`` trained with exactly this config instead of
            training again (``RunOutcome.reused``).
        overwrite: replace a finished run of the same id (its folder and results file).
        shared_cache: a dict that runs of one grid share for deterministic preprocessing
            (see :class:`~mambaad_lib.methods.TrainingData`).
    Raises:
        FileExistsError: the run id is taken (without ``overwrite``) or in use by a live process.
    """
    started = time.perf_counter()
    method_class = get_method_class(config.method)
    parallel = _join_process_group(config, method_class)
    if resume is not None:
        if not method_class.resumable:
            raise ConfigError(f"method {config.method!r} trains in one go and cannot --resume; train it again")
        run_dir = resolve_resume(resume, config)
        if run_id is not None and run_id != run_dir.name:
            raise ConfigError(f"--run-id {run_id!r} and --resume {str(resume)!r} name different runs "
                              f"({run_dir.name!r}); give one of them")
        run_id = run_dir.name
    else:
        run_id = check_name(run_id, "--run-id") if run_id is not None else \
            parallel.broadcast(new_run_id(config.method, config.seed))  # rank 0's
        run_dir = Path(config.paths.runs_dir) / config.experiment / run_id
    results_file = results_path(config.paths.results_dir, config.experiment, config.profile, run_id)
    if reuse and resume is None:
        record = find_reusable(config, run_id)
        if record is not None:
            logger.info("reusing the finished run %s (same config): %s", run_id, results_file)
            return RunOutcome(results_file, Path(record.get("run_dir") or run_dir), record, reused=True)

    def check_run() -> dict[str, Any]:
        check_not_in_use(run_dir)
        if resume is None and not overwrite and (run_dir.exists() or results_file.exists()):
            raise _run_exists(run_id, run_dir, results_file)
        check_data(config, build_datasets(config))  # missing or bad data fails here, before any folder is made
        if resume is None:
            _check_encoder_weights(config)  # on rank 0 first: the others find the file in the cache
        ensure_writable_dir(results_file.parent, "results (--results-dir)")
        ensure_writable_dir(run_dir.parent, "runs (--runs-dir)")
        return code_provenance()

    # Under torchrun rank 0 alone checks the data (once), locks and claims the run folder;
    # the others wait for it and stop with its error.
    provenance = parallel.on_main(check_run)
    with ExitStack() as lock:
        def claim_run() -> None:
            lock.enter_context(RunLock(run_dir))
            if resume is None:
                _claim_run(run_id, run_dir, results_file, overwrite)
                atomic_write_text(run_dir / CONFIG, yaml.safe_dump(config_to_dict(config), sort_keys=False))

        parallel.on_main(claim_run)
        context = dict(progress=progress, callbacks=callbacks, shared_cache=shared_cache, resuming=resume is not None)
        if method_class.per_class:
            record = _train_per_class(config, run_id, run_dir, results_file, provenance, started, **context)
        else:
            fitted = _fit(config, run_dir, **context)
            record = _record(config, fitted, run_id, "train", results_file, provenance, started, run_dir) \
                if parallel.is_main else None
        if parallel.is_main:
            write_results(results_file, record)
            mark_finished(run_dir, results_file)
    logger.info("results written to %s", results_file)
    return RunOutcome(results_file, run_dir, parallel.broadcast(record))


def _join_process_group(config: RunConfig, method_class: type[AnomalyMethod] | None = None
                        ) -> distributed.Distributed:
    """Join torchrun's process group when started by it; for training, refuse at once what
    cannot run: a precision the method does not train at, a method that trains in one
    process only, a global batch that does not divide among the processes."""
    parallel = distributed.init_from_environment(resolve_device(config.device))
    if method_class is None:
        return parallel
    if config.train.precision not in method_class.precisions:
        raise ConfigError(f"config key 'train.precision': method {config.method!r} trains at "
                          f"{', '.join(method_class.precisions)}, not {config.train.precision}")
    if parallel.enabled:
        if not method_class.distributed:
            raise ConfigError(f"method {config.method!r} trains in one process only; run it without torchrun "
                              "(or with --nproc_per_node 1)")
        parallel.local_batch_size(config.train.batch_size)
    return parallel


def _check_encoder_weights(config: RunConfig) -> None:
    """Download a published encoder weights file missing from the torch hub cache now, so that
    an offline machine fails before the run folder exists, with the message naming the file.
    A cached file is left for the method to read (once)."""
    choice = getattr(config.model, "encoder_weights", None)
    backbone = getattr(config.model, "backbone", None)
    if choice in WEIGHT_CHOICES and backbone is not None:
        published = published_weights(backbone, choice)
        if not published.cache_path.is_file():
            fetch_published_weights(published)


def _examples_dir(results_file: Path, run_id: str) -> Path:
    return results_file.parent / f"{run_id}_examples"


def _run_exists(run_id: str, run_dir: Path, results_file: Path) -> FileExistsError:
    return FileExistsError(f"run {run_id!r} exists ({str(run_dir)!r} or {str(results_file)!r}); choose another "
                           "--run-id, continue it with --resume, or replace it with --overwrite")


def _claim_run(run_id: str, run_dir: Path, results_file: Path, overwrite: bool) -> None:
    """Make the locked ``run_dir`` a fresh run's: refuse one that another process filled since
    the first check (a results file is never replaced by a different run), or, with
    ``overwrite``, delete the old run's files, results file and example figures."""
    leftovers = [entry for entry in run_dir.iterdir() if entry.name != LOCK]
    if not overwrite and (leftovers or results_file.exists()):
        raise _run_exists(run_id, run_dir, results_file)
    for entry in leftovers:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    results_file.unlink(missing_ok=True)
    shutil.rmtree(_examples_dir(results_file, run_id), ignore_errors=True)


def _fit(config: RunConfig, run_dir: Path, *, progress: bool, callbacks: Sequence[Callable[[Trainer], None]],
         shared_cache: dict[str, Any] | None, resuming: bool) -> _Fitted:
    """Build, prepare, fit, checkpoint and evaluate one model in ``run_dir``."""
    method_class = get_method_class(config.method)
    device = distributed.process_device(resolve_device(config.device))
    datasets = build_datasets(config)
    datasets["train"], calibration_images = run_calibration_images(config, method_class.per_class, datasets["train"])
    labelled, openset = None, None
    if method_class.learning_type is LearningType.OPEN_SET:
        datasets["test"], labelled, openset = take_labelled_anomalies(datasets["test"], config)
    resume_from = resume_checkpoint(run_dir) if resuming else None
    seed_everything(config.seed)
    set_deterministic(config.train.deterministic)
    method = get_method(config.method, config.model, config.data.crop_size, device, pretrained=resume_from is None)
    logger.info("%s on %s, scan backend %s, %d training / %d test images, run %s", method.summary(), device,
                method.scan_backend, len(datasets["train"]), len(datasets["test"]), run_dir)
    extras: dict[str, Any] = {}
    if resume_from is None:
        # Read before prepare(): the weights as loaded, whatever preparation does to them later.
        weights = method.encoder_weights()
        extras["prepare"] = {"weights": weights, **method.prepare(
            _image_batches(datasets["train"], config.eval.batch_size, config.data.num_workers))}
        if config.train.evaluate_untrained:
            _, extras["metrics_untrained"] = _evaluate(method, datasets["test"], config, progress,
                                                       "evaluate (untrained)")
            _log_metrics("untrained", extras["metrics_untrained"])
    parallel = distributed.current()
    if parallel.enabled:
        method.distribute(parallel)
    if parallel.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(method, config, run_dir, progress=progress, callbacks=callbacks, extras=extras,
                      resume_from=resume_from, epoch_end=_scheduled_evaluation(method, datasets["test"], config))
    data = TrainingData(normal=datasets["train"], labelled_anomalies=labelled, seed=config.seed,
                        batch_size=config.train.batch_size, num_workers=config.data.num_workers,
                        shared_cache=shared_cache)
    fit_started = time.perf_counter()
    training = method.fit(data, trainer)
    training.setdefault("wall_time_s", time.perf_counter() - fit_started)
    training["checkpoint"] = str(trainer.save(FINAL, finished=True))
    calibration = calibrate_run(method, calibration_images, config, training["checkpoint"]) \
        if calibration_images is not None else None
    predictions, metrics = _evaluate(method, datasets["test"], config, progress, "evaluate")
    _log_metrics("trained", metrics)
    if config.eval.every_epochs:
        trainer.extras.setdefault("evaluations", []).append(
            {"epoch": trainer.state.epoch, "step": trainer.state.global_step, "final": True, "metrics": metrics})
    return _Fitted(method, datasets, predictions, metrics, trainer.extras, training, openset, calibration,
                   len(calibration_images) if calibration_images is not None else 0)


def _scheduled_evaluation(method: AnomalyMethod, test: Dataset, config: RunConfig
                          ) -> Callable[[Trainer], None] | None:
    """The step loop's epoch-end hook that evaluates every ``eval.every_epochs`` epochs (before
    the last), keeping the evaluations in the checkpointed extras. The evaluation draws from
    no generator of the training (:func:`~mambaad_lib.engine.seeding.preserved_rng`), so the
    trained model is the same with or without it."""
    every = config.eval.every_epochs
    if not every:
        return None

    def evaluate_if_due(trainer: Trainer) -> None:
        epoch = trainer.state.epoch
        if epoch % every or epoch >= config.train.epochs:
            return
        with preserved_rng():
            _, metrics = _evaluate(method, test, config, progress=False, desc=f"evaluate (epoch {epoch})")
        method.train(True)
        _log_metrics(f"epoch {epoch}", metrics)
        trainer.extras.setdefault("evaluations", []).append(
            {"epoch": epoch, "step": trainer.state.global_step, "final": False, "metrics": metrics})

    return evaluate_if_due


BEST_OVER_EVALUATIONS = "best over evaluations (selected on the test set, as the release prints)"


def best_over_evaluations(evaluations: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Per protocol, the maximum of every metric over the evaluations, with the epoch it came
    from: per class and for the mean row, each metric on its own, as the release's log prints
    it beside the last value. Reported under :data:`BEST_OVER_EVALUATIONS`, never used to pick
    weights (None for fewer than two evaluations)."""
    if len(evaluations) < 2:
        return None

    def best(values: list[tuple[float | None, int]]) -> dict[str, Any] | None:
        present = [(value, epoch) for value, epoch in values if value is not None and value == value]
        if not present:
            return None
        value, epoch = max(present, key=lambda pair: pair[0])
        return {"value": value, "epoch": epoch}

    out: dict[str, Any] = {"label": BEST_OVER_EVALUATIONS}
    for protocol in evaluations[-1]["metrics"]:
        runs = [(entry["metrics"][protocol], entry["epoch"]) for entry in evaluations]
        mean = {key: best([(metrics["mean"].get(key), epoch) for metrics, epoch in runs])
                for key in runs[-1][0]["mean"]}
        per_class = {row["cls_name"]: {key: best([(next(r[key] for r in metrics["per_class"]
                                                        if r["cls_name"] == row["cls_name"]), epoch)
                                                  for metrics, epoch in runs])
                                       for key in row if key != "cls_name"}
                     for row in runs[-1][0]["per_class"]}
        out[protocol] = {"mean": mean, "per_class": per_class}
    return out


def _record(config: RunConfig, fitted: _Fitted, run_id: str, kind: str, results_file: Path,
            provenance: dict[str, Any], started: float, run_dir: Path | None, examples_per_class: int | None = None,
            checkpoint: str | None = None) -> dict[str, Any]:
    """The results record of one fitted (or loaded) model; writes its example figures."""
    count = config.eval.num_examples if examples_per_class is None else examples_per_class
    examples = save_examples(fitted.predictions, fitted.datasets["test"], pick_examples(fitted.predictions, count),
                             _examples_dir(results_file, run_id))
    method = fitted.method
    evaluations = fitted.extras.get("evaluations", [])
    return new_record(
        provenance, run_id=run_id, experiment=config.experiment, profile=config.profile, kind=kind,
        method=config.method, traits=method.traits(), seed=config.seed, device=method.device.type,
        execution=_execution(config, kind), scan_backend=method.scan_backend, config=config_to_dict(config),
        run_dir=str(run_dir) if run_dir else None,
        encoder=encoder_entry(fitted.extras.get("prepare", {}), config_to_dict(config)),
        data={"root": config.data.root, "name": config.data.name,
              "classes": sorted(set(fitted.predictions.class_names)),
              "n_train": len(fitted.datasets["train"]) if "train" in fitted.datasets else None,
              "n_calibration": fitted.n_calibration, "n_test": len(fitted.datasets["test"])},
        model=method.describe(), training=_training_facts(fitted.training) if kind == "train" else None,
        evaluation={**fitted.predictions.timing, "checkpoint": checkpoint or fitted.training.get("checkpoint")},
        metrics=fitted.metrics, metrics_untrained=fitted.extras.get("metrics_untrained"), openset=fitted.openset,
        ground_truth={name: {"masks": PROTOCOLS[name].masks, "labels_from_masks": PROTOCOLS[name].labels_from_masks}
                      for name in fitted.metrics},
        thresholds=threshold_report(fitted.predictions.scores, fitted.predictions.labels, fitted.calibration),
        evaluations=evaluations, best_over_evaluations=best_over_evaluations(evaluations),
        examples=[str(path.relative_to(results_file.parent)) for path in examples],
        notes=metric_notes(fitted.metrics), wall_time_s=time.perf_counter() - started)


def _execution(config: RunConfig, kind: str) -> dict[str, Any]:
    """The results file's ``execution`` entry: processes, per-process batch, precision."""
    parallel = distributed.current()
    training = kind == "train"
    return {**parallel.describe(),
            "per_process_batch": parallel.local_batch_size(config.train.batch_size) if training else None,
            "precision": config.train.precision if training else "fp32"}


def _training_facts(training: dict[str, Any]) -> dict[str, Any]:
    """The trainer's facts with the plateau verdict of its loss curve."""
    return {**training, "convergence": convergence(training.get("epoch_losses"))}


def _train_per_class(config: RunConfig, run_id: str, run_dir: Path, results_file: Path,
                     provenance: dict[str, Any], started: float, *, resuming: bool, **context: Any
                     ) -> dict[str, Any] | None:
    """One model per class, each in ``run_dir/<class>``; returns the merged record (rank 0;
    None on the other processes of a torchrun group)."""
    classes = [check_name(name, "class name") for name in configured_classes(config)]
    per_class_examples = max(1, -(-config.eval.num_examples // len(classes))) if config.eval.num_examples else 0
    records = []
    for cls_name in classes:
        class_config = for_classes(config, [cls_name])
        class_dir = run_dir / cls_name
        if resuming and is_finished(class_dir):
            records.append(read_record(class_dir / CLASS_RESULTS))
            logger.info("class %s finished before the interruption; its model is kept", cls_name)
            continue
        fitted = _fit(class_config, class_dir, resuming=resuming, **context)
        if not distributed.current().is_main:
            continue  # rank 0 writes every class's record
        record = _record(class_config, fitted, run_id, "train", results_file, provenance, started, class_dir,
                         examples_per_class=per_class_examples)
        write_results(class_dir / CLASS_RESULTS, record)
        mark_finished(class_dir, class_dir / CLASS_RESULTS)
        records.append(record)
    if not distributed.current().is_main:
        return None
    return merge_class_records(config, run_id, records, provenance, started, run_dir)


def _class_mean_convergence(trainings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The loss curve and plateau verdict of per-class models as one run: ``epoch_losses`` is
    the mean over the class models per epoch; ``convergence`` is plateaued only when every
    class model plateaued, with the largest ``late_improvement``. Empty when the class models
    have no loss curves of one length (e.g. the nearest-neighbour baseline trains no epochs)."""
    curves = [training.get("epoch_losses") or [] for training in trainings]
    if len({len(curve) for curve in curves}) != 1 or len(curves[0]) < 2:
        return {}
    verdicts = [convergence(curve) for curve in curves]
    late = [verdict["late_improvement"] for verdict in verdicts]
    plateaued = [verdict["plateaued"] for verdict in verdicts]
    return {"epoch_losses": [float(sum(values) / len(values)) for values in zip(*curves)],
            "convergence": {**verdicts[0], "late_improvement": None if None in late else max(late),
                            "plateaued": None if None in plateaued else all(plateaued)}}


def merge_class_records(config: RunConfig, run_id: str, records: Sequence[dict[str, Any]],
                        provenance: dict[str, Any], started: float, run_dir: Path | None) -> dict[str, Any]:
    """One record from per-class records: every class's metrics from its own model, the mean
    over classes as for a unified model, each model's facts under ``classes``."""
    def merged(key: str) -> dict[str, Any] | None:
        if not all(record.get(key) for record in records):
            return None
        out = {}
        for protocol in records[0][key]:
            rows = [row for record in records for row in record[key][protocol]["per_class"]]
            notes = {row: text for record in records for row, text in record[key][protocol].get("notes", {}).items()
                     if row != "mean"}
            out[protocol] = {"per_class": rows, "mean": class_mean(rows, notes), "notes": notes}
        return out

    first = records[0]
    metrics = merged("metrics")
    timings = [record["evaluation"] for record in records]
    n_images = sum(timing["n_images"] for timing in timings)
    wall, model_time = (sum(timing[key] for timing in timings) for key in ("wall_time_s", "model_time_s"))
    kind = first["kind"]
    training = None
    if kind == "train":
        training = {"per_class_models": len(records),
                    "wall_time_s": sum(record["training"]["wall_time_s"] for record in records),
                    **_class_mean_convergence([record["training"] for record in records])}
    openset = None
    if first.get("openset"):
        shared = ("setting", "n_anomalies", "known_type", "split_seed")
        openset = {**{key: first["openset"][key] for key in shared},
                   "per_class": {record["data"]["classes"][0]: {key: value for key, value in record["openset"].items()
                                                                if key not in shared} for record in records}}
    return new_record(
        provenance, run_id=run_id, experiment=config.experiment, profile=config.profile, kind=kind,
        method=config.method, traits=first["traits"], seed=config.seed, device=first["device"],
        execution=first.get("execution"), scan_backend=first["scan_backend"], config=config_to_dict(config),
        run_dir=str(run_dir) if run_dir else None,
        encoder={key: value for key, value in first["encoder"].items() if key != "batchnorm_reestimated_on"},
        data={"root": config.data.root, "name": config.data.name,
              "classes": [record["data"]["classes"][0] for record in records],
              "n_train": sum(record["data"]["n_train"] or 0 for record in records),
              "n_calibration": None if kind == "evaluate" else
              sum(record["data"].get("n_calibration") or 0 for record in records),
              "n_test": sum(record["data"]["n_test"] for record in records)},
        model={key: value for key, value in first["model"].items() if key != "training"},
        training=training,
        evaluation={"n_images": n_images, "wall_time_s": wall, "model_time_s": model_time,
                    "images_per_s": n_images / max(wall, 1e-9), "model_images_per_s": n_images / max(model_time, 1e-9),
                    "peak_memory_bytes": max(timing["peak_memory_bytes"] for timing in timings),
                    "peak_memory_kind": first["evaluation"]["peak_memory_kind"], "checkpoint": str(run_dir)},
        metrics=metrics, metrics_untrained=merged("metrics_untrained"), openset=openset, notes=metric_notes(metrics),
        ground_truth=first.get("ground_truth"),
        classes={record["data"]["classes"][0]: {
            "run_dir": record.get("run_dir"), "checkpoint": record["evaluation"]["checkpoint"],
            "training": record.get("training"), "encoder": record.get("encoder"), "model": record.get("model"),
            "thresholds": record.get("thresholds"),
            "best_over_evaluations": record.get("best_over_evaluations")}
            for record in records},
        examples=[path for record in records for path in record.get("examples", [])],
        wall_time_s=time.perf_counter() - started)


def metric_notes(metrics: dict[str, Any] | None) -> list[str]:
    """The sentences a reader of ``metrics`` needs (e.g. which pixel metrics were not computed)."""
    notes = {}
    for values in (metrics or {}).values():
        notes.update(values.get("notes") or {})
    return [f"{row}: {text}" for row, text in notes.items()]


# ---- evaluate --------------------------------------------------------------------------


def load_for_inference(checkpoint: str | Path, config: RunConfig, trust: bool = False
                       ) -> tuple[AnomalyMethod, dict[str, Any]]:
    """Build the configured method and load a checkpoint's weights into it (strictly); the
    file is read once. Returns the method (eval mode) and the checkpoint's content."""
    content = load_checkpoint(checkpoint, trust=trust)
    if content.get("method", config.method) != config.method:
        raise ValueError(f"checkpoint {checkpoint} holds a {content['method']!r} model, "
                         f"but the config asks for {config.method!r}")
    device = distributed.process_device(resolve_device(config.device))
    seed_everything(config.seed)
    method = get_method(config.method, config.model, config.data.crop_size, device, pretrained=False)
    method.load_state_dict(content["model"], source=f"checkpoint {checkpoint}")
    method.train(False)
    return method, content


def class_checkpoints(checkpoint: str | Path) -> dict[str | None, Path]:
    """``{None: file}`` for a checkpoint file or a run folder with ``final.pt``; ``{class: file}``
    for the run folder of a per-class method.

    Raises:
        FileNotFoundError: a folder holding neither.
    """
    path = Path(checkpoint)
    if path.is_dir():
        if (path / FINAL).is_file():
            return {None: path / FINAL}
        found = {folder.name: folder / FINAL for folder in sorted(path.iterdir()) if (folder / FINAL).is_file()}
        if not found:
            raise FileNotFoundError(f"{str(path)!r} holds no {FINAL} (nor class folders with one)")
        return found
    return {None: path}


def find_checkpoint(config: RunConfig) -> Path:
    """The newest finished run of ``config.experiment``: its ``final.pt``, or its folder for a per-class method."""
    if get_method_class(config.method).per_class:
        folder = Path(config.paths.runs_dir) / config.experiment
        runs = sorted((path for path in folder.glob("*") if is_finished(path)), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise FileNotFoundError(f"no finished run under {str(folder)!r}; train one first or pass --checkpoint")
        return runs[-1]
    return latest_run_dir(config.paths.runs_dir, config.experiment, FINAL) / FINAL


def evaluate(config: RunConfig, checkpoint: str | Path, run_id: str | None = None, progress: bool = True,
             trust: bool = False) -> RunOutcome:
    """Evaluate a checkpoint (or a per-class run folder) on the configured test split and write a
    results file (``eval-<checkpoint's run>-<time>`` unless ``run_id`` is given)."""
    started = time.perf_counter()
    parallel = _join_process_group(config)
    targets = class_checkpoints(checkpoint)
    run_name = Path(checkpoint).name if Path(checkpoint).is_dir() else Path(checkpoint).parent.name
    run_id = check_name(run_id, "--run-id") if run_id is not None else \
        parallel.broadcast(new_run_id(f"eval-{run_name}", config.seed))  # rank 0's
    results_file = results_path(config.paths.results_dir, config.experiment, config.profile, run_id)
    if results_file.exists():
        raise FileExistsError(f"results file {str(results_file)!r} exists; choose another --run-id")
    def check_evaluation() -> dict[str, Any]:
        check_data(config, build_datasets(config, splits=("test",)))
        ensure_writable_dir(results_file.parent, "results (--results-dir)")
        return code_provenance()

    provenance = parallel.on_main(check_evaluation)  # rank 0 checks the data once
    records = []
    for cls_name, path in targets.items():
        class_config = for_classes(config, [cls_name]) if cls_name is not None else config
        method, content = load_for_inference(path, class_config, trust=trust)
        datasets = build_datasets(class_config, splits=("test",))
        openset = None
        if method.learning_type is LearningType.OPEN_SET:
            datasets["test"], _, openset = take_labelled_anomalies(datasets["test"], class_config)
        predictions, metrics = _evaluate(method, datasets["test"], class_config, progress, "evaluate")
        _log_metrics("evaluated", metrics)
        if not parallel.is_main:
            continue  # rank 0 holds every prediction and writes the record
        fitted = _Fitted(method, datasets, predictions, metrics, content.get("extras", {}), {}, openset,
                         read_calibration(content))
        records.append(_record(class_config, fitted, run_id, "evaluate", results_file, provenance, started, None,
                               checkpoint=str(path)))
    record = None
    if parallel.is_main:
        record = records[0] if list(targets) == [None] else \
            merge_class_records(config, run_id, records, provenance, started, None)
        write_results(results_file, record)
    logger.info("results written to %s", results_file)
    return RunOutcome(results_file, None, parallel.broadcast(record))


def stored_config(checkpoint: str | Path, trust: bool = False) -> dict[str, Any] | None:
    """The run config a checkpoint (or a run folder) was trained with, or None for bare weights."""
    path = Path(checkpoint)
    if path.is_dir() and (path / CONFIG).is_file():
        return _stored_config(path)
    # evaluate and predict load the weights next: pass the content on so the file is read once
    return load_checkpoint(next(iter(class_checkpoints(path).values())), trust=trust, pass_on=True).get("config") \
        or None
