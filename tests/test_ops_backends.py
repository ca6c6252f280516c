"""The fast selective-scan backends (``cpu``, ``chunked``) against the step-by-step reference."""
from __future__ import annotations

import importlib
import re
import warnings

import pytest
import torch

from mambaad_lib.ops import resolve_backend, selective_scan
from mambaad_lib.ops.chunked import selective_scan_chunked
from mambaad_lib.ops.cpu import _build
from mambaad_lib.ops.cpu import availability as cpu_availability
from mambaad_lib.ops.reference import selective_scan_reference
from scan_cases import CASES, TOLERANCE, relative_error, scan_inputs, steep_long_inputs, values_and_grads

# The package re-exports the function under the module's name, so fetch the module itself.
dispatch = importlib.import_module("mambaad_lib.ops.selective_scan")

FAST_BACKENDS = ["cpu", "chunked"]


def _skip_if_unavailable(backend: str) -> None:
    if backend == "cpu" and (reason := cpu_availability()) is not None:
        pytest.skip(f"cpu backend unavailable here: {reason}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_values_and_gradients(backend, dtype, case):
    _skip_if_unavailable(backend)
    softplus = case != "odd_state_no_extras"
    inputs = scan_inputs(**CASES[case], dtype=dtype)
    grad_out = torch.randn_like(inputs["u"])
    expected, expected_grads = values_and_grads(selective_scan_reference, inputs, softplus, grad_out)
    scan = lambda **kw: selective_scan(**kw, backend=backend)  # noqa: E731
    out, grads = values_and_grads(scan, inputs, softplus, grad_out)
    assert out.dtype == dtype and out.shape == expected.shape
    assert relative_error(out, expected) < TOLERANCE[dtype]
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert grad.shape == expected_grads[name].shape, name
        assert relative_error(grad, expected_grads[name]) < TOLERANCE[dtype], name


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_non_contiguous_inputs(backend):
    _skip_if_unavailable(backend)
    inputs = scan_inputs(2, 6, 21, groups=3)
    # Same values, transposed storage: (b, L, d) -> (b, d, L) views, B / C with L before n.
    strided = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if v is not None and v.dim() >= 3 else v)
               for k, v in inputs.items()}
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    grad_out = torch.randn_like(inputs["u"])
    expected, expected_grads = values_and_grads(selective_scan_reference, inputs, True, grad_out)
    out, grads = values_and_grads(lambda **kw: selective_scan(**kw, backend=backend), strided, True, grad_out)
    assert relative_error(out, expected) < 1e-10
    for name in expected_grads:
        assert relative_error(grads[name], expected_grads[name]) < 1e-10, name


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradcheck(backend):
    _skip_if_unavailable(backend)
    inputs = scan_inputs(1, 4, 6, d_state=3, groups=2)
    names = list(inputs)

    def scan(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=True, backend=backend)

    tensors = tuple(v.requires_grad_() for v in inputs.values())
    assert torch.autograd.gradcheck(scan, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_long_sequence_with_large_steps_stays_finite_and_exact(backend):
    """L = 4096 with step sizes around 20 (dt * A down to -320 per step): no overflow, no NaN."""
    _skip_if_unavailable(backend)
    inputs = steep_long_inputs()
    expected = selective_scan_reference(**inputs, delta_softplus=True)
    fp32 = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    out = selective_scan(**fp32, delta_softplus=True, backend=backend)
    assert torch.isfinite(out).all()
    assert relative_error(out, expected) < 1e-5


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_a_nan_step_size_spreads_like_the_reference(backend):
    """A NaN in delta makes its channel's outputs NaN from that step on, nowhere else (the
    kernels' exp keeps NaN, as torch.exp does)."""
    _skip_if_unavailable(backend)
    inputs = {k: (v.float() if v is not None else None) for k, v in scan_inputs(2, 8, 40, groups=2).items()}
    inputs["delta"][1, 3, 17] = float("nan")
    expected = selective_scan_reference(**inputs, delta_softplus=True)
    out = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert torch.equal(torch.isnan(out), torch.isnan(expected))
    assert torch.isnan(out[1, 3, 17:]).all() and not torch.isnan(out[1, 3, :17]).any()
    finite = ~torch.isnan(expected)
    assert relative_error(out[finite], expected[finite]) < 1e-5


def _cpu_gradients(inputs):
    _, grads = values_and_grads(lambda **kw: selective_scan(**kw, backend="cpu"), inputs, True,
                                 torch.ones_like(inputs["u"]))
    return grads


def test_cpu_backward_is_bit_reproducible_across_runs_and_thread_counts():
    _skip_if_unavailable("cpu")
    inputs = scan_inputs(3, 96, 64, groups=2, dtype=torch.float32)  # 48 channels/group: 2 blocks
    threads = torch.get_num_threads()
    first = _cpu_gradients(inputs)
    second = _cpu_gradients(inputs)
    try:
        torch.set_num_threads(1)
        single_thread = _cpu_gradients(inputs)
    finally:
        torch.set_num_threads(threads)
    for name in first:
        assert torch.equal(first[name], second[name]), name
        assert torch.equal(first[name], single_thread[name]), name


def test_cpu_rejects_half_precision_by_computing_in_fp32():
    _skip_if_unavailable("cpu")
    inputs = scan_inputs(1, 4, 9, dtype=torch.float32)
    half = {k: (v.bfloat16() if v is not None else None) for k, v in inputs.items()}
    out = selective_scan(**half, delta_softplus=True, backend="cpu")
    assert out.dtype == torch.bfloat16
    expected = selective_scan_reference(**half, delta_softplus=True)
    assert relative_error(out, expected) < 1e-2


def test_chunk_length_does_not_change_the_result():
    inputs = scan_inputs(2, 4, 50, groups=2)
    results = [selective_scan_chunked(**inputs, delta_softplus=True, chunk_length=T) for T in (1, 7, 50, 64)]
    for result in results[1:]:
        assert relative_error(result, results[0]) < 1e-12
    with pytest.raises(ValueError, match="chunk_length"):
        selective_scan_chunked(**inputs, chunk_length=-1)


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """Forget loaded backends and issued warnings before and after the test."""
    monkeypatch.setattr(dispatch, "_warned_fallbacks", set())
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    dispatch._load.cache_clear()
    _build.load_extension.cache_clear()
    yield
    dispatch._load.cache_clear()
    _build.load_extension.cache_clear()


def test_auto_prefers_cpu_kernel(fresh_dispatch):
    _skip_if_unavailable("cpu")
    assert resolve_backend("auto", "cpu") == "cpu"


def test_asking_about_one_device_type_loads_only_its_backends(fresh_dispatch, monkeypatch):
    """backend_status / available_backends for CUDA never compile the CPU kernel (on a GPU machine a
    compile killed half-way left a build lock that hung every later step)."""
    def no_compile():
        raise AssertionError("the CPU kernel's availability was probed")

    monkeypatch.setattr(importlib.import_module("mambaad_lib.ops.cpu"), "availability", no_compile)
    status = dispatch.backend_status("cuda")
    assert list(status) == [name for name, spec in dispatch.BACKENDS.items() if "cuda" in spec.devices]
    assert "cpu" not in status and status["chunked"] == "available"
    assert "cpu" not in dispatch.available_backends("cuda")
    with pytest.raises(AssertionError, match="probed"):  # no device: every backend, the CPU kernel included
        dispatch.backend_status()


def test_missing_compiler_falls_back_to_chunked_with_one_warning(fresh_dispatch, monkeypatch):
    monkeypatch.setattr(_build.shutil, "which", lambda name: None)
    assert "no C++ compiler" in cpu_availability()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inputs = scan_inputs(1, 2, 5)
        for _ in range(3):
            out = selective_scan(**inputs)
    fallbacks = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(fallbacks) == 1
    message = str(fallbacks[0].message)
    assert "'chunked'" in message and "no C++ compiler" in message
    assert torch.allclose(out, selective_scan_reference(**inputs))
    with pytest.raises(RuntimeError, match=re.escape("no C++ compiler")):
        resolve_backend("cpu", "cpu")


def test_failing_compilation_reports_the_compiler_error(fresh_dispatch, monkeypatch):
    def broken_load(**kwargs):
        raise OSError("c++: fatal error: simulated")

    monkeypatch.setattr("torch.utils.cpp_extension.load", broken_load)
    reason = cpu_availability()
    assert reason is not None and "compiling selective_scan_cpu.cpp and instance_norm_silu_cpu.cpp failed" in reason
    assert "simulated" in reason


def test_build_key_tracks_source_and_flags(monkeypatch):
    key = _build.build_key()
    monkeypatch.setattr(_build, "CXX_FLAGS", _build.CXX_FLAGS + ("-DMAMBAAD_TEST",))
    assert _build.build_key() != key
