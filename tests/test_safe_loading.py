"""Loading a file never runs its code (issue 21, item 1).

A pickle can name any Python function and a full unpickle calls it. Each test here writes a
file whose pickle calls ``os.system("touch <marker>")`` and checks, on every path by which
the library opens a ``.pt``/``.pth`` file, that the file is refused with an error naming
the offending global and that the marker was never created. One test unpickles the same
file with ``trust=True`` and sees the marker appear, so the payload is real.
"""
from __future__ import annotations

import io
import os
import shlex
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

import toy_method
from mambaad_lib.cli import main
from mambaad_lib.engine import runner
from mambaad_lib.engine.checkpoint import FINAL, FORMAT, FORMAT_VERSION, LAST, load_checkpoint
from mambaad_lib.engine.config import load_config
from mambaad_lib.methods import METHODS, LearningType, get_method_class
from mambaad_lib.models import load_release_checkpoint
from mambaad_lib.models.encoders import build_encoder
from mambaad_lib.models.release import RELEASE_TRAINING_CHECKPOINT, detect_checkpoint_format, read_release_file
from mambaad_lib.utils.state import UnsafeCheckpointError, read_torch_file
from test_release_checkpoint import ADER, fake_release_state, model_64  # noqa: F401  (model_64 is a fixture)

# os.system pickles under the name of the module that defines it.
SYSTEM_GLOBAL = f"{os.system.__module__}.system"


