"""GLASS networks, method and an engine smoke run (64x64 images, ResNet18, a few steps)."""
import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mambaad_lib.data.subsets import dataset_items
from mambaad_lib.engine.config import ConfigError, TrainConfig, load_config
from mambaad_lib.utils.schema import dataclass_from_dict
from mambaad_lib.methods.base import METHODS
from mambaad_lib.metrics.defect_types import (
    LAS_UNLIKE_DEFECTS, group_by_las_likeness, per_defect_type_metrics)
from mambaad_lib.methods.glass import GLASSMethod, GLASSMethodConfig, read_foregrounds, release_image_size
from mambaad_lib.models.glass import Discriminator, focal_loss, hardest_patches, patch_labels
from mambaad_lib.models.patch_features import PatchFeatureConfig, PatchFeatureExtractor, flatten_patches

SMALL = {"backbone": "resnet18", "encoder_weights": "none", "discriminator_hidden": 32, "gas": {"steps": 3}}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, "glass", "mambaad_lib.methods.glass:GLASSMethod")
    monkeypatch.setitem(METHODS, "glass_unified", "mambaad_lib.methods.glass:GLASSUnifiedMethod")


def small_method(**overrides) -> GLASSMethod:
    config = dataclass_from_dict(GLASSMethodConfig, {**SMALL, **overrides}, prefix="model")
    return GLASSMethod(config, image_size=64, device=torch.device("cpu"))


def prepared_method(images: torch.Tensor, epochs: int = 1, **overrides) -> GLASSMethod:
    method = small_method(**overrides)
    method.prepare([images])
    method.configure_optimization(TrainConfig(epochs=epochs), total_steps=epochs)
    method.train(True)
    return method


# ------------------------------------------------------------------------- building blocks
def test_patch_features_shapes():
    concat = PatchFeatureExtractor(PatchFeatureConfig("resnet18", None))
    assert concat.dim == 128 + 256
    assert concat(torch.randn(2, 3, 64, 64)).shape == (2, 384, 8, 8)
    reduced = PatchFeatureExtractor(PatchFeatureConfig("resnet18", None, embed_dim=64))
    assert reduced(torch.randn(1, 3, 64, 64)).shape == (1, 64, 8, 8)
    release = PatchFeatureExtractor(PatchFeatureConfig("resnet18", None, descriptor="release"))
    assert release.dim == 384 and release(torch.randn(1, 3, 64, 64)).shape == (1, 384, 8, 8)
    with pytest.raises(ValueError, match="backbone"):
        PatchFeatureConfig("vgg16", None)
    with pytest.raises(ValueError, match="descriptor"):
        PatchFeatureConfig("resnet18", None, descriptor="mean")


class _FixedMaps(torch.nn.Module):
    """Stands in for the encoder: returns given layer1..layer3 maps whatever the input."""

    def __init__(self, maps):
        super().__init__()
        self.maps = maps

    def forward(self, images):
        return self.maps


def test_release_descriptor_follows_the_release_order():
    # The release (glass.py _embed, common.py): unfold 3x3 (zero padding), upsample the
    # unfolded layer3 patches to layer2's grid, pool each C*9 vector to pre_dim, stack the
    # layers, pool to the target dim. Written out literally here, in the release's order.
    generator = torch.Generator().manual_seed(0)
    layer2, layer3 = torch.randn(2, 8, 6, 6, generator=generator), torch.randn(2, 16, 3, 3, generator=generator)
    pre_dim, target_dim = 20, 12
    vectors = []
    for feature in (layer2, layer3):
        unfolded = F.unfold(feature, 3, padding=1)  # (B, C*9, h*w), (c, dy, dx) order
        grid = feature.shape[-2:]
        unfolded = unfolded.view(2, -1, *grid)
        if grid != (6, 6):
            unfolded = F.interpolate(unfolded, size=(6, 6), mode="bilinear", align_corners=False)
        per_patch = unfolded.permute(0, 2, 3, 1).reshape(72, 1, -1)  # (B*h*w, 1, C*9)
        vectors.append(F.adaptive_avg_pool1d(per_patch, pre_dim)[:, 0])  # MeanMapper
    stacked = torch.stack(vectors, dim=1).reshape(72, 1, -1)  # Preprocessing: (N, 2, pre) -> flat
    expected = F.adaptive_avg_pool1d(stacked, target_dim)[:, 0]  # Aggregator: (N, target)

    extractor = PatchFeatureExtractor(PatchFeatureConfig("resnet18", None, descriptor="release",
                                                         embed_dim=target_dim, pre_embed_dim=pre_dim))
    extractor.encoder = _FixedMaps([None, layer2, layer3])
    got = flatten_patches(extractor(torch.zeros(2, 3, 48, 48)))
    assert got.shape == (72, target_dim)
    assert torch.allclose(got, expected, atol=1e-5)


