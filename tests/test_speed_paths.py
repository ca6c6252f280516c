"""The CPU fast paths against their references: values and gradients, float32 and float64.

- ``selective_scan_directions`` (fused ``cpu`` kernel) against the composition of
  ``permute_sequences`` + the reference scan, including the kernel's two code paths (the
  hand-vectorised one for float32 with n % 4 == 0, the generic one otherwise), partial channel
  blocks, sequences shorter and longer than a checkpoint chunk, and saved vs recomputed
  checkpoints;
- ``permute_sequences`` (gather with a gather backward) against autograd's gather;
- SS2D's fused path against its sequence path, and a small MambaAD's loss and gradients with
  the ``cpu`` backend against the ``reference`` backend;
- ``instance_norm_silu`` against ``silu(instance_norm(x))``;
- bit-identical results of these kernels at 1 and 2 threads, in fresh processes.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mambaad_lib.models import build_mambaad
from mambaad_lib.models.costs import count_flops
from mambaad_lib.models.lss import LSSModule
from mambaad_lib.models.ss2d import SS2D
from mambaad_lib.ops import instance_norm_silu, permute_sequences, selective_scan_directions
from mambaad_lib.ops.cpu import availability as cpu_availability
from mambaad_lib.ops.directions import selective_scan_directions_reference
from mambaad_lib.ops.norm_act import instance_norm_silu_reference
from scan_cases import TOLERANCE, assert_model_gradients_match, relative_error

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(cpu_availability() is not None, reason=f"cpu kernels unavailable: {cpu_availability()}")


def direction_inputs(batch, length, directions, channels, d_state, dtype, *, D=True, bias=True, rank=None, seed=0):
    """Random inputs of selective_scan_directions; B, C as strided views of SS2D-like projections
    [dt | B | C], delta an einsum-like permuted view or, with ``rank``, the projections' dt slice
    with a (K, d, rank) delta_weight."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    r = rank or 3
    projections = rand(batch, length, directions, 2 * d_state + r)
    low_rank = {} if rank is None else dict(delta=projections[..., :r] * 0.5, delta_weight=rand(directions, channels, r))
    full = dict(delta=(rand(directions, batch, length, channels) * 0.5).permute(1, 2, 0, 3))
    return dict(
        u=rand(batch, length, channels),
        **(low_rank or full),
        A=-(torch.rand(directions * channels, d_state, generator=g, dtype=dtype) * 2 + 0.1),
        B=projections[..., r:r + d_state], C=projections[..., r + d_state:],
        D=rand(directions * channels) if D else None,
        delta_bias=rand(directions * channels) * 0.3 if bias else None,
        orders=torch.stack([torch.randperm(length, generator=g) for _ in range(directions)]),
    )


def values_and_grads(function, inputs, grad_out):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    args = {k: leaves.get(k, v) for k, v in inputs.items()}
    out = function(**args)
    return out, dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), grad_out)))


DIRECTION_CASES = {
    # (batch, L, K, d, n) and options: n=16 float32 runs the AVX-512 path where available, n=5 the generic one
    "model_like": ((2, 64, 8, 32, 16), dict(rank=4)),  # SS2D's call: low-rank step sizes
    "full_step_sizes": ((2, 64, 8, 32, 16), {}),
    "partial_block_long": ((1, 150, 2, 20, 16), dict(rank=3)),  # d = 16 + 4, L over two checkpoint chunks
    "generic_state": ((2, 33, 3, 7, 5), {}),
    "generic_state_low_rank": ((2, 33, 3, 7, 5), dict(rank=2)),
    "state_4_one_step": ((3, 1, 2, 16, 4), {}),
}


