"""The Predictor: the README's five lines for several methods, inputs of every kind, maps at
the image's own resolution, per-class run folders, open-set methods, and the commands
``mambaad predict`` and ``mambaad calibrate`` built on it."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mambaad_lib import Prediction, Predictor
from mambaad_lib.cli import main
from mambaad_lib.data.synthetic import make_synthetic_dataset
from mambaad_lib.engine import runner
from mambaad_lib.engine.calibration import read_calibration
from mambaad_lib.engine.checkpoint import load_checkpoint, save_checkpoint
from mambaad_lib.engine.config import load_config
from mambaad_lib.engine.images import ImageGeometry
from mambaad_lib.engine.predict import UnreadableImages, predict

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CHECKPOINT, EXAMPLE_IMAGE = "runs/smoke/<run>/final.pt", '"part.png"'


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The smoke dataset and a folder for runs."""
    root = tmp_path_factory.mktemp("predictor")
    smoke = load_config("smoke")
    make_synthetic_dataset(root / "data", name=smoke.data.name, seed=0, image_size=smoke.synthetic.image_size,
                           n_train=smoke.synthetic.n_train, n_test=smoke.synthetic.n_test,
                           classes=smoke.synthetic.classes)
    return root


def _train(root: Path, method: str, **overrides) -> runner.RunOutcome:
    """A smoke run of ``method`` holding one of the four normal images per class out for calibration."""
    config = load_config("smoke", {"method": method, "data.root": str(root / "data"),
                                   "data.name": "synthetic_smoke", "train.calibration_share": 0.25,
                                   "train.evaluate_untrained": False, "eval.num_examples": 0,
                                   "paths.results_dir": str(root / "results"), "paths.runs_dir": str(root / "runs"),
                                   **overrides})
    return runner.train(config, run_id=method, progress=False)


@pytest.fixture(scope="module")
def runs(workspace) -> dict[str, Path]:
    """Checkpoints: MambaAD (unified), GLASS and the nearest-neighbour baseline (one class each)."""
    mambaad = _train(workspace, "mambaad")
    glass = _train(workspace, "glass", **{"data.classes": ["brick"]})
    nearest = _train(workspace, "nearest_neighbor", **{"data.classes": ["brick"]})
    return {"mambaad": mambaad.run_dir / "final.pt", "glass": glass.run_dir / "brick" / "final.pt",
            "nearest_neighbor": nearest.run_dir / "brick" / "final.pt", "glass_run": glass.run_dir}


