"""The three metric protocols on the same synthetic maps, with each protocol's own ground truth.

Masks are drawn at a source resolution (default 768 x 768, like MVTec's 700-1024 px images)
and brought to the evaluation size (default 256) by the dataset's own code: nearest for
``standard`` (:func:`~mambaad_lib.data.transform_mask`), bilinear + > 0.5 for ``ader`` and
``adeval`` (:func:`~mambaad_lib.data.transform_mask_soft`,
:func:`~mambaad_lib.metrics.protocol_ground_truth`, image labels = mask maxima). Defects
are ellipses and thin scratches (1-4 source pixels wide), the kind whose bilinear mask
can fall below 0.5 everywhere.

The maps respond to the fraction of each evaluation pixel the defect covers (smooth
background noise + an image-dependent strength times that coverage, Gaussian blur sigma 4,
a per-class affine rescaling). Columns:

- ``standard``: exact metrics, nearest masks, the dataset's labels;
- ``ader, our masks``: the release's metric definitions on the ``standard`` ground truth
  (isolates the effect of the definitions);
- ``ader``: MambaAD's release (definitions and ground truth);
- ``adeval``: MMAD's release (pixel AUROC/AP/AU-PRO from the adeval package; skipped when
  it is not installed).

Each is the mean over classes of per-class metrics. Written to
``results/benchmarks/compare_protocols.json``; the table in ``book/metrics.md`` comes
from it. Run: ``python benchmarks/compare_protocols.py`` (under a minute on 2 cores).
"""
from __future__ import annotations

import argparse
import math
from importlib import metadata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from mambaad_lib.data import transform_mask, transform_mask_soft
from mambaad_lib.engine.results import environment
from mambaad_lib.metrics import METRIC_KEYS, per_class_metrics, protocol_ground_truth
from mambaad_lib.utils.files import atomic_write_json

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "compare_protocols.json"
COLUMNS = ("standard", "ader, our masks", "ader", "adeval")


def draw_mask(rng: np.random.Generator, source: int) -> Image.Image:
    """A 0/255 mask (mode L) of 1-3 defects: ellipses or thin scratches."""
    mask = Image.new("L", (source, source), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, source, 2)
        if rng.random() < 0.5:
            ry, rx = rng.uniform(2, source / 10, 2)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        else:
            angle, length = rng.uniform(0, math.pi), rng.uniform(source / 20, source / 3)
            dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=255, width=int(rng.integers(1, 5)))
    return mask


def synthetic_evaluation(n_images: int, n_classes: int, size: int, source: int, seed: int) -> dict[str, Any]:
    """Maps (N, size, size) float32, scores, labels, nearest masks (bool), soft masks (uint8), class names."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n_images) < 0.6
    nearest = np.zeros((n_images, size, size), dtype=bool)
    soft = np.zeros((n_images, size, size), dtype=np.uint8)
    for image in np.flatnonzero(labels):
        mask = draw_mask(rng, source)
        nearest[image] = transform_mask(mask, size, size)[0].numpy() > 0
        soft[image] = transform_mask_soft(mask, size, size)[0].numpy()
    coverage = soft.astype(np.float32) / 255  # bilinear (area-like) share of each pixel the defect covers
    strength = rng.uniform(0.5, 3.0, size=(n_images, 1, 1)).astype(np.float32)
    maps = rng.standard_normal(nearest.shape, dtype=np.float32) + strength * coverage
    ndimage.gaussian_filter(maps, sigma=(0, 4, 4), output=maps)
    class_of = np.arange(n_images) * n_classes // n_images
    maps *= np.exp(rng.uniform(-1, 1, n_classes)).astype(np.float32)[class_of, None, None]
    maps += rng.uniform(0, 2, n_classes).astype(np.float32)[class_of, None, None]
    return {"maps": maps, "scores": maps.max(axis=(1, 2)), "labels": labels.astype(np.int64), "nearest": nearest,
            "soft": soft, "class_names": [f"class_{c:02d}" for c in class_of]}


def evaluate(data: dict[str, Any]) -> dict[str, Any]:
    """Mean-over-classes metrics per column (None for adeval when the package is missing)."""
    means: dict[str, Any] = {}
    for column in COLUMNS:
        protocol = column.split(",")[0]
        truth = "standard" if column == "ader, our masks" else protocol
        try:
            labels, masks = protocol_ground_truth(truth, data["labels"],
                                                  data["nearest"], data["soft"])
        except ImportError as error:
            print(f"{column}: skipped ({error})")
            means[column] = None
            continue
        table = per_class_metrics(data["scores"], labels, data["maps"], masks, data["class_names"], protocol=protocol)
        means[column] = table.mean
    return means


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--n-classes", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="evaluation side (maps and resized masks)")
    parser.add_argument("--source", type=int, default=768, help="side at which masks are drawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for name in ("n_images", "n_classes", "size", "source"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.out.parent.is_dir():
        parser.error(f"--out: folder {str(args.out.parent)!r} does not exist")

    data = synthetic_evaluation(args.n_images, args.n_classes, args.size, args.source, args.seed)
    release_labels, release_masks = protocol_ground_truth("ader", data["labels"], data["nearest"], data["soft"])
    ground_truth = {"anomalous_images": int(data["labels"].sum()),
                    "anomalous_images_normal_under_release_masks": int((data["labels"] > release_labels).sum()),
                    "defect_pixels_nearest": int(data["nearest"].sum()),
                    "defect_pixels_release": int(release_masks.sum())}
    means = evaluate(data)
    print("| metric | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for key in METRIC_KEYS:
        cells = ["n/a" if means[c] is None else f"{means[c][key]:.4f}" for c in COLUMNS]
        print(f"| {key} | " + " | ".join(cells) + " |")
    print(ground_truth)
    record = {
        "benchmark": "compare_protocols",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "adeval_version": _version("adeval"),
        "config": {"n_images": args.n_images, "n_classes": args.n_classes, "size": args.size,
                   "source": args.source, "seed": args.seed},
        "ground_truth": ground_truth,
        "mean_over_classes": means,
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