@pytest.fixture
def threads():
    """Sets torch's intra-op thread count for one test and restores it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("tasks", ["per_batch_element", "split"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", list(DIRECTION_CASES))
def test_fused_directions_match_the_reference_composition(case, dtype, tasks, threads):
    """Both task splits of the kernel (one task per batch element, with at least two batch
    elements per thread; else per channel block / per direction) against the reference."""
    shape, options = DIRECTION_CASES[case]
    threads(1 if tasks == "per_batch_element" else max(2, shape[0]))
    inputs = direction_inputs(*shape, dtype=dtype, **options)
    grad_out = torch.randn_like(inputs["u"])
    expected, expected_grads = values_and_grads(
        lambda **kw: selective_scan_directions_reference(**kw, delta_softplus=True, backend="reference"),
        inputs, grad_out)
    out, grads = values_and_grads(
        lambda **kw: selective_scan_directions(**kw, delta_softplus=True, backend="cpu"), inputs, grad_out)
    assert out.dtype == dtype and out.shape == expected.shape
    assert relative_error(out, expected) < TOLERANCE[dtype]
    assert grads.keys() == expected_grads.keys() == {"u", "delta", "A", "B", "C", "D", "delta_bias"} | (
        {"delta_weight"} if "rank" in options else set())
    for name, grad in grads.items():
        assert grad.shape == expected_grads[name].shape, name
        assert relative_error(grad, expected_grads[name]) < TOLERANCE[dtype], name


def test_fused_directions_without_softplus_bias_or_skip():
    inputs = direction_inputs(2, 20, 2, 16, 16, torch.float64, D=False, bias=False)
    grad_out = torch.randn_like(inputs["u"])
    expected, expected_grads = values_and_grads(
        lambda **kw: selective_scan_directions_reference(**kw, backend="reference"), inputs, grad_out)
    out, grads = values_and_grads(lambda **kw: selective_scan_directions(**kw, backend="cpu"), inputs, grad_out)
    assert relative_error(out, expected) < 1e-10
    for name in expected_grads:
        assert relative_error(grads[name], expected_grads[name]) < 1e-10, name


@pytest.mark.parametrize("rank", [None, 2], ids=["full_step_sizes", "low_rank"])
def test_fused_directions_gradcheck(rank):
    inputs = direction_inputs(1, 5, 2, 3, 2, torch.float64, rank=rank)
    orders = inputs.pop("orders")
    names = list(inputs)

    def scan(*tensors):
        return selective_scan_directions(**dict(zip(names, tensors)), orders=orders, delta_softplus=True, backend="cpu")

    tensors = tuple(v.detach().clone().requires_grad_() for v in inputs.values())
    assert torch.autograd.gradcheck(scan, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype, d_state", [(torch.float32, 16), (torch.float64, 16), (torch.float32, 5)],
                         ids=["fp32_vectorised", "fp64_generic", "fp32_generic"])
def test_saved_checkpoints_give_the_recomputed_gradients_bit_for_bit(dtype, d_state):
    """The training forward's checkpoints replace the backward's first sweep without changing a bit."""
    from mambaad_lib.ops.cpu import load_extension

    kernel = load_extension()
    inputs = direction_inputs(2, 150, 2, 20, d_state, dtype, rank=3)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias", "delta_weight", "orders")]
    out, checkpoints = kernel.forward(*args, True, True, True)
    out_plain, nothing = kernel.forward(*args, True, True, False)
    assert torch.equal(out, out_plain) and nothing.numel() == 0 and checkpoints.numel() > 0
    dout = torch.randn_like(out)
    with_saved = kernel.backward(*args, True, True, checkpoints, dout)
    recomputed = kernel.backward(*args, True, True, None, dout)
    for a, b in zip(with_saved, recomputed):
        assert torch.equal(a, b)


def test_fused_directions_reject_bad_shapes_and_orders():
    inputs = direction_inputs(1, 6, 2, 4, 3, torch.float32)
    with pytest.raises(ValueError, match=r"orders must be \(K, L\)"):
        selective_scan_directions(**{**inputs, "orders": inputs["orders"][:1]}, backend="cpu")
    with pytest.raises(ValueError, match=r"B must be \(b, L, K, n\)"):
        selective_scan_directions(**{**inputs, "B": inputs["B"][:, :5]}, backend="cpu")
    with pytest.raises(ValueError, match=r"delta_weight must be \(K, d, r\)"):
        selective_scan_directions(**{**inputs, "delta": inputs["delta"][..., :2]},
                                  delta_weight=torch.randn(2, 5, 2), backend="cpu")
    repeated = inputs["orders"].clone()
    repeated[1, 0] = repeated[1, 1]
    with pytest.raises(RuntimeError, match="not a permutation"):
        selective_scan_directions(**{**inputs, "orders": repeated}, backend="cpu")


@pytest.mark.parametrize("shared", [True, False], ids=["shared_map", "per_direction"])
def test_permute_sequences_matches_autograds_gather(shared):
    batch, directions, channels, length = 2, 3, 4, 10
    x = torch.randn(batch, 1 if shared else directions, channels, length, dtype=torch.float64, requires_grad=True)
    index = torch.stack([torch.randperm(length) for _ in range(directions)])
    inverse = torch.argsort(index, dim=-1)
    expected = torch.gather(x.expand(batch, directions, channels, length), 3,
                            index.view(1, directions, 1, length).expand(batch, directions, channels, length))
    out = permute_sequences(x, index, inverse)
    assert torch.equal(out, expected)
    grad = torch.randn_like(out)
    assert torch.allclose(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x, grad)[0],
                          rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: permute_sequences(t, index, inverse), (x,))


def _ss2d_paths(module, x):
    """Output and gradients (input and parameters) of SS2D's fused and sequence paths."""
    results = []
    grad_out = None
    for backend in ("cpu", "reference"):
        module.scan_backend = backend
        assert module.uses_fused_kernel(x.device) == (backend == "cpu")
        out = module(x)
        grad_out = torch.randn_like(out) if grad_out is None else grad_out
        results.append((out, torch.autograd.grad(out, [x, *module.parameters()], grad_out)))
    return results


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_ss2d_fused_path_equals_the_sequence_path(dtype):
    module = SS2D(12, (8, 8), scan={"zigzag": 4, "hilbert": 4}, directions=8).to(dtype)  # d_inner 24: a partial block
    x = torch.randn(2, 8, 8, 12, dtype=dtype, requires_grad=True)
    (fused, fused_grads), (sequence, sequence_grads) = _ss2d_paths(module, x)
    assert relative_error(fused, sequence) < TOLERANCE[dtype]
    for a, b in zip(fused_grads, sequence_grads):
        assert relative_error(a, b) < TOLERANCE[dtype]


