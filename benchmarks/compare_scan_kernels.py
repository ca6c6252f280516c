"""The fused CPU scan kernel of this checkout against the one at another git revision.

Both kernels run the same calls in the same process, interleaved: the four fused directional
scans (8 Hilbert directions, low-rank step sizes) of one training step of the demo-size model
(ResNet18, depths [1,1,1,1], 128x128, batch 8), captured from the model itself. For each stage,
the best forward (with the checkpoints a training forward saves) and backward time over
``--repeats`` rounds, their ratios old / new, and the largest relative difference of the
outputs and gradients. Writes ``results/benchmarks/compare_scan_kernels.json`` with provenance.

    python benchmarks/compare_scan_kernels.py --against 0347b9b   # the kernel before issue 16's second pass
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mambaad_lib.utils.threads import configure_threads, set_default_wait_policy, thread_settings

set_default_wait_policy()  # before torch loads the OpenMP runtime

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import REPO, provenance  # noqa: E402

import mambaad_lib.ops.cpu as cpu_ops  # noqa: E402
from mambaad_lib.models import build_mambaad  # noqa: E402
from mambaad_lib.ops.cpu._build import HEADERS, LD_FLAGS, SOURCES, cxx_flags, load_extension  # noqa: E402
from mambaad_lib.utils.files import atomic_write_json  # noqa: E402


def build_at(revision: str, directory: Path):
    """The kernel sources at ``revision``, compiled with this checkout's flags."""
    for path in (*SOURCES, *HEADERS):
        relative = path.relative_to(REPO).as_posix()
        text = subprocess.run(["git", "show", f"{revision}:{relative}"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout
        (directory / path.name).write_text(text)
    name = "mambaad_scan_cpu_" + revision.replace("/", "_")[:12]
    return cpp_extension.load(name=name, sources=[str(directory / s.name) for s in SOURCES],
                              extra_cflags=list(cxx_flags()), extra_ldflags=list(LD_FLAGS),
                              build_directory=str(directory), verbose=False)


def demo_calls() -> list[tuple]:
    """The arguments of every fused scan call in one demo training step."""
    calls = []
    forward = cpu_ops._FusedScan.forward

    def recording(ctx, *args):
        calls.append(tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args))
        return forward(ctx, *args)

    torch.manual_seed(0)
    model = build_mambaad(backbone="resnet18", depths=(1, 1, 1, 1), image_size=128, scan_backend="cpu").train()
    cpu_ops._FusedScan.forward = staticmethod(recording)
    try:
        model.loss(torch.randn(8, 3, 128, 128)).backward()
    finally:
        cpu_ops._FusedScan.forward = staticmethod(forward)
    return calls


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def compare(old, new, calls: list[tuple], repeats: int) -> list[dict]:
    stages = []
    for args in calls:
        runs = {}
        for name, kernel in (("old", old), ("new", new)):
            out, checkpoints = kernel.forward(*args, True)
            runs[name] = dict(kernel=kernel, out=out, checkpoints=checkpoints, forward_s=float("inf"),
                              backward_s=float("inf"))
        dout = torch.randn(runs["new"]["out"].shape, generator=torch.Generator().manual_seed(0))
        grads = {name: run["kernel"].backward(*args, run["checkpoints"], dout) for name, run in runs.items()}
        for _ in range(repeats):  # interleaved, so that a busy moment slows both
            for run in runs.values():
                start = time.perf_counter()
                run["kernel"].forward(*args, True)
                middle = time.perf_counter()
                run["kernel"].backward(*args, run["checkpoints"], dout)
                end = time.perf_counter()
                run["forward_s"] = min(run["forward_s"], middle - start)
                run["backward_s"] = min(run["backward_s"], end - middle)
        differences = [relative_difference(runs["new"]["out"], runs["old"]["out"])] + [
            relative_difference(n, o) for n, o in zip(grads["new"], grads["old"]) if n.numel()]
        u = args[0]
        stages.append({"length": u.shape[1], "d_inner": u.shape[2], "directions": args[1].shape[2],
                       **{f"{name}_{kind}": run[kind] for name, run in runs.items()
                          for kind in ("forward_s", "backward_s")},
                       "max_relative_difference": max(differences)})
    return stages


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="git revision of the kernel to compare with")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds (best is kept)")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "benchmarks" / "compare_scan_kernels.json")
    args = parser.parse_args(argv)
    configure_threads()
    calls = demo_calls()
    with tempfile.TemporaryDirectory() as directory:
        old = build_at(args.against, Path(directory))
        stages = compare(old, load_extension(), calls, args.repeats)
    totals = {f"{name}_{kind}": sum(stage[f"{name}_{kind}"] for stage in stages)
              for name in ("old", "new") for kind in ("forward_s", "backward_s")}
    result = {"benchmark": "compare_scan_kernels", "provenance": provenance(), "threads": thread_settings(),
              "against": args.against, "model": "demo: resnet18, depths [1,1,1,1], 128x128, batch 8",
              "stages": stages, "totals": totals,
              "speedup": {kind: totals[f"old_{kind}"] / totals[f"new_{kind}"] for kind in ("forward_s", "backward_s")}}
    atomic_write_json(args.output, result)
    for stage in stages:
        print(f"L={stage['length']:5d} d={stage['d_inner']:5d}: forward {stage['old_forward_s'] * 1e3:6.1f} -> "
              f"{stage['new_forward_s'] * 1e3:6.1f} ms, backward {stage['old_backward_s'] * 1e3:6.1f} -> "
              f"{stage['new_backward_s'] * 1e3:6.1f} ms, max relative difference {stage['max_relative_difference']:.1e}")
    print(f"forward {result['speedup']['forward_s']:.2f}x, backward {result['speedup']['backward_s']:.2f}x faster "
          f"than {args.against}; wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
