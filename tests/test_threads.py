"""Thread settings (mambaad_lib.utils.threads): chosen once, environment respected, described."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from mambaad_lib.utils import threads


@pytest.fixture
def fresh(monkeypatch):
    """Forget an earlier choice; restore torch's thread count afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", None)
    for name in threads.THREAD_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    torch.set_num_threads(before)


def test_explicit_count_wins_and_later_calls_keep_the_choice(fresh):
    fresh.setenv("OMP_NUM_THREADS", "2")
    assert threads.configure_threads(1) == 1 and torch.get_num_threads() == 1
    assert threads.configure_threads() == 1  # chosen once
    assert threads.thread_settings()["chosen_by"] == "argument"


def test_environment_is_respected(fresh):
    fresh.setenv("MKL_NUM_THREADS", "1")
    assert threads.configure_threads() == 1 and torch.get_num_threads() == 1
    assert threads.thread_settings()["chosen_by"] == "MKL_NUM_THREADS"
    fresh.setattr(threads, "_chosen", None)
    fresh.setenv("OMP_NUM_THREADS", "2,1")  # OpenMP's per-level list: the first level counts
    assert threads.configure_threads() == 2


def test_default_is_the_cpus_this_process_may_use(fresh, tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs -> 2 threads at most
    fresh.setattr(threads, "_CGROUP_CPU_MAX", quota)
    assert threads.available_cpus() <= 2
    assert threads.configure_threads() == threads.available_cpus() == torch.get_num_threads()
    assert threads.thread_settings()["chosen_by"] == "available cpus"
    quota.write_text("max 100000\n")
    assert threads.available_cpus() >= 1


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_counts_are_value_errors(fresh, value):
    fresh.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        threads.configure_threads()
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        threads.configure_threads(0)


def test_short_spin_waiting_becomes_the_default_only_before_torch_loads(fresh):
    for name in threads.WAIT_POLICY_VARS:
        fresh.setenv(name, "")  # recorded, so that what the function sets is undone after the test
        fresh.delenv(name)
    # torch is loaded in this process: too late, the environment stays as it is
    assert threads.set_default_wait_policy() == {} and "GOMP_SPINCOUNT" not in os.environ
    fresh.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice is never overridden
    fresh.delitem(sys.modules, "torch")
    assert threads.set_default_wait_policy() == {"OMP_WAIT_POLICY": "ACTIVE"}
    fresh.delenv("OMP_WAIT_POLICY")
    fresh.setenv("KMP_BLOCKTIME", "200")  # another runtime's setting (e.g. MKL's): GNU still gets the short spin
    assert threads.set_default_wait_policy() == {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "200"}
    fresh.delenv("KMP_BLOCKTIME")
    fresh.delenv("GOMP_SPINCOUNT")
    assert threads.set_default_wait_policy() == {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "0"}
    assert "OMP_WAIT_POLICY" not in os.environ


def test_settings_describe_the_process_as_json(fresh):
    fresh.setenv("OMP_WAIT_POLICY", "PASSIVE")
    settings = threads.thread_settings()
    assert json.loads(json.dumps(settings)) == settings
    assert settings["intra_op_threads"] == torch.get_num_threads() and settings["chosen_by"] is None
    assert settings["environment"] == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert settings["available_cpus"] >= 1 and settings["parallel_backend"]


def test_cli_chooses_threads_once_and_info_shows_them(fresh, capsys):
    from mambaad_lib.cli import main

    assert main(["info", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    assert "cpu threads: 1 (chosen by argument;" in capsys.readouterr().out
    fresh.setattr(threads, "_chosen", None)
    assert main(["info", "--threads", "0"]) == 2
    assert "threads must be a positive integer" in capsys.readouterr().err


def test_results_records_carry_the_thread_settings(fresh):
    from mambaad_lib.engine.results import new_record, upgrade_record

    threads.configure_threads(1)
    record = new_record(provenance={"git_commit": None, "git_dirty": None, "git_dirty_paths": None})
    assert record["threads"]["intra_op_threads"] == 1 and record["threads"]["chosen_by"] == "argument"
    assert json.loads(json.dumps(record["threads"])) == record["threads"]
    assert upgrade_record({"schema_version": 1})["threads"] is None  # older records: not recorded
