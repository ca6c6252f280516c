"""GLASS networks, method and an engine smoke run (64x64 images, ResNet18, a few steps)."""
import copy
import json
import math

import numpy as np
import pytest
import torch

from mambaad_lib.data.subsets import dataset_items
from mambaad_lib.engine.config import ConfigError, TrainConfig, load_config
from mambaad_lib.utils.schema import dataclass_from_dict
from mambaad_lib.methods.base import METHODS
from mambaad_lib.metrics.defect_types import (
    LAS_UNLIKE_DEFECTS, group_by_las_likeness, per_defect_type_metrics)
from mambaad_lib.methods.glass import GLASSMethod, GLASSMethodConfig
from mambaad_lib.models.glass import Discriminator, focal_loss, patch_labels
from mambaad_lib.models.patch_features import PatchFeatureConfig, PatchFeatureExtractor

SMALL = {"backbone": "resnet18", "encoder_weights": "none", "discriminator_hidden": 32, "gas": {"steps": 3}}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, "glass", "mambaad_lib.methods.glass:GLASSMethod")


def small_method(**overrides) -> GLASSMethod:
    config = dataclass_from_dict(GLASSMethodConfig, {**SMALL, **overrides}, prefix="model")
    return GLASSMethod(config, image_size=64, device=torch.device("cpu"))


# ------------------------------------------------------------------------- building blocks
def test_patch_features_shapes():
    extractor = PatchFeatureExtractor(PatchFeatureConfig("resnet18", None))
    assert extractor.dim == 128 + 256
    assert extractor(torch.randn(2, 3, 64, 64)).shape == (2, 384, 8, 8)
    reduced = PatchFeatureExtractor(PatchFeatureConfig("resnet18", None, embed_dim=64))
    assert reduced(torch.randn(1, 3, 64, 64)).shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="backbone"):
        PatchFeatureConfig("vgg16", None)


def test_discriminator_focal_loss_and_patch_labels():
    probabilities = Discriminator(8, hidden=4).eval()(torch.randn(5, 8))
    assert probabilities.shape == (5, 1) and ((probabilities > 0) & (probabilities < 1)).all()
    p, target = torch.tensor([0.9, 0.2]), torch.tensor([1.0, 1.0])
    expected = -((0.1 ** 2) * math.log(0.9) + (0.8 ** 2) * math.log(0.2)) / 2
    assert math.isclose(focal_loss(p, target, gamma=2.0).item(), expected, rel_tol=1e-5)
    masks = torch.zeros(1, 1, 16, 16)
    masks[..., :8, :8] = 1.0  # top-left patch of a 2x2 grid fully defective
    masks[..., 8:11, 8:16] = 1.0  # bottom-right patch 3/8 covered: not a defect patch
    assert patch_labels(masks, (2, 2)).flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="model.foreground"):
        dataclass_from_dict(GLASSMethodConfig, {**SMALL, "foreground": "guess"}, prefix="model")
    with pytest.raises(ValueError, match="band"):
        dataclass_from_dict(GLASSMethodConfig, {**SMALL, "gas": {"band": "cube"}}, prefix="model")
    with pytest.raises(FileNotFoundError, match="texture dir"):
        small_method(texture_dir="/nonexistent/dtd")


# ------------------------------------------------------------------------------- method
def test_training_updates_only_the_heads_and_resumes_exactly():
    images = torch.randn(4, 3, 64, 64)
    method = small_method()
    method.prepare([images])
    method.configure_optimization(TrainConfig(epochs=1), total_steps=4)
    method.train(True)
    frozen = {k: v.clone() for k, v in method.net.features.state_dict().items()}
    heads = {k: v.clone() for k, v in method.net.state_dict().items() if not k.startswith("features.")}
    loss = method.training_step(images)
    assert math.isfinite(loss)
    assert all(torch.equal(v, method.net.features.state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, method.net.state_dict()[k]) for k, v in heads.items())

    # Snapshot, take a step, restore the snapshot into a fresh method: the same step follows.
    weights = {k: v.clone() for k, v in method.state_dict().items()}
    optimization = copy.deepcopy(method.optimization_state())
    expected = method.training_step(images)
    resumed = small_method()
    resumed.configure_optimization(TrainConfig(epochs=1), total_steps=4)
    resumed.load_state_dict(weights)
    resumed.load_optimization_state(optimization)
    resumed.train(True)
    assert resumed.training_step(images) == pytest.approx(expected, rel=1e-6)

    maps, scores = method.predict(images)
    assert maps.shape == (4, 1, 64, 64) and scores.shape == (4,)
    assert torch.equal(scores, method.net.patch_scores(images).flatten(1).amax(dim=1))  # image score = max patch
    assert torch.isfinite(maps).all()


