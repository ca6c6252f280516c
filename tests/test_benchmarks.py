"""The model benchmark's smoke run writes a well-formed results file (no timing is asserted)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
