"""Selective-scan backends on the default decoder's stage shapes, against the step-by-step loop.

For each stage shape (8 directions x d_inner channels, grouped B/C with one group per
direction, d_state 16) and every backend that runs on this device, it measures forward and
forward+backward wall time (best of ``--repeats``), state updates per second, and the ratio
to mamba-ssm's ``selective_scan_ref`` style loop (our ``reference`` backend) timed in the same
run; plus the fp32 error max|out - ref| / max|ref| against the float64 recurrence (on the
first direction's channels). Writes ``results/benchmarks/bench_scan.json`` with provenance.

    python benchmarks/bench_scan.py            # all four stages, batch 8
    python benchmarks/bench_scan.py --quick    # batch 2, for a smoke run
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mambaad_lib.utils.files import atomic_write_json
from mambaad_lib.ops import available_backends, backend_status, selective_scan

REPO = Path(__file__).resolve().parents[1]
BASELINE = "reference"
DIRECTIONS, D_STATE = 8, 16
# Names the source commit in the provenance, in place of git's HEAD (a copied tree's .git can be
# missing or stale).
SOURCE_COMMIT_ENV = "MAMBAAD_SOURCE_COMMIT"
# (d_inner, L) of the decoder's four stages at 256x256 (grids 64x64 .. 8x8).
STAGES = ((128, 4096), (256, 1024), (512, 256), (1024, 64))


def provenance() -> dict[str, object]:
    """Machine, software and commit of this run."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    head = git("rev-parse", "HEAD")
    # A copied tree (a rented GPU machine's) may carry no .git, or a stale one: the caller then names
    # the commit it copied, and that wins; git's own view is kept beside it.
    named = os.environ.get(SOURCE_COMMIT_ENV) or None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": named or head, "commit_source": SOURCE_COMMIT_ENV if named else ("git" if head else None),
        "git_head": head, "worktree_dirty": bool(git("status", "--porcelain")) if head else None,
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def stage_inputs(batch: int, d_inner: int, length: int, device: str, dtype=torch.float32, seed: int = 0):
    """Inputs shaped as one SS2D call of the default decoder (softplus, bias, D; no z gate)."""
    generator = torch.Generator().manual_seed(seed)
    channels = DIRECTIONS * d_inner

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(device, dtype)

    states = torch.arange(1, D_STATE + 1, dtype=torch.float64)
    return dict(
        u=randn(batch, channels, length), delta=randn(batch, channels, length, scale=0.5),
        A=(-states).expand(channels, D_STATE).to(device, dtype).contiguous(),
        B=randn(batch, DIRECTIONS, D_STATE, length), C=randn(batch, DIRECTIONS, D_STATE, length),
        D=torch.ones(channels, device=device, dtype=dtype), delta_bias=randn(channels, scale=0.5),
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(function, repeats: int, device: str, warmup: bool = True) -> float:
    """Best wall time in seconds over ``repeats`` calls (after one warm-up call by default)."""
    if warmup:
        function()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        function()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure(backend: str, inputs: dict, repeats: int, device: str, warmup: bool = True,
            backward: bool = True) -> dict[str, float | None]:
    def forward():
        with torch.no_grad():
            selective_scan(**inputs, delta_softplus=True, backend=backend)

    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}

    def forward_backward():
        out = selective_scan(**leaves, delta_softplus=True, backend=backend)
        out.backward(torch.ones_like(out))
        for leaf in leaves.values():
            leaf.grad = None

    result = {"forward_s": time_call(forward, repeats, device, warmup),
              "forward_backward_s": time_call(forward_backward, repeats, device, warmup) if backward else None}
    gc.collect()
    return result


