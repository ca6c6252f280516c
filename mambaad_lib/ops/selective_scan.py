"""The public selective scan and its backend dispatch.

Backends live in their own modules and are imported only when first asked for, so that
importing the library never touches CUDA extensions or compilers. Each backend module
exposes one scan function with the signature of :func:`selective_scan` (minus ``backend``)
and may expose ``availability() -> str | None``: ``None`` when it works here, otherwise
the reason it does not.

``backend="auto"`` picks, per device type, the first working entry of :data:`AUTO_ORDER`;
the environment variable ``MAMBAAD_SCAN_BACKEND`` replaces ``"auto"``.
"""
from __future__ import annotations

import importlib
import logging
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

BACKEND_ENV = "MAMBAAD_SCAN_BACKEND"


@dataclass(frozen=True)
class BackendSpec:
    """Where a backend lives and which device types it accepts."""

    name: str
    module: str
    function: str
    devices: frozenset[str]
    summary: str


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("mamba_ssm", "mambaad_lib.ops.cuda", "selective_scan_mamba_ssm",
                    frozenset({"cuda"}), "mamba-ssm's compiled CUDA kernel (selective_scan_cuda)"),
        BackendSpec("chunked", "mambaad_lib.ops.chunked", "selective_scan_chunked",
                    frozenset({"cuda", "cpu"}), "chunked parallel scan in PyTorch (GPU path without a CUDA build)"),
        BackendSpec("cpu", "mambaad_lib.ops.cpu", "selective_scan_cpu",
                    frozenset({"cpu"}), "fused C++/OpenMP CPU kernel, compiled at first use"),
        BackendSpec("export", "mambaad_lib.ops.export", "selective_scan_export",
                    frozenset({"cuda", "cpu", "mps"}),
                    "log-depth parallel scan in PyTorch, a short fixed graph (for ONNX / torch.export)"),
        BackendSpec("reference", "mambaad_lib.ops.reference", "selective_scan_reference",
                    frozenset({"cuda", "cpu", "mps"}), "step-by-step PyTorch reference (slow, for tests)"),
    )
}

# Preference per device type for backend="auto".
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("mamba_ssm", "chunked", "reference"),
    "cpu": ("cpu", "chunked", "reference"),
}


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[Callable[..., Tensor] | None, str | None]:
    """Import a backend once: (function, None) when it works, (None, reason) otherwise."""
    spec = BACKENDS[name]
    try:
        module = importlib.import_module(spec.module)
    except Exception as error:  # a broken optional dependency must not break the library
        return None, f"cannot import {spec.module}: {type(error).__name__}: {error}"
    probe = getattr(module, "availability", None)
    reason = probe() if probe is not None else None
    if reason is not None:
        return None, reason
    return getattr(module, spec.function), None


def _for_device(device: str | torch.device | None) -> list[str]:
    """The backends that take ``device``'s type (all of them for None), without loading any."""
    device_type = None if device is None else torch.device(device).type
    return [name for name, spec in BACKENDS.items() if device_type is None or device_type in spec.devices]


def backend_status(device: str | torch.device | None = None) -> dict[str, str]:
    """Every backend (for ``device``'s type when given) with ``"available"`` or the reason it is
    not usable here. Only those backends are loaded: asking about CUDA compiles no CPU kernel."""
    return {name: _load(name)[1] or "available" for name in _for_device(device)}


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends that work here (for ``device``'s type when given; only those are loaded)."""
    return [name for name in _for_device(device) if _load(name)[0] is not None]


_warned_fallbacks: set[tuple[str, str]] = set()


def resolve_backend(backend: str = "auto", device: str | torch.device = "cpu") -> str:
    """The backend name that ``selective_scan(..., backend=backend)`` uses on ``device``.

    Raises:
        ValueError: unknown name, or a backend that cannot take this device type.
        RuntimeError: a named backend that does not work here (with the reason).
    """
    device_type = torch.device(device).type
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto") or "auto"
    if backend == "auto":
        skipped = []
        for name in AUTO_ORDER.get(device_type, ("reference",)):
            function, reason = _load(name)
            if function is not None:
                if skipped and (device_type, name) not in _warned_fallbacks:
                    _warned_fallbacks.add((device_type, name))
                    warnings.warn(
                        f"selective scan on {device_type}: using backend '{name}' because "
                        + "; ".join(skipped), RuntimeWarning, stacklevel=3)
                return name
            skipped.append(f"'{name}' is unavailable ({reason})")
        raise RuntimeError(f"no selective-scan backend works on {device_type}: " + "; ".join(skipped))
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}"
            + (f" (from ${BACKEND_ENV})" if os.environ.get(BACKEND_ENV) == backend else ""))
    spec = BACKENDS[backend]
    if device_type not in spec.devices:
        raise ValueError(
            f"backend {backend!r} runs on {sorted(spec.devices)} tensors, got {device_type} tensors")
    reason = _load(backend)[1]
    if reason is not None:
        raise RuntimeError(f"selective-scan backend {backend!r} is unavailable: {reason}")
    return backend


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, channels, length), got shape {tuple(u.shape)}")
    batch, channels, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.dim() == 3:
            expected = (batch, d_state, length)
        elif M.dim() == 4:
            groups = M.shape[1]
            if groups == 0 or channels % groups:
                raise ValueError(f"{name} has {groups} groups, which must divide channels={channels}")
            expected = (batch, groups, d_state, length)
        else:
            expected = None
        if expected is None or tuple(M.shape) != expected:
            raise ValueError(
                f"{name} must be (batch, d_state, length) = {(batch, d_state, length)} or "
                f"(batch, groups, d_state, length), got {tuple(M.shape)}")
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and tuple(vec.shape) != (channels,):
            raise ValueError(f"{name} must be (channels={channels},), got {tuple(vec.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Mamba's selective scan with mamba-ssm's ``selective_scan_fn`` semantics.

    Args:
        u: (b, d, L) input sequence.
        delta: (b, d, L) step sizes (before ``delta_bias`` and softplus).
        A: (d, n) state matrix (diagonal per channel; negative for a stable scan).
        B, C: (b, n, L) shared by all channels, or (b, g, n, L) with channel c using group
            ``c // (d // g)``.
        D: (d,) skip connection, optional.
        z: (b, d, L) gate; the output is multiplied by ``silu(z)``, optional.
        delta_bias: (d,) added to delta before softplus, optional.
        delta_softplus: apply softplus to delta.
        backend: ``"auto"`` or a name from :data:`BACKENDS`.
    Returns:
        (b, d, L) output in u's dtype; under autocast, float32: the scan then runs with
        autocast off on float32 inputs, as the release's ``custom_fwd(cast_inputs=torch.float32)``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    function, _ = _load(name)
    autocast = torch.is_autocast_enabled(u.device.type)
    if autocast:
        u, delta, A, B, C, D, z, delta_bias = (None if t is None else t.float()
                                                for t in (u, delta, A, B, C, D, z, delta_bias))
    with torch.autocast(u.device.type, enabled=False) if autocast else nullcontext():
        return function(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
