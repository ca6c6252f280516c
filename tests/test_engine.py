"""Engine: atomic files, seeding, smoke training, exact resumption, bad input, predict."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image

from mambaad_lib.engine import runner
from mambaad_lib.engine.checkpoint import FINAL, LAST, load_checkpoint, save_checkpoint
from mambaad_lib.engine.config import load_config
from mambaad_lib.engine.convergence import convergence
from mambaad_lib.engine.predict import predict
from mambaad_lib.utils.files import _DEFAULT_MODE, atomic_write, atomic_write_json, ensure_writable_dir
from mambaad_lib.engine.results import load_results, results_table, upgrade_record
from mambaad_lib.engine.seeding import epoch_permutation
from mambaad_lib.engine.trainer import TrainingInterrupted, training_batches
from mambaad_lib.methods import get_method
from mambaad_lib.models.encoders import file_sha256
from mambaad_lib.metrics import METRIC_KEYS


def smoke_config(root: Path, tmp_path: Path, **overrides):
    values = {"data.root": str(root), "paths.results_dir": str(tmp_path / "results"),
              "paths.runs_dir": str(tmp_path / "runs"), **overrides}
    return load_config("smoke", values)


@pytest.fixture(scope="module")
def smoke_run(smoke_root, tmp_path_factory):
    """One complete smoke training run (train + untrained and trained evaluation)."""
    tmp_path = tmp_path_factory.mktemp("smoke_run")
    return runner.train(smoke_config(smoke_root, tmp_path), run_id="smoke", progress=False), tmp_path


# ---- files and seeding ----------------------------------------------------------------


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"a": 1, "bad": float("nan")})
    assert json.loads(target.read_text()) == {"a": 1, "bad": None}

    def failing(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert json.loads(target.read_text()) == {"a": 1, "bad": None}
    assert [path.name for path in tmp_path.iterdir()] == ["result.json"]  # no temp file left
    assert target.stat().st_mode & 0o777 == _DEFAULT_MODE  # as open() would make it, not a temp file's 0600


def test_unwritable_folder_is_reported(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="results folder .*a_file/sub.* is not writable"):
        ensure_writable_dir(blocker / "sub", "results")


def test_plateau_rule_reads_the_last_tenth_of_the_loss_curve():
    falling = [1.0, 0.8, 0.6, 0.5, 0.45, 0.40, 0.36, 0.33, 0.30, 0.27, 0.25, 0.23, 0.21, 0.19, 0.17, 0.16, 0.15, 0.14,
               0.13, 0.12]
    verdict = convergence(falling)
    assert verdict["tail_epochs"] == 2 and verdict["late_improvement"] == pytest.approx((0.14 - 0.12) / 0.14)
    assert verdict["plateaued"] is False
    # a drop at 80% of the epochs (the release's learning-rate step) outside the last tenth does not count
    stepped = falling[:16] + [0.13, 0.1205, 0.1200, 0.1195]
    assert convergence(stepped)["plateaued"] is True
    assert convergence(falling[:9])["plateaued"] is None and convergence([]) is None


def test_data_order_depends_only_on_seed_and_epoch():
    assert epoch_permutation(10, 3, 1) == epoch_permutation(10, 3, 1)
    assert epoch_permutation(10, 3, 1) != epoch_permutation(10, 3, 2)
    assert sorted(epoch_permutation(10, 3, 1)) == list(range(10))
    batches = training_batches(10, 4, seed=0, epoch=0)
    assert [len(batch) for batch in batches] == [4, 4]  # partial batch of 2 dropped
    assert [len(batch) for batch in training_batches(3, 4, seed=0, epoch=0)] == [3]


# ---- smoke run and results ------------------------------------------------------------


def test_smoke_run_writes_complete_results(smoke_run):
    outcome, tmp_path = smoke_run
    path = tmp_path / "results" / "smoke" / "smoke" / "smoke.json"
    assert outcome.results_file == path and path.is_file()
    record = json.loads(path.read_text())
    assert record["schema_version"] == 2 and record["kind"] == "train"
    assert record["scan_backend"] in ("cpu", "reference", "chunked") and record["device"] == "cpu"
    assert record["environment"]["torch"] == torch.__version__
    assert "RANDOM ENCODER" in record["encoder"]["warning"] and record["encoder"]["batchnorm_reestimated_on"] == 8
    assert record["encoder"]["weights"]["choice"] == "none" and record["encoder"]["weights"]["sha256"] is None
    for key in ("metrics", "metrics_untrained"):
        for protocol in ("standard", "ader"):
            block = record[key][protocol]
            assert {row["cls_name"] for row in block["per_class"]} == {"brick", "coin"}
            values = [block["mean"][name] for name in METRIC_KEYS]
            values += [row[name] for row in block["per_class"] for name in METRIC_KEYS]
            assert all(value is not None and math.isfinite(value) and 0 <= value <= 1 for value in values)
    assert record["training"]["steps"] == 4 and len(record["training"]["epoch_losses"]) == 2
    assert record["training"]["convergence"]["plateaued"] is None  # two epochs: too few for a verdict
    assert record["model"]["parameters"]["trainable"] > 0 and record["model"]["flops"]["total"] > 0
    assert record["evaluation"]["n_images"] == 8 and record["evaluation"]["images_per_s"] > 0
    assert record["examples"] and all((path.parent / name).is_file() for name in record["examples"])
    checkpoint = load_checkpoint(tmp_path / "runs" / "smoke" / "smoke" / FINAL)
    assert checkpoint["finished"] and checkpoint["method"] == "mambaad"


def test_results_folder_loads_into_a_table(smoke_run):
    _, tmp_path = smoke_run
    records = load_results(tmp_path / "results")
    assert [record["run_id"] for record in records] == ["smoke"]
    rows = results_table(tmp_path / "results", protocol="ader", per_class=True)
    assert [row["cls_name"] for row in rows] == ["brick", "coin"]
    untrained = results_table(records, untrained=True)
    assert untrained[0]["p_auroc"] == records[0]["metrics_untrained"]["standard"]["mean"]["p_auroc"]


def test_evaluate_checkpoint_reproduces_training_metrics(smoke_run, smoke_root):
    outcome, tmp_path = smoke_run
    config = smoke_config(smoke_root, tmp_path)
    again = runner.evaluate(config, outcome.run_dir / FINAL, run_id="re-eval", progress=False)
    assert again.record["kind"] == "evaluate"
    assert again.record["metrics"] == outcome.record["metrics"]


def test_results_record_the_encoder_weights_file_and_its_sha256(smoke_root, tmp_path):
    """A local weights file is recorded by name and SHA-256 in the results file and survives
    into the record of an evaluation of the checkpoint (whose encoder came from the file)."""
    config = load_config("smoke")
    weights = tmp_path / "encoder.pth"
    torch.manual_seed(3)
    torch.save(getattr(torchvision.models, config.model.backbone)(weights=None).state_dict(), weights)
    trained = runner.train(smoke_config(smoke_root, tmp_path, **{"model.encoder_weights": str(weights),
                                                                 "train.epochs": 1}), run_id="file", progress=False)
    recorded = trained.record["encoder"]["weights"]
    assert recorded["choice"] == "file" and recorded["sha256"] == file_sha256(weights)
    assert recorded["source"].endswith(str(weights.resolve()))
    again = runner.evaluate(smoke_config(smoke_root, tmp_path, **{"model.encoder_weights": str(weights)}),
                            trained.run_dir / FINAL, run_id="file-eval", progress=False)
    assert again.record["encoder"]["weights"] == recorded


def test_records_from_before_the_weights_field_say_what_imagenet_meant(tmp_path):
    """Results written before encoder weights were recorded: 'imagenet' meant torchvision's
    IMAGENET1K_V1 file then, 'none' a random encoder."""
    def stored(setting):
        return {"encoder": {"encoder_weights": setting}, "config": {"model": {"encoder_weights": setting}}}
    assert upgrade_record(stored("imagenet"))["encoder"]["weights"]["choice"] == "torchvision"
    assert upgrade_record(stored("none"))["encoder"]["weights"]["choice"] == "none"
    kept = {"choice": "imagenet", "sha256": "ab"}
    assert upgrade_record({**stored("imagenet"), "encoder": {"weights": kept}})["encoder"]["weights"] == kept


# ---- exact resumption -----------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_interrupt_equals_uninterrupted_run(smoke_root, tmp_path):
    config = smoke_config(smoke_root, tmp_path, **{"train.evaluate_untrained": False, "eval.num_examples": 0})
    runner.train(config, run_id="straight", progress=False)

    def stop_after_three_steps(trainer):  # epoch 2, step 1 of 2: the middle of an epoch
        if trainer.state.global_step == 3:
            trainer.stop_requested = True

    with pytest.raises(TrainingInterrupted) as interrupted:
        runner.train(config, run_id="broken", progress=False, callbacks=[stop_after_three_steps])
    assert interrupted.value.checkpoint == tmp_path / "runs" / "smoke" / "broken" / LAST
    assert not (tmp_path / "results" / "smoke" / "smoke" / "broken.json").exists()
    assert load_checkpoint(interrupted.value.checkpoint)["progress"]["global_step"] == 3

    resumed = runner.train(config, resume="broken", progress=False)
    assert resumed.record["training"]["resumed_from"].endswith(LAST)
    straight = load_checkpoint(tmp_path / "runs" / "smoke" / "straight" / FINAL)
    finished = load_checkpoint(tmp_path / "runs" / "smoke" / "broken" / FINAL)
    assert straight["model"].keys() == finished["model"].keys()
    for key, tensor in straight["model"].items():
        assert torch.equal(tensor, finished["model"][key]), key
    assert straight["progress"]["epoch_losses"] == finished["progress"]["epoch_losses"]


def test_resume_refuses_a_changed_config(smoke_root, tmp_path):
    config = smoke_config(smoke_root, tmp_path)
    run_dir = tmp_path / "runs" / "smoke" / "old"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**_plain(config), "seed": 99}))
    save_checkpoint(run_dir / LAST, method="mambaad", config={**_plain(config), "seed": 99}, model={},
                    optimization={}, rng={}, progress={}, extras={}, finished=False)
    with pytest.raises(ValueError, match="seed: stored 99 vs now 0"):
        runner.train(config, resume="old", progress=False)


def _plain(config):
    from mambaad_lib.engine.config import config_to_dict

    return config_to_dict(config)


# ---- bad input ------------------------------------------------------------------------


def test_dataset_without_meta_fails_before_writing(tmp_path):
    config = smoke_config(tmp_path / "empty", tmp_path)
    with pytest.raises(FileNotFoundError, match="no meta file .*meta_synthetic_smoke.json.*mambaad synth"):
        runner.train(config, progress=False)
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_unwritable_results_folder_fails_before_training(smoke_root, tmp_path):
    (tmp_path / "blocker").write_text("a file where the results folder should be")
    config = smoke_config(smoke_root, tmp_path, **{"paths.results_dir": str(tmp_path / "blocker" / "results")})
    with pytest.raises(PermissionError, match="results .*not writable"):
        runner.train(config, progress=False)
    assert not (tmp_path / "runs").exists()


def test_checkpoint_of_another_architecture_lists_keys(smoke_root, tmp_path):
    config = smoke_config(smoke_root, tmp_path)
    small = get_method("mambaad", config.model, 64, "cpu", pretrained=False)
    path = tmp_path / "small.pt"
    save_checkpoint(path, method="mambaad", config=_plain(config), model=small.state_dict())
    other = smoke_config(smoke_root, tmp_path, **{"model.depths": [2, 1, 1, 1], "model.local_kernels": [5]})
    with pytest.raises(ValueError) as error:
        runner.evaluate(other, path, run_id="mismatch", progress=False)
    message = str(error.value)
    assert "does not match the model" in message and "missing keys" in message
    assert "shape mismatches" in message and "local" in message
    assert not (tmp_path / "results" / "smoke" / "smoke" / "mismatch.json").exists()


def test_imagenet_without_network_points_to_a_local_file(smoke_root, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    config = smoke_config(smoke_root, tmp_path, **{"model.encoder_weights": "imagenet"})
    with pytest.raises(RuntimeError, match="--encoder-weights /path/to/weights.pth"):
        get_method("mambaad", config.model, 64, "cpu")
    # Through the engine: refused before the run folder or the results file exists.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    with pytest.raises(RuntimeError, match="encoder_weights='/path/to/resnet18-5c106cde.pth'"):
        runner.train(config, run_id="offline", progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("offline"))
    assert not any((tmp_path / "results").rglob("offline*"))


# ---- predict --------------------------------------------------------------------------


def _write_image(path: Path, mode: str, size: int) -> Path:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = np.random.default_rng(0).integers(0, 255, (size, size, channels), dtype=np.uint8)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode=mode).save(path)
    return path


def test_predict_writes_maps_overlays_and_scores(smoke_run, smoke_root, tmp_path):
    outcome, _ = smoke_run
    config = load_config(None, base=load_checkpoint(outcome.run_dir / FINAL)["config"])
    images = tmp_path / "mine"
    images.mkdir()
    _write_image(images / "a.png", "RGB", 100)
    _write_image(images / "b.png", "L", 64)
    csv_path = predict(config, outcome.run_dir / FINAL, [images], tmp_path / "out", progress=False)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "image,score,normalized_score,label,map,overlay" and len(lines) == 3
    assert np.load(tmp_path / "out" / "a_map.npy").shape == (100, 100)  # the image's own resolution
    assert Image.open(tmp_path / "out" / "b_overlay.png").size == (64, 64)


@pytest.mark.parametrize("mode, size, resize, message", [
    ("RGBA", 64, True, "mode RGBA with 4 channel"),
    ("RGB", 100, False, "is 100x100, the model takes 64x64"),
])
def test_predict_reports_bad_images_and_keeps_the_good_ones(smoke_run, tmp_path, mode, size, resize, message):
    outcome, _ = smoke_run
    config = load_config(None, base=load_checkpoint(outcome.run_dir / FINAL)["config"])
    good = _write_image(tmp_path / "good.png", "RGB", 64)
    bad = _write_image(tmp_path / "bad.png", mode, size)
    with pytest.raises(ValueError, match=message):
        predict(config, outcome.run_dir / FINAL, [good, bad], tmp_path / "out", resize=resize,
                       progress=False)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "good_map.npy", "good_overlay.png", "scores.csv", "scores.jsonl"]


@pytest.mark.slow
def test_evaluation_schedule_records_every_evaluation_and_leaves_training_alone(smoke_root, tmp_path):
    """eval.every_epochs evaluates between epochs (as the release does) without changing the
    trained model; the headline is the final model, the best-over-evaluations column is labelled."""
    base = {"train.epochs": 3, "train.evaluate_untrained": False, "eval.num_examples": 0}
    plain = runner.train(smoke_config(smoke_root, tmp_path, **base), run_id="plain", progress=False)
    scheduled = runner.train(smoke_config(smoke_root, tmp_path, **base, **{"eval.every_epochs": 1}),
                             run_id="scheduled", progress=False)
    record = scheduled.record
    assert [entry["epoch"] for entry in record["evaluations"]] == [1, 2, 3]
    assert record["evaluations"][-1]["final"] and record["evaluations"][-1]["metrics"] == record["metrics"]
    assert record["metrics"] == plain.record["metrics"]  # evaluating in between changed nothing
    assert record["training"]["epoch_losses"] == plain.record["training"]["epoch_losses"]
    best = record["best_over_evaluations"]
    assert "selected on the test set" in best["label"]
    for key, entry in best["standard"]["mean"].items():
        values = [e["metrics"]["standard"]["mean"][key] for e in record["evaluations"]]
        assert entry["value"] == max(v for v in values if v is not None)
        assert values[entry["epoch"] - 1] == entry["value"]
    assert plain.record["evaluations"] == [] and plain.record["best_over_evaluations"] is None


def test_per_class_runs_report_the_class_mean_curve_and_a_joint_verdict():
    from mambaad_lib.engine.runner import _class_mean_convergence

    flat = [1.0] * 18 + [0.999, 0.998]
    falling = [1.0] * 18 + [0.9, 0.8]
    merged = _class_mean_convergence([{"epoch_losses": flat}, {"epoch_losses": falling}])
    assert merged["epoch_losses"][-1] == pytest.approx((0.998 + 0.8) / 2)
    assert merged["convergence"]["plateaued"] is False
    assert merged["convergence"]["late_improvement"] == pytest.approx(convergence(falling)["late_improvement"])
    assert _class_mean_convergence([{"epoch_losses": flat}, {"epoch_losses": flat}])["convergence"]["plateaued"]
    assert _class_mean_convergence([{"epoch_losses": [0.0]}, {"epoch_losses": [0.0]}]) == {}  # no epochs: no curve
