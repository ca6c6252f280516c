"""Calibration: thresholds from held-out normal images, what they promise on unseen normal
images of the synthetic benchmark, results entries, overlays on the calibrated colour scale."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mambaad_lib import Predictor
from mambaad_lib.data import AnomalyDataset
from mambaad_lib.data.subsets import dataset_items
from mambaad_lib.data.synthetic import make_synthetic_dataset
from mambaad_lib.engine import runner
from mambaad_lib.engine.calibration import (
    Calibration, calibrate, decisions_at, f1_optimal_threshold, hold_out, read_calibration, store_calibration)
from mambaad_lib.engine.checkpoint import load_checkpoint
from mambaad_lib.engine.config import load_config
from mambaad_lib.engine.predict import predict
from mambaad_lib.utils.errors import ConfigError

QUANTILE = 0.9
N_TRAIN, USED = 120, 60  # normals generated per class / used by the run (half of them held out)


# ---- the arithmetic ----------------------------------------------------------------------------


def test_normalised_score_puts_threshold_at_half_and_median_at_a_tenth():
    calibration = Calibration(0.99, image_threshold=2.0, image_median=1.0, pixel_threshold=0.5, pixel_median=0.25,
                              n_images=10, source="test")
    assert calibration.normalize_score(2.0) == pytest.approx(0.5)
    assert calibration.normalize_score(1.0) == pytest.approx(0.1)
    assert calibration.normalize_score(3.0) == pytest.approx(0.9)
    values = calibration.normalize_map(np.array([[0.25, 0.5], [np.nan, 100.0]]))
    assert values.dtype == np.float32 and np.isnan(values[1, 0])
    assert values[0, 0] == pytest.approx(0.1) and values[0, 1] == pytest.approx(0.5) and values[1, 1] == 1.0
    assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_calibrate_takes_quantiles_of_scores_and_map_maxima():
    maps = torch.arange(10 * 16, dtype=torch.float32).reshape(10, 1, 4, 4) / 100  # map maxima 0.15, 0.31, ...
    scores = torch.linspace(0, 1, 10)
    calibration = calibrate([(maps[:6], scores[:6]), (maps[6:], scores[6:])], quantile=0.5, source="ten")
    assert calibration.image_threshold == pytest.approx(float(np.quantile(scores.numpy(), 0.5)))
    maxima = maps.reshape(10, -1).amax(1).numpy()
    assert calibration.pixel_threshold == pytest.approx(float(np.quantile(maxima, 0.5)))
    assert calibration.pixel_median == pytest.approx(float(np.median(maps.numpy())))
    assert calibration.n_images == 10 and calibration.source == "ten"
    with pytest.raises(ConfigError, match="quantile must be in"):
        calibrate([(maps, scores)], quantile=1.0)
    with pytest.raises(ValueError, match="at least one normal image"):
        calibrate([], quantile=0.5)


def test_f1_optimal_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 30)
        scores = np.round(rng.normal(labels, 1.0), 1)  # ties included
        found = f1_optimal_threshold(scores, labels)
        best = max(decisions_at(scores, labels, t)["f1"] or 0.0 for t in np.r_[scores, scores.min() - 1])
        assert found["f1"] == pytest.approx(best)
        assert decisions_at(scores, labels, found["threshold"])["f1"] == pytest.approx(best)
    assert f1_optimal_threshold(np.ones(4), np.zeros(4)) is None


def test_hold_out_takes_a_share_of_every_class(tmp_path):
    make_synthetic_dataset(tmp_path, name="tiny", image_size=32, n_train=5, n_test=2, classes=["brick", "coin"])
    train = AnomalyDataset(tmp_path, "tiny", "train")
    kept, held = hold_out(train, 0.2, seed=3)
    held_items = dataset_items(held)
    assert len(held) == 2 and sorted(item["cls_name"] for item in held_items) == ["brick", "coin"]
    assert len(kept) == 8 and not {i["img_path"] for i in held_items} & {i["img_path"] for i in dataset_items(kept)}
    assert dataset_items(hold_out(train, 0.2, seed=3)[1]) == held_items  # the seed decides
    assert len(hold_out(train, 0.9, seed=3)[0]) == 2  # at least one image per class stays for training
    single = hold_out(train, 0.8, seed=0)[0]  # one image per class left
    with pytest.raises(ConfigError, match="class 'brick' has 1 training image"):
        hold_out(single, 0.5, seed=0)


def test_calibration_keys_are_checked():
    with pytest.raises(ConfigError, match="train.calibration_dir.*both choose calibration images"):
        load_config("smoke", {"train.calibration_share": 0.1, "train.calibration_dir": "normal/"})
    with pytest.raises(ConfigError, match="train.calibration_share.*must be in \\[0, 1\\)"):
        load_config("smoke", {"train.calibration_share": 1.0})
    with pytest.raises(ConfigError, match="train.calibration_quantile"):
        load_config("smoke", {"train.calibration_quantile": 0})


def test_stored_calibration_survives_a_rewrite_of_the_checkpoint(tmp_path):
    from mambaad_lib.engine.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "final.pt", method="mambaad", config={"method": "mambaad"},
                           model={"w": torch.ones(2)})
    assert read_calibration(load_checkpoint(path)) is None
    calibration = Calibration(0.9, 1.0, 0.5, 1.0, 0.2, 4, "four")
    store_calibration(path, calibration)
    content = load_checkpoint(path)  # the checksum still verifies
    assert read_calibration(content) == calibration and torch.equal(content["model"]["w"], torch.ones(2))
    with pytest.raises(ValueError, match="holds weights only"):
        store_calibration(save_checkpoint(tmp_path / "bare.pt", model={"w": torch.ones(2)}), calibration)


# ---- on the synthetic benchmark ----------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """The nearest-neighbour baseline on 64 px "brick": 60 normals, half held out for calibration
    at the 0.9 quantile; 60 more normals never seen by the run."""
    root = tmp_path_factory.mktemp("calibration")
    make_synthetic_dataset(root / "data", name="many", image_size=64, n_train=N_TRAIN, n_test=20, classes=["brick"])
    config = load_config("smoke", {
        "method": "nearest_neighbor", "data.root": str(root / "data"), "data.name": "many",
        "data.classes": ["brick"], "data.train_per_class": USED, "train.calibration_share": 0.5,
        "train.calibration_quantile": QUANTILE, "paths.results_dir": str(root / "results"),
        "paths.runs_dir": str(root / "runs"), "eval.num_examples": 0})
    outcome = runner.train(config, run_id="calibrated", progress=False)
    unseen = [Path(config.data.root) / item["img_path"]
              for item in dataset_items(AnomalyDataset(config.data.root, "many", "train"))[USED:]]
    return outcome, unseen, root


@pytest.mark.slow
def test_stored_threshold_keeps_unseen_normals_normal_at_the_quantile(calibrated_run):
    outcome, unseen, _ = calibrated_run
    predictor = Predictor.from_checkpoint(outcome.run_dir, cls="brick")
    assert predictor.calibration.n_images == USED // 2 and predictor.calibration.quantile == QUANTILE
    normal = np.mean([not p.is_anomalous for p in predictor.predict(unseen)])
    assert 0.75 <= normal  # about 0.9 of normal images stay below the 0.9 quantile
    # Recalibrated at the median on half of the unseen normals, about half of the rest pass.
    predictor.calibrate(unseen[:30], quantile=0.5)
    assert 0.3 <= np.mean([not p.is_anomalous for p in predictor.predict(unseen[30:])]) <= 0.7


@pytest.mark.slow
def test_results_record_the_hold_out_and_the_thresholds(calibrated_run):
    outcome, _, _ = calibrated_run
    record = json.loads((outcome.run_dir / "brick" / "results.json").read_text())
    assert record["data"]["n_calibration"] == USED // 2 and record["data"]["n_train"] == USED // 2
    assert outcome.record["data"]["n_calibration"] == USED // 2
    thresholds = outcome.record["classes"]["brick"]["thresholds"]
    stored = read_calibration(load_checkpoint(outcome.run_dir / "brick" / "final.pt"))
    assert thresholds["calibration"] == stored.to_dict()
    assert thresholds["at_calibrated_threshold"]["threshold"] == stored.image_threshold
    # The F1-optimal threshold's F1 is the class's image F1-max (one class: the same images).
    assert math.isclose(thresholds["f1_optimal"]["f1"], record["metrics"]["standard"]["mean"]["i_f1max"], abs_tol=1e-9)
    evaluated = runner.evaluate(load_config(None, base=record["config"]), outcome.run_dir, run_id="again",
                                progress=False)
    assert evaluated.record["classes"]["brick"]["thresholds"] == thresholds


def _overlay_colours(out: Path, row: dict, image_path: Path) -> np.ndarray:
    """The heat colours blended into an overlay (alpha 0.5), recovered from the PNGs."""
    from PIL import Image

    overlay = np.asarray(Image.open(out / row["overlay"]), dtype=np.float32)
    image = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32)
    return np.clip(2 * overlay - image, 0, 255)


@pytest.mark.slow
def test_one_normal_image_gets_no_hot_spot_but_an_anomalous_one_does(calibrated_run):
    outcome, unseen, root = calibrated_run
    config = load_config(None, base=json.loads((outcome.run_dir / "brick" / "results.json").read_text())["config"])
    predictor = Predictor.from_checkpoint(outcome.run_dir, cls="brick")
    by_score = sorted(unseen, key=lambda path: predictor.predict(path).score)
    typical = by_score[len(by_score) // 2]  # the median unseen normal image
    test_items = dataset_items(AnomalyDataset(config.data.root, "many", "test"))
    anomalous = [Path(config.data.root) / item["img_path"] for item in test_items if item["anomaly"]]
    worst = max(anomalous, key=lambda path: predictor.predict(path).score)
    seen = {}
    for name, path in (("normal", typical), ("anomalous", worst)):
        predict(config, outcome.run_dir, [path], root / name, progress=False, cls="brick")
        row = json.loads((root / name / "scores.jsonl").read_text())
        blue = _overlay_colours(root / name, row, path)[..., 2]
        # The colour map's blue channel falls below half exactly above the pixel threshold.
        seen[name] = (row["label"], float((blue < 120).mean()), float(blue.min()))
    label, warm, lowest_blue = seen["normal"]
    assert label == "normal" and warm == 0.0 and lowest_blue >= 120  # one normal image alone: no hot spot
    label, warm, lowest_blue = seen["anomalous"]
    assert label == "anomalous" and warm > 0.0 and lowest_blue < 60  # reaches the red end
