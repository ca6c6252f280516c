"""Training under torchrun (CPU, gloo, 127.0.0.1) against the one-process run; mixed precision.

Every run here is the smoke profile (8 training images, global batch 4, 2 epochs = 4 steps)
through ``tests/distributed_worker.py``, which calls ``runner.train`` as ``mambaad train``
does. One single-process reference run and one two-process run are shared by the tests.

Why float64. The smoke model amplifies rounding differences violently: AdamW moves every
weight by about lr x sign(gradient), and its MFF_OCE BatchNorm normalises over 16 values
per channel, so after the first step a relative change of 1e-5 in the weights changes the
next gradients by percents. Two *single-process* float32 runs that differ only in their
thread count (1 vs 2) end 4 steps apart by up to 3e-3 in an epoch loss, 1e-3 in the weights
(relative L2) and 0.02 in pixel metrics; no implementation can match a float32 run to 1e-4
after several steps. The comparisons of whole runs are therefore made in float64 (weights
and images in double precision, ``--float64``), where one and two processes agree to
about 1e-10, which checks the arithmetic of the distributed machinery itself. The float32
path is checked where rounding has not been amplified yet: the first step's gradients,
averaged by DDP, equal the one-process gradients to 1e-4 (relative L2; measured 4e-5).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mambaad_lib.engine import runner
from mambaad_lib.engine.checkpoint import FINAL, LAST, load_checkpoint
from mambaad_lib.engine.config import load_config
from mambaad_lib.engine.distributed import Distributed
from mambaad_lib.engine.trainer import Trainer
from mambaad_lib.methods import get_method, get_method_class
from mambaad_lib.methods.training import MixedPrecision
from mambaad_lib.models.batch_randomness import batch_shard
from mambaad_lib.models.ss2d import DropPath
from mambaad_lib.utils.errors import ConfigError

WORKER = Path(__file__).with_name("distributed_worker.py")
REPOSITORY = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 600
# The shared reference runs also evaluate after epoch 1 of 2: sharded evaluation inside training.
EVALUATE_EVERY_EPOCH = {"eval.every_epochs": 1}

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@dataclass
class Run:
    """One finished (or interrupted) smoke run: its folders, record, weights and first gradients."""

    out: Path

    @property
    def results(self) -> list[Path]:
        return sorted((self.out / "results").rglob("*.json"))

    @property
    def run_dirs(self) -> list[Path]:
        return sorted(path for path in (self.out / "runs" / "smoke").iterdir() if path.is_dir())

    @property
    def record(self) -> dict:
        (path,) = self.results
        return json.loads(path.read_text())

    def weights(self) -> dict[str, torch.Tensor]:
        (run_dir,) = self.run_dirs
        return load_checkpoint(run_dir / FINAL)["model"]

    def gradients(self) -> dict[str, torch.Tensor]:
        return torch.load(self.out / "gradients.pt")


def overrides(root: Path, out: Path, **extra) -> dict:
    # The chunked scan: the compiled CPU kernel's first build would dominate the test's time.
    return {"data.root": str(root), "paths.results_dir": str(out / "results"), "paths.runs_dir": str(out / "runs"),
            "model.scan_backend": "chunked", "eval.protocols": ["standard"], **extra}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment() -> dict[str, str]:
    # One thread per process, as torchrun gives each of its workers, for the reference too.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])])}


def torchrun(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options]


def launch(command: list[str], worker_args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*command, str(WORKER), *worker_args], env=environment(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S, cwd=REPOSITORY)


def train(root: Path, out: Path, launcher: list[str], *extra: str, **config: object) -> Run:
    completed = launch(launcher, ["--overrides", json.dumps(overrides(root, out, **config)), *extra])
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    return Run(out)


def two_processes_on_one_machine() -> list[str]:
    return torchrun("--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()))


def relative_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    a = torch.cat([first[key].double().flatten() for key in first])
    b = torch.cat([second[key].double().flatten() for key in first])
    return float((a - b).norm() / a.norm())


def assert_same_weights(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tolerance: float) -> None:
    assert weights.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, rtol=tolerance, atol=tolerance, msg=key)


@pytest.fixture(scope="module")
def reference(smoke_root, tmp_path_factory) -> Run:
    """The one-process float64 run the distributed float64 runs are compared with."""
    return train(smoke_root, tmp_path_factory.mktemp("one_process"), [sys.executable], "--float64",
                 **EVALUATE_EVERY_EPOCH)


@pytest.fixture(scope="module")
def two_process(smoke_root, reference, tmp_path_factory) -> Run:
    """torchrun --nproc_per_node 2 in float64, then the reference's final checkpoint evaluated by both processes."""
    (reference_dir,) = reference.run_dirs
    out = tmp_path_factory.mktemp("two_processes")
    return train(smoke_root, out, two_processes_on_one_machine(), "--float64", "--evaluate",
                 str(reference_dir / FINAL), "--record", str(out / "seen"), **EVALUATE_EVERY_EPOCH)