def test_ss2d_fused_path_on_another_grid_size():
    module = SS2D(8, (4, 4), scan="sweep", directions=4).double()
    x = torch.randn(1, 6, 10, 8, dtype=torch.float64, requires_grad=True)  # orders built on the fly
    (fused, fused_grads), (sequence, sequence_grads) = _ss2d_paths(module, x)
    assert relative_error(fused, sequence) < 1e-10
    for a, b in zip(fused_grads, sequence_grads):
        assert relative_error(a, b) < 1e-10


def test_model_loss_and_gradients_with_the_cpu_kernels_match_the_reference_backend():
    """The whole demo-style model (fused scan, fused norm) against the step-by-step reference scan."""
    torch.manual_seed(0)
    model = build_mambaad(backbone="resnet18", depths=(1, 1, 1, 1), image_size=64, drop_path_rate=0.0,
                          scan_backend="cpu").train()
    images = torch.randn(2, 3, 64, 64)
    results = {}
    for backend in ("cpu", "reference"):
        model.set_scan_backend(backend)
        model.zero_grad(set_to_none=True)
        loss = model.loss(images)
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert_model_gradients_match(*results["cpu"], *results["reference"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_instance_norm_silu_matches_the_torch_ops(dtype, channels_last):
    x = torch.randn(3, 20, 5, 7, dtype=dtype) * 3 + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    grad_out = torch.randn(3, 20, 5, 7, dtype=dtype)
    out = instance_norm_silu(x)
    expected = instance_norm_silu_reference(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, expected) < TOLERANCE[dtype]
    grad = torch.autograd.grad(out, x, grad_out)[0]
    assert relative_error(grad, torch.autograd.grad(expected, x, grad_out)[0]) < TOLERANCE[dtype]
    x64 = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(instance_norm_silu, (x64,))


def test_lss_branches_stay_channels_last_and_flops_are_unchanged():
    module = LSSModule(16, (8, 8), drop_paths=[0.0], scan_backend="cpu")
    branch = module.local_branches[0]
    x = torch.randn(2, 8, 8, 16).permute(0, 3, 1, 2)  # (B, C, H, W) view of (B, H, W, C) memory
    for layer in branch:
        x = layer(x)
        assert x.is_contiguous(memory_format=torch.channels_last), type(layer).__name__
    norm = branch[0][1]
    assert isinstance(norm, torch.nn.InstanceNorm2d) and not norm.affine and not norm.track_running_stats
    flops = count_flops(build_mambaad(backbone="resnet18", depths=(1, 1, 1, 1), image_size=64), image_size=64)
    # Every local-branch norm is still counted as an InstanceNorm (4 FLOPs per element, no affine).
    assert flops["total"] == pytest.approx(count_flops(build_mambaad(
        backbone="resnet18", depths=(1, 1, 1, 1), image_size=64, scan_backend="reference"), image_size=64)["total"])


THREAD_SCRIPT = textwrap.dedent("""
    import sys, torch
    from mambaad_lib.ops import instance_norm_silu, selective_scan, selective_scan_directions
    torch.manual_seed(0)
    results = {}
    # the fused multi-direction scan, as SS2D calls it (several tasks per thread)
    u = torch.randn(3, 70, 40, requires_grad=True)
    delta = (torch.randn(4, 3, 70, 40) * 0.5).requires_grad_()
    A = (-(torch.rand(160, 16) + 0.1)).requires_grad_()
    BC = torch.randn(3, 70, 4, 32, requires_grad=True)
    D = torch.randn(160, requires_grad=True)
    bias = torch.randn(160, requires_grad=True)
    orders = torch.stack([torch.randperm(70) for _ in range(4)])
    weight = torch.randn(4, 40, 3, requires_grad=True)
    out = selective_scan_directions(u, delta.permute(1, 2, 0, 3), A, BC[..., :16], BC[..., 16:], D=D,
                                    delta_bias=bias, delta_softplus=True, orders=orders, backend="cpu")
    low_rank = selective_scan_directions(u, BC[..., :3], A, BC[..., :16], BC[..., 16:], D=D, delta_bias=bias,
                                         delta_softplus=True, orders=orders, delta_weight=weight, backend="cpu")
    out = out + low_rank
    leaves = [u, delta, A, BC, D, bias, weight]
    results["directions"] = [out, *torch.autograd.grad(out, leaves, torch.randn_like(out))]
    # the public (b, d, L) scan with grouped B, C
    x = torch.randn(2, 48, 50, requires_grad=True)
    Bg = torch.randn(2, 3, 16, 50, requires_grad=True)
    y = selective_scan(x, x * 0.3, -torch.rand(48, 16) - 0.1, Bg, Bg * 0.5, delta_softplus=True, backend="cpu")
    results["selective_scan"] = [y, *torch.autograd.grad(y, [x, Bg], torch.randn_like(y))]
    # the fused norm
    m = torch.randn(4, 40, 9, 9).to(memory_format=torch.channels_last).requires_grad_()
    n = instance_norm_silu(m)
    results["instance_norm_silu"] = [n, *torch.autograd.grad(n, m, torch.randn_like(n))]
    from mambaad_lib.ops.cpu import load_extension
    saved = {k: [t.detach().contiguous() for t in v] for k, v in results.items()}
    torch.save({**saved, "has_avx512": load_extension().has_avx512()}, sys.argv[1])
""")


def run_kernel_script(tmp_path: Path, name: str, **env: str) -> dict:
    """THREAD_SCRIPT's outputs and gradients from a fresh process with ``env`` added."""
    script = tmp_path / "kernels.py"
    script.write_text(THREAD_SCRIPT)
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    target = tmp_path / f"{name}.pt"
    subprocess.run([sys.executable, str(script), str(target)], env=full_env, check=True, timeout=900)
    return torch.load(target)


def test_kernel_results_do_not_depend_on_the_thread_count(tmp_path):
    """Fresh processes with OMP_NUM_THREADS=1 and 2: every output and gradient bit-identical."""
    saved = {threads: run_kernel_script(tmp_path, f"threads_{threads}", OMP_NUM_THREADS=str(threads),
                                        MKL_NUM_THREADS=str(threads)) for threads in (1, 2)}
    assert saved[1].keys() == saved[2].keys() == {"directions", "selective_scan", "instance_norm_silu", "has_avx512"}
    for name in ("directions", "selective_scan", "instance_norm_silu"):
        for one, two in zip(saved[1][name], saved[2][name]):
            assert torch.equal(one, two), name


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 target names")
def test_portable_build_without_avx512_gives_the_same_numbers(tmp_path):
    """A build for a CPU without AVX-512 ($MAMBAAD_CPU_MARCH=x86-64-v3; its own cache key, so it
    is compiled once per machine) runs the portable loops; its outputs and gradients match this
    machine's build to float32 rounding."""
    portable = run_kernel_script(tmp_path, "portable", MAMBAAD_CPU_MARCH="x86-64-v3")
    native = run_kernel_script(tmp_path, "native")
    assert portable["has_avx512"] is False
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # the default build takes the AVX-512 path exactly where the CPU has it
        flags = cpuinfo.read_text().split()
        assert native["has_avx512"] is ("avx512f" in flags and "avx512dq" in flags)
    for name in ("directions", "selective_scan", "instance_norm_silu"):
        for index, (a, b) in enumerate(zip(portable[name], native[name])):
            assert relative_error(a, b) < 1e-5, (name, index)


def test_bad_target_name_makes_the_kernels_unavailable_with_the_reason(monkeypatch):
    from mambaad_lib.ops.cpu import _build

    monkeypatch.setenv(_build.MARCH_ENV, "native; rm -rf /")
    with pytest.raises(RuntimeError, match="MAMBAAD_CPU_MARCH"):
        _build.cxx_flags()


def test_adamw_implementations_take_the_same_steps():
    """train.adamw chooses torch's implementation only: the parameters after a few steps agree."""
    from mambaad_lib.methods.training import ADAMW_IMPLEMENTATIONS, TrainConfig, adamw_options
    from mambaad_lib.utils.errors import ConfigError

    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    gradients = [[torch.randn_like(p) for p in start] for _ in range(4)]
    final = {}
    for implementation in ADAMW_IMPLEMENTATIONS:
        params = [p.clone().requires_grad_() for p in start]
        optimizer = torch.optim.AdamW(params, lr=0.01, weight_decay=1e-4, **adamw_options(implementation))
        for step in gradients:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        final[implementation] = params
    for implementation in ADAMW_IMPLEMENTATIONS:
        for p, q in zip(final[implementation], final["default"]):
            assert relative_error(p.detach(), q.detach()) < 1e-6, implementation
    assert TrainConfig().adamw == "fused"
    with pytest.raises(ConfigError, match="train.adamw"):
        TrainConfig(adamw="apex")


@pytest.mark.parametrize("implementation", ["fused", "default"])
def test_mambaad_method_builds_the_configured_adamw(implementation):
    from mambaad_lib.methods.mambaad import MambaADMethod, MambaADMethodConfig
    from mambaad_lib.methods.training import TrainConfig
    from mambaad_lib.utils.schema import dataclass_from_dict

    config = dataclass_from_dict(MambaADMethodConfig, {
        "backbone": "resnet18", "depths": [1, 1, 1, 1], "local_kernels": [3], "encoder_weights": "none"}, prefix="model")
    method = MambaADMethod(config, image_size=64, device=torch.device("cpu"))
    method.configure_optimization(TrainConfig(epochs=1, batch_size=2, adamw=implementation), total_steps=2)
    assert bool(method.optimizer.defaults["fused"]) is (implementation == "fused")
