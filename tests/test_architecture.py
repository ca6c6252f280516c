"""The library's shape: layers that point one way, methods that describe themselves, one config
rule, old files that still load, and an install that works outside the checkout."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor, nn

from mambaad_lib.data.synthetic import make_synthetic_dataset
from mambaad_lib.engine import runner
from mambaad_lib.engine.checkpoint import load_checkpoint
from mambaad_lib.engine.config import ConfigError, load_config
from mambaad_lib.engine.predict import predict
from mambaad_lib.engine.results import SCHEMA_VERSION, load_results
from mambaad_lib.methods import METHODS, AnomalyMethod, LearningType, get_method_class, register_method

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "v1"


# ---- layers -----------------------------------------------------------------------------------


def test_import_contracts_hold():
    """import-linter counts every import, function-level ones too (contracts in .importlinter)."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is a dev dependency: pip install -e .[dev]"
    completed = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "broken" not in completed.stdout.lower().replace("0 broken", "")


def test_low_layers_import_nothing_above():
    code = ("import sys, mambaad_lib.scan, mambaad_lib.metrics, mambaad_lib.ops; "
            "print(sorted(m for m in sys.modules if m.startswith('mambaad_lib')))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.replace("'", '"'))
    above = [name for name in loaded if name.split(".")[1:2] and name.split(".")[1] in
             ("models", "methods", "engine", "experiments", "cli", "reproduce", "viz")]
    assert above == [], above


def test_root_exports_load_lazily():
    import mambaad_lib
    from mambaad_lib.models.costs import count_flops, count_parameters

    assert mambaad_lib.count_flops is count_flops and mambaad_lib.count_parameters is count_parameters
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mambaad_lib.nothing  # noqa: B018


# ---- methods describe themselves ---------------------------------------------------------------


def test_traits_are_declared_on_the_classes():
    traits = {name: get_method_class(name).traits() for name in METHODS}
    assert traits["mambaad"]["learning_type"] == LearningType.UNSUPERVISED.value and not traits["mambaad"]["per_class"]
    assert traits["glass"]["per_class"] and not traits["glass_unified"]["per_class"]
    assert traits["nearest_neighbor"]["one_pass"]
    for name in ("devnet", "dra", "ahl"):
        assert traits[name]["learning_type"] == LearningType.OPEN_SET.value and not traits[name]["resumable"]
    assert all("smoke" in entry["profiles"] for entry in traits.values())


@dataclass
class ToyConfig:
    """A test method's ``model:`` section."""

    power: float = 2.0


class ToyNet(nn.Module):
    """Distance of every pixel to the mean colour of the normal images seen."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))


@pytest.fixture
def toy_method(tmp_path):
    """A toy method defined here, registered with the public API, with its own smoke profile."""
    data = tmp_path / "data"
    make_synthetic_dataset(data, name="toy", seed=0, image_size=32, n_train=3, n_test=4, classes=["brick", "coin"])
    profile = tmp_path / "toy_smoke.yaml"
    profile.write_text(yaml.safe_dump({
        "experiment": "toy", "method": "toy_mean_distance", "seed": 0, "device": "cpu",
        "data": {"root": str(data), "name": "toy", "image_size": 32},
        "train": {"epochs": 1, "batch_size": 2}, "eval": {"batch_size": 4, "num_examples": 1},
        "paths": {"results_dir": str(tmp_path / "results"), "runs_dir": str(tmp_path / "runs")}}))

    class ToyMethod(AnomalyMethod):
        name = "toy_mean_distance"
        config_class = ToyConfig
        one_pass = True
        profiles = {"smoke": str(profile)}

        def __init__(self, config, image_size, device, pretrained=True):
            super().__init__(config, image_size, device, pretrained)
            self.net = ToyNet().to(self.device)

        @property
        def network(self) -> nn.Module:
            return self.net

        def configure_optimization(self, train, total_steps):
            pass

        def training_step(self, images: Tensor) -> float:
            batch = images.mean(dim=(0, 2, 3))
            seen = int(self.net.seen)
            self.net.mean.copy_((self.net.mean * seen + batch * len(images)) / (seen + len(images)))
            self.net.seen += len(images)
            return 0.0

        def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
            distance = (images.to(self.device) - self.net.mean.view(1, 3, 1, 1)).abs() ** self.config.power
            maps = distance.sum(dim=1, keepdim=True)
            return maps, maps.amax(dim=(1, 2, 3))

    before = dict(METHODS)
    register_method(ToyMethod)
    yield ToyMethod, tmp_path
    METHODS.clear()
    METHODS.update(before)


def test_a_method_defined_outside_the_library_runs_everywhere(toy_method):
    """train, evaluate, predict and an experiments helper, with no library file changed."""
    from mambaad_lib import experiments as ex

    method_class, tmp_path = toy_method
    with pytest.raises(ValueError, match="already registered"):
        register_method(type("Other", (method_class,), {}))
    config = load_config("smoke", {"method": "toy_mean_distance"})
    assert config.profile == "smoke" and isinstance(config.model, ToyConfig)

    outcome = runner.train(config, run_id="toy-run", progress=False)
    record = outcome.record
    assert record["method"] == "toy_mean_distance" and record["traits"]["one_pass"]
    assert 0.0 <= record["metrics"]["standard"]["mean"]["i_auroc"] <= 1.0
    checkpoint = Path(record["training"]["checkpoint"])
    assert int(load_checkpoint(checkpoint)["model"]["seen"]) == 6

    evaluated = runner.evaluate(config, checkpoint, run_id="toy-eval", progress=False)
    assert evaluated.record["metrics"]["standard"]["mean"] == record["metrics"]["standard"]["mean"]

    images = tmp_path / "mine"
    images.mkdir()
    shutil.copy(next((tmp_path / "data" / "toy" / "brick" / "test").rglob("*.png")), images / "a.png")
    csv = predict(config, checkpoint, [images], tmp_path / "predicted", progress=False)
    assert len(csv.read_text().splitlines()) == 2

    ctx = ex.Context("toy_notebook", profile="smoke", dataset_root=str(tmp_path / "data"), dataset_name="toy",
                     results_root=str(tmp_path / "results"), runs_root=str(tmp_path / "runs"))
    row = ex.run_row(ctx.config("toy_mean_distance", model={"power": 1.0}), "toy row")
    assert row["method"] == "toy_mean_distance" and not row["reused"] and row["standard.i_auroc"] is not None
    again = ex.run_row(ctx.config("toy_mean_distance", model={"power": 1.0}), "toy row")
    assert again["reused"] and again["standard.i_auroc"] == row["standard.i_auroc"]


# ---- one configuration rule ---------------------------------------------------------------------


def test_a_size_gives_each_method_its_own_settings():
    demo = load_config("demo", {"method": "mambaad_las"})
    assert demo.method == "mambaad_las" and demo.profile == "demo"
    assert demo.model.backbone == "resnet18" and demo.model.encoder_weights == "none"  # not the paper's ResNet34
    glass = load_config("demo", {"method": "glass"})
    assert glass.model.backbone == "resnet18" and glass.data.image_size == 128
    with pytest.raises(ConfigError, match="has no 'paper' profile"):
        load_config("paper", {"method": "nearest_neighbor"})
    with pytest.raises(ConfigError, match="is for method 'glass', not 'mambaad'"):
        load_config("glass_demo", {"method": "mambaad"})


def test_profiles_extend_others(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: openset_smoke\nmethod: dra\nmodel:\n  topk_ratio: 0.5\n")
    config = load_config(str(child))
    assert config.model.topk_ratio == 0.5 and config.model.feature_level == 2  # merged, not replaced
    assert config.profile == "child"
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(str(loop))


def test_the_builder_takes_the_method_config():
    from mambaad_lib.methods.mambaad import MambaADMethodConfig
    from mambaad_lib.models import build_mambaad

    config = load_config("smoke").model
    assert isinstance(config, MambaADMethodConfig)
    with torch.device("meta"):
        model = build_mambaad(config, encoder_weights=None, image_size=64)
        by_keywords = build_mambaad(backbone="resnet18", depths=(1, 1, 1, 1), local_kernels=(3,), image_size=64,
                                    drop_path_rate=0.1)
    assert model.config == by_keywords.config
    with pytest.raises(ConfigError, match="image_size"):
        load_config("smoke", {"model.image_size": 128})  # the engine's data.crop_size decides
    with pytest.raises(TypeError, match="no options \\['widht'\\]"):
        build_mambaad(widht=3)


# ---- old files --------------------------------------------------------------------------------------


def test_format_1_checkpoints_and_schema_1_results_still_load(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("mambaad_lib"), "propagate", True)  # the CLI's setup may have cut it
    caplog.set_level(logging.INFO, logger="mambaad_lib")
    content = load_checkpoint(FIXTURES / "mambaad_last_checkpoint.pt")
    assert content["format_version"] == 1 and content["progress"]["global_step"] > 0
    assert "no checksum" in caplog.text
    config = load_config(None, base=content["config"])
    assert config.method == "mambaad" and config.model.backbone == "resnet18"
    devnet = load_checkpoint(FIXTURES / "devnet_head_checkpoint.pt")
    assert load_config(None, base=devnet["config"]).method == "devnet"
    assert all(key.startswith("head.") for key in devnet["model"])

    for path in sorted(FIXTURES.glob("results_*.json")):
        (record,) = load_results(path)
        assert record["schema_version"] == 1 < SCHEMA_VERSION
        assert record["notes"] == [] and record["classes"] is None and record["metrics"]["standard"]["mean"]
        load_config(None, base=record["config"])  # the config of a version-1 file validates today


def test_new_checkpoints_carry_a_checksum_that_catches_damage(tmp_path):
    from mambaad_lib.engine.checkpoint import FORMAT_VERSION, save_checkpoint

    path = save_checkpoint(tmp_path / "c.pt", method="x", model={"w": torch.arange(64, dtype=torch.float32)})
    assert load_checkpoint(path)["format_version"] == FORMAT_VERSION
    data = bytearray(path.read_bytes())
    offset = data.find(np.arange(64, dtype=np.float32).tobytes()[8:16])
    assert offset > 0
    data[offset] ^= 0x40  # one flipped bit inside the tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path)


# ---- installed without the checkout -------------------------------------------------------------------


@pytest.mark.slow
def test_a_non_editable_install_runs_the_smoke_profile_anywhere(tmp_path):
    """A plain `pip install .` (package data: profiles and the paper's tables) then
    `mambaad synth` and `mambaad train --profile smoke` from an empty folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch and the other dependencies come from this environment (a plain path: its
    # editable-install hook is not run, so only the installed copy of the package is found)
    Path(site, "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    target = tmp_path / "wheelhouse"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(target), str(ROOT)], check=True, capture_output=True)
    wheel = next(target.glob("mambaad_companion-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": ""}
    script = ("import mambaad_lib, sys; from mambaad_lib.cli import main; "
              "assert 'elsewhere' not in mambaad_lib.__file__ and 'site-packages' in mambaad_lib.__file__, "
              "mambaad_lib.__file__; sys.exit(main(sys.argv[1:]))")
    for command in (["synth", "--profile", "smoke", "-q"],
                    ["train", "--profile", "smoke", "-q", "--epochs", "1", "--run-id", "installed"]):
        completed = subprocess.run([str(python), "-c", script, *command], cwd=work, env=env, capture_output=True,
                                   text=True, timeout=600)
        assert completed.returncode == 0, completed.stderr[-3000:]
    assert (work / "results" / "smoke" / "smoke" / "installed.json").is_file()
    completed = subprocess.run([str(python), "-c", script, "reproduce", "--build-only"], cwd=work, env=env,
                               capture_output=True, text=True)
    assert completed.returncode != 0 and "needs the source checkout" in completed.stderr
