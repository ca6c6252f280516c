"""Calibrated decisions: thresholds from normal images, stored with the model.

A model's raw image score (e.g. MambaAD's maximum of ``1 - cos``) has no unit: whether 0.31
is a defect depends on the model, the class and the data. A **calibration** fixes the
answer from normal images the model was not trained on (``train.calibration_share`` of the
training normals held out, ``train.calibration_dir``, or ``mambaad calibrate`` afterwards):

- **image threshold** ``t``: the ``q``-quantile (numpy's linear interpolation) of the normal
  images' scores, ``q = quantile`` (default 0.99): an image is anomalous when ``score > t``,
  so about ``1 - q`` of normal images are flagged (with N calibration images the estimate
  is coarse below ~1 / (1 - q) images: the 0.99 quantile of 20 images is near their maximum);
- **pixel threshold** ``t_p``: the ``q``-quantile of the normal maps' *maxima*, so that about
  ``q`` of normal images have no pixel above it (a quantile over all pixels would mark
  ``1 - q`` of every normal image, a blob in each); for methods whose score is the map's
  maximum (MambaAD, MMAD) ``t_p = t``; methods that score the unblurred patches (GLASS,
  the nearest-neighbour baseline) have ``t_p < t``, and an image can then be labelled normal
  while a few of its pixels lie above ``t_p``;
- **medians** ``m`` of the normal scores and ``m_p`` of the normal maps' pixels (on a
  regular subsample of at most 64 x 64 per map): the typical normal value.

The **normalised score** puts the threshold at 0.5 and the median normal image at 0.1::

    normalized(s) = 1 / (1 + exp(-ln(9) * (s - t) / (t - m)))

(0.9 at ``t + (t - m)``; monotone; in (0, 1)); maps are normalised the same way with
``t_p`` and ``m_p`` (the colour scale of ``mambaad predict``'s overlays). When ``t <= m``
(all normal scores equal) the spread is floored at 1e-6 of the threshold's size.

Stored in the checkpoint as the optional key ``calibration`` (checkpoint format 2; no
version change), a dict of :class:`Calibration`'s fields. Per-class methods store one per
class model. The **F1-optimal threshold** of a test split with labels is reported in results
files by :func:`threshold_report`, never stored: it is chosen on the test labels.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mambaad_lib.data.subsets import dataset_items, subset
from mambaad_lib.engine.checkpoint import load_checkpoint, save_checkpoint
from mambaad_lib.engine.config import RunConfig
from mambaad_lib.engine.images import ImageFolder, ImageGeometry, collect_images, load_input
from mambaad_lib.methods.base import AnomalyMethod
from mambaad_lib.utils.errors import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "calibration"
DEFAULT_QUANTILE = 0.99
PIXEL_SAMPLE_SIDE = 64  # per map, at most this many rows and columns enter the pixel median
_LOGIT_90 = math.log(9.0)  # normalised 0.1 at the median, 0.9 one spread above the threshold
HOLD_OUT_STREAM = 0x0CA1  # the hold-out draws from its own random stream of the run's seed


@dataclass(frozen=True)
class Calibration:
    """Thresholds and normalisation statistics from normal images (module docstring).

    Attributes:
        quantile: q, the share of normal images kept below the thresholds.
        image_threshold, image_median: t and m of the normal image scores.
        pixel_threshold, pixel_median: t_p (quantile of map maxima) and m_p (pixel median).
        n_images: normal images used.
        source: where they came from (for people reading the checkpoint or results).
    """

    quantile: float
    image_threshold: float
    image_median: float
    pixel_threshold: float
    pixel_median: float
    n_images: int
    source: str

    def normalize_score(self, scores: Any) -> Any:
        """Scores -> (0, 1), 0.5 at the image threshold (float in, float out; arrays likewise)."""
        return _logistic(scores, self.image_threshold, self.image_median)

    def normalize_map(self, values: np.ndarray) -> np.ndarray:
        """Map values -> (0, 1), 0.5 at the pixel threshold (NaN stays NaN)."""
        return _logistic(values, self.pixel_threshold, self.pixel_median)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Calibration":
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in values]
        if missing:
            raise ValueError(f"calibration entry lacks {missing}")
        return cls(**{name: values[name] for name in names})


def _logistic(values: Any, threshold: float, median: float) -> Any:
    spread = max(threshold - median, 1e-6 * max(abs(threshold), 1e-12))
    z = np.clip(_LOGIT_90 * (np.asarray(values, dtype=np.float64) - threshold) / spread, -500.0, 500.0)
    out = 1.0 / (1.0 + np.exp(-z))
    return float(out) if np.ndim(out) == 0 else out.astype(np.float32)


def check_quantile(quantile: float, name: str = "quantile") -> float:
    """``quantile`` if it lies in (0, 1), else a ConfigError naming ``name``."""
    if not isinstance(quantile, (int, float)) or not 0.0 < quantile < 1.0:
        raise ConfigError(f"{name} must be in (0, 1), got {quantile!r}")
    return float(quantile)


def calibrate(outputs: Iterable[tuple[torch.Tensor, torch.Tensor]], quantile: float = DEFAULT_QUANTILE,
              source: str = "normal images") -> Calibration:
    """A calibration from a model's outputs on normal images.

    Args:
        outputs: ``(maps (B, 1, h, w), scores (B,))`` per batch, as ``AnomalyMethod.predict``
            returns them.
        quantile: q in (0, 1).
        source: a description of the images, kept in the calibration.
    Raises:
        ValueError: no images, or non-finite scores.
    """
    quantile = check_quantile(quantile)
    scores, maxima, pixels = [], [], []
    for maps, batch_scores in outputs:
        maps = maps[:, 0].float().cpu().numpy()
        step = max(1, -(-max(maps.shape[-2:]) // PIXEL_SAMPLE_SIDE))
        scores.append(batch_scores.float().cpu().numpy())
        maxima.append(maps.reshape(len(maps), -1).max(axis=1))
        pixels.append(maps[:, ::step, ::step].ravel())
    if not scores:
        raise ValueError("calibration needs at least one normal image; none were given")
    scores, maxima, pixels = np.concatenate(scores), np.concatenate(maxima), np.concatenate(pixels)
    if not (np.isfinite(scores).all() and np.isfinite(maxima).all()):
        raise ValueError("the model gave non-finite scores on the calibration images")
    if len(scores) < 1 / (1 - quantile):
        logger.warning("calibration on %d images: the %.3g quantile of so few is close to their maximum, and the "
                       "share of normal images flagged is only roughly 1 - %.3g", len(scores), quantile, quantile)
    return Calibration(quantile=quantile, image_threshold=float(np.quantile(scores, quantile)),
                       image_median=float(np.median(scores)), pixel_threshold=float(np.quantile(maxima, quantile)),
                       pixel_median=float(np.median(pixels)), n_images=int(len(scores)), source=source)


# ---- where the normal images come from -----------------------------------------------------


def hold_out(train: Dataset, share: float, seed: int) -> tuple[Dataset, Dataset]:
    """(training images, calibration images) of a training split: per class, ``round(share * n)``
    images (at least one, and at least one left for training), drawn from the run's ``seed``.

    Raises:
        ConfigError: a class with a single training image.
    """
    rng = np.random.default_rng([seed, HOLD_OUT_STREAM])
    by_class: dict[str, list[int]] = {}
    for index, item in enumerate(dataset_items(train)):
        by_class.setdefault(item["cls_name"], []).append(index)
    held: set[int] = set()
    for name, indices in sorted(by_class.items()):
        if len(indices) < 2:
            raise ConfigError(f"train.calibration_share: class {name!r} has {len(indices)} training image, too few "
                              "to hold any out; set train.calibration_share to 0 or use train.calibration_dir")
        count = min(len(indices) - 1, max(1, round(share * len(indices))))
        held.update(int(index) for index in rng.choice(indices, size=count, replace=False))
    kept = [index for index in range(len(train)) if index not in held]
    return subset(train, kept), subset(train, sorted(held))


def class_folder(folder: str | Path, class_name: str | None) -> Path:
    """The calibration images of one model: ``folder`` itself, or ``folder/<class>`` for the
    model of one class of a per-class method.

    Raises:
        FileNotFoundError: the folder (or the class's subfolder) does not exist.
    """
    folder = Path(folder)
    target = folder if class_name is None else folder / class_name
    if not target.is_dir():
        hint = "" if class_name is None else \
            f" (a per-class method calibrates each class model on its own subfolder {str(folder)}/<class>/)"
        raise FileNotFoundError(f"calibration folder {str(target)!r} does not exist{hint}")
    return target


def folder_images(folder: Path, geometry: ImageGeometry) -> ImageFolder:
    """Every image under ``folder`` (recursively) as model inputs, each read once now so that
    every unreadable file is reported before any long work starts.

    Raises:
        ValueError: unreadable or unusable images (all of them listed).
    """
    files = collect_images([folder], recursive=True)
    problems = []
    for path in files:
        try:
            load_input(path)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError(f"{len(problems)} of {len(files)} calibration images in {str(folder)!r} cannot be used:\n  "
                         + "\n  ".join(problems))
    return ImageFolder(files, geometry, folder)


def run_calibration_images(config: RunConfig, per_class: bool, train: Dataset) -> tuple[Dataset, Dataset | None]:
    """(training images, calibration images or None) of one model of a run, by
    ``train.calibration_share`` (held out of ``train``) or ``train.calibration_dir``."""
    settings = config.train
    if settings.calibration_share > 0:
        return hold_out(train, settings.calibration_share, config.seed)
    if settings.calibration_dir:
        class_name = config.data.classes[0] if per_class else None
        folder = class_folder(settings.calibration_dir, class_name)
        return train, folder_images(folder, ImageGeometry(config.data.image_size, config.data.crop_size))
    return train, None


def calibrate_run(method: AnomalyMethod, images: Dataset, config: RunConfig, checkpoint: str | Path) -> Calibration:
    """Calibrate a trained model on ``images`` and store the result in its ``checkpoint``."""
    settings = config.train
    source = (f"{len(images)} training normals held out (train.calibration_share={settings.calibration_share})"
              if settings.calibration_share > 0 else f"{len(images)} images of {images.folder}")  # an ImageFolder
    loader = DataLoader(images, batch_size=config.eval.batch_size, shuffle=False, num_workers=config.data.num_workers)
    calibration = calibrate((method.predict(batch["image"]) for batch in loader), settings.calibration_quantile,
                            source)
    store_calibration(checkpoint, calibration)
    logger.info("calibrated on %s: image threshold %.6g, pixel threshold %.6g (quantile %.3g), stored in %s",
                source, calibration.image_threshold, calibration.pixel_threshold, calibration.quantile, checkpoint)
    return calibration


# ---- checkpoints -------------------------------------------------------------------------


def read_calibration(content: dict[str, Any]) -> Calibration | None:
    """The calibration stored in a loaded checkpoint, or None."""
    values = content.get(CHECKPOINT_KEY)
    return Calibration.from_dict(values) if values else None


def store_calibration(path: str | Path, calibration: Calibration, trust: bool = False) -> Path:
    """Add (or replace) the calibration of checkpoint ``path``, rewriting it atomically.

    Raises:
        ValueError: bare weights (no run config), which cannot be used without a profile anyway.
    """
    content = load_checkpoint(path, trust=trust)
    if "config" not in content:
        raise ValueError(f"{path} holds weights only; calibration is stored in checkpoints written by mambaad train")
    kept = {key: value for key, value in content.items() if key not in ("format", "format_version", "checksum")}
    kept[CHECKPOINT_KEY] = calibration.to_dict()
    return save_checkpoint(path, **kept)


# ---- evaluation with test labels ---------------------------------------------------------------


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray) -> dict[str, float] | None:
    """The threshold of the best F1 on labelled scores (anomalous: ``score > threshold``),
    midway between the lowest score it flags and the highest it does not; None unless both
    labels occur."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_positive = int(labels.sum())
    if n_positive == 0 or n_positive == len(labels):
        return None
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order]
    true_positives = np.cumsum(hits)
    flagged = np.arange(1, len(ranked) + 1)
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold cannot split equal scores
    f1 = np.where(last_of_tie, 2 * true_positives / (flagged + n_positive), -1.0)
    best = int(np.argmax(f1))
    above = ranked[best]
    below = ranked[best + 1] if best + 1 < len(ranked) else np.nextafter(above, -np.inf)
    middle = (above + below) / 2
    return {"threshold": float(middle if below < middle < above else below), "f1": float(f1[best]),
            "precision": float(true_positives[best] / flagged[best]),
            "recall": float(true_positives[best] / n_positive)}


def decisions_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """How ``score > threshold`` does on labelled scores: counts, precision, recall, F1 and the
    share of normal images flagged (None where undefined)."""
    flagged, labels = np.asarray(scores) > threshold, np.asarray(labels).astype(bool)
    tp, fp = int((flagged & labels).sum()), int((flagged & ~labels).sum())
    fn, tn = int((~flagged & labels).sum()), int((~flagged & ~labels).sum())

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {"threshold": float(threshold), "true_positives": tp, "false_positives": fp, "false_negatives": fn,
            "true_negatives": tn, "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "normal_flagged": ratio(fp, fp + tn)}


def threshold_report(scores: np.ndarray, labels: np.ndarray, calibration: Calibration | None) -> dict[str, Any]:
    """The results file's ``thresholds`` entry of one model on its test split."""
    return {"calibration": calibration.to_dict() if calibration else None,
            "at_calibrated_threshold": decisions_at(scores, labels, calibration.image_threshold)
            if calibration else None,
            "f1_optimal": f1_optimal_threshold(scores, labels),
            "note": "f1_optimal is chosen on the test labels: reported for reference, never stored with the model"}
