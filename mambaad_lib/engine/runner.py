"""Train / evaluate / predict orchestration: what one ``mambaad`` command does.

Every entry point checks its inputs (dataset meta, writable folders, checkpoint fit) before
any long work starts and writes its outputs atomically, so a failed command leaves nothing
half-written behind.
"""
from __future__ import annotations

import csv
import io
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset

from mambaad_lib.engine.checkpoint import FINAL, LAST, latest_run_dir, load_checkpoint
from mambaad_lib.engine.config import ConfigError, RunConfig, config_to_dict
from mambaad_lib.engine.evaluate import (
    Predictions, compute_protocol_metrics, pick_examples, predict_dataset, save_examples)
from mambaad_lib.engine.figures import normalize_map, overlay
from mambaad_lib.utils.files import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from mambaad_lib.engine.results import new_record, results_path, write_results
from mambaad_lib.engine.seeding import seed_everything, set_deterministic
from mambaad_lib.engine.trainer import Trainer
from mambaad_lib.methods import AnomalyMethod, get_method, get_method_class

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Config sections that may differ between an interrupted run and its resumption.
RESUME_FREE_KEYS = ("paths", "device", "eval", "data.num_workers", "data.root")


@dataclass
class RunOutcome:
    """What a train or evaluate command produced."""

    results_file: Path
    run_dir: Path | None
    record: dict[str, Any]


