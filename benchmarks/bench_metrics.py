"""Benchmark: the four exact pixel metrics against scikit-learn's ``roc_auc_score`` alone.

On the same N x H x W pixels (default 1,000 maps of 256 x 256 = 65.5M pixels, nothing
subsampled) it times, in one process:

- ours: ``mambaad_lib.metrics.pixel_metrics`` = validation + one sort + region labelling +
  pixel AUROC, AP, F1-max and AU-PRO;
- baseline: ``sklearn.metrics.roc_auc_score(masks.ravel(), maps.ravel())`` (AUROC only);

prints both times and their ratio, checks that both AUROCs agree, and then evaluates the
same data per class under both protocols (``standard`` and ``ader``) to measure how far
apart they land. Everything goes, with provenance, to
``results/benchmarks/bench_metrics.json`` (written atomically).

The data are synthetic but shaped like real evaluations: smooth background noise,
elliptical defects on 60% of the images (1-3 per image, 1 to size/8 pixels in radius),
detected with an image-dependent strength, and a per-class affine rescaling of the maps
(which only the ``ader`` protocol's per-class normalisation sees).

Run: ``python benchmarks/bench_metrics.py`` (about 2 minutes on 2 cores, 3 GB of RAM).
"""
from __future__ import annotations

import argparse
import os
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from mambaad_lib.utils.files import atomic_write_json
from mambaad_lib.engine.results import environment
from mambaad_lib.metrics import METRIC_KEYS, per_class_metrics, pixel_metrics

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "bench_metrics.json"


def synthetic_evaluation(n_images: int, size: int, n_classes: int, seed: int) -> dict[str, np.ndarray]:
    """Scores, labels, (N, H, W) float32 maps, (N, H, W) bool masks and class names."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=bool)
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    defective = np.flatnonzero(rng.random(n_images) < 0.6)
    for image in tqdm(defective, desc="drawing defects", leave=False):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(1, size / 8, 2)
            masks[image] |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
    strength = rng.uniform(0.1, 1.5, size=(n_images, 1, 1)).astype(np.float32)
    maps = rng.standard_normal(masks.shape, dtype=np.float32)
    maps += masks * strength
    ndimage.gaussian_filter(maps, sigma=(0, 4, 4), output=maps)  # smooth noise, blurred defects
    class_of = np.arange(n_images) * n_classes // n_images
    scale = np.exp(rng.uniform(-1, 1, n_classes)).astype(np.float32)[class_of, None, None]
    offset = rng.uniform(0, 2, n_classes).astype(np.float32)[class_of, None, None]
    maps *= scale
    maps += offset
    return {"scores": maps.max(axis=(1, 2)), "labels": masks.any(axis=(1, 2)), "maps": maps, "masks": masks,
            "class_names": np.array([f"class_{c:02d}" for c in class_of])}


def measured(function: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result, wall seconds, peak bytes allocated while it ran, as tracemalloc sees them)."""
    tracemalloc.start()
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n-classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for name in ("n_images", "size", "n_classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.out.parent.is_dir():
        parser.error(f"--out: folder {str(args.out.parent)!r} does not exist")
    load_at_start = os.getloadavg()

    print(f"generating {args.n_images} maps of {args.size}x{args.size} ...", flush=True)
    data = synthetic_evaluation(args.n_images, args.size, args.n_classes, args.seed)
    maps, masks = data["maps"], data["masks"]

    print("ours: four exact pixel metrics (one sort) ...", flush=True)
    ours, ours_s, ours_peak = measured(lambda: pixel_metrics(maps, masks))
    print(f"  {ours_s:.2f} s  {ours}", flush=True)
    print("baseline: sklearn roc_auc_score alone ...", flush=True)
    sk_auroc, sk_s, sk_peak = measured(lambda: float(roc_auc_score(masks.ravel(), maps.ravel())))
    print(f"  {sk_s:.2f} s  p_auroc={sk_auroc}", flush=True)
    ratio = ours_s / sk_s
    print(f"ratio ours / sklearn = {ratio:.3f} (ours: AUROC + AP + F1-max + AU-PRO; sklearn: AUROC only)")

    print("per-class evaluation under both protocols ...", flush=True)
    tables, protocol_s = {}, {}
    for protocol in ("standard", "ader"):
        start = time.perf_counter()
        tables[protocol] = per_class_metrics(data["scores"], data["labels"], maps, masks, data["class_names"],
                                             protocol=protocol)
        protocol_s[protocol] = time.perf_counter() - start
    standard, ader = tables["standard"], tables["ader"]
    gap_of_means = {key: ader.mean[key] - standard.mean[key] for key in METRIC_KEYS}
    largest_class_gap = {key: max(abs(a[key] - s[key]) for a, s in zip(ader.per_class, standard.per_class))
                         for key in METRIC_KEYS}
    print("mean over classes (standard -> ader, difference):")
    for key in METRIC_KEYS:
        print(f"  {key:8s} {standard.mean[key]:.4f} -> {ader.mean[key]:.4f}  ({gap_of_means[key]:+.4f}; "
              f"largest per-class |gap| {largest_class_gap[key]:.4f})")

    record = {
        "benchmark": "bench_metrics",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "machine": {"cpu_count": os.cpu_count(), "load_average_at_start": list(load_at_start)},
        "config": {"n_images": args.n_images, "size": args.size, "n_pixels": int(maps.size),
                   "n_classes": args.n_classes, "seed": args.seed, "maps_dtype": str(maps.dtype),
                   "defective_images": int(data["labels"].sum()), "defect_pixels": int(masks.sum()),
                   "subsampled": False},
        "timings_s": {"ours_four_pixel_metrics": ours_s, "sklearn_roc_auc_score": sk_s,
                      "ratio_ours_over_sklearn": ratio,
                      "per_class_both_image_and_pixel": protocol_s},
        "memory": {"input_bytes": int(maps.nbytes + masks.nbytes),
                   "ours_peak_allocated_bytes": ours_peak, "sklearn_peak_allocated_bytes": sk_peak,
                   "how": "tracemalloc peak of the allocations made while each call ran (inputs excluded)"},
        "agreement": {"p_auroc_ours": ours["p_auroc"], "p_auroc_sklearn": sk_auroc,
                      "abs_difference": abs(ours["p_auroc"] - sk_auroc)},
        "ours_pixel_metrics": ours,
        "protocols": {"standard_mean": standard.mean, "ader_mean": ader.mean,
                      "ader_minus_standard_of_means": gap_of_means,
                      "largest_per_class_abs_gap": largest_class_gap,
                      "standard_rows": standard.to_rows(), "ader_rows": ader.to_rows()},
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