def test_heads_are_the_release_ones():
    discriminator = Discriminator(8, hidden=4)
    assert discriminator.head.bias is None  # Linear(hidden, 1, bias=False)
    assert isinstance(discriminator.body[1], torch.nn.BatchNorm1d)
    probabilities = discriminator.eval()(torch.randn(5, 8))
    assert probabilities.shape == (5, 1) and ((probabilities > 0) & (probabilities < 1)).all()


def test_focal_loss_is_the_release_formula():
    # loss.py: two classes [1-p, p], one-hot clamped to [1e-5, 1-1e-5], p_t = sum + 1e-5.
    p, target = torch.tensor([0.9, 0.2, 0.3]), torch.tensor([1.0, 1.0, 0.0])
    smooth = 1e-5
    expected = 0.0
    for prob, label in zip(p.tolist(), target.tolist()):
        one_hot = [smooth, 1 - smooth] if label == 1 else [1 - smooth, smooth]
        p_t = one_hot[0] * (1 - prob) + one_hot[1] * prob + smooth
        expected += -((1 - p_t) ** 2) * math.log(p_t)
    assert math.isclose(focal_loss(p, target, gamma=2.0).item(), expected / 3, rel_tol=1e-5)


def test_patch_labels_mark_any_defective_pixel():
    masks = torch.zeros(1, 1, 16, 16)
    masks[..., :8, :8] = 1.0  # top-left cell fully defective
    masks[..., 15, 15] = 1.0  # one pixel of the bottom-right cell: defective too (max-pool)
    assert patch_labels(masks, (2, 2)).flatten().tolist() == [1.0, 0.0, 0.0, 1.0]


def test_hardest_patches_keep_the_half_with_the_largest_error():
    scores = torch.tensor([[0.1], [0.9], [0.6], [0.2]])
    labels = torch.tensor([[0.0], [0.0], [1.0], [1.0]])  # errors 0.01, 0.81, 0.16, 0.64
    assert hardest_patches(scores, labels, 0.5)[:, 0].tolist() == [False, True, False, True]
    assert hardest_patches(scores, labels, 0.0).all()


def test_config_validation_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.foreground"):
        dataclass_from_dict(GLASSMethodConfig, {**SMALL, "foreground": "guess"}, prefix="model")
    with pytest.raises(ConfigError, match="model.distribution"):
        dataclass_from_dict(GLASSMethodConfig, {**SMALL, "distribution": "cube"}, prefix="model")
    with pytest.raises(ConfigError, match="model.foreground_dir"):
        dataclass_from_dict(GLASSMethodConfig, {**SMALL, "foreground_dir": str(tmp_path / "none")}, prefix="model")
    with pytest.raises(ConfigError, match="model.focal_quantile"):
        dataclass_from_dict(GLASSMethodConfig, {**SMALL, "focal_quantile": 1.0}, prefix="model")
    with pytest.raises(FileNotFoundError, match="texture dir"):
        small_method(texture_dir="/nonexistent/dtd")


# ------------------------------------------------------------------------------- method
def test_optimisers_are_the_release_ones():
    method = prepared_method(torch.randn(2, 3, 64, 64))
    adaptor, discriminator = method.optimizers["adaptor"], method.optimizers["discriminator"]
    assert type(adaptor) is torch.optim.Adam and adaptor.defaults["weight_decay"] == 1e-5
    assert adaptor.defaults["lr"] == 1e-4
    assert type(discriminator) is torch.optim.AdamW and discriminator.defaults["weight_decay"] == 0.01
    assert discriminator.defaults["lr"] == 2e-4


