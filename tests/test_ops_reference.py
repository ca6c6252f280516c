"""The reference selective scan against an independent float64 loop, gradcheck and shape errors."""
import itertools
import math

import numpy as np
import pytest
import torch

from mambaad_lib.ops import selective_scan


def loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Mamba's S6 recurrence, one scalar at a time in float64 (numpy arrays in, array out)."""
    batch, channels, length = u.shape
    d_state = A.shape[1]
    grouped = B.ndim == 4
    out = np.zeros((batch, channels, length))
    for b in range(batch):
        for c in range(channels):
            group = c // (channels // B.shape[1]) if grouped else None
            state = [0.0] * d_state
            for t in range(length):
                step = float(delta[b, c, t]) + (float(delta_bias[c]) if delta_bias is not None else 0.0)
                if delta_softplus:
                    step = math.log1p(math.exp(step))
                y = 0.0
                for n in range(d_state):
                    b_t = B[b, group, n, t] if grouped else B[b, n, t]
                    c_t = C[b, group, n, t] if grouped else C[b, n, t]
                    state[n] = math.exp(step * A[c, n]) * state[n] + step * b_t * u[b, c, t]
                    y += state[n] * c_t
                if D is not None:
                    y += D[c] * u[b, c, t]
                if z is not None:
                    y *= z[b, c, t] / (1.0 + math.exp(-z[b, c, t]))
                out[b, c, t] = y
    return out


def make_inputs(batch=2, channels=4, d_state=3, length=9, groups=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    return dict(
        u=torch.randn(batch, channels, length, generator=g, dtype=dtype),
        delta=0.5 * torch.randn(batch, channels, length, generator=g, dtype=dtype),
        A=-torch.rand(channels, d_state, generator=g, dtype=dtype) * 2 - 0.1,
        B=torch.randn(bc_shape, generator=g, dtype=dtype),
        C=torch.randn(bc_shape, generator=g, dtype=dtype),
        D=torch.randn(channels, generator=g, dtype=dtype),
        z=torch.randn(batch, channels, length, generator=g, dtype=dtype),
        delta_bias=0.3 * torch.randn(channels, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("use_z, use_d, use_bias, softplus, groups",
                         list(itertools.product([False, True], [False, True], [False, True], [False, True],
                                                [None, 2])))
def test_reference_matches_the_float64_loop(use_z, use_d, use_bias, softplus, groups):
    inputs = make_inputs(groups=groups)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()  # raw steps must be positive without softplus
    optional = dict(D=inputs["D"] if use_d else None, z=inputs["z"] if use_z else None,
                    delta_bias=inputs["delta_bias"].abs() if use_bias else None)
    out = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                         delta_softplus=softplus, backend="reference", **optional)
    as_np = {k: (v.double().numpy() if v is not None else None) for k, v in optional.items()}
    expected = loop_scan(*(inputs[k].double().numpy() for k in ("u", "delta", "A", "B", "C")),
                         delta_softplus=softplus, **as_np)
    assert out.dtype == torch.float32 and out.shape == inputs["u"].shape
    error = np.abs(out.double().numpy() - expected).max() / np.abs(expected).max()
    assert error < 1e-5


def test_reference_gradcheck_float64():
    inputs = make_inputs(batch=1, channels=2, d_state=2, length=4, groups=2, dtype=torch.float64)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    tensors = tuple(inputs[name].requires_grad_() for name in names)

    def scan(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True,
                              backend="reference")

    assert torch.autograd.gradcheck(scan, tensors, eps=1e-6, atol=1e-6)


def test_grouped_b_and_c_equal_per_channel_copies():
    inputs = make_inputs(groups=2)
    grouped = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                             delta_softplus=True, backend="reference")
    # Channels 0, 1 use group 0 and channels 2, 3 use group 1: run each half ungrouped.
    halves = [selective_scan(inputs["u"][:, s], inputs["delta"][:, s], inputs["A"][s], inputs["B"][:, g],
                             inputs["C"][:, g], delta_softplus=True, backend="reference")
              for g, s in enumerate((slice(0, 2), slice(2, 4)))]
    assert torch.allclose(grouped, torch.cat(halves, dim=1), atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (dict(u=torch.randn(2, 4)), "u must be"),
    (dict(delta=torch.randn(2, 4, 8)), "delta must have u's shape"),
    (dict(A=torch.randn(5, 3)), "A must be"),
    (dict(B=torch.randn(2, 3, 8)), "B must be"),
    (dict(C=torch.randn(2, 3, 3, 9)), "groups, which must divide"),
    (dict(D=torch.randn(3)), "D must be"),
    (dict(delta_bias=torch.randn(4, 1)), "delta_bias must be"),
    (dict(z=torch.randn(2, 4, 8)), "z must have u's shape"),
])
def test_selective_scan_rejects_bad_shapes(change, message):
    inputs = make_inputs()
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs, backend="reference")


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be"):
        selective_scan(**make_inputs(), backend="nonexistent")
