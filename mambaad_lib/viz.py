"""Figure helpers shared by the notebooks and the book: small functions returning matplotlib figures.

matplotlib is a ``book`` extra, imported only inside the functions that draw. Figures are
built with :class:`matplotlib.figure.Figure` directly (no pyplot state), so they work the
same in scripts, tests and notebooks; save them with ``figure.savefig(path)``.

Legibility at page width: the book's text column is :data:`PAGE_WIDTH_IN` inches wide, so a
wider figure is shown scaled down. :func:`save_figure` raises every text of a figure to at
least :data:`MIN_FONT_PT` points *as shown* (:func:`smallest_font_at_page_width`); legends
sit outside the data (beside or below the axes) and scatter labels are placed so that they
do not overlap (:func:`plot_cost_vs_metric`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from torch.utils.data import Dataset

from mambaad_lib.data import denormalize
from mambaad_lib.scan import DIRECTION_NAMES, SCAN_METHODS, scan_directions, scan_order
from mambaad_lib.synthesis.las import LASSample, LocalAnomalySynthesizer, estimate_foreground

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PAGE_WIDTH_IN = 7.0   # the book's text column (sphinx-book-theme, about 700 CSS pixels)
MIN_FONT_PT = 8.0     # the smallest text a reader meets on the page


def _renderer(figure: "Figure"):
    """A renderer of ``figure`` after a layout pass (an Agg canvas is attached when it has none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(figure.canvas, "get_renderer"):
        FigureCanvasAgg(figure)
    figure.draw_without_rendering()
    return figure.canvas.get_renderer()


def _texts(figure: "Figure") -> list:
    """Every visible, non-empty text of ``figure`` after a layout pass (tick labels included)."""
    from matplotlib.text import Text

    figure.draw_without_rendering()
    return [text for text in figure.findobj(Text) if text.get_visible() and text.get_text().strip()]


def smallest_font_at_page_width(figure: "Figure") -> float:
    """The smallest font of ``figure`` in points as the book shows it (figures wider than
    :data:`PAGE_WIDTH_IN` are scaled down to it)."""
    scale = min(1.0, PAGE_WIDTH_IN / figure.get_figwidth())
    return min((text.get_fontsize() for text in _texts(figure)), default=MIN_FONT_PT / scale) * scale


def make_legible(figure: "Figure") -> "Figure":
    """Raise every text of ``figure`` below :data:`MIN_FONT_PT` (as shown at page width) to it."""
    needed = MIN_FONT_PT * max(1.0, figure.get_figwidth() / PAGE_WIDTH_IN)
    for text in _texts(figure):
        if text.get_fontsize() < needed:
            text.set_fontsize(needed)
    return figure


def _legend_outside(axis, below: bool = False, **options) -> None:
    """The axis's legend beside (right of) or below the axes, never on the data."""
    if below:
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=MIN_FONT_PT, **options)
    else:
        axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=MIN_FONT_PT, borderaxespad=0.0, **options)


