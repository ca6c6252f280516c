"""Every notebook runs through papermill with the smoke profile and writes its results.

Each notebook is executed into a temporary folder (results, checkpoints and a tiny
synthetic dataset all under ``tmp_path``), then its summary JSON is read back and checked
for the keys the book's tables and figures are drawn from.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("jupytext")
pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

from mambaad_lib.experiments import SUMMARY_SCHEMA, Context  # noqa: E402
from mambaad_lib.metrics import METRIC_KEYS  # noqa: E402
from mambaad_lib.reproduce import discover_notebooks, run_notebooks  # noqa: E402

NOTEBOOKS = [path.stem for path in discover_notebooks()]
METRIC_COLUMNS = [f"{protocol}.{key}" for protocol in ("standard", "ader") for key in METRIC_KEYS]

# Keys of results/<notebook>/smoke/summary.json (every summary also has "context").
SUMMARY_KEYS = {
    "01_main_results": {"settings", "row", "mean", "per_class", "curves", "results_file"},
    "02_backbones_depths": {"settings", "rows", "trained_rows", "throughput_size"},
    "03_scan_methods": {"settings", "rows", "trained_rows"},
    "04_lss_design": {"settings", "rows", "trained_rows"},
    "05_glass_synthesis": {"settings", "methods", "means", "per_defect_type", "runs"},
    "06_efficiency": {"model", "backends", "scaling_counted", "scaling_timed", "cost_vs_auroc"},
    "07_mmad": {"settings", "runs", "metrics", "efficiency", "architecture_256"},
    "08_ahl": {"grid", "methods", "summary", "runs"},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A temporary results/runs/output folder and the tiny smoke dataset, shared by the module."""
    root = tmp_path_factory.mktemp("notebooks")
    data = root / "data"
    Context("test", dataset_root=str(data), dataset_name="synthetic_smoke").ensure_dataset()
    return {"root": root, "data": data, "results": root / "results", "out": root / "executed"}


# The open-set protocol needs more normal and anomalous images per class than the shared tiny
# set has (k-means clusters of normals, labelled anomalies removed from the test split): these
# notebooks get a dataset name that does not exist yet, so they build their own profile's set.
OWN_DATASET = {"08_ahl": "synthetic_openset_smoke"}


def _execute(stem: str, workspace: dict[str, Path]) -> Path:
    dataset_name = OWN_DATASET.get(stem, "synthetic_smoke")
    runs = run_notebooks("smoke", [stem], dataset_root=str(workspace["data"]), dataset_name=dataset_name,
                         results_root=str(workspace["results"]), runs_root=str(workspace["root"] / "runs"),
                         out_dir=workspace["out"], progress=False)
    assert [run.stem for run in runs] == [stem]
    return runs[0].output


def _errors(notebook_file: Path) -> list[str]:
    notebook = json.loads(notebook_file.read_text(encoding="utf-8"))
    return [f"{output['ename']}: {output['evalue']}" for cell in notebook["cells"] if cell["cell_type"] == "code"
            for output in cell.get("outputs", []) if output["output_type"] == "error"]


def _check_rows(rows: list[dict], trained_labels: list[str]) -> None:
    assert {row["label"] for row in rows if row["trained"]} == set(trained_labels)
    for row in rows:
        assert row["params_m_256"] > 0 and row["flops_g_256"] > 0
        if row["trained"]:
            assert set(METRIC_COLUMNS) <= set(row), f"row {row['label']} lacks metrics"
            assert Path(row["results_file"]).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_runs_with_smoke_profile(stem: str, workspace: dict[str, Path]) -> None:
    executed = _execute(stem, workspace)
    assert executed.is_file() and not _errors(executed)
    folder = workspace["results"] / stem / "smoke"
    written = sorted(folder.rglob("*.json"))
    assert written, f"{stem} wrote no results under {folder}"
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["schema"] == SUMMARY_SCHEMA and summary["profile"] == "smoke" and summary["notebook"] == stem
    assert summary["environment"]["torch"]
    missing = (SUMMARY_KEYS[stem] | {"context"}) - set(summary)
    assert not missing, f"{stem} summary lacks {sorted(missing)}"
    if "rows" in summary:
        _check_rows(summary["rows"], summary["trained_rows"])
    if stem == "01_main_results":
        record = json.loads(Path(summary["results_file"]).read_text(encoding="utf-8"))
        assert set(record["metrics"]) == {"standard", "ader"}
        assert record["profile"] == "smoke" and record["experiment"] == stem
        assert {row["class"] for row in summary["per_class"]} >= {"brick", "coin", "mean"}
        assert (folder / "roc_pr.png").is_file() and (folder / "anomaly_maps.png").is_file()
    if stem == "05_glass_synthesis":
        assert set(summary["per_defect_type"]["methods"]) == set(summary["methods"])
    if stem == "06_efficiency":
        assert [row["image_size"] for row in summary["scaling_counted"]] == [128, 256, 512]
        flops = [row["flops_g"] for row in summary["scaling_counted"]]
        assert flops[0] < flops[1] < flops[2]
