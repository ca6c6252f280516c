"""Compile the CPU kernels (fused scan, InstanceNorm + SiLU) at first use and cache the build.

The build is specialised for this CPU (``-march=native``: the scan's hand-vectorised AVX-512
recurrences where the CPU has AVX-512, the portable C++ loops, which the compiler vectorises
for whatever the CPU has, elsewhere). ``$MAMBAAD_CPU_MARCH`` names another target (e.g.
``x86-64-v3``, AVX2 without AVX-512: the portable path on any machine, or a build for older
CPUs sharing a cache). The cache key covers everything that changes the binary: the C++
sources and header, the compiler flags, the compiler, torch's version and the CPU's
instruction-set flags. Builds live under
``$MAMBAAD_CACHE_DIR`` (default ``~/.cache/mambaad_lib``) in ``torch_extensions/<key>``.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

SOURCES = tuple(Path(__file__).with_name(name) for name in ("selective_scan_cpu.cpp", "instance_norm_silu_cpu.cpp"))
HEADERS = (Path(__file__).with_name("vector_math.h"),)
CACHE_ENV = "MAMBAAD_CACHE_DIR"
MARCH_ENV = "MAMBAAD_CPU_MARCH"
CXX_FLAGS = ("-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno",
             "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math")
LD_FLAGS = ("-fopenmp",)


def cache_root() -> Path:
    """Where compiled extensions are kept."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "mambaad_lib"


def _cpu_flags() -> str:
    """The CPU's instruction-set flags (what -march=native compiles for)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cxx_flags() -> tuple[str, ...]:
    """The compiler flags: CXX_FLAGS and ``-march`` (``$MAMBAAD_CPU_MARCH``, default native).

    Raises:
        RuntimeError: a ``$MAMBAAD_CPU_MARCH`` that is not a plain target name.
    """
    march = os.environ.get(MARCH_ENV, "").strip() or "native"
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", march):
        raise RuntimeError(f"${MARCH_ENV}={march!r} is not a compiler target name (e.g. native, x86-64-v3)")
    return (*CXX_FLAGS, f"-march={march}")


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def build_key() -> str:
    """A short hash of everything that determines the compiled binary."""
    digest = hashlib.sha256()
    for part in (*(source.read_bytes() for source in SOURCES + HEADERS), " ".join(cxx_flags() + LD_FLAGS).encode(),
                 _compiler().encode(), torch.__version__.encode(), _cpu_flags().encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def load_extension() -> ModuleType:
    """The compiled module (the scan's ``forward`` / ``backward`` and
    ``instance_norm_silu_forward`` / ``_backward``), built once per cache key.

    Raises:
        RuntimeError: no C++ compiler, no ninja, or the compilation failed (with the reason).
    """
    from torch.utils import cpp_extension

    if shutil.which(_compiler()) is None:
        raise RuntimeError(f"no C++ compiler found (looked for {_compiler()!r}; set $CXX)")
    cpp_extension.verify_ninja_availability()  # RuntimeError naming ninja when it is missing
    name = f"mambaad_scan_cpu_{build_key()}"
    build_dir = cache_root() / "torch_extensions" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(
            name=name, sources=[str(source) for source in SOURCES], extra_cflags=list(cxx_flags()),
            extra_ldflags=list(LD_FLAGS), build_directory=str(build_dir), verbose=False)
    except Exception as error:  # compiler errors arrive as several exception types
        names = " and ".join(source.name for source in SOURCES)
        raise RuntimeError(f"compiling {names} failed: {type(error).__name__}: {error}") from error
