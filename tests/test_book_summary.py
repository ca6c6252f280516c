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


def test_plateau_sentence_names_the_runs_still_falling() -> None:
    rows = [{"label": "A", "seed": 0, "plateaued": True, "late_improvement": 0.01},
            {"label": "B", "seed": 1, "plateaued": False, "late_improvement": 0.031},
            {"label": "C", "seed": 0, "plateaued": None}, {"label": "D", "trained": False, "plateaued": False}]
    text = ex.plateau_sentence(rows)
    assert text.startswith("1 of 2 training runs") and "B seed 1 (3.1%)" in text and "2.5%" in text
    assert ex.plateau_sentence(rows[:1]).endswith("not stopped ones.")
    assert ex.plateau_sentence([rows[2]]) is None


def test_seed_table_shows_mean_and_spread_per_label() -> None:
    rows = [{"label": "A", "standard.i_auroc": 0.6}, {"label": "A", "standard.i_auroc": 0.7},
            {"label": "B", "standard.i_auroc": 0.5}, {"label": "C", "trained": False}]
    table = ex.seed_table(rows, {"standard.i_auroc": "image AUROC"})
    assert table.loc["A", "image AUROC"] == "65.0 ± 5.0" and table.loc["A", "seeds"] == 2
    assert table.loc["B", "image AUROC"] == "50.0" and table.loc["C", "image AUROC"] is None


def test_demo_chapters_share_one_run_per_seed_of_the_base_model() -> None:
    """Chapters 01-05 and 07 build the base model's demo config their own way; it is one run."""
    demo = {kind: ex.training_settings(kind, "demo") for kind in ("main", "ablation", "synthesis", "mmad")}
    lss = next(row for row in ex.lss_grid() if row["label"] == "G3 conv1x1+dw 5,7")
    configs = {
        "01": ex.Context("01_main_results", "demo").config(settings=demo["main"], model={}, seed=1),
        "02": ex.Context("02_backbones_depths", "demo").config(
            settings=demo["ablation"], model={"backbone": "resnet18", "depths": [1, 1, 1, 1]}, seed=1),
        "03": ex.Context("03_scan_methods", "demo").config(
            settings=demo["ablation"], model={"scan": "hilbert", "directions": 8}, seed=1),
        "04": ex.Context("04_lss_design", "demo").config(
            settings=demo["ablation"], model={k: v for k, v in lss.items() if k != "label"}, seed=1),
        "05": ex.Context("05_glass_synthesis", "demo").config("mambaad", demo["synthesis"], seed=1),
        "07": ex.Context("07_mmad", "demo").config("mambaad", demo["mmad"], model={}, seed=1),
    }
    names = {chapter: ex.run_name(config, "any label") for chapter, config in configs.items()}
    assert len(set(names.values())) == 1, names
    assert {config.experiment for config in configs.values()} == {ex.SHARED_EXPERIMENT}
    assert names["01"].startswith("mambaad-") and names["01"].endswith("-seed1")
    other = ex.Context("03_scan_methods", "demo").config(settings=demo["ablation"], model={"scan": "sweep"}, seed=1)
    assert ex.run_name(other, "sweep x8") != names["03"]
    # outside the shared setting a run is named by its label
    smoke = ex.Context("03_scan_methods", "smoke").config(settings=ex.training_settings("ablation", "smoke"), seed=0)
    assert ex.run_name(smoke, "hilbert x8") == "hilbert-x8-seed0"


def test_seeds_default_to_the_profiles_seeds() -> None:
    assert ex.Context("x", "smoke").seeds == (0,) and ex.Context("x", "demo").seeds == (0, 1, 2)
    assert ex.Context("x", "demo", seeds="3,4").seeds == (3, 4)


def test_loss_curves_show_one_line_per_seed_and_the_plateau_count() -> None:
    from mambaad_lib import viz

    rows = [{"label": "A", "seed": seed, "epoch_losses": [3.0, 2.0, 1.5], "plateaued": seed == 0} for seed in (0, 1)]
    rows.append({"label": "baseline", "seed": 0, "epoch_losses": [0.0]})  # no curve to draw
    figure = viz.plot_loss_curves(rows)
    axis = figure.axes[0]
    assert len(axis.get_lines()) == 2
    assert [text.get_text() for text in axis.get_legend().get_texts()] == ["A (plateau: 1/2 seeds)"]