def test_centres_are_the_training_mean_at_each_patch_position():
    images = torch.randn(6, 3, 64, 64)
    method = small_method()
    method.prepare([images[:4], images[4:]])
    method.configure_optimization(TrainConfig(epochs=1), total_steps=1)
    with torch.no_grad():
        adapted, _ = method.net.adapted(images)
    expected = adapted.view(6, 64, -1).mean(0)  # (h*w, D)
    centers = method._centers(2)
    assert centers.shape == (128, method.net.features.dim)
    assert torch.allclose(centers[:64], expected, atol=1e-4) and torch.equal(centers[:64], centers[64:])


def test_distribution_table_chooses_the_band():
    method = small_method()
    assert method.band == "manifold"  # no class known yet: distribution_default
    method.set_class_names(["bottle"])
    assert method.band == "hypersphere"
    method.set_class_names(["bottle", "carpet"])  # disagreeing classes: the default
    assert method.band == "manifold"
    method = small_method(distribution="table", distribution_default="hypersphere")
    method.set_class_names(["brick"])  # not in the release's table
    assert method.band == "hypersphere"
    method = small_method(distribution="manifold")
    method.set_class_names(["bottle"])
    assert method.band == "manifold"


def test_fit_hands_the_training_classes_to_the_band_table():
    from mambaad_lib.methods.base import TrainingData

    class Normal(torch.utils.data.Dataset):
        classes = ["bottle"]

    seen = []
    method = small_method()
    method.fit(TrainingData(normal=Normal(), labelled_anomalies=None, seed=0, batch_size=2),
               type("Loop", (), {"run": lambda self, normal: seen.append(method.band) or {}})())
    assert seen == ["hypersphere"] and method.class_names == ["bottle"]


def test_format_1_gas_band_is_read_as_the_distribution():
    config = dataclass_from_dict(GLASSMethodConfig, {**SMALL, "gas": {"steps": 3, "band": "hypersphere"}},
                                 prefix="model")
    assert config.distribution == "hypersphere"
    with pytest.raises(ValueError, match="band must be one of"):
        dataclass_from_dict(GLASSMethodConfig, {**SMALL, "gas": {"band": "cube"}}, prefix="model")


def test_feature_sets_project_gas_around_the_per_position_centres():
    # What experiments.gas_projection draws: the trained band around the training centres.
    from mambaad_lib.synthesis.gas import hypersphere_radius

    images = torch.randn(2, 3, 64, 64)
    method = prepared_method(images, distribution="hypersphere", gas={"steps": 2, "project_every": 2})
    method.training_step(images)
    sets = method.feature_sets(images, seed=0)
    assert set(sets) == {"normal", "GAS", "LAS (inside defects)"}
    assert sets["normal"].shape == sets["GAS"].shape == (2 * 64, method.net.features.dim)
    centers = method._centers(2)
    radius = hypersphere_radius(sets["normal"], centers)
    distances = (sets["GAS"] - centers).norm(dim=1)
    assert (distances >= radius * (1 - 1e-4)).all() and (distances <= 2 * radius * (1 + 1e-4)).all()


class _Recorder:
    """Records the discriminator's inputs and the LAS masks of one loss computation."""

    def __init__(self, method):
        self.inputs, self.masks = [], []
        method.net.discriminator.register_forward_hook(
            lambda module, inputs, output: self.inputs.append((module.training, inputs[0].detach().clone())))
        las = method.las

        def recording_las(*args, **kwargs):
            images, masks = las(*args, **kwargs)
            self.masks.append(masks)
            return images, masks

        method.las = recording_las


