"""The ``mambaad`` command: round trip in a temporary folder, help, info, clear errors."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambaad_lib.cli import _config, build_parser, main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A temporary folder where `mambaad synth && mambaad train --profile smoke` has run."""
    folder = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert main(["synth", "--profile", "smoke", "--quiet"]) == 0
        assert main(["train", "--profile", "smoke", "--quiet", "--run-id", "first",
                     "--set", "train.evaluate_untrained=false"]) == 0
    return folder


def test_round_trip_synth_train_evaluate_predict(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert (workdir / "data" / "meta_synthetic_smoke.json").is_file()
    trained = json.loads((workdir / "results/smoke/smoke/first.json").read_text())
    assert (workdir / "runs/smoke/first/final.pt").is_file()

    assert main(["evaluate", "--profile", "smoke", "--quiet", "--run-id", "again"]) == 0
    evaluated = json.loads((workdir / "results/smoke/smoke/again.json").read_text())
    assert evaluated["metrics"] == trained["metrics"]
    assert evaluated["evaluation"]["checkpoint"].endswith("runs/smoke/first/final.pt")

    images = workdir / "mine"
    images.mkdir(exist_ok=True)
    for name in ("x.png", "y.jpg"):
        Image.fromarray(np.full((80, 96, 3), 120, dtype=np.uint8)).save(images / name)
    assert main(["predict", str(images), "--checkpoint", "runs/smoke/first/final.pt", "--out", "pred",
                 "--quiet"]) == 0
    rows = list(csv.DictReader((workdir / "pred" / "scores.csv").open()))
    assert [Path(row["image"]).name for row in rows] == ["x.png", "y.jpg"]
    assert all(np.isfinite(float(row["score"])) for row in rows)
    assert all((workdir / "pred" / row["overlay"]).is_file() for row in rows)
    assert "scores.csv" in capsys.readouterr().out


@pytest.mark.slow
def test_command_line_overrides_reach_the_config(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert main(["train", "--profile", "smoke", "--quiet", "--run-id", "tweaked", "--epochs", "1",
                 "--train.batch_size", "8", "--model.drop_path_rate=0", "--seed", "5",
                 "--results-dir", "other_results", "--eval.num_examples", "0"]) == 0
    record = json.loads((workdir / "other_results/smoke/smoke/tweaked.json").read_text())
    config = record["config"]
    assert (config["train"]["epochs"], config["train"]["batch_size"], config["seed"]) == (1, 8, 5)
    assert config["model"]["drop_path_rate"] == 0.0 and record["training"]["steps"] == 1


def test_typo_in_option_is_a_clear_error(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main(["train", "--profile", "smoke", "--train.epoch", "3"]) == 2
    error = capsys.readouterr().err
    assert "unknown config key 'train.epoch'" in error and "did you mean 'epochs'" in error
    assert main(["train", "--profile", "smoke", "--frobnicate"]) == 2
    assert "unrecognized argument '--frobnicate'" in capsys.readouterr().err


def test_missing_dataset_and_unwritable_results(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main(["train", "--profile", "smoke", "--data-root", "nowhere"]) == 2
    assert "no meta file" in capsys.readouterr().err
    Path("blocked").write_text("a file, not a folder")
    assert main(["train", "--profile", "smoke", "--results-dir", "blocked/results"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_checkpoint_of_other_architecture_via_cli(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main(["evaluate", "--profile", "smoke", "--checkpoint", "runs/smoke/first/final.pt",
                 "--model.depths", "2,2,2,2", "--run-id", "wrong"]) == 2
    error = capsys.readouterr().err
    assert "does not match the model" in error and "missing keys" in error
    assert not Path("results/smoke/smoke/wrong.json").exists()


def test_predict_rejects_alpha_images_and_writes_nothing(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    Image.fromarray(np.zeros((64, 64, 4), dtype=np.uint8), mode="RGBA").save("alpha.png")
    assert main(["predict", "alpha.png", "--checkpoint", "runs/smoke/first/final.pt", "--out", "p2"]) == 2
    assert "mode RGBA" in capsys.readouterr().err and not Path("p2").exists()


def test_switching_method_drops_the_profile_model_section():
    from mambaad_lib.methods import get_method_class

    args, extra = build_parser().parse_known_args(["train", "--profile", "smoke", "--model", "glass",
                                                   "--epochs", "1"])
    config = _config(args, extra)
    assert config.method == "glass" and isinstance(config.model, get_method_class("glass").config_class)
    assert config.data.image_size == 64 and config.train.epochs == 1 and config.profile == "smoke"


def test_validate_data(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main(["validate-data", "--root", "data", "--name", "synthetic_smoke"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["validate-data", "--root", "data", "--name", "absent"]) != 0


def test_console_script_help_and_info():
    executable = shutil.which("mambaad")
    if executable is None:
        pytest.skip("the mambaad console script is not installed (pip install -e .)")
    helped = subprocess.run([executable, "train", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0
    assert "--encoder-weights" in helped.stdout and "--train.epochs" in helped.stdout
    info = subprocess.run([executable, "info"], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0
    assert "reference" in info.stdout and "available" in info.stdout and "torch" in info.stdout
