"""``mambaad predict``: scores, decisions, anomaly maps and overlays for a user's images.

Built on :class:`~mambaad_lib.engine.predictor.Predictor`. For every image, in the output
folder: ``<stem>_map.npy`` (float32 map at the image's own resolution, NaN outside the
model's centre crop) and ``<stem>_overlay.png``; for all images, one row each in
``scores.csv`` and ``scores.jsonl`` (image, score, normalized_score, label, map, overlay).

**Overlay colours** are on a fixed scale, the same for every image, so that a normal image
looks normal and an anomalous one stands out on its own:

- with a stored calibration: the map's normalised value
  (:meth:`~mambaad_lib.engine.calibration.Calibration.normalize_map`): 0.5 (green) at the
  pixel threshold, 0.1 (blue) at the median normal pixel, red above the threshold;
- without one: the raw map value clipped to [0, 1] (:data:`UNCALIBRATED_RANGE`; 1 - cosine
  maps of MambaAD/MMAD and GLASS's probabilities live there, distance maps of other methods
  saturate), and a warning says how to calibrate. Labels and normalised scores stay empty.

Images are streamed (a batch at a time; only the table's text is kept). A file that cannot be
read or used does not stop the others: all are listed at the end in an
:class:`UnreadableImages` error, the results of the good ones are kept. The output folder is
written into a temporary sibling and moved into place at the end.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mambaad_lib.engine.config import RunConfig
from mambaad_lib.engine.figures import heat_colors
from mambaad_lib.engine.images import collect_images
from mambaad_lib.engine.predictor import Prediction, Predictor
from mambaad_lib.utils.files import atomic_write_bytes, ensure_writable_dir

logger = logging.getLogger(__name__)

UNCALIBRATED_RANGE = (0.0, 1.0)
OVERLAY_ALPHA = 0.5
COLUMNS = ["image", "score", "normalized_score", "label", "map", "overlay"]


class UnreadableImages(ValueError):
    """Some inputs could not be read or used; the others' results were written.

    Attributes:
        failures: ``(path, reason)`` of every input that failed.
        out_dir: the output folder with the good images' results (None when none succeeded).
    """

    def __init__(self, failures: list[tuple[str, str]], n_inputs: int, out_dir: Path | None) -> None:
        self.failures, self.out_dir = failures, out_dir
        kept = f"results for the other {n_inputs - len(failures)} are in {out_dir}" if out_dir else "nothing was written"
        super().__init__(f"{len(failures)} of {n_inputs} images could not be used ({kept}):\n  "
                         + "\n  ".join(reason for _, reason in failures))


def overlay_heat(prediction: Prediction, predictor: Predictor) -> np.ndarray:
    """The map on the overlays' fixed colour scale, (H, W) in [0, 1] (NaN outside the crop)."""
    if predictor.calibration is not None:
        return predictor.calibration.normalize_map(prediction.anomaly_map)
    low, high = UNCALIBRATED_RANGE
    return np.clip((prediction.anomaly_map - low) / (high - low), 0.0, 1.0)


def overlay_image(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """The image blended with the heat colours; pixels without a map value (NaN) stay as they are."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    seen = np.isfinite(heat)
    colours = heat_colors(np.where(seen, heat, 0.0)).astype(np.float32)
    blended = np.where(seen[..., None], (1 - OVERLAY_ALPHA) * pixels + OVERLAY_ALPHA * colours, pixels)
    return Image.fromarray((blended + 0.5).clip(0, 255).astype(np.uint8))


class _OutputNames:
    """Unique file stems for the outputs (``a.png`` and ``a.jpg`` -> ``a``, ``a_jpg``)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, path: Path) -> str:
        stem = path.stem if path.stem not in self.seen else f"{path.stem}_{path.suffix.lstrip('.')}"
        index = 1
        while stem in self.seen:
            index += 1
            stem = f"{path.stem}_{index}"
        self.seen.add(stem)
        return stem


def _label(prediction: Prediction) -> str:
    return "" if prediction.is_anomalous is None else ("anomalous" if prediction.is_anomalous else "normal")


def predict(config: RunConfig, checkpoint: str | Path, inputs: Sequence[str | Path], out_dir: str | Path,
            resize: bool = True, progress: bool = True, trust: bool = False, cls: str | None = None) -> Path:
    """Maps, overlays and a table of scores and decisions for image files or folders.

    Args:
        config: the run config (usually the checkpoint's, with the command's overrides).
        checkpoint: a checkpoint file, or a per-class run folder with ``cls``.
        inputs: image files and/or folders (non-recursive).
        out_dir: output folder; must not exist yet or be empty.
        resize: False accepts only images of the model's input size.
        cls: the class model of a per-class run folder.
    Returns:
        the path of ``scores.csv``.
    Raises:
        UnreadableImages: some inputs failed (after the others' results were written).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"output folder {str(out_dir)!r} exists and is not empty; choose another --out")
    files = collect_images(inputs)
    ensure_writable_dir(out_dir.parent, "output (--out)")
    predictor = Predictor.from_checkpoint(checkpoint, device=config.device, cls=cls, trust=trust, config=config,
                                          resize=resize)
    if predictor.calibration is None:
        logger.warning("%s. Overlays use the fixed raw scale %s..%s of the map values.", predictor.calibration_hint,
                       *UNCALIBRATED_RANGE)

    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    failures: list[tuple[str, str]] = []
    try:
        names = _OutputNames()
        with open(staging / "scores.csv", "w", newline="", encoding="utf-8") as table, \
                open(staging / "scores.jsonl", "w", encoding="utf-8") as lines:
            writer = csv.DictWriter(table, fieldnames=COLUMNS)
            writer.writeheader()
            for item in tqdm(predictor.stream(files), total=len(files), desc="predict", unit="image",
                             disable=not progress):
                if item.error is not None:
                    failures.append((str(item.input), item.error))
                    continue
                prediction = item.prediction
                stem = names(Path(item.input))
                np.save(staging / f"{stem}_map.npy", prediction.anomaly_map)
                buffer = io.BytesIO()
                overlay_image(item.image, overlay_heat(prediction, predictor)).save(buffer, format="PNG")
                atomic_write_bytes(staging / f"{stem}_overlay.png", buffer.getvalue())
                row = {"image": str(item.input), "score": prediction.score,
                       "normalized_score": prediction.normalized_score, "label": _label(prediction),
                       "map": f"{stem}_map.npy", "overlay": f"{stem}_overlay.png"}
                writer.writerow({**row, "score": f"{prediction.score:.6g}", "normalized_score":
                                 "" if prediction.normalized_score is None else f"{prediction.normalized_score:.6g}"})
                lines.write(json.dumps(row) + "\n")
        if len(failures) == len(files):
            raise UnreadableImages(failures, len(files), None)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if failures:
        raise UnreadableImages(failures, len(files), out_dir)
    logger.info("%d images: maps, overlays, scores.csv and scores.jsonl written to %s", len(files), out_dir)
    return out_dir / "scores.csv"
