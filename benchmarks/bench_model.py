"""MambaAD's speed on this machine, as a fraction of what the same CPU does on a dense matmul.

For each (model, batch): inference (``model.anomaly_map``) and training-step (forward loss,
backward, AdamW step over the trainable parameters with the release's parameter groups, the
``train.adamw`` default implementation; every implementation's step is timed too)
images/s; the achieved GFLOP/s as a fraction of a 1024x1024 fp32 matmul timed in the same
process, between the model's runs; the selective scan's share of the time; and the five
largest operators' shares of a training step (torch.profiler, self time over three consecutive
calls).

FLOP convention: 2 FLOPs per multiply-accumulate for the model and the matmul alike.
``count_flops`` counts multiply-accumulates (the paper's Table 2: 8.3 G for the default model =
16.6 GFLOP); the scan recurrence is not counted. A training step counts the encoder's forward
plus three times the bottleneck and decoder (forward, and backward for inputs and weights).

Models: ``demo`` (ResNet18, depths [1,1,1,1], 128x128, batch 8) and ``paper`` (ResNet34,
[3,4,6,3], 256x256, batch 1 and 8), Hilbert x 8 scans, random weights.

``--with-load`` also runs a second process doing a 2-thread fp32 matmul loop and reports the
demo training step's slowdown beside it: the median over 5 interleaved (idle, loaded) pairs of
loaded / idle time, with the load average. Threads: ``mambaad_lib.utils.threads`` (respects
``OMP_NUM_THREADS``; OpenMP threads spin briefly, then sleep, unless ``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` says otherwise, as with the ``mambaad`` command). Writes
``results/benchmarks/bench_model.json`` with provenance.

    python benchmarks/bench_model.py                  # demo b8, paper b1 and b8
    python benchmarks/bench_model.py --with-load      # plus the slowdown beside another job
    python benchmarks/bench_model.py --quick          # smoke run: small demo model, one repeat
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mambaad_lib.utils.threads import configure_threads, set_default_wait_policy, thread_settings

set_default_wait_policy()  # before torch loads the OpenMP runtime

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import REPO, provenance  # noqa: E402

from mambaad_lib.methods.mambaad import release_param_groups  # noqa: E402
from mambaad_lib.methods.training import ADAMW_IMPLEMENTATIONS, TrainConfig, adamw_options  # noqa: E402
from mambaad_lib.models import build_mambaad  # noqa: E402
from mambaad_lib.models.costs import count_flops  # noqa: E402
from mambaad_lib.ops import available_backends, backend_status  # noqa: E402
from mambaad_lib.utils.files import atomic_write_json  # noqa: E402

MATMUL_SIZE = 1024
# The demo profile's optimiser (lr 0.005 x 8 / 16, weight decay 1e-4).
LR, WEIGHT_DECAY, BETAS = 0.0025, 1e-4, (0.9, 0.999)
# Autograd functions whose time is the selective scan's, per backend (profiler event names).
SCAN_EVENTS = {"cpu": ("_FusedScan", "_FusedScanBackward"), "mamba_ssm": ("_MambaSsmScan", "_MambaSsmScanBackward")}
# Profiler ranges that wrap other events rather than doing work themselves.
WRAPPER_PREFIXES = ("ProfilerStep", "Optimizer.", "autograd::engine::evaluate_function", "## ")
# Calls per profile: one call's operator shares moved by up to 5 points from call to call on the
# shared 2-core machine; three consecutive calls (after the timed runs) are steadier.
PROFILED_CALLS = 3
LOAD_SCRIPT = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nb = torch.randn(1024, 1024)\n"
               "while True:\n    a @ b\n")


@dataclass(frozen=True)
class ModelCase:
    name: str
    backbone: str
    depths: tuple[int, ...]
    image_size: int
    batch: int


DEMO = dict(backbone="resnet18", depths=(1, 1, 1, 1), image_size=128)
PAPER = dict(backbone="resnet34", depths=(3, 4, 6, 3), image_size=256)
FULL_CASES = (ModelCase("demo", **DEMO, batch=8), ModelCase("paper", **PAPER, batch=1),
              ModelCase("paper", **PAPER, batch=8))
QUICK_CASES = (ModelCase("demo", backbone="resnet18", depths=(1, 1, 1, 1), image_size=64, batch=2),)


def matmul_gflops(repeats: int) -> float:
    """Best GFLOP/s of a 1024x1024 fp32 matmul (2 FLOPs per multiply-accumulate)."""
    a, b = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE ** 3 / best / 1e9


def make_optimizer(model: torch.nn.Module, implementation: str) -> torch.optim.AdamW:
    """AdamW as the engine builds it; ``implementation`` is a ``train.adamw`` choice."""
    return torch.optim.AdamW(release_param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS,
                             **adamw_options(implementation))


class Runner:
    """One model and batch: callables for an inference call and a training step."""

    def __init__(self, case: ModelCase, backend: str, optimizer: str) -> None:
        torch.manual_seed(0)
        self.case = case
        self.model = build_mambaad(backbone=case.backbone, depths=case.depths, image_size=case.image_size,
                                   scan_backend=backend)
        self.images = torch.randn(case.batch, 3, case.image_size, case.image_size)
        self.optimizer = make_optimizer(self.model, optimizer)

    def inference(self) -> None:
        self.model.eval()
        self.model.anomaly_map(self.images)

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.loss(self.images).backward()
        self.optimizer.step()


def gflop_per_image(case: ModelCase) -> dict[str, float]:
    """GFLOP of one image's inference and training step (2 per multiply-accumulate)."""
    model = build_mambaad(backbone=case.backbone, depths=case.depths, image_size=case.image_size)
    macs = count_flops(model, image_size=case.image_size)
    parts = macs["by_part"]
    train = parts["encoder"] + 3 * (parts["bottleneck"] + parts["decoder"])
    return {"inference": 2 * macs["total"], "train_step": 2 * train, "scan_recurrence_not_counted": 2 * macs["scan"]}