def _place_labels(axis, annotations: Sequence, step_pt: float = 9.0) -> None:
    """Move scatter labels (``axis.annotate`` results) until no two overlap: each label tries
    offsets below and above its point, right then left, nearest first."""
    figure = axis.figure
    renderer = _renderer(figure)
    placed: list = []
    candidates = [(4, 3)] + [(dx, sign * k * step_pt + (3 if sign > 0 else 0))
                             for k in range(1, 5) for sign in (-1, 1) for dx in (4, -4)]
    for annotation in annotations:
        for dx, dy in candidates:
            annotation.set_position((dx, dy))
            annotation.set_horizontalalignment("left" if dx > 0 else "right")
            box = annotation.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(annotation.get_window_extent(renderer))


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) numpy for ``imshow``."""
    return image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- local anomaly synthesis
@dataclass
class LASExample:
    """One row of the LAS figure: a class name, its clean image (3, H, W) and the synthesis."""

    cls_name: str
    image: torch.Tensor
    sample: "LASSample"


def las_examples(dataset: "Dataset", synthesizer: "LocalAnomalySynthesizer", classes: Sequence[str],
                 seed: int = 0, estimate_foregrounds: bool = True) -> list[LASExample]:
    """LAS applied to the first image of each of ``classes`` in ``dataset``.

    ``dataset`` yields :class:`~mambaad_lib.data.AnomalyDataset` items (ImageNet-normalised).
    With ``estimate_foregrounds`` the mask is restricted by
    :func:`~mambaad_lib.synthesis.las.estimate_foreground` (the GLASS method's default rule).
    """

    first_index = {}
    for index, item in enumerate(getattr(dataset, "items", [])):
        first_index.setdefault(item["cls_name"], index)
    missing = [name for name in classes if name not in first_index]
    if missing:
        raise ValueError(f"classes {missing} have no images in the dataset; available: {sorted(first_index)}")
    rng = np.random.default_rng(seed)
    examples = []
    for name in classes:
        image = denormalize(dataset[first_index[name]]["image"])  # (3, H, W) in [0, 1]
        foreground = estimate_foreground(image) if estimate_foregrounds else None
        examples.append(LASExample(name, image, synthesizer.synthesize(image, rng, foreground)))
    return examples


def plot_las_examples(examples: Sequence[LASExample], panel_size: float = 2.2) -> "Figure":
    """Grid with one row per example: original | Perlin mask | augmented texture | LAS result."""
    from matplotlib.figure import Figure

    if not examples:
        raise ValueError("plot_las_examples needs at least one example")
    columns = ("original", "Perlin mask", "texture", "LAS result")
    figure = Figure(figsize=(panel_size * len(columns), panel_size * len(examples)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(examples), len(columns)))
    for row, example in zip(axes, examples):
        sample = example.sample
        panels = (_to_hwc(example.image), sample.mask[0].cpu().numpy(), _to_hwc(sample.texture),
                  _to_hwc(sample.image))
        for axis, panel in zip(row, panels):
            axis.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        row[0].set_ylabel(example.cls_name)
        row[3].set_xlabel(f"beta={sample.beta:.2f}, {sample.mode}", fontsize=8)
    for axis, title in zip(axes[0], columns):
        axis.set_title(title)
    return figure


# ---------------------------------------------------------------- scan orders
def _draw_path(axis, order: np.ndarray, height: int, width: int, title: str) -> None:
    """One scan path: a line through the cell centres in visiting order, start green, end red."""
    rows, cols = np.divmod(order, width)
    axis.plot(cols, rows, color="0.25", linewidth=1.0)
    colours = np.linspace(0.0, 1.0, len(order))
    axis.scatter(cols, rows, c=colours, cmap="viridis", s=max(4.0, 600.0 / (height * width)), zorder=3)
    axis.plot(cols[0], rows[0], "o", color="tab:green", markersize=6, zorder=4)
    axis.plot(cols[-1], rows[-1], "s", color="tab:red", markersize=6, zorder=4)
    axis.set_xlim(-0.6, width - 0.4)
    axis.set_ylim(height - 0.4, -0.6)  # row 0 at the top, as in an image
    axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize=9)


def plot_scan_paths(methods: Sequence[str] | None = None, sizes: Sequence[int] = (8, 16),
                    panel_size: float = 2.0) -> "Figure":
    """Every scan order's forward path on square grids: one column per method, one row per size.

    Green circle: first token; red square: last; colour runs from early (dark) to late (yellow).
    """
    from matplotlib.figure import Figure


    methods = list(methods or SCAN_METHODS)
    figure = Figure(figsize=(panel_size * len(methods), panel_size * len(sizes) + 0.3), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(sizes), len(methods)))
    for row, size in zip(axes, sizes):
        for axis, name in zip(row, methods):
            _draw_path(axis, scan_order(name, size, size).numpy(), size, size, f"{name} {size}x{size}")
    return figure


def plot_scan_directions(scan: str = "hilbert", size: int = 8, panel_size: float = 2.0) -> "Figure":
    """The eight directions of one scan order on a ``size`` x ``size`` grid (paper order)."""
    from matplotlib.figure import Figure


    sequences = scan_directions(scan, size, size, 8).numpy()
    figure = Figure(figsize=(panel_size * 4, panel_size * 2 + 0.3), layout="constrained")
    for axis, sequence, name in zip(figure.subplots(2, 4).ravel(), sequences, DIRECTION_NAMES):
        _draw_path(axis, sequence, size, size, name)
    figure.suptitle(f"{scan}: the 8 directions on {size}x{size}")
    return figure


# ---------------------------------------------------------------- anomaly maps and curves
def plot_anomaly_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], maps: Sequence[np.ndarray],
                      titles: Sequence[str], panel_size: float = 1.9) -> "Figure":
    """Columns of image | ground truth | anomaly map, one column per example.

    ``images`` (H,W,3) in [0,1]; ``masks`` (H,W) bool; ``maps`` (H,W) raw scores, drawn with
    one shared colour range (so a hotter map is a more anomalous image).
    """
    from matplotlib.figure import Figure

    if not len(images) == len(masks) == len(maps) == len(titles) or not images:
        raise ValueError("plot_anomaly_grid needs the same positive number of images, masks, maps and titles")
    low = float(min(np.min(m) for m in maps))
    high = float(max(np.quantile(m, 0.999) for m in maps))
    figure = Figure(figsize=(panel_size * len(images) + 1.0, panel_size * 3 + 0.3), layout="constrained")
    axes = np.asarray(figure.subplots(3, len(images))).reshape(3, len(images))
    shown = None
    for column, (image, mask, anomaly_map, title) in enumerate(zip(images, masks, maps, titles)):
        axes[0, column].imshow(np.clip(image, 0, 1))
        axes[0, column].set_title(title, fontsize=8)
        axes[1, column].imshow(mask, cmap="gray", vmin=0, vmax=1)
        shown = axes[2, column].imshow(anomaly_map, cmap="jet", vmin=low, vmax=high)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    for axis, name in zip(axes[:, 0], ("image", "ground truth", "anomaly map")):
        axis.set_ylabel(name)
    figure.colorbar(shown, ax=axes[2, :].tolist(), shrink=0.8, label="score")
    return figure


def plot_roc_pr(curves: dict[str, dict[str, Sequence[float]]], title: str = "") -> "Figure":
    """ROC (left) and precision-recall (right) curves, one line per entry of ``curves``.

    ``curves[name]`` holds ``fpr``, ``tpr``, ``precision``, ``recall`` and optionally
    ``auroc``/``ap`` for the legend (as :func:`mambaad_lib.experiments.roc_pr_curves` returns).
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(PAGE_WIDTH_IN, 4.6), layout="constrained")
    roc, pr = figure.subplots(1, 2)
    for name, curve in curves.items():
        roc.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUROC {100 * curve.get('auroc', np.nan):.1f})")
        pr.step(curve["recall"], curve["precision"], where="post",
                label=f"{name} (AP {100 * curve.get('ap', np.nan):.1f})")
    roc.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    for axis in (roc, pr):
        _legend_outside(axis, below=True)
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    return figure


