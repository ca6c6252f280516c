"""Shared selective-scan test inputs and error measures (the backend, export and CUDA tests)."""
from __future__ import annotations

import torch

# (max |a - b| / max |b|) bounds for values and gradients against the reference.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}

# Shapes every fast backend is compared on: grouped and ungrouped B / C, an odd state size without
# the optional inputs, a single step, a single batch element, a large state with one group.
CASES = {
    "grouped": dict(batch=2, channels=8, length=33, groups=4),
    "ungrouped": dict(batch=2, channels=6, length=40),
    "odd_state_no_extras": dict(batch=2, channels=4, length=17, d_state=5, D=False, z=False, bias=False),
    "length_1": dict(batch=3, channels=4, length=1, groups=2),
    "batch_1": dict(batch=1, channels=5, length=29),
    "state_64_one_group": dict(batch=1, channels=3, length=12, d_state=64, groups=1),
}


def scan_inputs(batch, channels, length, d_state=16, groups=None, dtype=torch.float64, *,
                D=True, z=True, bias=True, delta_scale=0.5) -> dict[str, torch.Tensor | None]:
    """Random scan inputs on the CPU (A < 0): u, delta, z (b, d, L); B, C (b, n, L), or
    (b, groups, n, L) when ``groups`` is given; A (d, n); D, delta_bias (d,)."""
    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    return dict(
        u=torch.randn(batch, channels, length, dtype=dtype),
        delta=torch.randn(batch, channels, length, dtype=dtype) * delta_scale,
        A=-(torch.rand(channels, d_state, dtype=dtype) * 2 + 0.1),
        B=torch.randn(bc_shape, dtype=dtype), C=torch.randn(bc_shape, dtype=dtype),
        D=torch.randn(channels, dtype=dtype) if D else None,
        z=torch.randn(batch, channels, length, dtype=dtype) if z else None,
        delta_bias=torch.randn(channels, dtype=dtype) * 0.3 if bias else None,
    )


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    """max |value - expected| / max |expected| (an absolute error when expected is all zero),
    computed in float64 on the CPU."""
    value, expected = value.detach().cpu().double(), expected.detach().cpu().double()
    scale = expected.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return ((value - expected).abs().max() / scale).item()


def values_and_grads(function, inputs, softplus, grad_out):
    """``function(**inputs, delta_softplus=softplus)`` and the gradients of ``<out, grad_out>``
    with respect to every input that is not None (a dict by input name)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    args = {k: leaves.get(k) for k in inputs}
    out = function(**args, delta_softplus=softplus)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    return out, dict(zip(leaves, grads))


def steep_long_inputs() -> dict[str, torch.Tensor | None]:
    """Float64 inputs of L = 4096 with step sizes around 20 (dt * A down to -320 per step): a
    scan that overflows or loses precision there shows it."""
    inputs = scan_inputs(1, 4, 4096, groups=2, delta_scale=5.0)
    inputs["delta"] += 20.0
    inputs["A"] *= 8
    return inputs


def assert_model_gradients_match(loss, grads, expected_loss, expected_grads) -> None:
    """A model's float32 loss and parameter gradients (dicts by name) against a reference run.

    float32 through ~20 layers, each fast op within 1e-5 of its reference. Biases of convolutions
    followed by a norm have gradient 0 up to rounding, so every gradient is held to 1e-5 of the
    largest one, and the gradients that are not rounding noise also to 1e-4 of their own size.
    """
    assert relative_error(loss, expected_loss) < 1e-5
    assert grads.keys() == expected_grads.keys() and len(grads) > 50
    scale = max(g.abs().max().item() for g in expected_grads.values())
    for name, grad in grads.items():
        expected = expected_grads[name]
        assert (grad - expected).abs().max().item() < 1e-5 * scale, name
        if expected.abs().max().item() > 1e-3 * scale:
            assert relative_error(grad, expected) < 1e-4, name
