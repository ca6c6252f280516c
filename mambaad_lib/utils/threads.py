"""CPU thread settings: chosen once per process, and described for ``mambaad info`` and results files.

:func:`configure_threads` sets torch's intra-op thread count (the threads every CPU op and
the fused kernels split their work over):

1. an explicit ``threads`` argument wins;
2. otherwise ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``, when set (torch reads them at start
   too; they are applied again in case torch's count was changed since);
3. otherwise the CPUs this process may use: its affinity mask (``taskset``, cpusets) capped by a
   cgroup CPU quota (``docker --cpus``), which ``os.cpu_count()`` and torch's default ignore.

Results do not depend on the count for the library's own kernels (the fused scan and norm are
bit-identical for any thread count); some of torch's own ops are not (oneDNN convolutions,
LayerNorm's weight gradient, long reductions round differently with 1 and 2 threads), so
:func:`thread_settings` is recorded with every result.

How idle OpenMP threads wait matters as much as their number. By default GNU OpenMP (torch's
runtime on Linux) spins for about 300,000 iterations at every barrier; when another job
competes for the cores, a spinning thread burns the time slice that the thread it waits for
needs, and every one of the thousand parallel regions of a training step can cost a scheduler
tick: on a 2-core machine beside other jobs, inference ran 10-30x and training 3-5x slower than
with sleeping waits (benchmarks/README.md). Sleeping at once (``OMP_WAIT_POLICY=PASSIVE``)
fixes that but costs a wake-up per region, which made the demo model's training step 1.2-1.5x
slower on an idle machine (64x64 images, where every region is short). A short spin keeps both:
:func:`set_default_wait_policy` makes ``GOMP_SPINCOUNT=1000`` the default (a microsecond or so
of spinning, then sleep; measured on the 2-core dev machine, 30 demo training steps: idle 6.4 s
against 6.9 s with the runtime's default and 7.9 s passive; beside a 2-thread matmul job 11.5 s
against 10.8 s passive and 237 s with the default), and ``KMP_BLOCKTIME=0`` for the LLVM/Intel
runtimes (sleep at once). It only works before torch is imported, which is why this module
imports torch lazily: the command line and the benchmarks call it first.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

THREAD_ENV_VARS: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Reported as found: they change how idle OpenMP threads wait, and must be set before start.
RUNTIME_ENV_VARS: tuple[str, ...] = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_AFFINITY",
                                     "OMP_PROC_BIND", "OPENBLAS_NUM_THREADS")
# Variables through which a user has chosen how OpenMP threads wait (GNU and Intel runtimes).
WAIT_POLICY_VARS: tuple[str, ...] = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# The library's default per runtime: spin ~1000 iterations then sleep (GNU), sleep at once
# (LLVM/Intel, whose shortest setting is a millisecond). Each is set unless the user chose a
# policy for that runtime (OMP_WAIT_POLICY counts for both).
DEFAULT_WAIT_POLICY: dict[str, str] = {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "0"}
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")

_chosen: dict[str, object] | None = None


def _env_threads() -> tuple[str, int] | None:
    """The first of OMP_NUM_THREADS / MKL_NUM_THREADS that is set, as (name, count)."""
    for name in THREAD_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        first = value.split(",")[0]  # OpenMP allows a list per nesting level
        if not first.isdigit() or int(first) < 1:
            raise ValueError(f"{name}={value!r} is not a positive thread count")
        return name, int(first)
    return None


def _cgroup_cpu_quota() -> float | None:
    """CPUs granted by a cgroup v2 quota (``cpu.max``), or None when unlimited or unknown."""
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask, capped by a cgroup CPU quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def set_default_wait_policy() -> dict[str, str]:
    """Make short-spin-then-sleep waits (:data:`DEFAULT_WAIT_POLICY`) the default, if it is not too late.

    Call it before anything imports torch. Each runtime's variable is left as it is when the
    user set it (``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``); nothing is set when ``OMP_WAIT_POLICY``
    is set (it chooses for every runtime) or when torch, and with it the OpenMP runtime, is
    already loaded (a new value would be ignored).

    Returns:
        The wait variables in effect (empty: the runtime's own default, long spins).
    """
    if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        for name, value in DEFAULT_WAIT_POLICY.items():
            os.environ.setdefault(name, value)  # e.g. an MKL KMP_BLOCKTIME leaves GNU's default to us
    return {name: os.environ[name] for name in WAIT_POLICY_VARS if name in os.environ}


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count, once; returns it.

    Args:
        threads: an explicit count (>= 1). None: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` when
            set, else :func:`available_cpus`. After the first call, calls without ``threads``
            keep the count chosen then.
    Raises:
        ValueError: ``threads`` < 1, or an environment variable that is not a positive integer.
    """
    import torch

    global _chosen
    if threads is None and _chosen is not None:
        return int(_chosen["threads"])
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        count, source = threads, "argument"
    elif (found := _env_threads()) is not None:
        source, count = found
    else:
        count, source = available_cpus(), "available cpus"
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    _chosen = {"threads": count, "source": source}
    return count


def thread_settings() -> dict[str, object]:
    """The current CPU thread settings as a JSON-ready dict.

    Keys: ``intra_op_threads`` and ``interop_threads`` (torch's), ``chosen_by`` (how
    :func:`configure_threads` chose, or None if it was not called), ``available_cpus``,
    ``cpu_count`` (logical CPUs of the machine), ``load_average`` (1, 5, 15 min, or None),
    ``parallel_backend`` (e.g. OpenMP), ``environment`` (the thread-related variables that are
    set, e.g. ``OMP_WAIT_POLICY``), ``mkldnn`` (whether oneDNN is used).
    """
    import torch

    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        load = None
    backend = next((line.split(":", 1)[1].strip() for line in torch.__config__.parallel_info().splitlines()
                    if line.startswith("ATen parallel backend")), None)
    return {
        "intra_op_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "chosen_by": None if _chosen is None else _chosen["source"],
        "available_cpus": available_cpus(),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "parallel_backend": backend,
        "environment": {name: os.environ[name] for name in THREAD_ENV_VARS + RUNTIME_ENV_VARS if name in os.environ},
        "mkldnn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
    }
