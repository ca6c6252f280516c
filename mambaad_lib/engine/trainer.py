"""The training loop: epochs, data order, checkpoints, interruption and exact resumption.

The loop is method-agnostic: a method's :meth:`training_step` does the forward pass, the
backward pass and the optimiser step. The trainer decides which images go into which batch
(a permutation per epoch that depends only on the seed and the epoch, see
:func:`~mambaad_lib.engine.seeding.epoch_permutation`), when to checkpoint, and how to
stop cleanly.

Exact resumption on CPU: a checkpoint is only written between two optimisation steps and
holds the weights, the optimiser and scheduler state, every global RNG state and the
position in the epoch. A resumed run therefore performs bit-identical steps.

Ctrl-C (SIGINT) or SIGTERM (what job schedulers send before they kill a job) during training
finishes the current step, writes ``last.pt`` and stops with :class:`TrainingInterrupted`; a
second signal stops at once.

Under torchrun (:mod:`mambaad_lib.engine.distributed`) every process runs this loop on its
share of each global batch; the step's loss is averaged over processes, a stop request on
any process is agreed by all after the same step, only rank 0 writes checkpoints and shows
progress bars, and a checkpoint resumes only with the world size that wrote it.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mambaad_lib.engine import distributed
from mambaad_lib.engine.checkpoint import LAST, load_checkpoint, save_checkpoint
from mambaad_lib.engine.config import RunConfig, config_to_dict
from mambaad_lib.engine.seeding import epoch_permutation, rng_state, set_rng_state
from mambaad_lib.methods.base import AnomalyMethod
from mambaad_lib.models.batch_randomness import batch_shard
from mambaad_lib.utils.errors import ConfigError

logger = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request after a checkpoint was written (``checkpoint`` attribute)."""

    def __init__(self, message: str, checkpoint: Path) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class TrainProgress:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    epoch_loss_sum: float = 0.0
    epoch_losses: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0


