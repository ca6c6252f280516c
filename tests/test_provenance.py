"""The reproducibility page's table of weights, masks and protocols is the committed results'."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mambaad_lib.engine.results import load_results, upgrade_record
from mambaad_lib.experiments.provenance import page_table, markdown_table, provenance_rows, replace_table
from mambaad_lib.experiments.readme import demo_rows, gain_sentence, readme_block

ROOT = Path(__file__).resolve().parents[1]


def test_reproducibility_page_lists_what_the_committed_results_used():
    page = (ROOT / "book" / "reproducibility.md").read_text(encoding="utf-8")
    assert page_table(ROOT / "results") in page, \
        "rerun: python -m mambaad_lib.experiments.provenance --write book/reproducibility.md"


def test_readme_demo_table_is_the_committed_base_model_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_block(ROOT / "results") in readme, "rerun: python -m mambaad_lib.experiments.readme --write README.md"


def test_every_committed_result_and_summary_started_from_a_clean_commit():
    records = load_results(ROOT / "results")
    assert records, "no committed results"
    unclean = [record["_path"] for record in records if record["environment"].get("git_dirty") is not False
               or not record["environment"].get("git_commit")]
    assert not unclean, f"results not made at a clean commit (regenerate them): {unclean}"
    for path in (ROOT / "results").glob("*/*/summary.json"):
        environment = json.loads(path.read_text(encoding="utf-8"))["environment"]
        assert environment.get("git_dirty") is False and environment.get("git_commit"), path


def _strings(value):
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [value] if isinstance(value, str) else []


def test_every_shared_run_is_shown_by_a_chapter():
    """Runs of the shared experiment are named by their config: one no chapter reads (left by an
    older config) would sit in results/ and in the provenance table unexplained."""
    shown = {Path(text).name for path in (ROOT / "results").glob("*/*/summary.json")
             for text in _strings(json.loads(path.read_text(encoding="utf-8"))) if text.endswith(".json")}
    orphans = [path.name for path in (ROOT / "results" / "shared").glob("*/*.json") if path.name not in shown]
    assert not orphans, f"shared runs no chapter shows (delete them): {orphans}"


def test_demo_table_rows_and_sentence_come_from_the_summary():
    run = {"seed": 0, "standard.i_auroc": 0.7, "untrained.standard.i_auroc": 0.5, "standard.p_auroc": 0.9,
           "untrained.standard.p_auroc": 0.55, "plateaued": True, "train_time_s": 75.2, "git_commit": "abcdef123",
           "git_dirty": False}
    summary = {"seed_rows": [run, {**run, "seed": 1, "standard.p_auroc": 0.8, "plateaued": False}],
               "baseline_rows": [{"seed": 0, "standard.i_auroc": 0.6, "standard.p_auroc": 0.7}]}
    rows = demo_rows(summary)
    assert [row["seed"] for row in rows] == ["0", "1", "mean ± std"]
    assert rows[0]["pixel AUROC trained"] == "90.0" and rows[1]["image AUROC nearest neighbour"] == "—"
    assert rows[2]["pixel AUROC trained"] == "85.0 ± 5.0" and rows[2]["plateau"] == "1/2"
    assert "by 25.0 to 35.0 points" in gain_sentence(summary) and "abcdef1" in gain_sentence(summary)


def _record(experiment, weights, ground_truth, dirty=False):
    return {"experiment": experiment, "profile": "demo", "method": "mambaad", "encoder": {"weights": weights},
            "ground_truth": ground_truth, "environment": {"git_commit": "0123456789", "git_dirty": dirty}}


def test_rows_name_weights_masks_and_dirty_commits():
    bilinear = {"ader": {"masks": "bilinear", "labels_from_masks": True}}
    rows = provenance_rows([
        _record("a", {"choice": "imagenet"}, bilinear),
        _record("a", {"choice": "file", "source": "released checkpoint x.pth (net_t)"}, bilinear, dirty=True),
        upgrade_record({"experiment": "b", "profile": "demo", "method": "mambaad", "encoder": {},
                        "metrics": {"standard": {}}, "config": {"model": {"encoder_weights": "imagenet"}},
                        "environment": {"git_commit": "0123456789", "git_dirty": False}}),
    ])
    first, second = rows
    assert first["runs"] == "2" and first["commits"] == "0123456, 0123456 dirty"
    assert first["encoder weights"] == "ImageNet (the release's timm file); released checkpoint"
    assert first["protocols (masks)"] == "ader (masks bilinear, > 0.5; labels = mask maxima)"
    # Written before the fields existed: torchvision's file and nearest masks.
    assert second["encoder weights"] == "ImageNet (torchvision IMAGENET1K_V1)"
    assert second["protocols (masks)"] == "standard (masks nearest, > 0)"
    assert markdown_table(rows).count("\n") == 3


def test_replace_table_needs_the_markers():
    with pytest.raises(ValueError, match="provenance:start"):
        replace_table("no markers", "x")


def test_stated_demo_time_is_the_logged_one():
    """The README, the landing page and the reproducibility page state the demo reproduce's
    wall time; it must be the one logged by the committed run."""
    log = json.loads((ROOT / "results" / "reproduce" / "demo.json").read_text(encoding="utf-8"))
    minutes = round(log["total_notebook_seconds"] / 60)
    for name in ("README.md", "book/intro.md", "book/reproducibility.md"):
        stated = re.findall(r"about (\d+) minutes on an idle\s+2-core CPU", (ROOT / name).read_text(encoding="utf-8"))
        assert stated and set(stated) == {str(minutes)}, (name, stated, minutes)
