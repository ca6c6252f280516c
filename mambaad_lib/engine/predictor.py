"""From a trained model to a decision, in Python: :class:`Predictor` and :class:`Prediction`.

::

    from mambaad_lib import Predictor

    predictor = Predictor.from_checkpoint("runs/smoke/<run>/final.pt")
    result = predictor.predict("part.png")
    print(result.score, result.normalized_score, result.is_anomalous)
    result.anomaly_map  # (H, W) float32 at part.png's own resolution

Any method's checkpoint loads (per-class run folders with ``cls=``, open-set methods too).
Images are prepared as the training images were (resize, centre crop, ImageNet
normalisation; :mod:`mambaad_lib.engine.images`) and the model's map is brought back to each
image's own resolution, NaN outside the centre crop. Decisions come from the calibration
stored in the checkpoint (:mod:`mambaad_lib.engine.calibration`); without one,
``normalized_score`` and ``is_anomalous`` are None and :attr:`Predictor.calibration_hint`
says how to add one.

MMAD with ``release_compat: true`` and an ``inference_seed`` seeds its Gumbel draw per
batch, so its result for an image can depend on the other images in the batch; use
``batch_size=1`` for per-image reproducibility (``release_compat: false`` has no draw).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from mambaad_lib.engine.calibration import (
    DEFAULT_QUANTILE, Calibration, calibrate, class_folder, read_calibration, store_calibration)
from mambaad_lib.engine.checkpoint import load_checkpoint
from mambaad_lib.engine.config import RunConfig, load_config
from mambaad_lib.engine.images import ImageGeometry, ImageInput, collect_images, describe_input, load_input
from mambaad_lib.engine.runner import class_checkpoints, for_classes, load_for_inference
from mambaad_lib.methods import AnomalyMethod


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        anomaly_map: (H, W) float32 at the input image's own resolution (higher = more
            anomalous, the method's units); NaN where the image lies outside the centre crop
            the model saw (nowhere unless the model's ``crop_size`` < ``image_size``).
        score: the method's image score (higher = more anomalous).
        normalized_score: the score in (0, 1) with 0.5 at the stored threshold and 0.1 at the
            median normal image (None without calibration).
        is_anomalous: ``score > image threshold`` (None without calibration).
        anomaly_mask: (H, W) bool, ``anomaly_map > pixel threshold`` (None without calibration).
        source: the path the image was read from (None for an image or array given directly).
    """

    anomaly_map: np.ndarray
    score: float
    normalized_score: float | None
    is_anomalous: bool | None
    anomaly_mask: np.ndarray | None = None
    source: str | None = None


@dataclass
class StreamItem:
    """One input of :meth:`Predictor.stream`: its image and prediction, or why it failed."""

    input: Any
    image: Image.Image | None
    prediction: Prediction | None
    error: str | None


