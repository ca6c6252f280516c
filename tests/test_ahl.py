"""DevNet / DRA / AHL: deviation loss, top-k, HADG rules, CDL weights and a smoke open-set run."""
import json
import math

import numpy as np
import pytest
import torch

from mambaad_lib.models.ahl import CDLConfig, collaborative_training, paper_evaluation_set
from mambaad_lib.models.devnet import DevNetHead, DevNetConfig, deviation_loss, topk_mean
from mambaad_lib.models.dra import DRAConfig, DRAHeads
from mambaad_lib.models.hadg import HADGConfig, build_episodes, cluster_normals, episode_pairs, split_anomalies
from mambaad_lib.models.openset_features import BatchSampler, FeatureBank, SampleSet


def test_deviation_loss_matches_its_formula():
    reference = torch.tensor([-1.0, 0.0, 1.0, 2.0])          # mean 0.5, unbiased std sqrt(5/3)
    scores = torch.tensor([0.5, 3.0, 0.5, 12.0])
    targets = torch.tensor([0.0, 0.0, 1.0, 1.0])
    std = math.sqrt(5 / 3)
    dev = [(s - 0.5) / std for s in (0.5, 3.0, 0.5, 12.0)]
    expected = (abs(dev[0]) + abs(dev[1]) + max(0.0, 5 - dev[2]) + max(0.0, 5 - dev[3])) / 4
    assert float(deviation_loss(scores, targets, reference=reference)) == pytest.approx(expected, rel=1e-6)
    assert dev[3] > 5  # an anomaly beyond the margin costs nothing
    with pytest.raises(ValueError):
        deviation_loss(scores[:, None], targets[:, None])


def test_topk_mean_takes_the_largest_absolute_values():
    maps = torch.zeros(1, 1, 5, 4)
    maps[0, 0, 0, 0], maps[0, 0, 1, 1], maps[0, 0, 2, 2] = -6.0, 4.0, 1.0
    assert float(topk_mean(maps, 0.1)) == pytest.approx(5.0)   # k = floor(0.1 * 20) = 2 -> (6 + 4) / 2
    assert float(topk_mean(maps, 0.01)) == pytest.approx(6.0)  # k at least 1


def test_heads_losses_and_scores():
    torch.manual_seed(0)
    features = [torch.randn(6, 8, 4, 4), torch.randn(6, 8, 2, 2)]
    reference = [torch.randn(3, 8, 4, 4), torch.randn(3, 8, 2, 2)]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    dra = DRAHeads(DRAConfig(in_channels=8, hidden=4))
    out = dra(features, reference)
    assert set(out) == {"normal", "seen", "pseudo", "composite"} and out["seen"].shape == (6,)
    assert torch.allclose(DRAHeads.score(out), -out["normal"] + out["seen"] + out["pseudo"] + out["composite"])
    assert torch.isfinite(dra.loss(out, labels))
    devnet = DevNetHead(DevNetConfig(in_channels=8))
    assert sum(p.numel() for p in devnet.parameters()) == 9
    assert torch.isfinite(devnet.loss(devnet(features), labels))


def test_release_composite_head_is_constant():
    """The released head (BN affine at 0) gives every sample the same composite score."""
    torch.manual_seed(0)
    head = DRAHeads(DRAConfig(in_channels=8, hidden=4, composite="ahl_release"))
    out = head([torch.randn(5, 8, 6, 6)], [torch.randn(2, 8, 6, 6)])
    assert torch.allclose(out["composite"], out["composite"][0].expand(5))
    with pytest.raises(ValueError, match="at least 3x3"):
        head([torch.randn(2, 8, 2, 2)], [torch.randn(2, 8, 2, 2)])


def _two_blob_features(rng, sizes=(6, 5, 4)):
    centres = np.eye(3) * 50
    return np.concatenate([centres[c] + rng.normal(size=(n, 3)) for c, n in enumerate(sizes)])


def test_kmeans_clusters_and_small_clusters_dropped():
    rng = np.random.default_rng(0)
    features = _two_blob_features(rng)
    clusters = cluster_normals(features, 3, seed=42)
    assert sorted(map(len, clusters)) == [4, 5, 6]
    assert sorted(np.concatenate(clusters).tolist()) == list(range(15))
    tiny = np.concatenate([_two_blob_features(rng, (6, 5, 2))])
    assert sorted(map(len, cluster_normals(tiny, 3, seed=42))) == [5, 6]  # the 2-member cluster is dropped
    assert episode_pairs(3) == [(0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)]


@pytest.mark.parametrize("release_compat", [False, True])
def test_episode_composition_follows_the_documented_rules(release_compat):
    clusters = [np.array([0, 3, 5, 7, 9, 11]), np.array([1, 2, 4, 13, 14]), np.array([6, 8, 10, 12])]
    episodes = build_episodes(clusters, n_anomalies=10, config=HADGConfig(), rng=np.random.default_rng(1),
                              release_compat=release_compat)
    assert len(episodes) == 6 and [e.clusters for e in episodes] == episode_pairs(3)
    for episode in episodes:
        s, q = episode.clusters
        for part, cluster in ((episode.support, s), (episode.query, q)):
            normals = np.concatenate([part.normal, *part.pseudo.values()])
            expected = np.arange(len(clusters[cluster])) if release_compat else clusters[cluster]
            assert sorted(normals.tolist()) == sorted(expected.tolist())       # every member, once
            assert len(part.pseudo) <= 1
        support_anomalies, query_anomalies = set(episode.support.anomalies), set(episode.query.anomalies)
        assert len(support_anomalies) == 5 and support_anomalies | query_anomalies == set(range(10))
        if release_compat:
            assert len(support_anomalies & query_anomalies) == 2 and episode.generators[0] == episode.generators[1]
        else:
            assert not support_anomalies & query_anomalies and episode.generators[0] != episode.generators[1]
            assert not set(clusters[s]) & set(clusters[q])
    assert split_anomalies(1, np.random.default_rng(0), False) == (np.array([0]), np.array([0]))


