"""MambaAD's speed on this machine, as a fraction of what the same device does on a dense matmul.

For each (model, batch): inference (``model.anomaly_map``) and training-step (forward loss,
backward, AdamW step over the trainable parameters with the release's parameter groups, the
``train.adamw`` default implementation; every implementation's step is timed too)
images/s; the achieved GFLOP/s as a fraction of a 1024x1024 fp32 matmul timed in the same
process, between the model's runs; the selective scan's share of the time; and the five
largest operators' shares of a training step (torch.profiler self time: the mean over five
profiles of three consecutive calls each, with the range).

FLOP convention: 2 FLOPs per multiply-accumulate for the model and the matmul alike.
``count_flops`` counts multiply-accumulates (the paper's Table 2: 8.3 G for the default model =
16.6 GFLOP); the scan recurrence is not counted. A training step counts the encoder's forward
plus three times the bottleneck and decoder (forward, and backward for inputs and weights).

Models: ``demo`` (ResNet18, depths [1,1,1,1], 128x128, batch 8) and ``paper`` (ResNet34,
[3,4,6,3], 256x256, batch 1 and 8), Hilbert x 8 scans, random weights.

``--device cuda``: the paper model at batch 16 and 32 in fp32 (torch's default TF32 settings,
recorded in the results), timed with the device synchronised; the reference is a 4096x4096 fp32
matmul on the GPU; operator shares are GPU kernel time; the peak memory is reported, and each
configuration's images/s as a fraction of the released MambaAD's on an H200 (``RELEASE_H200``).
A configuration that runs out of GPU memory is recorded as such and the others go on.

``--with-load`` also runs a second process doing a 2-thread fp32 matmul loop and reports the
demo training step's slowdown beside it: the median over 5 interleaved (idle, loaded) pairs of
loaded / idle time, with the load average. Threads: ``mambaad_lib.utils.threads`` (respects
``OMP_NUM_THREADS``; OpenMP threads spin briefly, then sleep, unless ``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` says otherwise, as with the ``mambaad`` command). Writes
``results/benchmarks/bench_model.json`` with provenance.

    python benchmarks/bench_model.py                  # demo b8, paper b1 and b8
    python benchmarks/bench_model.py --with-load      # plus the slowdown beside another job
    python benchmarks/bench_model.py --quick          # smoke run: small demo model, one repeat
    python benchmarks/bench_model.py --device cuda --backend mamba_ssm   # paper model, b16 and b32
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
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import REPO, provenance  # noqa: E402

from mambaad_lib.methods.mambaad import release_param_groups  # noqa: E402
from mambaad_lib.methods.training import ADAMW_IMPLEMENTATIONS, TrainConfig, adamw_options  # noqa: E402
from mambaad_lib.models import build_mambaad  # noqa: E402
from mambaad_lib.models.costs import count_flops  # noqa: E402
from mambaad_lib.ops import available_backends, backend_status  # noqa: E402
from mambaad_lib.utils.files import atomic_write_json  # noqa: E402

# Side of the reference fp32 matmul per device: large enough to reach the device's dense rate.
MATMUL_SIZE = {"cpu": 1024, "cuda": 4096}
# The demo profile's optimiser (lr 0.005 x 8 / 16, weight decay 1e-4).
LR, WEIGHT_DECAY, BETAS = 0.0025, 1e-4, (0.9, 0.999)
# Autograd functions whose time is the selective scan's, per backend (profiler event names).
SCAN_EVENTS = {"cpu": ("_FusedScan", "_FusedScanBackward"), "mamba_ssm": ("_MambaSsmScan", "_MambaSsmScanBackward")}
# On a GPU the shares are kernel time; mamba-ssm's kernels are named selective_scan_{fwd,bwd}_kernel.
SCAN_KERNEL_SUBSTRING = "selective_scan"
# The released MambaAD (mamba-ssm's CUDA scan, fp32, 256x256, random weights) on an H200, images/s
# per batch size, as measured for this project on 2026-11-26 (the project's GPU notes; issue 16).
RELEASE_H200 = {"inference": {16: 324.0, 32: 344.0}, "train_step": {16: 97.0, 32: 100.0}}
# Profiler ranges that wrap other events rather than doing work themselves.
WRAPPER_PREFIXES = ("ProfilerStep", "Optimizer.", "autograd::engine::evaluate_function", "## ")
# Calls per profile, and profiles per measurement: one call's operator shares moved by up to 5
# points from call to call on the shared 2-core machine, and one profile of three calls' by up to 3
# points from profile to profile (the largest four operators each sit near a fifth of the step), so
# the reported share is the mean of five three-call profiles, with their range.
PROFILED_CALLS, PROFILES = 3, 5
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
GPU_CASES = (ModelCase("paper", **PAPER, batch=16), ModelCase("paper", **PAPER, batch=32))
QUICK_CASES = (ModelCase("demo", backbone="resnet18", depths=(1, 1, 1, 1), image_size=64, batch=2),)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(function, device: torch.device) -> float:
    """Wall-clock seconds of one call of ``function``, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def matmul_gflops(repeats: int, device: torch.device) -> float:
    """Best GFLOP/s of a square fp32 matmul of side ``MATMUL_SIZE[device]`` (2 FLOPs per
    multiply-accumulate), under torch's current TF32 setting for matmuls (off by default)."""
    size = MATMUL_SIZE[device.type]
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = min(seconds_of(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def make_optimizer(model: torch.nn.Module, implementation: str) -> torch.optim.AdamW:
    """AdamW as the engine builds it; ``implementation`` is a ``train.adamw`` choice."""
    return torch.optim.AdamW(release_param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS,
                             **adamw_options(implementation))


class Runner:
    """One model and batch: callables for an inference call and a training step."""

    def __init__(self, case: ModelCase, backend: str, optimizer: str, device: torch.device) -> None:
        torch.manual_seed(0)
        self.case = case
        self.model = build_mambaad(backbone=case.backbone, depths=case.depths, image_size=case.image_size,
                                   scan_backend=backend).to(device)
        self.images = torch.randn(case.batch, 3, case.image_size, case.image_size).to(device)
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


def timed(function, repeats: int, matmul_repeats: int, device: torch.device) -> tuple[float, float]:
    """(best seconds of ``function``, best matmul GFLOP/s), the two interleaved run by run."""
    function()  # warm-up: oneDNN primitive creation / cuDNN algorithm choice, allocator
    best, rate = float("inf"), 0.0
    for _ in range(repeats):
        rate = max(rate, matmul_gflops(matmul_repeats, device))
        best = min(best, seconds_of(function, device))
    return best, rate


def profile_once(function, backend: str, device: torch.device, calls: int) -> tuple[dict, dict, float | None]:
    """One profile of ``calls`` consecutive calls: (self-time share by operator, runs per call by
    operator, the scan's share). On a GPU: kernel time, and the scan is mamba-ssm's kernels (None
    for other backends, whose scan is many kernels)."""
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(calls):
            function()
        synchronize(device)

    def self_time(event) -> float:
        return event.self_device_time_total if on_gpu else event.self_cpu_time_total

    # On a GPU only kernels (and device copies) count: the CPU operators that launched them carry the
    # same device time again.
    events = [e for e in prof.key_averages() if not e.key.startswith(WRAPPER_PREFIXES) and self_time(e) > 0
              and (not on_gpu or e.device_type == DeviceType.CUDA)]
    total = sum(self_time(e) for e in events) or 1.0
    if on_gpu:
        is_scan = (lambda key: SCAN_KERNEL_SUBSTRING in key) if backend == "mamba_ssm" else None
    else:
        is_scan = (lambda key: key in SCAN_EVENTS[backend]) if backend in SCAN_EVENTS else None
    scan = None if is_scan is None else sum(self_time(e) for e in events if is_scan(e.key)) / total
    return ({e.key: self_time(e) / total for e in events}, {e.key: e.count // calls for e in events}, scan)


def profile_shares(function, backend: str, device: torch.device, top: int = 5, calls: int = PROFILED_CALLS,
                   profiles: int = PROFILES) -> dict[str, object]:
    """Self-time shares, averaged over ``profiles`` profiles of ``calls`` consecutive calls each: the
    scan's, and the ``top`` largest operators' (by mean share; each with the smallest and largest
    share of one profile, and ``calls``: how often it ran per call)."""
    runs = [profile_once(function, backend, device, calls) for _ in range(profiles)]
    names = set().union(*(shares for shares, _, _ in runs))
    per_name = {name: [shares.get(name, 0.0) for shares, _, _ in runs] for name in names}
    ranked = sorted(names, key=lambda name: statistics.fmean(per_name[name]), reverse=True)
    scans = [scan for _, _, scan in runs]
    return {"scan_share": None if scans[0] is None else statistics.fmean(scans),
            "scan_share_range": None if scans[0] is None else [min(scans), max(scans)],
            "profiles": profiles, "profiled_calls": calls, "time": "GPU kernel" if device.type == "cuda" else "CPU self",
            "top_operators": [{"name": name[:120], "share": statistics.fmean(per_name[name]),
                               "share_range": [min(per_name[name]), max(per_name[name])],
                               "calls": max(counts.get(name, 0) for _, counts, _ in runs)}
                              for name in ranked[:top]]}


def optimizer_comparison(case: ModelCase, backend: str, repeats: int, device: torch.device) -> dict[str, object]:
    """Seconds of one AdamW step (gradients present) with each ``train.adamw`` implementation, and
    each one's time relative to the configured default's (measured in this process)."""
    seconds, default = {}, TrainConfig().adamw
    for implementation in ADAMW_IMPLEMENTATIONS:
        try:
            runner = Runner(case, backend, implementation, device)
            runner.train_step()  # gradients and optimizer state exist from here on
        except torch.cuda.OutOfMemoryError as error:  # the configurations' own runs record it too
            return {"configured_default": default, "error": f"out of GPU memory: {str(error).splitlines()[0]}"}
        seconds[implementation] = min(seconds_of(runner.optimizer.step, device) for _ in range(repeats))
        del runner
    return {"step_s": seconds, "faster": min(seconds, key=seconds.get), "configured_default": default,
            "time_relative_to_default": {name: value / seconds[default] for name, value in seconds.items()}}


def measure_case(case: ModelCase, backend: str, optimizer: str, repeats: int, matmul_repeats: int,
                 device: torch.device, profiles: int = PROFILES) -> dict:
    """Inference and training-step figures of one configuration; a part that runs out of GPU memory
    is recorded as ``{"error": ...}`` and the other part and configurations still run."""
    flops = gflop_per_image(case)
    result = {"model": case.name, "backbone": case.backbone, "depths": list(case.depths),
              "image_size": case.image_size, "batch": case.batch, "gflop_per_image": flops}
    runner = Runner(case, backend, optimizer, device)
    for kind, function in (("inference", runner.inference), ("train_step", runner.train_step)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            seconds, rate = timed(function, repeats, matmul_repeats, device)
        except torch.cuda.OutOfMemoryError as error:
            result[kind] = {"error": f"out of GPU memory: {str(error).splitlines()[0]}"}
            runner.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        achieved = flops[kind] * case.batch / seconds
        result[kind] = {"seconds": seconds, "images_per_s": case.batch / seconds, "gflops": achieved,
                        "matmul_gflops": rate, "fraction_of_matmul": achieved / rate,
                        **gpu_figures(kind, case, seconds, device),
                        **profile_shares(function, backend, device, profiles=profiles)}
    return result


def gpu_figures(kind: str, case: ModelCase, seconds: float, device: torch.device) -> dict[str, float]:
    """On a GPU: the peak memory, and images/s as a fraction of the release's on an H200 (paper model)."""
    if device.type != "cuda":
        return {}
    figures = {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30}
    release = RELEASE_H200[kind].get(case.batch)
    if case.name == "paper" and release is not None:
        figures.update(release_h200_images_per_s=release, fraction_of_release_h200=case.batch / seconds / release)
    return figures


def load_slowdown(case: ModelCase, backend: str, optimizer: str, pairs: int, steps: int) -> dict[str, object]:
    """The training step beside a 2-thread matmul loop in another process: median loaded/idle ratio."""
    runner = Runner(case, backend, optimizer, torch.device("cpu"))
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


def summary_line(run: dict) -> str:
    """One printed line per measured configuration."""
    parts = []
    for kind, label in (("inference", "inference"), ("train_step", "train step")):
        figures = run[kind]
        if "error" in figures:
            parts.append(f"{label}: {figures['error']}")
            continue
        part = f"{label} {figures['images_per_s']:.2f} img/s = {figures['fraction_of_matmul']:.1%} of matmul"
        if "fraction_of_release_h200" in figures:
            part += f" ({figures['fraction_of_release_h200']:.0%} of the release on an H200)"
        parts.append(part)
    train = run["train_step"]
    if "top_operators" in train:
        largest = train["top_operators"][0]
        low, high = largest["share_range"]
        parts.append(f"largest op {largest['name'][:60]} {largest['share']:.1%} (profiles {low:.1%}-{high:.1%})")
    return f"{run['model']} ({run['backbone']}, {run['image_size']}px) batch {run['batch']}: " + "; ".join(parts)


def device_settings(device: torch.device) -> dict[str, object]:
    """On a GPU: its name, CUDA version and torch's TF32 switches (cuDNN convolutions use TF32 by default)."""
    if device.type != "cuda":
        return {}
    return {"cuda": {"device_name": torch.cuda.get_device_name(device), "cuda_version": torch.version.cuda,
                     "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                     "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                     "cudnn_version": torch.backends.cudnn.version()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", choices=("demo", "paper"), default=None,
                        help="default: demo (batch 8) and paper (batch 1 and 8)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (default), or cuda: the paper model at batch 16 and 32")
    parser.add_argument("--backend", default=None,
                        help="selective-scan backend (default: cpu on the CPU, mamba_ssm on cuda)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--profiles", type=int, default=PROFILES,
                        help=f"profiles of {PROFILED_CALLS} calls whose operator shares are averaged (default {PROFILES})")
    parser.add_argument("--with-load", action="store_true", help="also measure the slowdown beside another job")
    parser.add_argument("--quick", action="store_true", help="smoke run: a 64x64 demo model at batch 2, one repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or all)")
    parser.add_argument("--output", type=Path, default=REPO / "results" / "benchmarks" / "bench_model.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    if args.device == "cuda" and args.with_load:
        raise ValueError("--with-load measures the CPU training step; it does not combine with --device cuda")
    device = torch.device(args.device)
    backend = args.backend or {"cpu": "cpu", "cuda": "mamba_ssm"}[args.device]
    if backend not in available_backends(args.device):
        raise ValueError(f"backend {backend!r} does not run on {args.device} here: {backend_status(args.device)}")
    configure_threads(args.threads)
    if args.profiles < 1:
        raise ValueError("--profiles must be >= 1")
    repeats, matmul_repeats = (1, 3) if args.quick else (args.repeats, 5)
    profiles = 1 if args.quick else args.profiles
    all_cases = GPU_CASES if args.device == "cuda" else FULL_CASES
    cases = QUICK_CASES if args.quick else tuple(c for c in all_cases if args.models is None or c.name in args.models)
    if not cases:
        raise ValueError(f"--models {' '.join(args.models)}: none of them is measured on {args.device}")

    optimizers = optimizer_comparison(cases[0], backend, 3 if args.quick else 10, device)
    optimizer = optimizers["configured_default"]  # what a training run uses (train.adamw)
    runs = []
    for case in cases:
        runs.append(measure_case(case, backend, optimizer, repeats, matmul_repeats, device, profiles))
        print(summary_line(runs[-1]))
    with_load = None
    if args.with_load:
        with_load = load_slowdown(cases[0], backend, optimizer, pairs=5, steps=1 if args.quick else 2)
        print(f"beside a 2-thread matmul job: training step {with_load['slowdown_median']:.2f}x slower "
              f"(median of {len(with_load['ratios'])}; load average {with_load['load_average_1min']})")
    payload = {
        "benchmark": "mambaad_model", "provenance": provenance(), "threads": thread_settings(),
        "flop_convention": "2 FLOPs per multiply-accumulate (model and matmul); scan recurrence not counted; "
                           "training step = encoder forward + 3 x (bottleneck + decoder)",
        "device": args.device, **device_settings(device),
        "backend": backend, "quick": args.quick, "optimizer": optimizers, "runs": runs, "with_load": with_load,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, payload)
    if "error" not in optimizers:
        print(f"AdamW step time relative to train.adamw={optimizers['configured_default']!r}: "
              + ", ".join(f"{name} {ratio:.2f}" for name, ratio in optimizers["time_relative_to_default"].items()))
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