# ---- shared helpers --------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def default_run_id(config: RunConfig) -> str:
    """``<method>-seed<seed>-<UTC time>``: unique per run and sortable."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{config.method}-seed{config.seed}-{stamp}"


def _capped(dataset: Any, per_class: int | None) -> Dataset:
    """The first ``per_class`` items of every class (meta order), or the whole dataset."""
    if per_class is None:
        return dataset
    counts: dict[str, int] = {}
    keep = []
    for index, item in enumerate(dataset.items):
        counts[item["cls_name"]] = counts.get(item["cls_name"], 0) + 1
        if counts[item["cls_name"]] <= per_class:
            keep.append(index)
    subset = Subset(dataset, keep)
    subset.classes = dataset.classes  # type: ignore[attr-defined]
    return subset


def build_datasets(config: RunConfig, splits: Sequence[str] = ("train", "test")) -> dict[str, Dataset]:
    """The configured splits; training uses the normal (``label`` 0) images of every class.

    Raises:
        FileNotFoundError: no meta file (with the commands that create one).
    """
    from mambaad_lib.data import AnomalyDataset, meta_path

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
        datasets[split] = _capped(dataset, cap)
    return datasets


def _image_batches(dataset: Dataset, batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch in loader:
        yield batch["image"]


def _evaluate(method: AnomalyMethod, dataset: Dataset, config: RunConfig, progress: bool,
              desc: str) -> tuple[Predictions, dict[str, Any]]:
    predictions = predict_dataset(method, dataset, config.eval.batch_size, config.data.num_workers,
                                  progress=progress, desc=desc)
    return predictions, compute_protocol_metrics(predictions, config.eval.protocols)


def _log_metrics(title: str, metrics: dict[str, Any]) -> None:
    for protocol, values in metrics.items():
        shown = " ".join(f"{key}={value:.4f}" if value is not None else f"{key}=nan"
                         for key, value in values["mean"].items())
        logger.info("%s [%s protocol] %s", title, protocol, shown)


def _prepare_outputs(config: RunConfig, run_id: str, with_run_dir: bool) -> tuple[Path, Path | None]:
    results_file = results_path(config.paths.results_dir, config.experiment, config.profile, run_id)
    ensure_writable_dir(results_file.parent, "results (--results-dir)")
    run_dir = None
    if with_run_dir:
        run_dir = ensure_writable_dir(Path(config.paths.runs_dir) / config.experiment / run_id, "runs (--runs-dir)")
    return results_file, run_dir


def _record(config: RunConfig, method: AnomalyMethod, run_id: str, kind: str, device: torch.device,
            datasets: dict[str, Dataset], predictions: Predictions, metrics: dict[str, Any],
            extras: dict[str, Any], training: dict[str, Any] | None, checkpoint: Path,
            examples: list[Path], results_file: Path, started: float) -> dict[str, Any]:
    return new_record(
        run_id=run_id, experiment=config.experiment, profile=config.profile, kind=kind, method=config.method,
        seed=config.seed, device=device.type, scan_backend=method.scan_backend, config=config_to_dict(config),
        encoder=extras.get("prepare", {}),
        data={"root": config.data.root, "name": config.data.name,
              "classes": sorted(set(predictions.class_names)),
              "n_train": len(datasets["train"]) if "train" in datasets else None,
              "n_test": len(datasets["test"])},
        model=method.describe(), training=training,
        evaluation={**predictions.timing, "checkpoint": str(checkpoint)},
        metrics=metrics, metrics_untrained=extras.get("metrics_untrained"),
        examples=[str(path.relative_to(results_file.parent)) for path in examples],
        wall_time_s=time.perf_counter() - started)


def _check_resume_config(config: RunConfig, stored: dict[str, Any], checkpoint: Path) -> None:
    """A resumed run must train exactly as the interrupted one did."""
    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in values.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                out.update(flat(value, dotted + "."))
            else:
                out[dotted] = value
        return out

    def free(key: str) -> bool:
        return any(key == free_key or key.startswith(free_key + ".") for free_key in RESUME_FREE_KEYS)

    now, then = flat(config_to_dict(config)), flat(stored)
    differing = sorted(key for key in set(now) | set(then) if not free(key) and now.get(key) != then.get(key))
    if differing:
        details = ", ".join(f"{key}: checkpoint {then.get(key)!r} vs now {now.get(key)!r}" for key in differing)
        raise ValueError(f"cannot resume {checkpoint}: the config differs from the interrupted run's "
                         f"({details}); resume with the same options (or omit --profile to reuse the stored config)")


def resolve_resume(resume: str | Path, config: RunConfig) -> Path:
    """``latest`` / a run id / a run folder / a checkpoint file -> the checkpoint to resume."""
    text = str(resume)
    if text == "latest":
        return latest_run_dir(config.paths.runs_dir, config.experiment, LAST) / LAST
    candidate = Path(text)
    if candidate.is_file():
        return candidate
    for folder in (candidate, Path(config.paths.runs_dir) / config.experiment / text):
        if (folder / LAST).is_file():
            return folder / LAST
    raise FileNotFoundError(f"--resume {text!r}: no checkpoint file, run folder or run id with a {LAST} "
                            f"(looked under {str(Path(config.paths.runs_dir) / config.experiment)!r})")


# ---- train -----------------------------------------------------------------------------


def train(config: RunConfig, run_id: str | None = None, resume: str | Path | None = None,
          progress: bool = True, callbacks: Sequence[Callable[[Trainer], None]] = ()) -> RunOutcome:
    """Train a method, evaluate it on the test split and write the results file.

    Args:
        config: validated run config.
        run_id: name of the run (default: method, seed and time); taken from the checkpoint
            folder when resuming.
        resume: ``latest``, a run id, a run folder or a ``last.pt`` to continue.
        progress: tqdm bars.
        callbacks: passed to the :class:`Trainer` (called after every step).
    """
    run_training = get_method_class(config.method).run_training
    if run_training is not None:
        if resume is not None:
            raise ConfigError(f"method {config.method!r} trains in one go and cannot --resume")
        return run_training(config, run_id=run_id, progress=progress)
    started = time.perf_counter()
    device = resolve_device(config.device)
    checkpoint_to_resume = None
    if resume is not None:
        checkpoint_to_resume = resolve_resume(resume, config)
        _check_resume_config(config, load_checkpoint(checkpoint_to_resume).get("config", {}), checkpoint_to_resume)
        run_id = checkpoint_to_resume.parent.name
    run_id = run_id or default_run_id(config)
    datasets = build_datasets(config)
    results_file, run_dir = _prepare_outputs(config, run_id, with_run_dir=checkpoint_to_resume is None)
    if checkpoint_to_resume is not None:
        run_dir = ensure_writable_dir(checkpoint_to_resume.parent, "run (--resume)")

    seed_everything(config.seed)
    set_deterministic(config.train.deterministic)
    method = get_method(config.method, config.model, config.data.crop_size, device,
                        pretrained=checkpoint_to_resume is None)
    logger.info("%s on %s, scan backend %s, %d training / %d test images, run %s", method.summary(), device,
                method.scan_backend, len(datasets["train"]), len(datasets["test"]), run_id)
    extras: dict[str, Any] = {}
    if checkpoint_to_resume is None:
        batches = _image_batches(datasets["train"], config.eval.batch_size, config.data.num_workers)
        extras["prepare"] = method.prepare(batches)
        if config.train.evaluate_untrained:
            _, extras["metrics_untrained"] = _evaluate(method, datasets["test"], config, progress,
                                                       "evaluate (untrained)")
            _log_metrics("untrained", extras["metrics_untrained"])
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))

    trainer = Trainer(method, config, run_dir, progress=progress, callbacks=callbacks, extras=extras)
    fit = trainer.fit(datasets["train"], resume_from=checkpoint_to_resume)

    predictions, metrics = _evaluate(method, datasets["test"], config, progress, "evaluate")
    _log_metrics("trained", metrics)
    examples = save_examples(predictions, datasets["test"], pick_examples(predictions, config.eval.num_examples),
                             results_file.parent / f"{run_id}_examples")
    training = {"epochs": fit.progress.epoch, "steps": fit.progress.global_step,
                "wall_time_s": fit.progress.wall_time_s, "epoch_losses": fit.progress.epoch_losses,
                "final_loss": fit.progress.epoch_losses[-1] if fit.progress.epoch_losses else None,
                "resumed_from": str(fit.resumed_from) if fit.resumed_from else None,
                "checkpoint": str(fit.final_checkpoint)}
    record = _record(config, method, run_id, "train", device, datasets, predictions, metrics, fit.extras,
                     training, fit.final_checkpoint, examples, results_file, started)
    write_results(results_file, record)
    logger.info("results written to %s", results_file)
    return RunOutcome(results_file, run_dir, record)


# ---- evaluate --------------------------------------------------------------------------


def load_for_inference(checkpoint: str | Path, config: RunConfig) -> tuple[AnomalyMethod, dict[str, Any]]:
    """Build the configured method and load a checkpoint's weights into it (strictly)."""
    content = load_checkpoint(checkpoint)
    if content.get("method", config.method) != config.method:
        raise ValueError(f"checkpoint {checkpoint} holds a {content['method']!r} model, "
                         f"but the config asks for {config.method!r}")
    device = resolve_device(config.device)
    seed_everything(config.seed)
    method = get_method(config.method, config.model, config.data.crop_size, device, pretrained=False)
    method.load_state_dict(content["model"], source=f"checkpoint {checkpoint}")
    method.train(False)
    return method, content


