"""What tests/test_distributed.py runs in every process, under torchrun or alone.

Trains a smoke run (``runner.train``, the code ``mambaad train`` runs) with the config
overrides given as JSON, and can additionally: train the model in float64, save the
gradients of the first step as the optimiser saw them (under DDP: averaged over
processes), kill its own process (SIGKILL) or send itself SIGTERM after a given step on a
given rank, and evaluate a checkpoint in the same process group afterwards.

With ``--record DIR`` every process writes ``DIR/rank<r>.json``: its pid, how often it ran
the data preflight, who held the run folder's lock during its first step, and the error
that stopped it (if one did; processes then wait for each other before exiting, so every
process's error is recorded before torchrun stops the group).

float64 (``--float64``, a test device only): the model's weights and its input images in
double precision, so that a comparison of two runs shows the arithmetic of the distributed
machinery rather than how fast the smoke model amplifies float32 rounding.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from mambaad_lib.engine import runner
from mambaad_lib.engine.config import load_config
from mambaad_lib.engine.runs import lock_holder
from mambaad_lib.engine.trainer import TrainingInterrupted

INTERRUPTED = 130  # the CLI's exit status after a checkpointed stop


def train_in_float64() -> None:
    """Make every method ``runner`` builds a float64 MambaAD (weights, images in and out)."""
    build = runner.get_method

    def float64_method(*args, **kwargs):
        method = build(*args, **kwargs)
        method.model.double()
        training_step, predict, prepare = method.training_step, method.predict, method.prepare
        method.training_step = lambda images: training_step(images.double())
        method.predict = lambda images: predict(images.double())
        method.prepare = lambda batches: prepare(batch.double() for batch in batches)
        method.describe = lambda: {"architecture": method.summary(), "float64": True}  # FLOPs count in float32
        return method

    runner.get_method = float64_method


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--overrides", required=True, help="config overrides as a JSON object")
    parser.add_argument("--run-id")
    parser.add_argument("--resume")
    parser.add_argument("--float64", action="store_true", help="train and evaluate in double precision")
    parser.add_argument("--gradients", help="save the first step's gradients here (rank 0)")
    parser.add_argument("--stop-signal", choices=("SIGKILL", "SIGTERM"), help="send this to the process ...")
    parser.add_argument("--stop-rank", type=int, default=1, help="... of this rank ...")
    parser.add_argument("--stop-step", type=int, default=1, help="... after this global step")
    parser.add_argument("--evaluate", help="then evaluate this checkpoint (results under <results_dir>-evaluate)")
    parser.add_argument("--record", help="write what this process saw to DIR/rank<r>.json")
    args = parser.parse_args()
    config = load_config("smoke", json.loads(args.overrides))
    rank = int(os.environ.get("RANK", "0"))
    if args.float64:
        train_in_float64()
    seen = {"pid": os.getpid(), "preflight_runs": 0, "lock_holder": None, "error": None}
    check_data = runner.check_data

    def counted_check_data(*check_args, **check_kwargs):
        seen["preflight_runs"] += 1
        return check_data(*check_args, **check_kwargs)

    runner.check_data = counted_check_data

    def after_step(trainer) -> None:
        step = trainer.state.global_step
        if args.gradients and rank == 0 and step == 1:
            torch.save({name: parameter.grad.detach().clone()
                        for name, parameter in trainer.method.network.named_parameters()
                        if parameter.grad is not None}, args.gradients)
        if step == 1:
            seen["lock_holder"] = lock_holder(trainer.run_dir)
        if args.stop_signal and rank == args.stop_rank and step == args.stop_step:
            os.kill(os.getpid(), getattr(signal, args.stop_signal))

    try:
        runner.train(config, run_id=args.run_id, resume=args.resume, progress=False, callbacks=[after_step])
    except TrainingInterrupted:
        return INTERRUPTED
    except Exception as error:
        if not args.record:
            raise
        seen["error"] = f"{type(error).__name__}: {error}"
        return failed(args.record, rank, seen)
    if args.evaluate:
        config.paths.results_dir += "-evaluate"
        runner.evaluate(config, args.evaluate, run_id="evaluation", progress=False)
    if args.record:
        write_record(args.record, rank, seen)
    return 0


def write_record(folder: str, rank: int, seen: dict) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    Path(folder, f"rank{rank}.json").write_text(json.dumps(seen))


def failed(folder: str, rank: int, seen: dict) -> int:
    write_record(folder, rank, seen)
    if dist.is_initialized():
        dist.barrier()  # torchrun stops the group when the first process exits: record every error first
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