def _bank(n_normal=12, n_anomalies=4, channels=8):
    torch.manual_seed(0)
    shapes = [(channels, 4, 4), (channels, 2, 2)]
    normal = [torch.randn(n_normal, *s) for s in shapes]
    pseudo = {g: [x + 2.0 for x in normal] for g in ("draem", "cutpaste", "cutmix")}
    return FeatureBank(normal, pseudo, [torch.randn(n_anomalies, *s) + 3.0 for s in shapes])


def test_batches_follow_the_per_kind_rule():
    bank = _bank()
    samples = SampleSet(np.arange(6), np.arange(4), {"cutmix": np.arange(6, 12)})
    features, labels, reference = BatchSampler(bank, samples, 4, torch.Generator().manual_seed(0), 3).sample()
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and features[1].shape == (12, 8, 2, 2)
    assert reference[0].shape == (3, 8, 4, 4)
    no_pseudo = BatchSampler(bank, SampleSet(np.arange(6), np.arange(4)), 4, torch.Generator())
    assert no_pseudo.sample()[1].tolist() == [0] * 6 + [1] * 6


def test_cdl_trains_and_weights_episodes():
    bank = _bank()
    clusters = [np.arange(0, 4), np.arange(4, 8), np.arange(8, 12)]
    episodes = build_episodes(clusters, 4, HADGConfig(), np.random.default_rng(0))
    evaluation = paper_evaluation_set(bank, episodes)
    own = np.concatenate([episodes[0].support.normal, *episodes[0].support.pseudo.values()])
    assert (evaluation.weights[0, own] == 0).all() and (evaluation.weights[0] > 0).sum() == 12 - len(own) + 4
    head = DRAHeads(DRAConfig(in_channels=8, hidden=4))
    before = {k: v.clone() for k, v in head.state_dict().items()}
    config = CDLConfig(epochs=4, inner_steps=2, query_batches=1, per_kind=2, history=1, weights_from_epoch=1)
    history = collaborative_training(head, bank, episodes, config, torch.Generator().manual_seed(0), n_reference=2)
    assert all(np.isfinite(history.epoch_losses)) and len(history.psi_losses) == 3
    assert history.episode_weights[0] == pytest.approx([1 / 6] * 6)
    assert sum(history.episode_weights[-1]) == pytest.approx(1.0) and history.episode_weights[-1] != [1 / 6] * 6
    assert any(not torch.equal(before[k], v) for k, v in head.state_dict().items())


@pytest.mark.slow
def test_smoke_ahl_run_writes_finite_metrics(tmp_path):
    """The engine's one pipeline trains an open-set method: labelled anomalies leave the test
    split, the head trains on cached features, the checkpoint reloads and predicts."""
    from mambaad_lib.data.synthetic import make_synthetic_dataset
    from mambaad_lib.engine import runner
    from mambaad_lib.engine.config import load_config
    from mambaad_lib.engine.results import load_results

    make_synthetic_dataset(tmp_path / "data", "synthetic_ahl_smoke", seed=0, image_size=64, n_train=24, n_test=20,
                           classes=["brick"])
    config = load_config("smoke", {"method": "ahl", "data.root": str(tmp_path / "data"),
                                   "paths.results_dir": str(tmp_path / "r"), "paths.runs_dir": str(tmp_path / "runs")})
    outcome = runner.train(config, progress=False)
    record = load_results(outcome.results_file)[0]
    mean = record["metrics"]["standard"]["mean"]
    assert all(math.isfinite(mean[key]) for key in ("i_auroc", "i_ap", "p_auroc"))
    labelled = set(record["openset"]["per_class"]["brick"]["labelled_paths"])
    brick = record["classes"]["brick"]
    assert len(labelled) == 2 and record["data"]["n_test"] == 18 and brick["training"]["n_episodes"] >= 2
    assert record["traits"]["learning_type"] == "open-set supervised" and record["traits"]["per_class"]
    method, _ = runner.load_for_inference(brick["checkpoint"], config)
    _, scores = method.predict(torch.zeros(2, 3, 64, 64))
    assert torch.isfinite(scores).all()


@pytest.mark.slow
def test_open_set_methods_train_from_the_command_line(tmp_path, monkeypatch):
    """`mambaad train --profile smoke --model dra` runs the open-set method through the same
    pipeline and writes a results file with finite image metrics; --resume is refused."""
    from mambaad_lib.cli import main

    monkeypatch.chdir(tmp_path)
    common = ["--profile", "smoke", "--model", "dra", "--data-root", "data", "--results-dir", "res",
              "--runs-dir", "runs", "--quiet"]
    assert main(["synth", *common]) == 0
    assert main(["train", *common, "--run-id", "dra-brick"]) == 0
    record = json.loads((tmp_path / "res" / "08_ahl" / "smoke" / "dra-brick.json").read_text())
    assert all(math.isfinite(record["metrics"]["standard"]["mean"][key]) for key in ("i_auroc", "i_ap"))
    assert main(["train", *common, "--resume", "latest"]) != 0