def find_checkpoint(config: RunConfig) -> Path:
    """The ``final.pt`` of the newest finished run of ``config.experiment``."""
    return latest_run_dir(config.paths.runs_dir, config.experiment, FINAL) / FINAL


def evaluate(config: RunConfig, checkpoint: str | Path, run_id: str | None = None,
             progress: bool = True) -> RunOutcome:
    """Evaluate a checkpoint on the configured test split and write a results file."""
    started = time.perf_counter()
    checkpoint = Path(checkpoint)
    datasets = build_datasets(config, splits=("test",))
    run_id = run_id or f"eval-{checkpoint.parent.name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    results_file, _ = _prepare_outputs(config, run_id, with_run_dir=False)
    method, content = load_for_inference(checkpoint, config)
    predictions, metrics = _evaluate(method, datasets["test"], config, progress, "evaluate")
    _log_metrics("evaluated", metrics)
    examples = save_examples(predictions, datasets["test"], pick_examples(predictions, config.eval.num_examples),
                             results_file.parent / f"{run_id}_examples")
    record = _record(config, method, run_id, "evaluate", method.device, datasets, predictions, metrics,
                     content.get("extras", {}), None, checkpoint, examples, results_file, started)
    write_results(results_file, record)
    logger.info("results written to %s", results_file)
    return RunOutcome(results_file, None, record)