@pytest.fixture(scope="module")
def fp32_reference(smoke_root, tmp_path_factory) -> tuple[dict, dict[str, torch.Tensor]]:
    """A one-process float32 run in this process (one thread, as torchrun's workers): its
    record and its first step's gradients."""
    gradients = {}

    def first_gradients(trainer) -> None:
        if trainer.state.global_step == 1:
            gradients.update({name: parameter.grad.detach().clone()
                              for name, parameter in trainer.method.network.named_parameters()
                              if parameter.grad is not None})

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = load_config("smoke", overrides(smoke_root, tmp_path_factory.mktemp("fp32")))
        record = runner.train(config, progress=False, callbacks=[first_gradients]).record
    finally:
        torch.set_num_threads(threads)
    return record, gradients


def test_two_processes_train_like_one(two_process, reference):
    expected = reference.record
    record = two_process.record
    assert record["training"]["epoch_losses"] == pytest.approx(expected["training"]["epoch_losses"], rel=1e-4)
    assert_same_weights(two_process.weights(), reference.weights(), 1e-4)
    assert record["metrics_untrained"] == expected["metrics_untrained"]
    assert record["metrics"] == expected["metrics"]
    assert len(two_process.results) == 1 and len(two_process.run_dirs) == 1  # rank 0 alone writes
    (run_dir,) = two_process.run_dirs
    assert sorted(path.name for path in run_dir.iterdir()) == ["config.yaml", FINAL, LAST, "run.json"]
    assert record["execution"] == {"world_size": 2, "nodes": 1, "backend": "gloo", "per_process_batch": 2,
                                   "precision": "fp32"}
    assert expected["execution"] == {"world_size": 1, "nodes": 1, "backend": None, "per_process_batch": 4,
                                     "precision": "fp32"}
    assert len(record["examples"]) == len(expected["examples"]) > 0
    assert load_checkpoint(run_dir / FINAL)["processes"]["world_size"] == 2
    # The evaluation after epoch 1, sharded over both processes, equals the one-process one.
    assert [entry["epoch"] for entry in record["evaluations"]] == [1, 2]
    assert record["evaluations"] == expected["evaluations"]


