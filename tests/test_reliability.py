"""Runs never overwrite each other, interruptions keep their work, failures are one clear line
(issue 21, items 2, 3, 6-9). Every run here trains the toy method of ``toy_method.py``
(about a second), several in subprocesses that the tests kill."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import toy_method
from mambaad_lib.cli import main
from mambaad_lib.engine import runner
from mambaad_lib.engine.checkpoint import FINAL, LAST, PREVIOUS, load_checkpoint
from mambaad_lib.engine.config import ConfigError, load_config
from mambaad_lib.engine.runs import LOCK, new_run_id
from mambaad_lib.engine.trainer import TrainingInterrupted
from mambaad_lib.utils import files

TESTS = Path(__file__).parent
STEPS_PER_EPOCH = 4  # 8 normal training images (2 classes x 4), batches of 2


@pytest.fixture
def toy(tmp_path):
    """(profile path, tmp_path) with the toy method registered and its dataset made."""
    toy_method.register()
    toy_method.make_dataset(tmp_path / "data")
    yield toy_method.write_profile(tmp_path, tmp_path / "data"), tmp_path
    toy_method.unregister()


def _stop_at(step: int):
    def callback(trainer) -> None:
        if trainer.state.global_step == step:
            trainer.stop_requested = True
    return callback


def _interrupted(config, run_id: str, step: int) -> Path:
    with pytest.raises(TrainingInterrupted):
        runner.train(config, run_id=run_id, progress=False, callbacks=[_stop_at(step)])
    return Path(config.paths.runs_dir) / config.experiment / run_id


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("mambaad: error:")]


def _start_cli_training(profile: Path, run_id: str, *options: str) -> subprocess.Popen:
    """``mambaad train`` in a subprocess (with the toy method registered)."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import toy_method; toy_method.register(); "
            "from mambaad_lib.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", code, "train", "--profile", str(profile), "--run-id", run_id,
                             "--quiet", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent),
                                                                              os.environ.get("PYTHONPATH", "")])})


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# ---- run ids ----------------------------------------------------------------------------------