# ---- predict ---------------------------------------------------------------------------


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (non-recursively) in folders, in sorted order."""
    files: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found = sorted(path for path in entry.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"folder {str(entry)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"input {str(entry)!r} does not exist")
    return files


def read_user_image(path: Path, crop_size: int, resize: bool) -> Image.Image:
    """An RGB image ready for the model's transform, or a ``ValueError`` saying what is wrong.

    RGB and greyscale (replicated to 3 channels, as the datasets do) are accepted; images
    with alpha, CMYK, 16-bit or palette images are rejected rather than silently converted.
    Without ``resize`` the image must already be ``crop_size`` x ``crop_size``.
    """
    try:
        with Image.open(path) as image:
            image.load()
            image = image.copy()
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: cannot be read as an image ({error})") from None
    channels = {"RGB": 3, "L": 1}
    if image.mode not in channels:
        raise ValueError(f"{path}: image mode {image.mode} with {len(image.getbands())} channel(s) "
                         f"({''.join(image.getbands())}); expected RGB (3 channels) or greyscale. "
                         "Convert it first, e.g. Image.open(p).convert('RGB').save(q)")
    if not resize and image.size != (crop_size, crop_size):
        raise ValueError(f"{path}: image is {image.size[0]}x{image.size[1]}, the model takes "
                         f"{crop_size}x{crop_size}; resize it or drop --no-resize")
    if min(image.size) < 8:
        raise ValueError(f"{path}: image is {image.size[0]}x{image.size[1]}, too small to analyse")
    return image.convert("RGB")


def _output_stems(files: Sequence[Path]) -> list[str]:
    stems, seen = [], set()
    for path in files:
        stem = path.stem if path.stem not in seen else f"{path.stem}_{path.suffix.lstrip('.')}"
        index = 1
        while stem in seen:
            index += 1
            stem = f"{path.stem}_{index}"
        seen.add(stem)
        stems.append(stem)
    return stems


def predict(config: RunConfig, checkpoint: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
            resize: bool = True, progress: bool = True) -> Path:
    """Anomaly maps, heat-map overlays and a CSV of scores for a user's own images.

    Writes ``<stem>_map.npy`` (float32 (H,W) map), ``<stem>_overlay.png`` and ``scores.csv``
    (path, score) into ``out_dir``, which must not exist yet or be empty: everything is
    written into a temporary sibling folder first and moved into place at the end, so a
    failure leaves nothing behind. Overlay colours share one range over all given images
    (min of all maps to the max), so an image that is hotter than the others looks it.

    Returns:
        the CSV path.
    """
    from mambaad_lib.data import transform_image

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"output folder {str(out_dir)!r} exists and is not empty; choose another --out")
    files = collect_images(inputs)
    size, crop = config.data.image_size, config.data.crop_size
    images = [read_user_image(path, crop, resize) for path in files]  # validate everything first
    ensure_writable_dir(out_dir.parent, "output (--out)")
    method, _ = load_for_inference(checkpoint, config)

    maps, scores = [], []
    batch_size = config.eval.batch_size
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(images), batch_size), desc="predict", unit="batch", disable=not progress):
        tensors = torch.stack([transform_image(image, size, crop) for image in images[start:start + batch_size]])
        batch_maps, batch_scores = method.predict(tensors)  # (B,1,H,W), (B,)
        maps += list(batch_maps[:, 0].float().cpu().numpy())
        scores += batch_scores.float().cpu().tolist()
    low, high = float(min(m.min() for m in maps)), float(max(m.max() for m in maps))

    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        rows = []
        for path, stem, image, anomaly_map, score in zip(files, _output_stems(files), images, maps, scores):
            np.save(staging / f"{stem}_map.npy", anomaly_map.astype(np.float32))
            shown = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
            offset = (size - crop) // 2
            shown = shown[offset:offset + crop, offset:offset + crop]
            buffer = io.BytesIO()
            Image.fromarray(overlay(shown, normalize_map(anomaly_map, low, high))).save(buffer, format="PNG")
            atomic_write_bytes(staging / f"{stem}_overlay.png", buffer.getvalue())
            rows.append({"image": str(path), "score": f"{score:.6g}", "map": f"{stem}_map.npy",
                         "overlay": f"{stem}_overlay.png"})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["image", "score", "map", "overlay"])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(staging / "scores.csv", text.getvalue())
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%d images: maps, overlays and scores.csv written to %s", len(files), out_dir)
    return out_dir / "scores.csv"
