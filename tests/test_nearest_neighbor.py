"""Nearest-neighbour baseline: distances, reservoir memory bank, method and an engine smoke run."""
import json

import numpy as np
import pytest
import torch

from mambaad_lib.engine.config import ConfigError, TrainConfig, load_config
from mambaad_lib.utils.schema import dataclass_from_dict
from mambaad_lib.methods.base import METHODS
from mambaad_lib.methods.nearest_neighbor import NearestNeighborMethod, NearestNeighborMethodConfig
from mambaad_lib.models.nearest_neighbor import PatchMemoryBank, nearest_distances

SMALL = {"backbone": "resnet18", "encoder_weights": "none"}


def small_method(**overrides) -> NearestNeighborMethod:
    config = dataclass_from_dict(NearestNeighborMethodConfig, {**SMALL, **overrides}, prefix="model")
    return NearestNeighborMethod(config, image_size=64, device=torch.device("cpu"))


def test_nearest_distances_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(50, 6, generator=generator), torch.randn(30, 6, generator=generator)
    brute = np.sqrt(((queries.numpy()[:, None] - bank.numpy()[None]) ** 2).sum(-1)).min(axis=1)
    assert np.allclose(nearest_distances(queries, bank, chunk_size=7).numpy(), brute, atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        nearest_distances(queries, torch.zeros(0, 6))


def _stream(batch: int, seed: int, n: int = 500, capacity: int = 40) -> PatchMemoryBank:
    memory, rng = PatchMemoryBank(1), np.random.default_rng(seed)
    ids = torch.arange(n, dtype=torch.float32)[:, None]
    for start in range(0, n, batch):
        memory.add(ids[start:start + batch], capacity, rng)
    return memory


def test_reservoir_sample_is_uniform_and_batch_size_invariant():
    memory = _stream(batch=7, seed=0)
    ids = memory.bank[:, 0].long()
    assert len(memory) == 40 and int(memory.seen) == 500 and len(ids.unique()) == 40
    assert torch.equal(memory.bank, _stream(batch=64, seed=0).bank)
    counts = np.zeros(500)
    for seed in range(200):
        counts[_stream(batch=50, seed=seed).bank[:, 0].long().numpy()] += 1
    # every row is kept with probability 40/500 = 0.08; early and late rows alike
    assert abs(counts[:250].mean() / 200 - 0.08) < 0.01 and abs(counts[250:].mean() / 200 - 0.08) < 0.01


def test_training_images_score_zero_with_a_full_bank_and_state_round_trips():
    images = torch.randn(4, 3, 64, 64)
    method = small_method(max_bank_size=None)
    method.prepare([images])
    method.configure_optimization(TrainConfig(epochs=1), total_steps=1)
    assert method.training_step(images) == 0.0
    assert len(method.net.memory) == 4 * 8 * 8
    maps, scores = method.predict(images)
    new_scores = method.predict(torch.randn(2, 3, 64, 64))[1]
    # Stored patches are at distance 0 (up to cdist's matrix-product rounding); new ones are not.
    assert maps.shape == (4, 1, 64, 64) and scores.max() < 0.05 * new_scores.min()

    loaded = small_method(max_bank_size=None)
    loaded.load_state_dict(method.state_dict())
    assert torch.equal(loaded.predict(images)[1], scores)


def test_more_than_one_epoch_is_refused():
    with pytest.raises(ConfigError, match="train.epochs"):
        small_method().configure_optimization(TrainConfig(epochs=2), total_steps=2)
    with pytest.raises(ConfigError, match="max_bank_size"):
        small_method(max_bank_size=0)


@pytest.mark.slow
def test_smoke_run_writes_results_with_finite_metrics(tmp_path, monkeypatch):
    from mambaad_lib.data.synthetic import make_synthetic_dataset
    from mambaad_lib.engine import runner

    monkeypatch.setitem(METHODS, "nearest_neighbor", "mambaad_lib.methods.nearest_neighbor:NearestNeighborMethod")
    make_synthetic_dataset(tmp_path / "data", name="tiny", seed=0, image_size=64, n_train=4, n_test=8,
                           classes=["brick"])
    config = load_config(None, base={
        "experiment": "nn_smoke", "profile": "test", "method": "nearest_neighbor", "seed": 0, "device": "cpu",
        "data": {"root": str(tmp_path / "data"), "name": "tiny", "image_size": 64},
        "model": {**SMALL, "max_bank_size": 100}, "train": {"epochs": 1, "batch_size": 2},
        "eval": {"batch_size": 8, "num_examples": 0},
        "paths": {"results_dir": str(tmp_path / "results"), "runs_dir": str(tmp_path / "runs")}})
    outcome = runner.train(config, progress=False)
    record = json.loads(outcome.results_file.read_text())
    brick = record["classes"]["brick"]
    assert record["method"] == "nearest_neighbor" and brick["model"]["memory_bank"]["patches"] == 100
    mean = record["metrics"]["standard"]["mean"]
    assert all(mean[key] is not None and 0.0 <= mean[key] <= 1.0 for key in ("i_auroc", "p_auroc", "p_aupro"))
    # The checkpoint reloads (bank of a size the fresh model does not have) and predicts the same.
    method, _ = runner.load_for_inference(brick["checkpoint"], runner.for_classes(config, ["brick"]))
    assert len(method.net.memory) == 100