class RunsCode:
    """Unpickles as ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "code_ran"
    yield path
    assert not path.exists(), "unpickling ran code from the file"


@pytest.fixture
def toy(tmp_path):
    """The toy method registered, its dataset and profile under tmp_path."""
    toy_method.register()
    toy_method.make_dataset(tmp_path / "data")
    yield toy_method.write_profile(tmp_path, tmp_path / "data")
    toy_method.unregister()


def _our_checkpoint_with(payload, path: Path) -> Path:
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "method": toy_method.NAME,
                "model": {"center": torch.zeros(3)}, "extras": {"note": payload}}, path)
    return path


def _one_line_error(capsys, *expected: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("mambaad: error:")]
    assert len(errors) == 1, err
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


# ---- the payload is real ----------------------------------------------------------------------


def test_trusting_the_file_does_run_its_code(tmp_path):
    marker = tmp_path / "code_ran"
    path = _our_checkpoint_with(RunsCode(marker), tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=SYSTEM_GLOBAL):
        read_torch_file(path)
    assert not marker.exists()
    read_torch_file(path, trust=True)
    assert marker.exists()


# ---- every Python load path -------------------------------------------------------------------


def _plant_last(tmp_path: Path, marker: Path) -> Path:
    run_dir = tmp_path / "runs" / "toy" / "planted"
    run_dir.mkdir(parents=True)
    _our_checkpoint_with(RunsCode(marker), run_dir / LAST)
    return run_dir


LOADERS = {
    "read_torch_file": lambda path, model: read_torch_file(path),
    "load_checkpoint": lambda path, model: load_checkpoint(path),
    "read_release_file": lambda path, model: read_release_file(path),
    "load_release_checkpoint": lambda path, model: load_release_checkpoint(path, model=model),
    "build_encoder": lambda path, model: build_encoder("resnet18", weights=path),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("wrapping", ["whole file", "inside a checkpoint", "inside a release file"])
def test_every_load_function_refuses_code_and_names_the_global(loader, wrapping, tmp_path, marker, model_64):
    path = tmp_path / "evil.pth"
    if wrapping == "whole file":
        torch.save(RunsCode(marker), path)
    elif wrapping == "inside a checkpoint":
        _our_checkpoint_with(RunsCode(marker), path)
    else:
        torch.save({"net": {"net_t.conv1.weight": torch.zeros(1)}, "metric_recorder": RunsCode(marker)}, path)
    with pytest.raises(ValueError, match=f"names {SYSTEM_GLOBAL}"):
        LOADERS[loader](path, model_64)


def test_resume_refuses_a_planted_last_checkpoint(tmp_path, marker):
    run_dir = _plant_last(tmp_path, marker)
    with pytest.raises(ValueError, match=f"cannot resume .*planted.*names {SYSTEM_GLOBAL}"):
        runner.resume_checkpoint(run_dir)


# ---- every command-line load path ----------------------------------------------------------------


def test_evaluate_and_predict_refuse_code_in_a_checkpoint(tmp_path, marker, toy, capsys):
    evil = _our_checkpoint_with(RunsCode(marker), tmp_path / "evil.pt")
    assert main(["evaluate", "--checkpoint", str(evil), "--quiet"]) == 2
    _one_line_error(capsys, SYSTEM_GLOBAL, "evil.pt", "--trust-checkpoint")
    assert main(["evaluate", "--checkpoint", str(evil), "--profile", str(toy), "--quiet"]) == 2
    _one_line_error(capsys, SYSTEM_GLOBAL)
    image = next((tmp_path / "data").rglob("*.png"))
    assert main(["predict", str(image), "--checkpoint", str(evil), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    _one_line_error(capsys, SYSTEM_GLOBAL, "evil.pt")
    assert not (tmp_path / "out").exists()


def test_train_resume_refuses_a_planted_last_checkpoint(tmp_path, marker, toy, capsys):
    assert main(["train", "--profile", str(toy), "--run-id", "planted", "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "toy" / "planted"
    (run_dir / "run.json").unlink()  # make it look interrupted
    for name in (LAST, "last.prev.pt"):
        _our_checkpoint_with(RunsCode(marker), run_dir / name)
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2
    _one_line_error(capsys, "cannot resume", SYSTEM_GLOBAL)
    assert main(["train", "--resume", str(run_dir / LAST), "--quiet"]) == 2
    _one_line_error(capsys, SYSTEM_GLOBAL)


def test_release_checkpoint_option_refuses_code(tmp_path, marker, toy, capsys):
    evil = tmp_path / "mambaad_mvtec.pth"
    torch.save({"net": {"net_t.conv1.weight": torch.zeros(1)}, "metric_recorder": RunsCode(marker)}, evil)
    for command in ("evaluate", "predict"):
        inputs = [str(next((tmp_path / "data").rglob("*.png")))] if command == "predict" else []
        assert main([command, *inputs, "--release-checkpoint", str(evil), "--profile", "smoke",
                     "--scan-backend", "reference", "--quiet"]) == 2
        _one_line_error(capsys, SYSTEM_GLOBAL, "mambaad_mvtec.pth")


def test_encoder_weights_option_refuses_a_pickle(tmp_path, marker, toy, capsys):
    evil = tmp_path / "resnet18.pth"
    torch.save(RunsCode(marker), evil)
    assert main(["train", "--profile", "smoke", "--data-root", str(tmp_path / "data"), "--dataset", "toy",
                 "--encoder-weights", str(evil), "--scan-backend", "reference", "--runs-dir", str(tmp_path / "runs"),
                 "--results-dir", str(tmp_path / "results"), "--quiet"]) == 2
    _one_line_error(capsys, "encoder_weights file", "resnet18.pth", SYSTEM_GLOBAL)


# ---- what may load: safe types without trust, other types only with it -------------------------------


def _numpy1_names(path: Path) -> None:
    """Rewrite a torch file as numpy 1 writes it: numpy 2's ``numpy._core`` was ``numpy.core``."""
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as target:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            target.writestr(info, data)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("numpy_names", ["numpy 2", "numpy 1"])
def test_released_training_checkpoint_with_numpy_metrics_loads_without_trust(tmp_path, model_64, numpy_names):
    """The layout of the release's ckpt.pth (ADer's trainer): metric_recorder holds numpy
    floats, the scheduler and scaler plain numbers, the options an argparse.Namespace."""
    import argparse

    state = fake_release_state(ADER, seed=2)
    path = tmp_path / "ckpt.pth"
    torch.save({"net": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
                "scheduler": {"base_values": [1e-3], "t_initial": 100.0, "noise_range_t": None},
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
                "iter": 1000, "epoch": 10, "total_time": 3600.5,
                "metric_recorder": {"mAUROC_sp_max_bottle": [np.float64(99.2), np.float64(99.6)],
                                    "mAUROC_px_Avg": [np.float32(97.1)]},
                "args": argparse.Namespace(cfg_path="configs/mambaad/mambaad_mvtec.py", seed=np.int64(42))}, path)
    if numpy_names == "numpy 1":
        _numpy1_names(path)
    content = read_release_file(path)
    assert detect_checkpoint_format(content) == RELEASE_TRAINING_CHECKPOINT
    assert content["metric_recorder"]["mAUROC_sp_max_bottle"][1] == np.float64(99.6)
    model = load_release_checkpoint(path, model=model_64)
    assert torch.equal(model.bottleneck.fuse[0].weight, state["mff_oce.convf.weight"])