def training_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Index batches of one epoch; the last partial batch is dropped when a full one exists
    (BatchNorm layers in training mode need more than one sample per batch). These are the
    global batches: under torchrun each process takes its share of every one."""
    order = epoch_permutation(n_items, seed, epoch)
    usable = n_items - n_items % batch_size if n_items >= batch_size else n_items
    return [order[start:start + batch_size] for start in range(0, usable, batch_size)]


def _images(batch: Any) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch[0]


class Trainer:
    """The engine's step loop (:class:`~mambaad_lib.methods.StepLoop`): runs a method's
    training steps over a dataset of normal images, checkpointing and resuming exactly.

    Args:
        method: the detector to train (already built on its device).
        config: the run configuration (``train`` section and ``seed`` are used here).
        run_dir: folder for ``last.pt``/``final.pt`` (``runs/<experiment>/<run_id>``).
        progress: show tqdm bars.
        callbacks: called as ``callback(trainer)`` after every optimisation step; setting
            ``trainer.stop_requested = True`` stops like Ctrl-C does.
        extras: facts to keep in checkpoints (e.g. untrained metrics), restored on resume.
        resume_from: a ``last.pt`` to continue from.
        parallel: the process group (default: this process's, :func:`distributed.current`).
        epoch_end: called as ``epoch_end(trainer)`` after every epoch, before that epoch's
            checkpoint (so what it adds to ``trainer.extras`` is saved with it).
    """

    def __init__(self, method: AnomalyMethod, config: RunConfig, run_dir: str | Path, *,
                 progress: bool = True, callbacks: Sequence[Callable[["Trainer"], None]] = (),
                 extras: dict[str, Any] | None = None, resume_from: str | Path | None = None,
                 parallel: distributed.Distributed | None = None,
                 epoch_end: Callable[["Trainer"], None] | None = None) -> None:
        self.method = method
        self.config = config
        self.run_dir = Path(run_dir)
        self.parallel = parallel or distributed.current()
        self.progress_bars = progress and self.parallel.is_main
        self.callbacks = list(callbacks)
        self.extras = dict(extras or {})
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.epoch_end = epoch_end
        self.state = TrainProgress()
        self.stop_requested = False

    # ---- checkpoints --------------------------------------------------------------------
    def save(self, name: str, finished: bool = False) -> Path:
        """Write ``run_dir/name`` with everything needed to resume or evaluate (a previous
        ``last.pt`` is kept as ``last.prev.pt``); under torchrun rank 0 writes it (every
        process holds the same state) and every process gets its path."""
        path = self.run_dir / name
        if not self.parallel.is_main:
            return path
        return save_checkpoint(
            path, keep_previous=name == LAST, method=self.method.name,
            config=config_to_dict(self.config),
            model=self.method.state_dict(), optimization=self.method.optimization_state(),
            rng=rng_state(), progress=dataclasses.asdict(self.state), extras=self.extras,
            processes=self.parallel.describe(), finished=finished)

    def restore(self, path: str | Path) -> None:
        """Load a checkpoint written by :meth:`save` (after ``configure_optimization``).

        Raises:
            ValueError: not a resumable checkpoint of this method.
            ConfigError: it was written by a run with another number of processes.
        """
        content = load_checkpoint(path)
        if "progress" not in content:
            raise ValueError(f"{path}: holds weights only, not a training state that can be resumed")
        if content.get("method") != self.method.name:
            raise ValueError(f"{path}: checkpoint of method {content.get('method')!r}, "
                             f"cannot resume method {self.method.name!r}")
        written_by = content.get("processes", {}).get("world_size", 1)  # absent: one process
        if written_by != self.parallel.world_size:
            raise ConfigError(f"{path} was written by a run on {written_by} process(es), this one has "
                              f"{self.parallel.world_size}: resume with the same world size (torchrun "
                              f"--nnodes x --nproc_per_node = {written_by})")
        self.method.load_state_dict(content["model"], source=f"checkpoint {path}")
        self.method.load_optimization_state(content["optimization"])
        set_rng_state(content["rng"])
        if self.parallel.enabled and self.method.device.type == "cuda" and "cuda" in content["rng"]:
            # Rank 0 saved its GPU's generator (index 0 of its list), the stream every process
            # advanced alike; each process continues it on its own GPU.
            torch.cuda.set_rng_state(content["rng"]["cuda"][0], self.method.device)
        self.state = TrainProgress(**content["progress"])
        self.extras = {**content.get("extras", {}), **self.extras}

    # ---- loop ---------------------------------------------------------------------------
    def run(self, normal: Dataset) -> dict[str, Any]:
        """Train for ``config.train.epochs`` epochs over ``normal`` (continuing ``resume_from``);
        returns the facts for the results file's ``training`` entry."""
        train = self.config.train
        n_items = len(normal)
        if n_items == 0:
            raise ValueError("the training set is empty: no normal training images were found")
        self.parallel.local_batch_size(train.batch_size)
        if n_items < train.batch_size:  # one short batch per epoch (see training_batches)
            self.parallel.local_batch_size(n_items, f"train.batch_size (the {n_items} training images)")
        steps_per_epoch = len(training_batches(n_items, train.batch_size, self.config.seed, 0))
        self.method.configure_optimization(train, total_steps=train.epochs * steps_per_epoch)
        if self.resume_from is not None:
            self.restore(self.resume_from)
            logger.info("resuming %s at epoch %d, step %d", self.resume_from, self.state.epoch + 1,
                        self.state.step_in_epoch)
        if self.parallel.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        with _graceful_interrupt(self):
            self._loop(normal, steps_per_epoch)
        losses = self.state.epoch_losses
        return {"epochs": self.state.epoch, "steps": self.state.global_step, "wall_time_s": self.state.wall_time_s,
                "epoch_losses": losses, "final_loss": losses[-1] if losses else None,
                "resumed_from": str(self.resume_from) if self.resume_from else None}

    def _loop(self, train_data: Dataset, steps_per_epoch: int) -> None:
        train = self.config.train
        self.method.train(True)
        epochs = tqdm(range(self.state.epoch, train.epochs), desc="epochs", unit="epoch",
                      initial=self.state.epoch, total=train.epochs, disable=not self.progress_bars,
                      dynamic_ncols=True)
        for epoch in epochs:
            batches = training_batches(len(train_data), train.batch_size, self.config.seed, epoch)
            remaining = [self.parallel.local_indices(batch) for batch in batches[self.state.step_in_epoch:]]
            # Its own generator: creating a loader must not draw from the global RNG, or a run
            # resumed mid-epoch would draw once more than the uninterrupted run did.
            loader = DataLoader(train_data, batch_sampler=remaining, num_workers=self.config.data.num_workers,
                                generator=torch.Generator().manual_seed(self.config.seed + epoch))
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{train.epochs}", unit="batch", leave=False,
                       initial=self.state.step_in_epoch, total=steps_per_epoch,
                       disable=not self.progress_bars, dynamic_ncols=True)
            started = time.perf_counter()
            for batch in bar:
                loss = self.parallel.mean(self._step(_images(batch).to(self.method.device)))
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss} at epoch {epoch + 1}, step {self.state.step_in_epoch + 1}; "
                        "lower train.lr or check the input data")
                self.state.step_in_epoch += 1
                self.state.global_step += 1
                self.state.epoch_loss_sum += loss
                bar.set_postfix(loss=f"{loss:.4g}")
                self.state.wall_time_s += time.perf_counter() - started
                started = time.perf_counter()
                for callback in self.callbacks:
                    callback(self)
                self.stop_requested = self.parallel.any_true(self.stop_requested)
                every_steps = train.checkpoint_every_steps
                if every_steps and self.state.global_step % every_steps == 0:
                    self.save(LAST)
                if self.stop_requested:
                    bar.close()
                    path = self.save(LAST)
                    self.parallel.barrier()  # no process exits before rank 0 has written it
                    raise TrainingInterrupted(
                        f"training interrupted after {self.state.global_step} steps; checkpoint {path}. "
                        f"Resume with: mambaad train --resume {path} (same options)", path)
            bar.close()
            self.state.epoch_losses.append(self.state.epoch_loss_sum / max(self.state.step_in_epoch, 1))
            self.state.epoch += 1
            self.state.step_in_epoch = 0
            self.state.epoch_loss_sum = 0.0
            epochs.set_postfix(loss=f"{self.state.epoch_losses[-1]:.4g}")
            logger.info("epoch %d/%d: mean loss %.6g", epoch + 1, train.epochs, self.state.epoch_losses[-1])
            if self.epoch_end is not None:
                self.epoch_end(self)
            if (epoch + 1) % train.checkpoint_every == 0 and epoch + 1 < train.epochs:
                self.save(LAST)
        epochs.close()

    def _step(self, images: Tensor) -> float:
        """One training step on this process's images; under torchrun, per-sample random draws
        are those of the same rows of the global batch (see :mod:`mambaad_lib.models.batch_randomness`)."""
        if not self.parallel.enabled:
            return self.method.training_step(images)
        rows = images.shape[0]
        with batch_shard(self.parallel.rank * rows, rows, rows * self.parallel.world_size):
            return self.method.training_step(images)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _graceful_interrupt:
    """Within the block, the first SIGINT or SIGTERM asks the trainer to stop after the current
    step (it then writes ``last.pt``); a second one gets the previous handler (stops at once)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        logger.warning("%s received: finishing the current step and writing a checkpoint "
                       "(send it again to stop at once)", signal.Signals(signum).name)
        self.trainer.stop_requested = True
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def __enter__(self) -> "_graceful_interrupt":
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self._handler) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