@pytest.fixture()
def odd_image(workspace, tmp_path) -> Path:
    """A test image of the smoke data saved at 100 x 80, not the model's 64 x 64."""
    source = sorted((workspace / "data" / "synthetic_smoke" / "brick" / "test").rglob("*.png"))[-1]
    path = tmp_path / "part.png"
    Image.open(source).convert("RGB").resize((100, 80), Image.BILINEAR).save(path)
    return path


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    return next(block for block in blocks if "Predictor.from_checkpoint" in block)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mambaad", "glass", "nearest_neighbor"])
def test_readme_five_lines_run_on_a_smoke_checkpoint(runs, odd_image, method, capsys):
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) == 5
    assert code.count(EXAMPLE_CHECKPOINT) == 1 and code.count(EXAMPLE_IMAGE) == 1
    code = code.replace(EXAMPLE_CHECKPOINT, str(runs[method])).replace(EXAMPLE_IMAGE, repr(str(odd_image)))
    namespace: dict = {}
    exec(compile(code, "README.md example", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, Prediction) and namespace["anomaly_map"] is result.anomaly_map
    assert result.anomaly_map.shape == (80, 100) and result.anomaly_map.dtype == np.float32
    assert np.isfinite(result.anomaly_map).all() and np.isfinite(result.score)
    assert 0.0 <= result.normalized_score <= 1.0 and isinstance(result.is_anomalous, bool)
    assert result.is_anomalous == (result.score > namespace["predictor"].calibration.image_threshold)
    assert result.anomaly_mask.shape == (80, 100) and result.source == str(odd_image)
    assert f"{result.score}" in capsys.readouterr().out


@pytest.mark.slow
def test_every_kind_of_input_gives_the_same_result(runs, odd_image):
    predictor = Predictor.from_checkpoint(runs["mambaad"], device="cpu", batch_size=2)
    from_path = predictor.predict(odd_image)
    image = Image.open(odd_image)
    results = predictor.predict([image, np.asarray(image), str(odd_image), image.convert("L")])
    assert [type(r) for r in results] == [Prediction] * 4
    for other in results[:3]:
        assert other.score == pytest.approx(from_path.score, abs=1e-6)
        np.testing.assert_allclose(other.anomaly_map, from_path.anomaly_map, atol=1e-6)
    assert results[0].source is None and results[2].source == str(odd_image)
    assert results[3].anomaly_map.shape == (80, 100)  # greyscale: replicated to three channels


@pytest.mark.slow
def test_unusable_inputs_are_named(runs, tmp_path):
    predictor = Predictor.from_checkpoint(runs["mambaad"], device="cpu")
    with pytest.raises(ValueError, match="mode RGBA with 4 channel"):
        predictor.predict(Image.new("RGBA", (64, 64)))
    with pytest.raises(ValueError, match=r"array \(64, 64, 3\) float32: expected a uint8 array"):
        predictor.predict(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="missing.png: cannot be read"):
        predictor.predict([np.zeros((64, 64, 3), dtype=np.uint8), tmp_path / "missing.png"])
    strict = Predictor.from_checkpoint(runs["mambaad"], device="cpu", resize=False)
    with pytest.raises(ValueError, match="is 70x64, the model takes 64x64"):
        strict.predict(np.zeros((64, 70, 3), dtype=np.uint8))


@pytest.mark.slow
def test_map_is_the_models_map_brought_back_to_the_image(runs, odd_image):
    predictor = Predictor.from_checkpoint(runs["mambaad"], device="cpu")
    image = Image.open(odd_image)
    same_size = image.resize((64, 64), Image.BILINEAR)
    model_maps, model_scores = predictor.method.predict(predictor.geometry.to_model(same_size)[None])
    result = predictor.predict(same_size)
    np.testing.assert_allclose(result.anomaly_map, model_maps[0, 0].numpy(), atol=1e-6)  # identity at 64 x 64
    assert result.score == pytest.approx(float(model_scores[0]))
    wide = predictor.predict(image)  # 100 x 80: the model's map resized bilinearly (crop == image size)
    resized = F.interpolate(predictor.method.predict(predictor.geometry.to_model(image)[None])[0], size=(80, 100),
                            mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(wide.anomaly_map, resized, atol=1e-5)


def test_map_outside_the_centre_crop_is_nan():
    """Resize to 96, crop 64: a 96 x 96 image keeps 16 unseen pixels on every side."""
    geometry = ImageGeometry(image_size=96, crop_size=64)
    ramp = np.tile(np.arange(64, dtype=np.float32), (64, 1))
    back = geometry.map_to_image(ramp, 96, 96)
    assert np.isnan(back[:16]).all() and np.isnan(back[:, 80:]).all() and not np.isnan(back[16:80, 16:80]).any()
    np.testing.assert_array_equal(back[16:80, 16:80], ramp)
    # Forward and back: a pattern in the image returns where it was (192 x 192 image, twice the size).
    pattern = np.zeros((192, 192), dtype=np.uint8)
    pattern[90:110, 100:130] = 255
    tensor = geometry.to_model(Image.fromarray(pattern).convert("RGB"))
    back = geometry.map_to_image(tensor[0].numpy(), 192, 192)
    bright = back > (np.nanmax(back) + np.nanmin(back)) / 2
    rows, cols = np.nonzero(bright)
    assert abs(rows.min() - 90) <= 2 and abs(rows.max() - 109) <= 2 and abs(cols.min() - 100) <= 2
    assert abs(cols.max() - 129) <= 2 and np.isnan(back[:32]).all()


@pytest.mark.slow
def test_per_class_run_folder_needs_a_class(runs):
    folder = runs["glass_run"]
    with pytest.raises(ValueError, match=r"one model per class \(brick\); choose one with cls="):
        Predictor.from_checkpoint(folder)
    with pytest.raises(ValueError, match="there is no 'coin'"):
        Predictor.from_checkpoint(folder, cls="coin")
    with pytest.raises(ValueError, match="holds one model for all its classes"):
        Predictor.from_checkpoint(runs["mambaad"], cls="brick")
    predictor = Predictor.from_checkpoint(folder, cls="brick", device="cpu")
    assert predictor.config.method == "glass" and predictor.config.data.classes == ["brick"]
    assert predictor.calibration is not None and predictor.checkpoint == runs["glass"]


@pytest.mark.slow
def test_without_calibration_decisions_are_none_and_the_hint_says_how(runs, tmp_path, odd_image):
    content = load_checkpoint(runs["mambaad"])
    plain = {key: value for key, value in content.items()
             if key not in ("format", "format_version", "checksum", "calibration")}
    path = save_checkpoint(tmp_path / "plain.pt", **plain)
    predictor = Predictor.from_checkpoint(path, device="cpu")
    result = predictor.predict(odd_image)
    assert result.normalized_score is None and result.is_anomalous is None and result.anomaly_mask is None
    assert np.isfinite(result.score)
    assert f"mambaad calibrate --checkpoint {path} --images" in predictor.calibration_hint


@pytest.mark.slow
def test_open_set_checkpoints_predict(tmp_path):
    config = load_config("smoke", {"method": "devnet", "data.root": str(tmp_path / "data"),
                                   "paths.results_dir": str(tmp_path / "results"),
                                   "paths.runs_dir": str(tmp_path / "runs"), "eval.num_examples": 0,
                                   "train.calibration_share": 0.1})
    make_synthetic_dataset(tmp_path / "data", name=config.data.name, image_size=config.synthetic.image_size,
                           n_train=config.synthetic.n_train, n_test=config.synthetic.n_test,
                           classes=config.synthetic.classes)
    outcome = runner.train(config, run_id="devnet", progress=False)
    assert outcome.record["data"]["n_calibration"] == round(0.1 * config.synthetic.n_train)
    predictor = Predictor.from_checkpoint(outcome.run_dir, cls="brick", device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    result = predictor.predict(image)
    assert result.anomaly_map.shape == (70, 90) and isinstance(result.is_anomalous, bool)


# ---- the commands -----------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_command_streams_reports_every_bad_file_and_keeps_the_rest(runs, odd_image, tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.open(odd_image).save(good)
    Image.new("RGBA", (64, 64)).save(tmp_path / "alpha.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["predict", str(odd_image), str(tmp_path / "alpha.png"), str(tmp_path / "broken.png"), str(good),
                 "--checkpoint", str(runs["mambaad"]), "--out", str(out), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2
    assert "2 of 4 images could not be used" in error and "alpha.png: image mode RGBA" in error
    assert "broken.png: cannot be read as an image" in error and str(out) in error
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [Path(row["image"]).name for row in rows] == ["part.png", "good.png"]
    assert all(row["label"] in ("normal", "anomalous") and 0 <= float(row["normalized_score"]) <= 1 for row in rows)
    lines = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [line["score"] for line in lines] == pytest.approx([float(row["score"]) for row in rows], rel=1e-5)
    assert np.load(out / rows[0]["map"]).shape == (80, 100)
    assert Image.open(out / rows[1]["overlay"]).size == (100, 80)
    with pytest.raises(UnreadableImages) as raised:  # the same through Python: every failure, the folder kept
        predict(load_config(None, base=load_checkpoint(runs["mambaad"])["config"]), runs["mambaad"],
                [tmp_path / "broken.png", good], tmp_path / "again", progress=False)
    assert [Path(path).name for path, _ in raised.value.failures] == ["broken.png"]
    assert (raised.value.out_dir / "good_map.npy").is_file()


@pytest.mark.slow
def test_calibrate_command_stores_thresholds_that_predict_then_uses(runs, workspace, tmp_path, capsys):
    content = load_checkpoint(runs["nearest_neighbor"])
    plain = {key: value for key, value in content.items()
             if key not in ("format", "format_version", "checksum", "calibration")}
    path = save_checkpoint(tmp_path / "nn.pt", **plain)
    normal = workspace / "data" / "synthetic_smoke" / "brick" / "test" / "good"
    assert main(["predict", str(normal), "--checkpoint", str(path), "--out", str(tmp_path / "before")]) == 0
    assert "no calibration is stored" in capsys.readouterr().err
    assert {row["label"] for row in csv.DictReader((tmp_path / "before" / "scores.csv").open())} == {""}
    assert main(["calibrate", "--checkpoint", str(path), "--images", str(normal), "--quantile", "0.5"]) == 0
    assert "quantile 0.5 of 2 normal images" in capsys.readouterr().out
    calibration = read_calibration(load_checkpoint(path))
    assert calibration.quantile == 0.5 and calibration.n_images == 2
    assert main(["predict", str(normal), "--checkpoint", str(path), "--out", str(tmp_path / "after")]) == 0
    rows = list(csv.DictReader((tmp_path / "after" / "scores.csv").open()))
    assert sorted(row["label"] for row in rows) == ["anomalous", "normal"]  # the median splits two images
    assert main(["calibrate", "--checkpoint", str(path), "--images", str(tmp_path / "nowhere")]) == 2
    assert "calibration folder" in capsys.readouterr().err


@pytest.mark.slow
def test_train_with_a_calibration_folder_calibrates_each_class_model_on_its_subfolder(workspace, tmp_path, capsys):
    normal = workspace / "data" / "synthetic_smoke" / "brick" / "test" / "good"
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "brick").symlink_to(normal, target_is_directory=True)
    assert main(["train", "--profile", "smoke", "--model", "nearest_neighbor", "--quiet", "--run-id", "folder",
                 "--data-root", str(workspace / "data"), "--classes", "brick", "--calibration-dir",
                 str(tmp_path / "calibration"), "--results-dir", str(tmp_path / "results"),
                 "--runs-dir", str(tmp_path / "runs"), "--set", "eval.num_examples=0"]) == 0
    record = json.loads(next((tmp_path / "results").rglob("folder.json")).read_text())
    assert record["data"]["n_calibration"] == 2 and record["data"]["n_train"] == 4  # nothing held out
    calibration = read_calibration(load_checkpoint(next((tmp_path / "runs").rglob("brick/final.pt"))))
    assert calibration.n_images == 2 and str(tmp_path / "calibration" / "brick") in calibration.source
    assert main(["train", "--profile", "smoke", "--model", "nearest_neighbor", "--quiet", "--run-id", "missing",
                 "--data-root", str(workspace / "data"), "--classes", "coin", "--calibration-dir",
                 str(tmp_path / "calibration"), "--runs-dir", str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err
    assert "calibration folder" in error and "coin" in error and "/<class>/" in error
