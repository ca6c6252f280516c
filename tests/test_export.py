"""Export: the log-depth scan backend against the step-by-step reference; the smoke MambaAD
as ONNX (onnxruntime equals eager PyTorch within 1e-4, any batch size); MMAD as a
torch.export program; what cannot be exported says why."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from mambaad_lib.cli import main
from mambaad_lib.engine.calibration import Calibration
from mambaad_lib.engine.checkpoint import save_checkpoint
from mambaad_lib.engine.config import config_to_dict, load_config
from mambaad_lib.engine.export import METADATA_KEY, export_checkpoint
from mambaad_lib.methods import get_method
from mambaad_lib.ops import selective_scan
from mambaad_lib.ops.export import selective_scan_export
from mambaad_lib.ops.reference import selective_scan_reference
from scan_cases import TOLERANCE as SCAN_TOLERANCE
from scan_cases import scan_inputs

TOLERANCE = 1e-4  # exported vs eager maps and scores (absolute)
ONNX_MISSING = ("the ONNX parity test needs onnx, onnxruntime and onnxscript, which are not installed: "
                "pip install -e '.[export]' (the dev extra includes them)")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("shape", [dict(batch=2, channels=8, length=33, groups=4), dict(batch=2, channels=6, length=64),
                                   dict(batch=1, channels=4, length=1, groups=2), dict(batch=3, channels=3, length=2),
                                   dict(batch=1, channels=3, length=100, d_state=5, groups=1)],
                         ids=["grouped", "ungrouped", "length_1", "length_2", "odd_state"])
def test_export_scan_matches_the_reference_with_gradients(shape, dtype):
    inputs = scan_inputs(**shape, dtype=dtype)
    leaves = {key: value.clone().requires_grad_() for key, value in inputs.items()}
    copies = {key: value.clone().requires_grad_() for key, value in inputs.items()}
    expected = selective_scan_reference(**leaves, delta_softplus=True)
    found = selective_scan(**copies, delta_softplus=True, backend="export")
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, list(leaves.values()), grad_out)
    # With L = 1 no decay is ever applied, so A is not in the graph: its gradient is zero.
    found_grads = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(
        copies.values(), torch.autograd.grad(found, list(copies.values()), grad_out, allow_unused=True))]
    for value, reference in [(found, expected), *zip(found_grads, expected_grads)]:
        scale = reference.abs().max().clamp_min(1e-30)
        assert ((value - reference).abs().max() / scale).item() < SCAN_TOLERANCE[dtype]
    assert found.dtype == dtype


def test_export_scan_graph_grows_with_the_log_of_the_length():
    class Scan(nn.Module):
        def forward(self, u, delta, A, B, C):
            return selective_scan_export(u, delta, A, B, C, delta_softplus=True)

    def nodes(length: int) -> int:
        inputs = scan_inputs(1, 4, length, dtype=torch.float32)
        args = tuple(inputs[key] for key in ("u", "delta", "A", "B", "C"))
        return len(torch.export.export(Scan(), args).graph.nodes)

    short, long = nodes(16), nodes(4096)  # 4 and 12 doubling steps
    per_step = nodes(32) - short
    assert 0 < per_step <= 8 and long - short == 8 * per_step  # a few operators per doubling step, no more


def _checkpoint(tmp_path, profile: str, **overrides) -> tuple:
    """An untrained smoke model saved as a checkpoint with a calibration (parity needs no training)."""
    config = load_config(profile, {"paths.runs_dir": str(tmp_path), **overrides})
    method = get_method(config.method, config.model, config.data.crop_size, "cpu")
    method.train(False)
    calibration = Calibration(0.99, 0.5, 0.25, 0.5, 0.1, 10, "made up for the test")
    path = save_checkpoint(tmp_path / "final.pt", method=config.method, config=config_to_dict(config),
                           model=method.state_dict(), calibration=calibration.to_dict())
    if hasattr(method.network, "set_scan_backend"):
        method.network.set_scan_backend("reference")  # eager PyTorch with the step-by-step scan
    return path, method, calibration


@pytest.mark.slow
def test_onnx_equals_eager_pytorch_on_the_smoke_model(tmp_path, capsys):
    onnx, onnxruntime, _ = (pytest.importorskip(name, reason=ONNX_MISSING)
                            for name in ("onnx", "onnxruntime", "onnxscript"))
    path, method, calibration = _checkpoint(tmp_path, "smoke")
    out = tmp_path / "exported" / "mambaad.onnx"
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--out", str(out), "--quiet"]) == 0
    assert "onnxruntime vs eager PyTorch" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [entry.name for entry in session.get_outputs()] == ["anomaly_maps", "scores"]
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3):  # a dynamic batch size
        images = torch.randn(batch, 3, 64, 64, generator=generator)
        maps, scores = session.run(None, {"images": images.numpy()})
        expected_maps, expected_scores = method.predict(images)
        assert maps.shape == (batch, 1, 64, 64) and scores.shape == (batch,)
        assert np.abs(maps - expected_maps.numpy()).max() <= TOLERANCE
        assert np.abs(scores - expected_scores.numpy()).max() <= TOLERANCE
    facts = json.loads({entry.key: entry.value for entry in onnx.load(str(out)).metadata_props}[METADATA_KEY])
    assert facts["calibration"] == calibration.to_dict() and facts["input"]["shape"] == ["batch", 3, 64, 64]


@pytest.mark.slow
def test_mmad_exports_as_a_torch_export_program(tmp_path):
    # One scan order per GSS group instead of three: a third of the graph, the same kinds of blocks.
    path, method, _ = _checkpoint(tmp_path, "mmad_smoke", **{"model.release_compat": False,
                                                             "model.group_scans": ["hilbert"]})
    report = export_checkpoint(path, "pt2", tmp_path / "mmad.pt2")  # checked on 2 images against eager
    assert report.max_map_difference <= TOLERANCE and report.max_score_difference <= TOLERANCE
    extra = {f"{METADATA_KEY}.json": ""}
    program = torch.export.load(str(report.path), extra_files=extra)
    assert json.loads(extra[f"{METADATA_KEY}.json"])["method"] == "mmad"
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        maps, scores = program.module()(image)  # another batch size
    expected_maps, expected_scores = method.predict(image)
    assert (maps - expected_maps).abs().max() <= TOLERANCE and (scores - expected_scores).abs().max() <= TOLERANCE


def test_what_cannot_be_exported_says_why(tmp_path):
    path, _, _ = _checkpoint(tmp_path, "mmad_smoke")  # release_compat: true, the profile's default
    with pytest.raises(ValueError, match="release_compat: true.*random.*--model.release_compat false"):
        export_checkpoint(path, "onnx", tmp_path / "m.onnx")
    other = tmp_path / "nn"
    other.mkdir()
    path, _, _ = _checkpoint(other, "nearest_neighbor_smoke")
    with pytest.raises(ValueError, match="export supports MambaAD and MMAD.*'nearest_neighbor'"):
        export_checkpoint(path, "pt2", tmp_path / "m.pt2")
    with pytest.raises(ValueError, match="--format must be one of"):
        export_checkpoint(path, "torchscript", tmp_path / "m.pt")
    assert not list(tmp_path.glob("m.*"))