# ---------------------------------------------------------------------------- smoke run
@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from mambaad_lib.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(root, name="tiny", seed=0, image_size=64, n_train=4, n_test=8, classes=["brick", "coin"])
    return root


@pytest.mark.slow
def test_smoke_run_writes_results_with_finite_metrics(tiny_dataset, tmp_path, registered):
    from mambaad_lib.engine import runner
    from mambaad_lib.engine.evaluate import predict_dataset

    config = load_config(None, base={
        "experiment": "glass_smoke", "profile": "test", "method": "glass", "seed": 0, "device": "cpu",
        "data": {"root": str(tiny_dataset), "name": "tiny", "image_size": 64, "classes": ["brick"]},
        "model": SMALL, "train": {"epochs": 2, "batch_size": 4, "checkpoint_every": 1},
        "eval": {"batch_size": 8, "num_examples": 1},
        "paths": {"results_dir": str(tmp_path / "results"), "runs_dir": str(tmp_path / "runs")}})
    outcome = runner.train(config, progress=False)
    record = json.loads(outcome.results_file.read_text())
    assert record["method"] == "glass" and record["classes"]["brick"]["training"]["steps"] == 2
    for protocol in ("standard", "ader"):
        mean = record["metrics"][protocol]["mean"]
        assert all(mean[key] is not None and 0.0 <= mean[key] <= 1.0 for key in ("i_auroc", "p_auroc", "p_aupro"))
    assert "RANDOM ENCODER" in record["encoder"]["warning"]

    method, _ = runner.load_for_inference(outcome.record["classes"]["brick"]["checkpoint"], config)
    test = runner.build_datasets(config, splits=("test",))["test"]
    predictions = predict_dataset(method, test, batch_size=8, progress=False)
    rows = per_defect_type_metrics(predictions.scores, predictions.labels, predictions.maps, predictions.masks,
                                   predictions.class_names, [item["specie_name"] for item in dataset_items(test)])
    assert rows and all(np.isfinite(row["i_auroc"]) and np.isfinite(row["p_auroc"]) for row in rows)
    assert {row["defect_type"] for row in rows if not row["las_like"]} <= set(LAS_UNLIKE_DEFECTS)
    assert len(group_by_las_likeness(rows)) >= 1


def test_per_defect_metrics_on_known_scores():
    # Two classes; "scratch" is perfectly separated, "stain" perfectly inverted.
    names = ["a"] * 4 + ["b"] * 3
    species = ["good", "good", "scratch", "stain", "good", "scratch", "stain"]
    labels = np.array([0, 0, 1, 1, 0, 1, 1])
    scores = np.array([0.2, 0.3, 0.9, 0.1, 0.5, 0.8, 0.4])
    masks = np.zeros((7, 2, 2), bool)
    masks[[2, 3, 5, 6], 0, 0] = True
    maps = np.where(masks, 1.0, 0.0)
    maps[[3, 6]] = 1.0 - maps[[3, 6]]
    rows = {row["defect_type"]: row for row in per_defect_type_metrics(scores, labels, maps, masks, names, species)}
    assert rows["scratch"]["i_auroc"] == 1.0 and rows["stain"]["i_auroc"] == 0.0
    assert rows["scratch"]["n_classes"] == 2 and rows["scratch"]["n_images"] == 2
    assert not rows["scratch"]["las_like"] and rows["stain"]["las_like"]
    assert rows["scratch"]["p_auroc"] == 1.0 and rows["stain"]["p_auroc"] < 0.5


@pytest.mark.parametrize("profile", ["glass_smoke", "glass_demo", "nearest_neighbor_smoke",
                                     "nearest_neighbor_demo"])
def test_profiles_validate(profile, registered, monkeypatch):
    monkeypatch.setitem(METHODS, "nearest_neighbor", "mambaad_lib.methods.nearest_neighbor:NearestNeighborMethod")
    config = load_config(profile)
    assert config.method in ("glass", "nearest_neighbor") and config.model.encoder_weights == "none"
