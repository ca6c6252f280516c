"""onnxruntime on the CPU against eager PyTorch, for an exported MambaAD.

A model of a profile's architecture (random weights; speed does not depend on them) is saved
as a checkpoint and exported with ``mambaad export --format onnx``; then, on the same images
and in one process, best of ``--repeats``:

- eager PyTorch, the default scan backend (``auto``: the fused ``cpu`` kernel when it builds),
- eager PyTorch, the ``export`` scan backend (what the exported graph computes),
- onnxruntime's CPU provider with as many threads as torch uses.

Writes ``results/benchmarks/bench_export.json`` with provenance; the figures to read are the
ratios (onnxruntime time / eager time), not the absolute times.

    python benchmarks/bench_export.py                       # demo architecture, 128 px, batch 4
    python benchmarks/bench_export.py --profile paper --image-size 256 --batch 2
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import REPO, provenance, time_call  # noqa: E402

from mambaad_lib.engine.checkpoint import save_checkpoint  # noqa: E402
from mambaad_lib.engine.config import config_to_dict, load_config  # noqa: E402
from mambaad_lib.engine.export import export_checkpoint  # noqa: E402
from mambaad_lib.methods import get_method  # noqa: E402
from mambaad_lib.utils.files import atomic_write_json  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo", help="whose model section to build (default demo)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the profile's")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "results" / "benchmarks" / "bench_export.json")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        raise ValueError("--batch and --repeats must be >= 1")
    import onnxruntime

    overrides = {"device": "cpu", "model.encoder_weights": "none", "model.scan_backend": "auto"}
    if args.image_size is not None:
        overrides["data.image_size"] = args.image_size
    config = load_config(args.profile, overrides)
    size = config.data.crop_size
    torch.manual_seed(0)
    method = get_method(config.method, config.model, size, "cpu")
    method.train(False)
    images = torch.randn(args.batch, 3, size, size)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = save_checkpoint(Path(folder) / "final.pt", method=config.method, config=config_to_dict(config),
                                     model=method.state_dict())
        started = time.perf_counter()
        report = export_checkpoint(checkpoint, "onnx", Path(folder) / "model.onnx")
        export_seconds = time.perf_counter() - started
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(report.path), options, providers=["CPUExecutionProvider"])

    default_backend = method.scan_backend
    timings = {f"eager ({default_backend} scan)": time_call(lambda: method.predict(images), args.repeats, "cpu")}
    method.network.set_scan_backend("export")
    timings["eager (export scan)"] = time_call(lambda: method.predict(images), args.repeats, "cpu")
    feed = {"images": images.numpy()}
    timings["onnxruntime CPU"] = time_call(lambda: session.run(None, feed), args.repeats, "cpu")
    onnx_seconds = timings["onnxruntime CPU"]
    rows = {name: {"seconds_per_batch": seconds, "images_per_s": args.batch / seconds,
                   "onnxruntime_time_ratio": onnx_seconds / seconds} for name, seconds in timings.items()}
    payload = {"benchmark": "export", "provenance": provenance(), "profile": args.profile, "method": config.method,
               "image_size": size, "batch": args.batch, "onnxruntime": onnxruntime.__version__,
               "export_seconds": export_seconds, "max_map_difference": report.max_map_difference,
               "max_score_difference": report.max_score_difference, "runs": rows}
    atomic_write_json(args.output, payload)
    print(f"{config.method} ({args.profile}) at {size}x{size}, batch {args.batch}; export took {export_seconds:.0f} s")
    for name, row in rows.items():
        print(f"  {name:26s} {row['seconds_per_batch'] * 1000:8.1f} ms/batch {row['images_per_s']:7.2f} img/s  "
              f"onnxruntime time / this = {row['onnxruntime_time_ratio']:.2f}")
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