# ---------------------------------------------------------------- tables as pictures
def plot_grouped_bars(categories: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str,
                      title: str = "") -> "Figure":
    """Side-by-side bars per category, one colour per series (None/NaN leaves a gap)."""
    from matplotlib.figure import Figure

    positions = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    figure = Figure(figsize=(PAGE_WIDTH_IN, 4.0), layout="constrained")
    axis = figure.subplots()
    for index, (name, values) in enumerate(series.items()):
        heights = np.array([np.nan if v is None else float(v) for v in values])
        axis.bar(positions + (index - (len(series) - 1) / 2) * width, heights, width, label=name)
    axis.set_xticks(positions, categories, rotation=30, ha="right", fontsize=MIN_FONT_PT)
    axis.set_ylabel(ylabel)
    _legend_outside(axis)
    axis.grid(axis="y", alpha=0.3)
    if title:
        axis.set_title(title, fontsize=10)
    return figure


def plot_ours_vs_paper(labels: Sequence[str], ours: Sequence[float | None], paper: Sequence[float | None],
                       ylabel: str, title: str = "", ours_name: str = "ours") -> "Figure":
    """Paired bars per row label: ours beside the paper's value (missing values leave a gap)."""
    return plot_grouped_bars(labels, {ours_name: ours, "paper": paper}, ylabel, title)


