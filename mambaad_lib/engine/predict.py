"""``mambaad predict``: anomaly maps, overlays and scores for a user's own images."""
from __future__ import annotations

import csv
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from mambaad_lib.data import transform_image
from mambaad_lib.data.io import to_8bit
from mambaad_lib.engine.config import RunConfig
from mambaad_lib.engine.figures import normalize_map, overlay
from mambaad_lib.engine.runner import load_for_inference
from mambaad_lib.utils.files import atomic_write_bytes, atomic_write_text, ensure_writable_dir

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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

    RGB and greyscale (replicated to 3 channels, as the datasets do) are accepted, 16-bit
    greyscale scaled to 8 bits as the datasets' images are (:func:`~mambaad_lib.data.io.to_8bit`);
    images with alpha, CMYK, floating-point or palette images are rejected rather than
    silently converted.
    Without ``resize`` the image must already be ``crop_size`` x ``crop_size``.
    """
    try:
        with Image.open(path) as image:
            image.load()
            image = image.copy()
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: cannot be read as an image ({error})") from None
    image = to_8bit(image, path)
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
            resize: bool = True, progress: bool = True, trust: bool = False) -> Path:
    """Anomaly maps, heat-map overlays and a CSV of scores for a user's own images.

    Writes ``<stem>_map.npy`` (float32 (H,W) map), ``<stem>_overlay.png`` and ``scores.csv``
    (path, score) into ``out_dir``, which must not exist yet or be empty: everything is
    written into a temporary sibling folder first and moved into place at the end, so a
    failure leaves nothing behind. Overlay colours share one range over all given images
    (min of all maps to the max), so an image that is hotter than the others looks it.

    Returns:
        the CSV path.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"output folder {str(out_dir)!r} exists and is not empty; choose another --out")
    files = collect_images(inputs)
    size, crop = config.data.image_size, config.data.crop_size
    images = [read_user_image(path, crop, resize) for path in files]  # validate everything first
    ensure_writable_dir(out_dir.parent, "output (--out)")
    method, _ = load_for_inference(checkpoint, config, trust=trust)

    maps, scores = [], []
    batch_size = config.eval.batch_size
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