def test_default_run_ids_are_unique_when_started_together():
    ids = [new_run_id("mambaad", 0) for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert re.fullmatch(r"mambaad-seed0-\d{8}-\d{6}-\d{6}-[0-9a-f]{4}", ids[0])


def test_unsafe_names_are_refused_before_anything_is_written(toy, capsys):
    profile, tmp_path = toy
    assert main(["train", "--profile", str(profile), "--run-id", "../../escaped", "--quiet"]) == 2
    assert "'../../escaped' is not usable as a folder name" in _errors(capsys)[0]
    assert main(["train", "--profile", str(profile), "--experiment", "a/b", "--quiet"]) == 2
    assert "experiment" in _errors(capsys)[0]
    weights = tmp_path / "weights.pt"
    torch.save({"center": torch.zeros(3)}, weights)
    assert main(["evaluate", "--profile", str(profile), "--checkpoint", str(weights), "--run-id", "../x",
                 "--quiet"]) == 2
    assert "is not usable as a folder name" in _errors(capsys)[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    assert not (tmp_path.parent / "escaped").exists()


# ---- one run per folder ----------------------------------------------------------------------


def test_a_live_run_holds_its_folder_and_a_finished_one_needs_overwrite(toy):
    profile, tmp_path = toy
    config = load_config(str(profile))
    attempts = []

    def second_run_with_the_same_id(trainer) -> None:
        if trainer.state.global_step == 1:
            for overwrite in (False, True):
                with pytest.raises(FileExistsError, match=f"in use by process {os.getpid()}") as raised:
                    runner.train(config, run_id="same", progress=False, overwrite=overwrite)
                attempts.append(str(raised.value))

    first = runner.train(config, run_id="same", progress=False, callbacks=[second_run_with_the_same_id])
    assert len(attempts) == 2
    results = first.results_file.read_bytes()
    assert not (first.run_dir / LOCK).exists()

    with pytest.raises(FileExistsError, match="exists.*--overwrite"):
        runner.train(config, run_id="same", progress=False)
    assert first.results_file.read_bytes() == results and (first.run_dir / FINAL).is_file()

    other_lr = load_config(str(profile), {"train.lr": 0.05})
    replaced = runner.train(other_lr, run_id="same", progress=False, overwrite=True)
    assert replaced.results_file == first.results_file
    assert json.loads(first.results_file.read_text())["config"]["train"]["lr"] == 0.05
    assert load_checkpoint(replaced.run_dir / FINAL)["config"]["train"]["lr"] == 0.05


def test_a_run_that_appears_while_checking_is_not_overwritten(toy, monkeypatch):
    """Two processes start the same run id at once: the one that locks second finds the
    folder taken and stops; the other's files stay as they are."""
    profile, tmp_path = toy
    config = load_config(str(profile))
    run_dir = tmp_path / "runs" / "toy" / "racing"
    check_data = runner.check_data

    def other_process_starts_meanwhile(*args):
        check_data(*args)
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text("the other run's\n")

    monkeypatch.setattr(runner, "check_data", other_process_starts_meanwhile)
    with pytest.raises(FileExistsError, match="'racing' exists"):
        runner.train(config, run_id="racing", progress=False)
    assert (run_dir / "config.yaml").read_text() == "the other run's\n"


@pytest.mark.slow
def test_kill_9_then_resume_takes_over_the_stale_lock(toy, capsys):
    profile, tmp_path = toy
    options = ("--set", "model.step_seconds=0.2", "--set", "train.checkpoint_every_steps=1", "--epochs", "3")
    process = _start_cli_training(profile, "killed", *options)
    run_dir = tmp_path / "runs" / "toy" / "killed"
    try:
        _wait_for(run_dir / LAST, process)
        assert main(["train", "--profile", str(profile), "--run-id", "killed", "--quiet", *options]) == 2
        assert f"is in use by process {process.pid}" in _errors(capsys)[0]
        assert main(["train", "--resume", str(run_dir), "--quiet"]) == 2
        assert f"is in use by process {process.pid}" in _errors(capsys)[0]
    finally:
        process.kill()
        process.wait()
    assert json.loads((run_dir / LOCK).read_text())["pid"] == process.pid  # left behind by the killed process
    steps_done = load_checkpoint(run_dir / LAST)["progress"]["global_step"]
    assert 0 < steps_done < 3 * STEPS_PER_EPOCH

    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    record = json.loads((tmp_path / "results" / "toy" / "toy_profile" / "killed.json").read_text())
    assert record["training"]["steps"] == 3 * STEPS_PER_EPOCH and record["training"]["resumed_from"]
    assert not (run_dir / LOCK).exists() and (run_dir / "run.json").is_file()

    straight = runner.train(load_config(str(profile), {"model.step_seconds": 0.2, "train.epochs": 3,
                                                       "train.checkpoint_every_steps": 1}),
                            run_id="straight", progress=False)
    assert torch.equal(load_checkpoint(run_dir / FINAL)["model"]["center"],
                       load_checkpoint(straight.run_dir / FINAL)["model"]["center"])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_like_ctrl_c(toy):
    profile, tmp_path = toy
    steps = tmp_path / "steps.txt"
    process = _start_cli_training(profile, "terminated", "--set", "model.step_seconds=0.2", "--set",
                                  f"model.progress_file={steps}", "--epochs", "50")
    try:
        _wait_for(steps, process)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    last = tmp_path / "runs" / "toy" / "terminated" / LAST
    assert 0 < load_checkpoint(last)["progress"]["global_step"] < 50 * STEPS_PER_EPOCH
    assert not (last.parent / LOCK).exists()


# ---- resuming ------------------------------------------------------------------------------------


def test_resume_latest_picks_the_newest_unfinished_run_with_the_same_config(toy):
    profile, tmp_path = toy
    config = load_config(str(profile))
    finished_old = runner.train(config, run_id="finished-old", progress=False)
    wanted = _interrupted(config, "unfinished-same", step=2)
    _interrupted(load_config(str(profile), {"train.lr": 0.05}), "unfinished-other-config", step=2)
    finished_new = runner.train(config, run_id="finished-new", progress=False)
    kept = {outcome.results_file: outcome.results_file.read_bytes() for outcome in (finished_old, finished_new)}

    assert runner.resolve_resume("latest", config) == wanted
    resumed = runner.train(config, resume="latest", progress=False)
    assert resumed.run_dir == wanted and resumed.record["training"]["steps"] == 2 * STEPS_PER_EPOCH
    assert {path: path.read_bytes() for path in kept} == kept  # finished runs untouched
    with pytest.raises(FileNotFoundError, match="no unfinished run with this config"):
        runner.train(config, resume="latest", progress=False)
    with pytest.raises(ConfigError, match="has finished"):
        runner.train(config, resume="finished-new", progress=False)


def test_run_id_and_resume_must_name_the_same_run(toy, capsys):
    profile, tmp_path = toy
    config = load_config(str(profile))
    run_dir = _interrupted(config, "paused", step=1)
    with pytest.raises(ConfigError, match="--run-id 'other' and --resume 'paused' name different runs"):
        runner.train(config, run_id="other", resume="paused", progress=False)
    assert main(["train", "--profile", str(profile), "--run-id", "other", "--resume", "paused", "--quiet"]) == 2
    assert "name different runs" in _errors(capsys)[0]
    assert runner.train(config, run_id="paused", resume="paused", progress=False).run_dir == run_dir


@pytest.mark.parametrize("damage", ["cut short", "bytes flipped"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(toy, damage):
    profile, tmp_path = toy
    config = load_config(str(profile), {"train.epochs": 3})
    run_dir = _interrupted(config, "damaged", step=2 * STEPS_PER_EPOCH + 1)
    assert load_checkpoint(run_dir / PREVIOUS)["progress"]["global_step"] == 2 * STEPS_PER_EPOCH
    last = run_dir / LAST
    data = bytearray(last.read_bytes())
    if damage == "cut short":
        data = data[: len(data) // 2]
    else:  # the bytes of the model's one tensor
        offset = data.find(load_checkpoint(last)["model"]["center"].numpy().tobytes())
        assert offset > 0
        data[offset:offset + 12] = bytes(byte ^ 0xFF for byte in data[offset:offset + 12])
    last.write_bytes(bytes(data))

    assert runner.resume_checkpoint(run_dir) == run_dir / PREVIOUS
    resumed = runner.train(config, resume="damaged", progress=False)
    assert resumed.record["training"]["resumed_from"].endswith(PREVIOUS)
    straight = runner.train(config, run_id="straight", progress=False)
    assert torch.equal(load_checkpoint(run_dir / FINAL)["model"]["center"],
                       load_checkpoint(straight.run_dir / FINAL)["model"]["center"])


def test_resume_reads_its_checkpoint_once(toy, monkeypatch):
    profile, tmp_path = toy
    config = load_config(str(profile))
    _interrupted(config, "counted", step=3)
    reads = []
    real_load = torch.load

    def counting_load(source, *args, **kwargs):
        reads.append(Path(source).name)
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    runner.train(config, resume="counted", progress=False)
    assert reads == [LAST]


# ---- options ----------------------------------------------------------------------------------


def test_conflicting_and_non_finite_options_are_errors(toy, capsys):
    profile, tmp_path = toy
    assert main(["train", "--profile", str(profile), "--epochs", "3", "--set", "train.epochs=1", "--quiet"]) == 2
    assert re.search(r"--epochs 3 and --set train.epochs=1 set train.epochs to different values", _errors(capsys)[0])
    for value in ("inf", "nan", "-1"):
        assert main(["train", "--profile", str(profile), "--lr", value, "--quiet"]) == 2
        assert "train.lr" in _errors(capsys)[0]
    assert not (tmp_path / "runs").exists()


def test_reproduce_refuses_build_only_with_no_build(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["reproduce", "--build-only", "--no-build"])
    assert raised.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ---- a full disk ---------------------------------------------------------------------------------


class _DiskFillsOn:
    """``tempfile`` as files.atomic_write sees it, with a disk that fills while writing one file."""

    def __init__(self, target_name: str) -> None:
        self.prefix = f".{target_name}."

    def NamedTemporaryFile(self, *args, **kwargs):  # noqa: N802 (the tempfile API's name)
        handle = tempfile.NamedTemporaryFile(*args, **kwargs)
        if kwargs.get("prefix") == self.prefix:
            write = handle.write

            def half_then_full(data):
                write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            handle.write = half_then_full
        return handle


@pytest.mark.parametrize("target", [LAST, FINAL, "full.json"])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing_half_written(toy, monkeypatch, capsys, target):
    profile, tmp_path = toy
    monkeypatch.setattr(files, "tempfile", _DiskFillsOn(target))
    assert main(["train", "--profile", str(profile), "--run-id", "full", "--quiet"]) == 2
    (message,) = _errors(capsys)
    assert re.fullmatch(rf"mambaad: error: No space left on device: \S+/{re.escape(target)} \(the disk is full: "
                        r"free space or write elsewhere .*\)", message), message
    written = [path.name for path in tmp_path.rglob("*") if path.is_file()]
    assert not [name for name in written if name.endswith(".tmp")] and target not in written
    assert "run.json" not in written  # the run is not marked finished