def test_a_checkpoint_with_other_objects_needs_trust(tmp_path, toy, capsys):
    """Training scripts store paths and other objects beside the weights (e.g. a
    ``pathlib.PurePosixPath`` in the hyper-parameters): refused by default, loaded with trust."""
    path = tmp_path / "lightning_style.ckpt"
    torch.save({"state_dict": {"center": torch.tensor([0.1, 0.2, 0.3])},
                "hyper_parameters": {"data_root": PurePosixPath("/datasets/mvtec")}}, path)
    with pytest.raises(UnsafeCheckpointError, match="PurePosixPath"):
        load_checkpoint(path)
    assert torch.equal(load_checkpoint(path, trust=True)["model"]["center"], torch.tensor([0.1, 0.2, 0.3]))

    common = ["--checkpoint", str(path), "--profile", str(toy), "--quiet"]
    assert main(["evaluate", *common]) == 2
    _one_line_error(capsys, "PurePosixPath", "--trust-checkpoint")
    assert main(["evaluate", *common, "--trust-checkpoint", "--run-id", "trusted"]) == 0
    assert (tmp_path / "results" / "toy" / "toy_profile" / "trusted.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))  # the built-in ones: tests register theirs in fixtures
def test_every_method_checkpoint_loads_with_weights_only(method, tmp_path):
    """Each built-in method trained briefly on its smoke settings: its own checkpoint holds only
    tensors and plain data (torch.load(weights_only=True) with nothing allow-listed)."""
    open_set = get_method_class(method).learning_type is LearningType.OPEN_SET
    toy_method.make_dataset(tmp_path / "data", n_train=12 if open_set else 4, n_test=5)  # AHL clusters the normals
    config = load_config("smoke", {"method": method, "data.root": str(tmp_path / "data"), "data.name": "toy",
                                   "data.classes": ["brick"], "train.epochs": 1, "train.evaluate_untrained": False,
                                   "eval.num_examples": 0, "eval.protocols": ["standard"],
                                   "paths.runs_dir": str(tmp_path / "runs"),
                                   "paths.results_dir": str(tmp_path / "results")})
    outcome = runner.train(config, run_id="weights-only", progress=False)
    checkpoints = sorted(outcome.run_dir.rglob("*.pt"))
    assert any(path.name == FINAL for path in checkpoints)
    for path in checkpoints:
        content = torch.load(path, map_location="cpu", weights_only=True)
        assert content["format"] == FORMAT and content["method"] == method
        load_checkpoint(path)  # and the checksum holds


# ---- each file is read once --------------------------------------------------------------------------


def test_each_command_reads_the_checkpoint_once(tmp_path, toy, monkeypatch, capsys):
    assert main(["train", "--profile", str(toy), "--run-id", "once", "--quiet"]) == 0
    final = tmp_path / "runs" / "toy" / "once" / FINAL
    reads: list[str] = []
    real_load = torch.load

    def counting_load(source, *args, **kwargs):
        reads.append(Path(source).name)
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    assert main(["evaluate", "--checkpoint", str(final), "--run-id", "eval-once", "--quiet"]) == 0
    assert reads == [FINAL]
    reads.clear()
    image = next((tmp_path / "data").rglob("*.png"))
    assert main(["predict", str(image), "--checkpoint", str(final), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert reads == [FINAL]