def plot_scaling(sizes: Sequence[int], series: dict[str, Sequence[float]], ylabel: str,
                 title: str = "") -> "Figure":
    """Cost against image side on log-log axes, one line per series, with a slope-2 guide."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4.0), layout="constrained")
    axis = figure.subplots()
    sizes_array = np.asarray(sizes, dtype=float)
    for name, values in series.items():
        axis.loglog(sizes_array, values, marker="o", label=name)
    first = next(iter(series.values()))
    guide = float(first[0]) * (sizes_array / sizes_array[0]) ** 2
    axis.loglog(sizes_array, guide, color="0.6", linestyle=":", label="quadratic in side (guide)")
    axis.set_xticks(sizes_array, [str(int(s)) for s in sizes_array])
    axis.set(xlabel="image side (pixels)", ylabel=ylabel)
    axis.grid(alpha=0.3, which="both")
    _legend_outside(axis, below=True)
    if title:
        axis.set_title(title)
    return figure


def plot_loss_curves(rows: Sequence[dict], title: str = "") -> "Figure":
    """Training loss per epoch of every trained row (``label``, ``seed``, ``epoch_losses``,
    ``plateaued`` as in :func:`mambaad_lib.experiments.result_row`): one colour per label, one
    line per seed, log-scaled loss; the legend says how many seeds passed the plateau rule.
    Rows without a loss curve (the nearest-neighbour baseline) are left out."""
    from matplotlib.figure import Figure

    curves: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("trained", True) and row.get("epoch_losses") and len(row["epoch_losses"]) > 1:
            curves.setdefault(str(row["label"]), []).append(row)
    figure = Figure(figsize=(6.5, 3.8), layout="constrained")
    axis = figure.subplots()
    for index, (label, runs) in enumerate(curves.items()):
        colour = f"C{index % 10}"
        passed = sum(run.get("plateaued") is True for run in runs)
        for number, run in enumerate(runs):
            losses = run["epoch_losses"]
            axis.plot(range(1, len(losses) + 1), losses, color=colour, alpha=0.8, linewidth=1.2,
                      label=f"{label} (plateau: {passed}/{len(runs)} seeds)" if number == 0 else None)
    axis.set_yscale("log")
    axis.set(xlabel="epoch", ylabel="mean training loss (log scale)")
    axis.grid(alpha=0.3, which="both")
    if curves:
        _legend_outside(axis, below=True, ncol=2)
    if title:
        axis.set_title(title)
    return figure


def plot_cost_vs_metric(points: Sequence[dict], x: str, y: str, xlabel: str, ylabel: str,
                        title: str = "") -> "Figure":
    """Scatter of ``points`` (dicts with ``label``, ``group`` and the ``x``/``y`` keys), labelled."""
    from matplotlib.figure import Figure

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure = Figure(figsize=(PAGE_WIDTH_IN, 5.0), layout="constrained")
    axis = figure.subplots()
    groups = list(dict.fromkeys(point["group"] for point in points))
    markers = "osD^v"
    labels = []
    for index, group in enumerate(groups):
        members = [p for p in points if p["group"] == group and p.get(x) is not None and p.get(y) is not None]
        axis.scatter([p[x] for p in members], [p[y] for p in members], marker=markers[index % len(markers)],
                     s=45, label=group)
        labels += [axis.annotate(point["label"], (point[x], point[y]), fontsize=MIN_FONT_PT, xytext=(4, 3),
                                 textcoords="offset points") for point in members]
    axis.set_xscale("log")
    # Major ticks at 1, 2, 5 x 10^k as plain numbers, no minor labels: no colliding tick labels.
    axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set(xlabel=xlabel, ylabel=ylabel)
    axis.grid(alpha=0.3, which="both")
    _legend_outside(axis, below=True)
    if title:
        axis.set_title(title)
    _place_labels(axis, labels)
    return figure


def plot_bars(labels: Sequence[str], values: Sequence[float], xlabel: str, title: str = "",
              annotate: str = "{:.1f}") -> "Figure":
    """Horizontal bars (e.g. throughput per backend), each annotated with its value."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 0.45 * len(labels) + 1.2), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(labels))
    axis.barh(positions, values, color="tab:blue")
    axis.set_yticks(positions, labels, fontsize=8)
    axis.invert_yaxis()
    for position, value in zip(positions, values):
        axis.annotate(annotate.format(value), (value, position), xytext=(3, 0), textcoords="offset points",
                      va="center", fontsize=8)
    axis.set_xlabel(xlabel)
    axis.grid(axis="x", alpha=0.3)
    if title:
        axis.set_title(title)
    return figure


def plot_feature_projection(projection: dict[str, np.ndarray], title: str = "") -> "Figure":
    """2-D scatter of feature sets (e.g. normal / GAS / LAS patches), one colour per set."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    axis = figure.subplots()
    for name, points in projection.items():
        points = np.asarray(points)
        axis.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, label=f"{name} ({len(points)})")
    axis.set(xlabel="principal component 1", ylabel="principal component 2")
    _legend_outside(axis, markerscale=2)
    axis.grid(alpha=0.3)
    if title:
        axis.set_title(title)
    return figure


def save_figure(figure: "Figure", path: str, dpi: int = 110):
    """Save ``figure`` as a PNG (folder created) and return an IPython image to display it.

    Notebooks end a figure cell with ``viz.save_figure(fig, ...)``: the executed notebook
    shows the picture and the PNG stays beside the results it was drawn from. Texts smaller
    than :data:`MIN_FONT_PT` at page width are enlarged first (:func:`make_legible`).
    """
    from pathlib import Path

    from IPython.display import Image

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    make_legible(figure)
    figure.savefig(target, dpi=dpi)
    return Image(filename=str(target))
