"""The book's figures are legible at page width: no text under 8 pt as shown, legends outside
the data, scatter labels that do not overlap, tick labels that do not collide."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from mambaad_lib import viz  # noqa: E402
from mambaad_lib.experiments import cost_vs_auroc_points  # noqa: E402


def _renderer(figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.draw_without_rendering()
    return figure.canvas.get_renderer()


def _curves() -> dict:
    grid = np.linspace(0, 1, 11)
    return {name: {"fpr": grid, "tpr": np.sqrt(grid), "precision": 1 - grid / 2, "recall": grid, "auroc": 0.8,
                   "ap": 0.7} for name in ("brick", "grass", "retina", "logo")}


def _figures() -> dict:
    categories = ["scratch", "hole", "stain", "crack", "cut", "patch"]
    series = {name: list(np.linspace(50, 90, len(categories))) for name in ("GLASS", "NN", "MambaAD", "MambaAD+LAS")}
    points = cost_vs_auroc_points(None, "demo")
    return {
        "roc_pr": viz.plot_roc_pr(_curves(), "image-level curves"),
        "grouped_bars": viz.plot_grouped_bars(categories, series, "image AUROC (%)", "per defect type"),
        "ours_vs_paper": viz.plot_ours_vs_paper(["R18 [2,2,2,2]", "R34 [3,4,6,3]"], [55.0, None], [96.7, 98.6],
                                                "image AUROC (%)", "ours vs paper"),
        "scaling": viz.plot_scaling([128, 256, 512], {"dense": [1.0, 4.0, 16.0], "scan": [0.1, 0.4, 1.6]},
                                    "GFLOPs", "growth"),
        "cost_vs_metric": viz.plot_cost_vs_metric(points, "flops_g", "i_auroc", "GFLOPs (log)", "image AUROC (%)",
                                                  "FLOPs vs image AUROC"),
        "bars": viz.plot_bars(["cpu", "reference"], [2.5, 0.4], "images / s", "throughput"),
        "projection": viz.plot_feature_projection({"normal": np.random.default_rng(0).normal(size=(50, 2)),
                                                   "GAS": np.random.default_rng(1).normal(size=(50, 2))}, "GAS"),
        "scan_paths": viz.plot_scan_paths(sizes=[8, 16]),
        "anomaly_grid": viz.plot_anomaly_grid([np.zeros((8, 8, 3))] * 5, [np.zeros((8, 8), bool)] * 5,
                                              [np.random.default_rng(2).random((8, 8))] * 5, ["a"] * 5),
    }


def test_every_figure_has_text_of_at_least_8_pt_at_page_width(tmp_path: Path) -> None:
    for name, figure in _figures().items():
        viz.save_figure(figure, str(tmp_path / f"{name}.png"))
        assert viz.smallest_font_at_page_width(figure) >= viz.MIN_FONT_PT - 1e-9, name


def test_legends_sit_outside_the_data() -> None:
    figures = _figures()
    for name in ("roc_pr", "grouped_bars", "scaling", "cost_vs_metric", "projection"):
        figure = figures[name]
        renderer = _renderer(figure)
        for axis in figure.axes:
            legend = axis.get_legend()
            if legend is not None:
                assert not legend.get_window_extent(renderer).overlaps(axis.get_window_extent(renderer)), name


def test_scatter_labels_and_tick_labels_do_not_overlap() -> None:
    figure = _figures()["cost_vs_metric"]
    renderer = _renderer(figure)
    axis = figure.axes[0]
    boxes = [text.get_window_extent(renderer) for text in axis.texts]
    assert len(boxes) == 7  # the paper's Table 2 rows
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    ticks = [label.get_window_extent(renderer) for label in axis.get_xticklabels()
             if label.get_visible() and label.get_text() and 0 < label.get_position()[0]]
    ticks = [box for box in ticks if box.width > 0]
    assert not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1:])