def test_training_step_passes_as_the_release():
    images = torch.randn(2, 3, 64, 64)
    method = prepared_method(images, gas={"steps": 4, "project_every": 2})
    recorder = _Recorder(method)
    method.training_step(images)
    n = 2 * 8 * 8
    # 4 ascent passes and the loss pass over [normal, GAS], then one LAS pass; all in train mode.
    assert [len(x) for _, x in recorder.inputs] == [2 * n] * 5 + [n]
    assert all(training for training, _ in recorder.inputs)
    normal = recorder.inputs[0][1][:n]
    assert all(torch.allclose(x[:n], normal) for _, x in recorder.inputs[:5])
    # Manifold band: GAS within [0.5, 1] of the normal features after the last projection.
    offsets = (recorder.inputs[4][1][n:] - normal).norm(dim=1)
    assert offsets.min() >= 0.5 - 1e-4 and offsets.max() <= 1.0 + 1e-4


def test_hypersphere_pushes_las_defects_to_2r_4r():
    images = torch.randn(2, 3, 64, 64)
    method = prepared_method(images, distribution="hypersphere", gas={"steps": 0})
    recorder = _Recorder(method)
    centers = method._centers(2)  # the step's centres (the next step refreshes them: a new epoch)
    method.training_step(images)
    n = 2 * 8 * 8
    normal, las = recorder.inputs[0][1][:n], recorder.inputs[-1][1]
    defect = patch_labels(recorder.masks[0], (8, 8))[:, 0] > 0.5
    assert defect.any() and (~defect).any()
    distances = torch.cat([las[~defect], normal]).sub(torch.cat([centers[~defect], centers])).norm(dim=1)
    radius = torch.quantile(distances, 0.75)
    pushed = (las[defect] - centers[defect]).norm(dim=1)
    assert pushed.min() >= 2 * radius - 1e-3 and pushed.max() <= 4 * radius + 1e-3


def test_foregrounds_restrict_the_las_masks_and_are_read_from_files(tmp_path):
    images = torch.randn(2, 3, 64, 64)
    method = prepared_method(images, foreground="whole")
    recorder = _Recorder(method)
    foregrounds = torch.zeros(2, 1, 64, 64)
    foregrounds[..., 16:48, 16:48] = 1.0
    method.training_step(images, foregrounds)
    masks = recorder.masks[0]
    assert masks.any() and not (masks * (1 - foregrounds)).any()

    folder = tmp_path / "fg_mask" / "bottle"
    folder.mkdir(parents=True)
    array = np.zeros((80, 80), np.uint8)
    array[20:60, 20:60] = 255
    Image.fromarray(array).save(folder / "000.png")
    read = read_foregrounds(tmp_path / "fg_mask", ["data/bottle/train/good/000.png"], ["bottle"], 64, 64)
    assert read.shape == (1, 1, 64, 64) and read[0, 0, 32, 32] == 1 and read[0, 0, 0, 0] == 0
    with pytest.raises(FileNotFoundError, match="foreground mask"):
        read_foregrounds(tmp_path / "fg_mask", ["x/001.png"], ["bottle"], 64, 64)


def test_training_updates_only_the_heads_and_resumes_exactly():
    images = torch.randn(4, 3, 64, 64)
    method = prepared_method(images, epochs=2)
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
    resumed.configure_optimization(TrainConfig(epochs=2), total_steps=2)
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


def test_smoke_training_ranks_las_defects_above_normal(tiny_dataset):
    # The inversion of the earlier version: with patch labels "more than half of the cell" most
    # defect-touched cells were taught as normal, and one discriminator pass over [normal, GAS,
    # LAS] (ascent in eval mode) searched GAS on another function than the trained one; the
    # trained discriminator scored LAS defects *below* normal patches (0.05 vs 0.41 here). The
    # release's any-pixel labels and separate passes (methods/glass.py docstring) fix it.
    from mambaad_lib.data import AnomalyDataset

    train = AnomalyDataset(tiny_dataset, "tiny", "train", classes=["brick"], image_size=64, crop_size=64)
    images = torch.stack([train[i]["image"] for i in range(len(train))])  # (4, 3, 64, 64)
    torch.manual_seed(0)
    method = prepared_method(images, epochs=20)
    for _ in range(20):
        method.training_step(images)
    las_images, masks = method.las(images, np.random.default_rng(100), None)  # fresh LAS, whole images
    method.train(False)
    las_scores, normal_scores = method.net.patch_scores(las_images), method.net.patch_scores(images)
    defect = F.adaptive_max_pool2d(masks, las_scores.shape[-2:])[:, 0] > 0.5  # cells with a defect pixel
    assert defect.any()
    assert las_scores[defect].mean() > normal_scores.mean()


