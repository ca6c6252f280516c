"""The sentences of the chapters' "What we found" sections are built from the rows given:
numbers interpolated, seed spread compared, chance and reuse said."""
from __future__ import annotations

import json
from pathlib import Path

from mambaad_lib import experiments as ex


def _rows(label: str, values: list[float], **extra) -> list[dict]:
    return [{"label": label, "trained": True, "seed": seed, "ader.i_auroc": value, **extra}
            for seed, value in enumerate(values)]


def test_seed_stats_skip_untrained_rows_and_missing_values() -> None:
    rows = _rows("a", [0.7, 0.8]) + [{"label": "b", "trained": False}, {"label": "c", "ader.i_auroc": None}]
    stats = ex.seed_stats(rows, "ader.i_auroc")
    assert list(stats) == ["a"]
    assert abs(stats["a"].mean - 0.75) < 1e-12 and abs(stats["a"].std - 0.05) < 1e-12 and stats["a"].n == 2
    assert stats["a"].text() == "75.0 ± 5.0 %"


def test_comparison_says_whether_the_gap_exceeds_the_seed_spread() -> None:
    stats = ex.seed_stats(_rows("a", [0.80, 0.82]) + _rows("b", [0.70, 0.72]) + _rows("c", [0.78, 0.90]),
                          "ader.i_auroc")
    assert "difference of +10.0 points, larger than the seed spread (1.0 points, 2 seeds)" in \
        ex.comparison_sentence(stats, "a", "b", "image AUROC")
    assert "within the seed spread (6.0 points" in ex.comparison_sentence(stats, "c", "a", "image AUROC")
    best = ex.best_row_sentence(stats, "image AUROC")
    assert best.startswith("Best row: c.") and "vs b" in best


def test_one_seed_is_never_read_as_a_ranking() -> None:
    stats = ex.seed_stats(_rows("a", [0.9]) + _rows("b", [0.6]), "ader.i_auroc")
    sentence = ex.comparison_sentence(stats, "a", "b", "image AUROC")
    assert "seed spread is unknown" in sentence and "90.0 % (one seed)" in sentence
    assert "reaches 90.0 %" in ex.best_row_sentence({"a": stats["a"]}, "image AUROC")


def test_rows_at_chance_are_named_with_the_budget() -> None:
    stats = ex.seed_stats(_rows("a", [0.52]) + _rows("b", [0.81]), "ader.i_auroc")
    sentence = ex.chance_sentence(stats, "image AUROC", "4 epochs on 12 images")
    assert sentence.startswith("1 of 2 rows (a) sits at chance") and "4 epochs on 12 images" in sentence
    assert ex.chance_sentence({"b": stats["b"]}, "image AUROC", "x") is None
    assert ex.chance_sentence({"a": stats["a"]}, "image AUROC", "x").startswith("The one trained row (a) sits")
    both = ex.seed_stats(_rows("a", [0.52]) + _rows("c", [0.47]), "ader.i_auroc")
    assert ex.chance_sentence(both, "image AUROC", "x").startswith("Every row (a, c) sit at chance")


def test_reused_runs_are_named_with_the_commit_that_made_them(tmp_path: Path) -> None:
    fresh = _rows("a", [0.7], results_file="a.json", reused=False, git_commit="1" * 40, git_dirty=False)
    reused = _rows("b", [0.7], results_file="b.json", reused=True, git_commit="abcdef1234" + "0" * 30, git_dirty=True)
    assert ex.provenance_sentence(fresh) == "All 1 run(s) shown were trained in this execution."
    sentence = ex.provenance_sentence(fresh + reused)
    assert sentence.startswith("1 of 2 run(s) were trained in this execution; 1 reused")
    assert "b at commit abcdef1234 (with uncommitted changes)" in sentence
    # rows without provenance (open-set grid): the commit comes from the results file
    record = {"schema": "mambaad-companion/results", "schema_version": 2,
              "environment": {"git_commit": "fedcba9876" + "0" * 30, "git_dirty": False}}
    (tmp_path / "c.json").write_text(json.dumps(record))
    row = {"label": "c", "trained": True, "results_file": str(tmp_path / "c.json"), "reused": True}
    assert "c at commit fedcba9876 (clean)" in ex.provenance_sentence([row])


def test_findings_are_markdown_bullets_without_empty_entries() -> None:
    assert ex.findings(["one.", None, "two."]) == "- one.\n- two."


def test_tables_show_missing_values_as_a_dash_with_a_footnote() -> None:
    import pandas as pd

    frame = pd.DataFrame({"i_auroc": [58.014201, None], "trained": [True, False]}, index=["a", "b"])
    html = ex.for_display(frame, caption="Table: demo").to_html()
    assert "58.0<" in html and "58.01" not in html and "nan" not in html.lower()
    assert ex.MISSING in html and "not trained at this profile" in html and "Table: demo" in html
    complete = ex.for_display(frame.iloc[:1], caption="Table: demo").to_html()
    assert "not trained at this profile" not in complete


def test_one_timing_routine_times_several_models_in_turns() -> None:
    """ch02 (backbones) and ch06 (backends) both time through time_models; one model is
    time_inference."""
    import pytest

    small = {"backbone": "resnet18", "depths": [1, 1, 1, 1]}
    timings = ex.time_models(64, {"a": small, "b": {**small, "scan_backend": "reference"}}, repeats=1)
    assert list(timings) == ["a", "b"] and timings["b"]["scan_backend"] == "reference"
    for timing in timings.values():
        assert timing["seconds"] > 0 and timing["images_per_s"] == pytest.approx(1 / timing["seconds"])
        assert timing["flops_g"] > 0 and timing["repeats"] == 1
    single = ex.time_inference(64, repeats=1, scan_backend="reference", **small)
    assert single["scan_backend"] == "reference" and single["flops_g"] == pytest.approx(timings["b"]["flops_g"])
    with pytest.raises(ValueError, match="repeats"):
        ex.time_models(64, {"a": small}, repeats=0)
