"""Images per second of the full default MambaAD model per selective-scan backend.

For each backend: inference (``model.anomaly_map``) and one training step (forward, the
release loss, backward, AdamW step) at 256x256 with random weights, best of ``--repeats``.
The scan's share of the time is measured by running the same model with the scan replaced
by a stub of negligible cost that keeps the autograd graph (``1 - t_stub / t_real``).
Writes ``results/benchmarks/bench_model.json`` with provenance.

    python benchmarks/bench_model.py                 # batch 2, every available backend but reference
    python benchmarks/bench_model.py --backends cpu --batch 4
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import REPO, provenance, time_call  # noqa: E402

import mambaad_lib.models.ss2d as ss2d_module  # noqa: E402
from mambaad_lib.utils.files import atomic_write_json  # noqa: E402
from mambaad_lib.models import build_mambaad  # noqa: E402
from mambaad_lib.ops import available_backends, backend_status  # noqa: E402


def _stub_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend="auto"):
    """Shape- and graph-preserving stand-in for the scan: O(b d L) work, gradients reach every input."""
    batch, channels, length = u.shape
    groups = 1 if B.dim() == 3 else B.shape[1]
    bc = (B * C).sum(-2).reshape(batch, groups, 1, length)  # (b, g, 1, L)
    y = (u.reshape(batch, groups, channels // groups, length) + 0.0 * bc).reshape(batch, channels, length)
    y = y + 0.0 * delta + 0.0 * A.sum(-1)[None, :, None]
    if D is not None:
        y = y * D[None, :, None]
    if delta_bias is not None:
        y = y + 0.0 * delta_bias[None, :, None]
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return y


@contextmanager
def scan_replaced_by_stub():
    original = ss2d_module.selective_scan
    ss2d_module.selective_scan = _stub_scan
    try:
        yield
    finally:
        ss2d_module.selective_scan = original


def measure_model(model, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Best seconds per inference call and per training step on ``images``."""
    model.eval()
    inference = time_call(lambda: model.anomaly_map(images), repeats, str(images.device))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        model.loss(images).backward()
        optimizer.step()

    training = time_call(train_step, repeats, str(images.device))
    model.eval()
    return {"inference_s": inference, "train_step_s": training}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", nargs="*", default=None, help="default: available ones but reference")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "benchmarks" / "bench_model.json")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        raise ValueError("--batch and --repeats must be >= 1")
    available = available_backends(args.device)
    backends = args.backends or [name for name in available if name != "reference"]
    missing = [name for name in backends if name not in available]
    if missing:
        raise ValueError(f"backends {missing} do not run on {args.device} here: {backend_status()}")

    torch.manual_seed(0)
    model = build_mambaad(image_size=args.image_size).to(args.device)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device)
    results = {}
    stub = {"inference_s": float("inf"), "train_step_s": float("inf")}
    for backend in tqdm(backends, desc="backends"):
        model.set_scan_backend(backend)
        timing = {"inference_s": float("inf"), "train_step_s": float("inf")}
        # Stub and real runs alternate so that load from other processes hits both alike.
        for _ in range(args.repeats):
            with scan_replaced_by_stub():
                stub = {k: min(v, stub[k]) for k, v in measure_model(model, images, 1).items()}
            timing = {k: min(v, timing[k]) for k, v in measure_model(model, images, 1).items()}
        results[backend] = {
            **timing,
            "inference_images_per_s": args.batch / timing["inference_s"],
            "train_images_per_s": args.batch / timing["train_step_s"],
            "scan_share_inference": 1 - stub["inference_s"] / timing["inference_s"],
            "scan_share_train": 1 - stub["train_step_s"] / timing["train_step_s"],
        }
    payload = {"benchmark": "mambaad_model", "provenance": provenance(), "backend_status": backend_status(),
               "batch": args.batch, "image_size": args.image_size, "scan_stub": stub, "backends": results}
    atomic_write_json(args.output, payload)
    for name, r in results.items():
        print(f"{name:10s} inference {r['inference_images_per_s']:6.2f} img/s (scan {r['scan_share_inference']:.0%})"
              f"  train {r['train_images_per_s']:6.2f} img/s (scan {r['scan_share_train']:.0%})")
    print(f"stub scan: inference {stub['inference_s']:.3f} s, train step {stub['train_step_s']:.3f} s")
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