class Predictor:
    """A trained model ready for users' images (see the module docstring).

    Args:
        method: a loaded method (eval mode).
        config: its run config (image and crop size, batch size).
        calibration: the stored calibration, or None.
        batch_size: images per forward pass (default ``config.eval.batch_size``).
        resize: False accepts only images of the model's input size (``crop_size`` square).
        checkpoint: where it came from (for messages).
    """

    def __init__(self, method: AnomalyMethod, config: RunConfig, calibration: Calibration | None = None,
                 batch_size: int | None = None, resize: bool = True, checkpoint: str | Path | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.method = method
        self.config = config
        self.calibration = calibration
        self.batch_size = batch_size or config.eval.batch_size
        self.geometry = ImageGeometry(config.data.image_size, config.data.crop_size, resize)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None

    @classmethod
    def from_checkpoint(predictor_type, path: str | Path, device: str = "auto", cls: str | None = None,
                        trust: bool = False, config: RunConfig | None = None, batch_size: int | None = None,
                        resize: bool = True) -> "Predictor":
        """Load any method's checkpoint (``final.pt``, ``last.pt``, a run folder).

        Args:
            path: a checkpoint file, a run folder with ``final.pt``, or the run folder of a
                per-class method (then ``cls`` picks the class's model).
            device: ``auto`` (cuda when available), ``cpu`` or ``cuda``.
            cls: the class whose model to use, for per-class run folders.
            trust: unpickle fully (runs code from the file): only for files you made.
            config: the run config to use instead of the stored one (needed for bare weights).
            batch_size, resize: see :class:`Predictor`.
        Raises:
            FileNotFoundError: no such checkpoint.
            ValueError: a per-class run folder without (or with an unknown) ``cls``, ``cls``
                for a single model, or bare weights without ``config``.
        """
        checkpoint = _choose_checkpoint(path, cls)
        content = load_checkpoint(checkpoint, trust=trust, pass_on=True)  # load_for_inference takes it over
        if config is None:
            if not content.get("config"):
                raise ValueError(f"{checkpoint} holds weights only; pass config= (e.g. load_config('smoke')) to say "
                                 "which model it is")
            config = load_config(None, {"device": device}, base=content["config"])
        else:
            config = dataclasses.replace(config, device=device)
            if cls is not None and Path(path).is_dir():
                config = for_classes(config, [cls])
        method, _ = load_for_inference(checkpoint, config, trust=trust)
        return predictor_type(method, config, read_calibration(content), batch_size=batch_size, resize=resize,
                              checkpoint=checkpoint)

    # ---- facts ------------------------------------------------------------------------------
    @property
    def calibration_hint(self) -> str:
        """How to add a calibration to this model's checkpoint."""
        target = self.checkpoint or "CHECKPOINT"
        return (f"no calibration is stored in {target}: normalized_score and is_anomalous are None. Add one from "
                f"normal images: mambaad calibrate --checkpoint {target} --images NORMAL_IMAGES_DIR "
                "(or train with --set train.calibration_share=0.1 or --calibration-dir DIR)")

    # ---- prediction --------------------------------------------------------------------------
    def predict(self, images: ImageInput | Sequence[ImageInput]) -> Prediction | list[Prediction]:
        """One :class:`Prediction` for an image (path, PIL image, HxWx3 uint8 array), a list for a list.

        Raises:
            ValueError: an input that cannot be read or used (the message names it).
        """
        single = not isinstance(images, (list, tuple))
        results = []
        for item in self.stream([images] if single else images):
            if item.error is not None:
                raise ValueError(item.error)
            results.append(item.prediction)
        return results[0] if single else results

    def stream(self, inputs: Iterable[ImageInput]) -> Iterator[StreamItem]:
        """Predict lazily, ``batch_size`` images at a time, in input order; an input that cannot
        be read yields a :class:`StreamItem` with its ``error`` instead of stopping."""
        pending: list[StreamItem] = []
        for item in inputs:
            try:
                pending.append(StreamItem(item, load_input(item), None, None))
            except ValueError as error:
                pending.append(StreamItem(item, None, None, str(error)))
            if sum(entry.error is None for entry in pending) == self.batch_size:
                yield from self._complete(pending)
                pending = []
        yield from self._complete(pending)

    def _complete(self, pending: list[StreamItem]) -> list[StreamItem]:
        """Fill in the predictions of ``pending``'s readable images (one batch)."""
        readable = []
        for item in pending:
            if item.error is None:
                try:
                    readable.append((item, self.geometry.to_model(item.image, describe_input(item.input))))
                except ValueError as error:
                    item.error, item.image = str(error), None
        if readable:
            maps, scores = self._model_outputs(torch.stack([tensor for _, tensor in readable]))
            for (item, _), model_map, score in zip(readable, maps, scores):
                item.prediction = self._decide(model_map, float(score), item.image, item.input)
        return pending

    @torch.no_grad()
    def _model_outputs(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, crop, crop) -> maps (B, h, w) float32 and scores (B,) at the model's resolution."""
        maps, scores = self.method.predict(images)  # (B, 1, h, w), (B,)
        return maps[:, 0].float().cpu().numpy(), scores.float().cpu().numpy()

    def _decide(self, model_map: np.ndarray, score: float, image: Image.Image, source: Any) -> Prediction:
        anomaly_map = self.geometry.map_to_image(model_map, *image.size)
        calibration = self.calibration
        if calibration is None:
            return Prediction(anomaly_map, score, None, None, None, _source(source))
        return Prediction(anomaly_map, score, calibration.normalize_score(score), score > calibration.image_threshold,
                          anomaly_map > calibration.pixel_threshold, _source(source))

    # ---- calibration -------------------------------------------------------------------------
    def calibrate(self, normal_images: Iterable[ImageInput], quantile: float = DEFAULT_QUANTILE,
                  source: str = "normal images") -> Calibration:
        """Compute a calibration from normal images (paths, PIL images or arrays) and use it
        from now on; :func:`mambaad_lib.engine.calibration.store_calibration` saves it.

        Raises:
            ValueError: unreadable inputs (all listed) or no images.
        """
        problems: list[str] = []

        def outputs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            batch: list[torch.Tensor] = []
            for item in normal_images:
                try:
                    batch.append(self.geometry.to_model(load_input(item), describe_input(item)))
                except ValueError as error:
                    problems.append(str(error))
                if len(batch) == self.batch_size:
                    yield self.method.predict(torch.stack(batch))
                    batch = []
            if batch:
                yield self.method.predict(torch.stack(batch))

        try:
            calibration = calibrate(outputs(), quantile, source)
        except ValueError:
            if not problems:
                raise
        if problems:  # all of them, not only the first: report before anything is stored
            raise ValueError(f"{len(problems)} calibration image(s) cannot be used:\n  " + "\n  ".join(problems))
        self.calibration = calibration
        return calibration


def calibrate_checkpoint(checkpoint: str | Path, images: str | Path, quantile: float = DEFAULT_QUANTILE,
                         cls: str | None = None, device: str = "auto", trust: bool = False,
                         batch_size: int | None = None) -> dict[str | None, Calibration]:
    """``mambaad calibrate``: calibrate a checkpoint on a folder of normal images and store it.

    A single model uses every image under ``images`` (recursively); the run folder of a
    per-class method calibrates each class model (or only ``cls``) on ``images/<class>/``.
    Each checkpoint is rewritten atomically with its new ``calibration`` entry.

    Returns:
        ``{class or None: calibration}``.
    Raises:
        FileNotFoundError: a missing folder. ValueError: unreadable images (all listed, nothing stored).
    """
    classes = [key for key in class_checkpoints(checkpoint) if cls is None or key == cls] or [cls]
    results = {}
    for name in classes:
        predictor = Predictor.from_checkpoint(checkpoint, device=device, cls=name, trust=trust, batch_size=batch_size)
        folder = class_folder(images, name)
        files = collect_images([folder], recursive=True)
        calibration = predictor.calibrate(files, quantile, source=f"{len(files)} images of {folder}")
        store_calibration(predictor.checkpoint, calibration, trust=trust)
        results[name] = calibration
    return results


def _source(item: Any) -> str | None:
    return str(item) if isinstance(item, (str, Path)) else None


def _choose_checkpoint(path: str | Path, cls: str | None) -> Path:
    """The checkpoint file of ``path`` (a file or run folder) for class ``cls``."""
    targets = class_checkpoints(path)
    if list(targets) == [None]:
        if cls is not None:
            raise ValueError(f"{path} holds one model for all its classes; cls={cls!r} is only for the run folder "
                             "of a per-class method")
        return targets[None]
    if cls is None or cls not in targets:
        shown = ", ".join(map(str, targets))
        asked = "choose one" if cls is None else f"there is no {cls!r}"
        raise ValueError(f"{path} holds one model per class ({shown}); {asked} with cls='<class>' "
                         "(--class on the command line)")
    return targets[cls]