@pytest.mark.slow
@pytest.mark.parametrize("method_name, classes", [("glass", ["brick"]), ("glass_unified", ["brick", "coin"])],
                         ids=["per_class", "unified"])
def test_smoke_run_writes_results_with_finite_metrics(tiny_dataset, tmp_path, registered, method_name, classes):
    from mambaad_lib.engine import runner
    from mambaad_lib.engine.evaluate import predict_dataset

    config = load_config(None, base={
        "experiment": "glass_smoke", "profile": "test", "method": method_name, "seed": 0, "device": "cpu",
        "data": {"root": str(tiny_dataset), "name": "tiny", "image_size": 64, "classes": classes},
        "model": SMALL, "train": {"epochs": 2, "batch_size": 4, "checkpoint_every": 1},
        "eval": {"batch_size": 8, "num_examples": 1},
        "paths": {"results_dir": str(tmp_path / "results"), "runs_dir": str(tmp_path / "runs")}})
    outcome = runner.train(config, progress=False)
    record = json.loads(outcome.results_file.read_text())
    assert record["method"] == method_name
    if method_name == "glass":  # per class: one model, checkpoint and record per class, one summary
        assert record["classes"]["brick"]["training"]["steps"] == 2
        checkpoint = outcome.record["classes"]["brick"]["checkpoint"]
    else:  # our unified extension: one model for all classes
        assert record["training"]["steps"] == 2 * len(classes)
        checkpoint = record["training"]["checkpoint"]
    for protocol in ("standard", "ader"):
        mean = record["metrics"][protocol]["mean"]
        assert all(mean[key] is not None and 0.0 <= mean[key] <= 1.0 for key in ("i_auroc", "p_auroc", "p_aupro"))
    assert "RANDOM ENCODER" in record["encoder"]["warning"]

    method, _ = runner.load_for_inference(checkpoint, config)
    test = runner.build_datasets(config, splits=("test",))["test"]
    predictions = predict_dataset(method, test, batch_size=8, progress=False)
    rows = per_defect_type_metrics(predictions.scores, predictions.labels, predictions.maps, predictions.masks,
                                   predictions.class_names, [item["specie_name"] for item in dataset_items(test)])
    assert rows and all(np.isfinite(row["i_auroc"]) and np.isfinite(row["p_auroc"]) for row in rows)
    assert {row["defect_type"] for row in rows if not row["las_like"]} <= set(LAS_UNLIKE_DEFECTS)

    from mambaad_lib.experiments import discriminator_contrast

    (row,) = discriminator_contrast(outcome.results_file)  # one model: brick's, or the unified one
    assert row["defect_patches"] > 0 and 0 <= row["defect_mean"] <= 1 and 0 <= row["other_mean"] <= 1
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


@pytest.mark.parametrize("profile", ["glass_smoke", "glass_demo", "glass_paper", "nearest_neighbor_smoke",
                                     "nearest_neighbor_demo"])
def test_profiles_validate(profile, registered, monkeypatch):
    monkeypatch.setitem(METHODS, "nearest_neighbor", "mambaad_lib.methods.nearest_neighbor:NearestNeighborMethod")
    config = load_config(profile)
    assert config.method in ("glass", "nearest_neighbor")
    if profile == "glass_paper":  # the release's setting
        assert config.model.encoder_weights == "imagenet" and config.model.backbone == "wide_resnet50_2"
        assert config.data.image_size == config.data.crop_size == 288 and config.train.epochs == 640
        assert config.train.batch_size == 8 and config.model.descriptor == "release"
        assert [release_image_size(name) for name in ("wood", "toothbrush", "bottle")] == [329, 329, 288]
    else:
        assert config.model.encoder_weights == "none"
