"""The model benchmark's smoke run writes a well-formed results file (no timing is asserted)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mambaad_lib.methods.training import ADAMW_IMPLEMENTATIONS, TrainConfig
from mambaad_lib.ops.cpu import availability as cpu_availability

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(cpu_availability() is not None, reason="the benchmark runs the cpu scan backend")
def test_bench_model_quick_writes_a_complete_results_file(tmp_path):
    output = tmp_path / "bench_model.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_model.py"), "--quick", "--output", str(output)],
                   env=env, check=True, timeout=600, capture_output=True)
    result = json.loads(output.read_text())
    assert result["benchmark"] == "mambaad_model" and result["quick"] is True and result["with_load"] is None
    assert result["threads"]["intra_op_threads"] >= 1 and result["provenance"]["torch"]
    optimizer = result["optimizer"]
    assert set(optimizer["step_s"]) == set(ADAMW_IMPLEMENTATIONS) and optimizer["faster"] in ADAMW_IMPLEMENTATIONS
    assert optimizer["configured_default"] == TrainConfig().adamw
    assert optimizer["time_relative_to_default"][optimizer["configured_default"]] == 1.0
    (run,) = result["runs"]
    assert run["model"] == "demo" and run["batch"] >= 1
    assert run["gflop_per_image"]["train_step"] > run["gflop_per_image"]["inference"] > 0
    for kind in ("inference", "train_step"):
        measured = run[kind]
        for key in ("seconds", "images_per_s", "gflops", "matmul_gflops", "fraction_of_matmul"):
            assert math.isfinite(measured[key]) and measured[key] > 0, (kind, key)
        assert measured["fraction_of_matmul"] == pytest.approx(measured["gflops"] / measured["matmul_gflops"])
        assert 0 < measured["scan_share"] < 1
        shares = [op["share"] for op in measured["top_operators"]]
        assert len(shares) == 5 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
        for op in measured["top_operators"]:  # one profile in a quick run: its range is its share
            assert op["share_range"] == [op["share"], op["share"]] and op["calls"] >= 1
        assert measured["profiles"] == 1 and measured["scan_share_range"] == [measured["scan_share"]] * 2


def _bench_model_module():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_model
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return bench_model


def test_bench_model_records_running_out_of_gpu_memory_and_goes_on(monkeypatch):
    """A part that runs out of GPU memory (the chunked scan's training step on the paper model at
    batch 16 did, on an H200) is recorded as an error; the other part is still measured."""
    bench_model = _bench_model_module()
    real_timed = bench_model.timed

    def timed(function, *args):
        if function.__name__ == "train_step":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 92.00 MiB.\nmore")
        return real_timed(function, *args)

    monkeypatch.setattr(bench_model, "timed", timed)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    run = bench_model.measure_case(bench_model.QUICK_CASES[0], "chunked", "fused", 1, 1, torch.device("cpu"))
    assert run["train_step"] == {"error": "out of GPU memory: CUDA out of memory. Tried to allocate 92.00 MiB."}
    assert run["inference"]["images_per_s"] > 0
    line = bench_model.summary_line(run)
    assert "train step: out of GPU memory" in line and "inference" in line and "largest op" not in line


def test_operator_shares_are_averaged_over_profiles_with_their_range(monkeypatch):
    bench_model = _bench_model_module()
    profiles = iter([({"scan_bwd": 0.22, "conv_bwd": 0.18, "mm": 0.10}, {"scan_bwd": 4, "conv_bwd": 20, "mm": 9}, 0.30),
                     ({"scan_bwd": 0.16, "conv_bwd": 0.20}, {"scan_bwd": 4, "conv_bwd": 20}, 0.24),
                     ({"scan_bwd": 0.18, "conv_bwd": 0.19, "mm": 0.14}, {"scan_bwd": 4, "conv_bwd": 20, "mm": 9}, 0.27)])
    monkeypatch.setattr(bench_model, "profile_once", lambda *args: next(profiles))
    shares = bench_model.profile_shares(None, "cpu", torch.device("cpu"), top=2, profiles=3)
    assert [op["name"] for op in shares["top_operators"]] == ["conv_bwd", "scan_bwd"]
    conv, scan = shares["top_operators"]
    assert conv["share"] == pytest.approx(0.19) and conv["share_range"] == [0.18, 0.20] and conv["calls"] == 20
    assert scan["share"] == pytest.approx(0.56 / 3) and scan["share_range"] == [0.16, 0.22]
    assert shares["scan_share"] == pytest.approx(0.27) and shares["scan_share_range"] == [0.24, 0.30]
    assert shares["profiles"] == 3