def fp32_error(backend: str, inputs: dict, d_inner: int) -> float:
    """max|out - ref| / max|ref| of fp32 ``backend`` against the float64 reference, first direction."""
    first = {k: (v[:, :d_inner] if k in ("u", "delta") else v[:d_inner] if k in ("A", "D", "delta_bias")
                 else v[:, :1]) for k, v in inputs.items()}
    with torch.no_grad():
        out = selective_scan(**first, delta_softplus=True, backend=backend).double()
        ref = selective_scan(**{k: v.double() for k, v in first.items()}, delta_softplus=True,
                             backend=BASELINE)
    return ((out - ref).abs().max() / ref.abs().max()).item()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per fast backend (best is kept)")
    parser.add_argument("--baseline-repeats", type=int, default=1)
    parser.add_argument("--backends", nargs="*", default=None, help="default: every available backend")
    parser.add_argument("--baseline-backward-max-length", type=int, default=256,
                        help="time the loop's forward+backward only up to this L (it is quadratic in L)")
    parser.add_argument("--lengths", type=int, nargs="*", default=None,
                        help=f"only the stages with these L (default all: {[L for _, L in STAGES]})")
    parser.add_argument("--quick", action="store_true", help="batch 2, one repeat")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "benchmarks" / "bench_scan.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 2, 1
    if args.batch < 1 or args.repeats < 1 or args.baseline_repeats < 1:
        raise ValueError("--batch, --repeats and --baseline-repeats must be >= 1")
    available = available_backends(args.device)
    backends = args.backends or [name for name in available if name != BASELINE]
    missing = [name for name in backends if name not in available]
    if missing:
        raise ValueError(f"backends {missing} do not run on {args.device} here: {backend_status(args.device)}")

    stages = [(d, L) for d, L in STAGES if args.lengths is None or L in args.lengths]
    if not stages:
        raise ValueError(f"--lengths {args.lengths} match no stage; choose from {[L for _, L in STAGES]}")
    rows = []
    for d_inner, length in tqdm(stages, desc="stages"):
        inputs = stage_inputs(args.batch, d_inner, length, args.device)
        updates = args.batch * DIRECTIONS * d_inner * length * D_STATE
        # The loop has nothing to warm up (no compilation, no autotuning) and is slow. Its
        # backward costs O(L^2 d n): autograd turns each step's decay[:, :, t] into a full-size
        # zero gradient, so long sequences are timed forward only.
        baseline = measure(BASELINE, inputs, args.baseline_repeats, args.device, warmup=False,
                           backward=length <= args.baseline_backward_max_length)
        row = {"batch": args.batch, "channels": DIRECTIONS * d_inner, "groups": DIRECTIONS,
               "length": length, "d_state": D_STATE, "state_updates": updates,
               "backends": {BASELINE: {**baseline, "forward_updates_per_s": updates / baseline["forward_s"]}}}
        for backend in backends:
            timing = measure(backend, inputs, args.repeats, args.device)
            row["backends"][backend] = {
                **timing,
                "forward_updates_per_s": updates / timing["forward_s"],
                "forward_backward_updates_per_s": updates / timing["forward_backward_s"],
                "forward_speedup_vs_loop": baseline["forward_s"] / timing["forward_s"],
                "forward_backward_speedup_vs_loop": (None if baseline["forward_backward_s"] is None
                                                     else baseline["forward_backward_s"] / timing["forward_backward_s"]),
                "fp32_relative_error_vs_fp64": fp32_error(backend, inputs, d_inner),
            }
        rows.append(row)
        del inputs
        gc.collect()

    payload = {"benchmark": "selective_scan", "baseline": BASELINE, "provenance": provenance(),
               "backend_status": backend_status(args.device), "stages": rows}
    atomic_write_json(args.output, payload)
    for row in rows:
        for name, r in row["backends"].items():
            fb_ratio = r.get("forward_backward_speedup_vs_loop")
            extra = (f"  x{r['forward_speedup_vs_loop']:.1f} / x{fb_ratio or float('nan'):.1f}"
                     f"  err {r['fp32_relative_error_vs_fp64']:.1e}" if name != BASELINE else "")
            fb_ms = float("nan") if r["forward_backward_s"] is None else r["forward_backward_s"] * 1e3
            print(f"d={row['channels']:5d} L={row['length']:5d} {name:10s} fwd {r['forward_s'] * 1e3:9.1f} ms"
                  f"  fwd+bwd {fb_ms:9.1f} ms"
                  f"  {r['forward_updates_per_s'] / 1e9:6.2f} G upd/s{extra}")
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