def timed(function, repeats: int, matmul_repeats: int) -> tuple[float, float]:
    """(best seconds of ``function``, best matmul GFLOP/s), the two interleaved run by run."""
    function()  # warm-up: oneDNN primitive creation, allocator
    best, rate = float("inf"), 0.0
    for _ in range(repeats):
        rate = max(rate, matmul_gflops(matmul_repeats))
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best, rate


def profile_shares(function, backend: str, top: int = 5, calls: int = PROFILED_CALLS) -> dict[str, object]:
    """Self-time shares over ``calls`` consecutive calls: the scan's, and the ``top`` largest
    operators' (``calls`` per operator: how often it ran per call)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            function()
    events = [e for e in prof.key_averages() if not e.key.startswith(WRAPPER_PREFIXES)]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    scan_names = SCAN_EVENTS.get(backend)
    scan = None if scan_names is None else sum(e.self_cpu_time_total for e in events if e.key in scan_names) / total
    return {"scan_share": scan, "profiled_calls": calls,
            "top_operators": [{"name": e.key, "share": e.self_cpu_time_total / total, "calls": e.count // calls}
                              for e in ranked[:top]]}


def optimizer_comparison(case: ModelCase, backend: str, repeats: int) -> dict[str, object]:
    """Seconds of one AdamW step (gradients present) with each ``train.adamw`` implementation, and
    each one's time relative to the configured default's (measured in this process)."""
    seconds = {}
    for implementation in ADAMW_IMPLEMENTATIONS:
        runner = Runner(case, backend, implementation)
        runner.train_step()  # gradients and optimizer state exist from here on
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            runner.optimizer.step()
            best = min(best, time.perf_counter() - start)
        seconds[implementation] = best
    default = TrainConfig().adamw
    return {"step_s": seconds, "faster": min(seconds, key=seconds.get), "configured_default": default,
            "time_relative_to_default": {name: value / seconds[default] for name, value in seconds.items()}}


def measure_case(case: ModelCase, backend: str, optimizer: str, repeats: int, matmul_repeats: int) -> dict:
    runner = Runner(case, backend, optimizer)
    flops = gflop_per_image(case)
    result = {"model": case.name, "backbone": case.backbone, "depths": list(case.depths),
              "image_size": case.image_size, "batch": case.batch, "gflop_per_image": flops}
    for kind, function in (("inference", runner.inference), ("train_step", runner.train_step)):
        seconds, rate = timed(function, repeats, matmul_repeats)
        achieved = flops[kind] * case.batch / seconds
        result[kind] = {"seconds": seconds, "images_per_s": case.batch / seconds, "gflops": achieved,
                        "matmul_gflops": rate, "fraction_of_matmul": achieved / rate,
                        **profile_shares(function, backend)}
    return result


def load_slowdown(case: ModelCase, backend: str, optimizer: str, pairs: int, steps: int) -> dict[str, object]:
    """The training step beside a 2-thread matmul loop in another process: median loaded/idle ratio."""
    runner = Runner(case, backend, optimizer)
    runner.train_step()
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    load = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT], env=env)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            runner.train_step()
        return (time.perf_counter() - start) / steps

    idle, loaded, load_average = [], [], []
    try:
        time.sleep(2.0)  # the load process starts (imports torch)
        for _ in range(pairs):
            load.send_signal(signal.SIGSTOP)
            idle.append(run())
            load.send_signal(signal.SIGCONT)
            time.sleep(0.5)
            loaded.append(run())
            load_average.append(os.getloadavg()[0])
    finally:
        load.kill()
        load.wait()
    ratios = [b / a for a, b in zip(idle, loaded)]
    return {"model": case.name, "batch": case.batch, "steps_per_run": steps, "idle_s": idle, "loaded_s": loaded,
            "ratios": ratios, "slowdown_median": statistics.median(ratios),
            "load_average_1min": load_average, "load": "a second process: 2-thread fp32 1024x1024 matmul loop"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", choices=("demo", "paper"), default=None,
                        help="default: demo (batch 8) and paper (batch 1 and 8)")
    parser.add_argument("--backend", default="cpu", help="selective-scan backend (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--with-load", action="store_true", help="also measure the slowdown beside another job")
    parser.add_argument("--quick", action="store_true", help="smoke run: a 64x64 demo model at batch 2, one repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or all)")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "benchmarks" / "bench_model.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    if args.backend not in available_backends("cpu"):
        raise ValueError(f"backend {args.backend!r} does not run on cpu here: {backend_status()}")
    configure_threads(args.threads)
    repeats, matmul_repeats = (1, 3) if args.quick else (args.repeats, 5)
    cases = QUICK_CASES if args.quick else tuple(c for c in FULL_CASES if args.models is None or c.name in args.models)

    optimizers = optimizer_comparison(cases[0], args.backend, 3 if args.quick else 10)
    optimizer = optimizers["configured_default"]  # what a training run uses (train.adamw)
    runs = []
    for case in cases:
        runs.append(measure_case(case, args.backend, optimizer, repeats, matmul_repeats))
        r = runs[-1]
        print(f"{case.name} ({case.backbone}, {case.image_size}px) batch {case.batch}: "
              f"inference {r['inference']['images_per_s']:.2f} img/s = {r['inference']['fraction_of_matmul']:.1%} "
              f"of matmul; train step {r['train_step']['images_per_s']:.2f} img/s = "
              f"{r['train_step']['fraction_of_matmul']:.1%}; largest op "
              f"{r['train_step']['top_operators'][0]['name']} {r['train_step']['top_operators'][0]['share']:.0%}")
    with_load = None
    if args.with_load:
        with_load = load_slowdown(cases[0], args.backend, optimizer, pairs=5, steps=1 if args.quick else 2)
        print(f"beside a 2-thread matmul job: training step {with_load['slowdown_median']:.2f}x slower "
              f"(median of {len(with_load['ratios'])}; load average {with_load['load_average_1min']})")
    payload = {
        "benchmark": "mambaad_model", "provenance": provenance(), "threads": thread_settings(),
        "flop_convention": "2 FLOPs per multiply-accumulate (model and matmul); scan recurrence not counted; "
                           "training step = encoder forward + 3 x (bottleneck + decoder)",
        "backend": args.backend, "quick": args.quick, "optimizer": optimizers, "runs": runs, "with_load": with_load,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, payload)
    print(f"AdamW step time relative to train.adamw={optimizers['configured_default']!r}: "
          + ", ".join(f"{name} {ratio:.2f}" for name, ratio in optimizers["time_relative_to_default"].items()))
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