def test_rank_0_alone_checks_the_data_and_holds_the_run_lock(two_process):
    seen = [json.loads((two_process.out / "seen" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # Rank 0 ran the preflight once for training and once for the evaluation after it; rank 1 never.
    assert [entry["preflight_runs"] for entry in seen] == [2, 0]
    # During training the run folder's lock was rank 0's, as both processes saw it.
    assert [entry["lock_holder"]["pid"] for entry in seen] == [seen[0]["pid"]] * 2
    assert seen[1]["pid"] != seen[0]["pid"]


def test_bad_data_stops_every_process_with_rank_0s_preflight_error(smoke_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(smoke_root, root)
    meta = json.loads(next(root.glob("meta_*.json")).read_text())
    damaged = root / next(iter(meta["test"].values()))[0]["img_path"]
    damaged.write_bytes(damaged.read_bytes()[:40])  # a truncated PNG
    out = tmp_path / "out"
    completed = launch(two_processes_on_one_machine(),
                       ["--overrides", json.dumps(overrides(root, out)), "--record", str(out / "seen")])
    assert completed.returncode != 0
    errors = [json.loads((out / "seen" / f"rank{rank}.json").read_text())["error"] for rank in (0, 1)]
    assert errors[0].startswith("DataProblemsError") and damaged.name in errors[0]
    assert errors[1] == errors[0]  # rank 1 stopped with rank 0's error instead of waiting for it
    assert not (out / "runs").exists() and not (out / "results").exists()  # stopped before any folder


def test_distributed_evaluation_equals_one_process(two_process, reference):
    """Each process scores every other test batch; rank 0's metrics are the one-process ones."""
    (evaluation,) = (two_process.out / "results-evaluate").rglob("*.json")
    record = json.loads(evaluation.read_text())
    assert record["metrics"] == reference.record["metrics"]
    assert record["evaluation"]["n_images"] == reference.record["evaluation"]["n_images"]
    assert record["execution"]["world_size"] == 2 and record["training"] is None


def test_two_nodes_on_localhost_in_float32(smoke_root, fp32_reference, tmp_path):
    """Two torchrun agents ("nodes", one process each) meeting by c10d rendezvous on 127.0.0.1."""
    expected, expected_gradients = fp32_reference
    endpoint = f"127.0.0.1:{free_port()}"
    out = tmp_path / "two_nodes"
    worker_args = ["--overrides", json.dumps(overrides(smoke_root, out)), "--gradients", str(out / "gradients.pt")]
    nodes = [subprocess.Popen(
        [*torchrun("--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
                   "--rdzv_id", "two-nodes", "--rdzv_conf", f"is_host={int(host)}"), str(WORKER), *worker_args],
        env=environment(), cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for host in (True, False)]
    outputs = [node.communicate(timeout=LAUNCH_TIMEOUT_S)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(output[-4000:] for output in outputs)
    run = Run(out)
    gradients = torch.load(out / "gradients.pt")
    assert gradients.keys() == expected_gradients.keys()
    assert relative_difference(expected_gradients, gradients) < 1e-4  # DDP's averaged step = one process's
    assert run.record["training"]["epoch_losses"][0] == pytest.approx(expected["training"]["epoch_losses"][0],
                                                                      rel=1e-4)
    assert run.record["metrics_untrained"] == expected["metrics_untrained"]
    assert run.record["execution"] == {"world_size": 2, "nodes": 2, "backend": "gloo", "per_process_batch": 2,
                                       "precision": "fp32"}
    assert len(run.results) == 1 and len(run.run_dirs) == 1


def test_interrupted_and_killed_ranks_resume_to_the_same_result(smoke_root, two_process, tmp_path):
    out = tmp_path / "interrupted"
    base = ["--overrides", json.dumps(overrides(smoke_root, out)), "--float64"]
    run_dir = out / "runs" / "smoke" / "interrupted"

    # SIGTERM reaches rank 1 only: both processes stop after the same step, rank 0 checkpoints.
    stopped = launch(two_processes_on_one_machine(),
                     [*base, "--run-id", "interrupted", "--stop-signal", "SIGTERM", "--stop-step", "1"])
    assert stopped.returncode != 0 and "exitcode  : 130" in stopped.stderr  # the worker's TrainingInterrupted
    assert load_checkpoint(run_dir / LAST)["progress"]["global_step"] == 1
    assert not (run_dir / "run.json").exists() and not list((out / "results").rglob("*.json"))

    # Rank 1 dies (SIGKILL) in step 3: the run continues from the end of epoch 1 (step 2).
    killed = launch(two_processes_on_one_machine(),
                    [*base, "--resume", "interrupted", "--stop-signal", "SIGKILL", "--stop-step", "3"])
    assert killed.returncode != 0
    assert load_checkpoint(run_dir / LAST)["progress"]["global_step"] == 2

    finished = launch(two_processes_on_one_machine(), [*base, "--resume", "interrupted"])
    assert finished.returncode == 0, finished.stderr[-6000:]
    resumed = Run(out)
    assert resumed.record["training"]["resumed_from"] == str(run_dir / LAST)
    assert resumed.record["training"]["epoch_losses"] == two_process.record["training"]["epoch_losses"]
    assert_same_weights(resumed.weights(), two_process.weights(), 0.0)  # the uninterrupted run's, exactly


def test_resume_with_another_world_size_is_refused(reference):
    (run_dir,) = reference.run_dirs
    config = load_config("smoke", overrides(Path("unused"), reference.out))
    method = get_method("mambaad", config.model, config.data.crop_size, "cpu", pretrained=False)
    trainer = Trainer(method, config, run_dir, progress=False, parallel=Distributed(rank=0, world_size=2))
    with pytest.raises(ConfigError, match="written by a run on 1 process.*this one has 2.*same world size"):
        trainer.restore(run_dir / LAST)


def test_batch_that_does_not_divide_among_processes_is_refused():
    with pytest.raises(ConfigError, match="train.batch_size.*global batch of 6 does not divide among 4 processes"):
        Distributed(world_size=4).local_batch_size(6)
    assert Distributed(rank=1, world_size=2).local_indices([7, 3, 5, 1]) == [5, 1]
    assert not get_method_class("devnet").distributed and get_method_class("mambaad").distributed


def test_drop_path_draws_do_not_depend_on_the_split():
    """Each process's drop-path mask is its rows of the one-process mask (same generator state)."""
    layer = DropPath(0.5).train()
    x = torch.ones(8, 3, 2, 2)
    torch.manual_seed(1)
    whole = layer(x)
    shards = []
    for rank in range(4):
        torch.manual_seed(1)
        with batch_shard(2 * rank, 2, 8):
            shards.append(layer(x[2 * rank:2 * rank + 2]))
    assert torch.equal(torch.cat(shards), whole) and 0 < int((whole == 0).sum()) < whole.numel()
    with pytest.raises(ValueError, match="first dimension must be the batch"), batch_shard(0, 2, 8):
        layer(x)


def test_bf16_autocast_trains_like_fp32(smoke_root, fp32_reference, tmp_path):
    expected, _ = fp32_reference
    config = load_config("smoke", overrides(smoke_root, tmp_path, **{"train.precision": "bf16"}))
    record = runner.train(config, progress=False).record
    assert record["execution"]["precision"] == "bf16"
    losses, fp32 = record["training"]["epoch_losses"], expected["training"]["epoch_losses"]
    assert losses == pytest.approx(fp32, rel=0.02)
    assert losses != fp32  # autocast did change the arithmetic


def test_precision_a_method_does_not_train_at_is_refused(smoke_root):
    config = load_config("smoke", {"method": "nearest_neighbor", "data.root": str(smoke_root),
                                   "train.precision": "bf16"})
    with pytest.raises(ConfigError, match="train.precision.*nearest_neighbor.*fp32, not bf16"):
        runner.train(config, progress=False)


def test_fp16_loss_scaling_unscales_before_clipping_and_skips_overflowing_steps():
    torch.manual_seed(0)
    network = torch.nn.Linear(4, 3)
    images = torch.randn(8, 4)
    precision = MixedPrecision("fp16", "cpu")
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)

    def loss() -> torch.Tensor:
        with precision.autocast():
            return network(images).float().pow(2).mean()

    first = loss()
    gradients = torch.autograd.grad(first, list(network.parameters()), retain_graph=True)
    assert torch.linalg.vector_norm(torch.cat([grad.flatten() for grad in gradients])) > 0.5
    precision.step(first, [optimizer], clip=(list(network.parameters()), 0.5))
    scale = precision.state_dict()["scale"]
    assert scale > 1  # the loss was scaled, and clipping saw the gradients divided back
    norm = torch.linalg.vector_norm(torch.cat([parameter.grad.flatten() for parameter in network.parameters()]))
    assert float(norm) == pytest.approx(0.5, rel=1e-4)
    before = [parameter.detach().clone() for parameter in network.parameters()]
    precision.step(loss() * float("inf"), [optimizer])  # overflow: the step is skipped, the scale halves
    assert all(torch.equal(parameter, old) for parameter, old in zip(network.parameters(), before))
    assert precision.state_dict()["scale"] == scale / 2
