"""Tables for the book: ours beside the paper's, in percent with the protocol named.

Every function returns a pandas ``DataFrame`` (the only module of the library that builds
them), values in percent rounded to one decimal as the paper prints them; a value that does
not exist (an untrained row, a metric not computed) is None, shown as "—" with a footnote by
:func:`for_display`, which every table of the book goes through.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from mambaad_lib.experiments.summary import seed_stats
from mambaad_lib.metrics import METRIC_KEYS
from mambaad_lib.paper import paper_table
from mambaad_lib.scan import SCAN_METHODS

MISSING = "—"
MISSING_NOTE = (f"{MISSING} not trained at this profile (the paper's value only), or not computed for this run "
                "(the results file's notes say why).")
# The paper's backbone names -> ours (encoder names) and the row-label prefixes.
BACKBONE_NAMES: dict[str, str] = {"ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50": "resnet50",
                                  "WideResNet50": "wide_resnet50_2"}
_SHORT_BACKBONES = {"ResNet18": "R18", "ResNet34": "R34", "ResNet50": "R50", "WideResNet50": "WRN50"}


def pct(value: float | None, digits: int = 1) -> float | None:
    """A metric in [0, 1] -> percent, rounded (None and NaN become None)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return round(100 * value, digits)


def for_display(frame: pd.DataFrame, caption: str | None = None, digits: int = 1,
                note: str = MISSING_NOTE) -> Styler:
    """``frame`` as a page shows it: floats with ``digits`` decimals, missing values (None,
    NaN) as "—" and, when there is one, ``note`` as a footnote under ``caption``.

    Returns a pandas ``Styler`` (a notebook cell's value renders it as an HTML table).
    """
    styler = frame.style.format(precision=digits, na_rep=MISSING)
    text = [caption] if caption else []
    if frame.isna().to_numpy().any():
        text.append(note)
    return styler.set_caption(" ".join(text)) if text else styler


def paper_rows(name: str, **equal: str) -> list[dict[str, Any]]:
    """Rows of the paper's table ``name`` whose columns equal ``equal``; numbers as floats."""
    return [{key: _number(value) for key, value in row.items()} for row in paper_table(name)
            if all(row.get(key) == value for key, value in equal.items())]


def _number(text: str) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


# ---- one run ------------------------------------------------------------------------------


def _percent_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: pct(values.get(key)) for key in METRIC_KEYS}


def mean_table(record: Mapping[str, Any], paper_dataset: str | None = "MVTec-AD") -> pd.DataFrame:
    """Class means in percent: ours trained/untrained per protocol, then the paper's Table 1 rows."""
    rows = {}
    for key, state in (("metrics", "trained"), ("metrics_untrained", "untrained")):
        for protocol, values in (record.get(key) or {}).items():
            rows[f"ours, {state} ({protocol} protocol)"] = _percent_values(values["mean"])
    if paper_dataset:
        found = paper_rows("main_results", dataset=paper_dataset)
        if not found:
            known = sorted({row["dataset"] for row in paper_table("main_results")})
            raise ValueError(f"paper_dataset {paper_dataset!r} is not in Table 1; choose one of {known}")
        for row in found:
            rows[f"paper: {row['method']} ({paper_dataset}, release evaluation)"] = {
                key: row.get(key) for key in METRIC_KEYS}
    return pd.DataFrame.from_dict(rows, orient="index")


def per_class_table(record: Mapping[str, Any]) -> pd.DataFrame:
    """Per-class metrics in percent, indexed by (protocol, class)."""
    rows = {}
    for protocol, values in (record.get("metrics") or {}).items():
        for entry in values["per_class"]:
            rows[(protocol, entry["cls_name"])] = _percent_values(entry)
        rows[(protocol, "mean")] = _percent_values(values["mean"])
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["protocol", "class"])
    return table


def paper_per_category(dataset: str = "MVTec-AD", method: str = "MambaAD") -> pd.DataFrame:
    """The paper's per-category results of ``method`` on ``dataset``: image and pixel columns."""
    rows: dict[str, dict[str, Any]] = {}
    for row in paper_rows("per_category", dataset=dataset, method=method):
        target = rows.setdefault(row["category"], {})
        prefix = "i" if row["level"] == "image" else "p"
        for key in ("auroc", "ap", "f1max", "aupro"):
            if isinstance(row.get(key), float):
                target[f"{prefix}_{key}"] = row[key]
    if not rows:
        raise ValueError(f"the paper's per-category table has no rows for {method} on {dataset!r}")
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = f"paper: {method} on {dataset} (release evaluation)"
    return table


# ---- grids beside the paper ------------------------------------------------------------------


def seed_spread(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> pd.DataFrame:
    """Mean and standard deviation over seeds of ``keys`` (in percent) per row label, in row order.

    Columns ``(key, "mean")``, ``(key, "std")`` and ``n_seeds``; rows that were not trained
    have no values.
    """
    labels = list(dict.fromkeys(row["label"] for row in rows))
    table = {}
    for label in labels:
        trained = [row for row in rows if row["label"] == label and row.get("trained")]
        entry: dict[Any, Any] = {("n_seeds", ""): len(trained)}
        for key in keys:
            values = np.array([100 * row[key] for row in trained if row.get(key) is not None], dtype=float)
            entry[(key, "mean")] = round(float(values.mean()), 1) if values.size else None
            entry[(key, "std")] = round(float(values.std(ddof=0)), 1) if values.size > 1 else None
        table[label] = entry
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


# The metrics the chapters' seed tables show: row key -> column title.
SEED_KEYS = {"standard.i_auroc": "image AUROC", "standard.p_auroc": "pixel AUROC", "standard.p_aupro": "pixel AU-PRO"}


def seed_table(rows: Sequence[Mapping[str, Any]], keys: Mapping[str, str] = SEED_KEYS) -> pd.DataFrame:
    """"mean ± std" over seeds (percent, one decimal) of every trained row label, in row order.

    ``keys`` maps a row key (e.g. ``"standard.p_auroc"``) to its column title; a column
    ``seeds`` gives the number of runs. Values are strings, so the table shows the spread
    beside every mean; a label without a value shows None ("—" in :func:`for_display`).
    """
    table = {}
    for label in dict.fromkeys(row["label"] for row in rows):
        trained = [row for row in rows if row["label"] == label and row.get("trained", True)]
        entry: dict[str, Any] = {"seeds": len(trained)}
        for key, title in keys.items():
            values = np.array([100 * row[key] for row in trained if row.get(key) is not None], dtype=float)
            entry[title] = (f"{values.mean():.1f} ± {values.std(ddof=0):.1f}" if values.size > 1
                            else f"{values.mean():.1f}" if values.size else None)
        table[label] = entry
    return pd.DataFrame.from_dict(table, orient="index")


def ours_vs_paper(rows: Sequence[Mapping[str, Any]], paper: Mapping[str, Mapping[str, Any]],
                  keys: Sequence[str] = METRIC_KEYS, protocols: Sequence[str] = ("standard", "ader")) -> pd.DataFrame:
    """Trained rows' metrics (percent, mean over seeds) per protocol beside the paper's value of the same label.

    Returns a DataFrame indexed by row label with columns ``(metric, source)``, where source
    is ``ours (<protocol>)`` or ``paper``; rows without training show only the paper.
    """
    table = {}
    for label in dict.fromkeys(row["label"] for row in rows):
        trained = [row for row in rows if row["label"] == label and row.get("trained")]
        entry = {}
        for key in keys:
            for protocol in protocols:
                values = [row[f"{protocol}.{key}"] for row in trained if row.get(f"{protocol}.{key}") is not None]
                entry[(key, f"ours ({protocol})")] = pct(float(np.mean(values))) if values else None
            entry[(key, "paper")] = (paper.get(label) or {}).get(key)
        table[label] = entry
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["metric", "source"])
    return frame


def short_backbone(paper_name: str) -> str:
    """The paper's backbone name -> the row-label prefix (``ResNet34`` -> ``R34``)."""
    if paper_name not in _SHORT_BACKBONES:
        raise ValueError(f"unknown paper backbone {paper_name!r}; expected one of {sorted(_SHORT_BACKBONES)}")
    return _SHORT_BACKBONES[paper_name]


def scan_row_label(paper_row: Mapping[str, Any]) -> str:
    """A Table 3 row (direction count per method column) -> the notebook's row label.

    One method: ``"hilbert x8"``; several: ``"zigzag4 + hilbert4"`` (column order).
    """
    used = [(name, int(paper_row[name])) for name in SCAN_METHODS if int(paper_row.get(name) or 0)]
    if len(used) == 1:
        return f"{used[0][0]} x{used[0][1]}"
    return " + ".join(f"{name}{count}" for name, count in used)


# The LSS table's local-branch names -> ``model.local_conv``; groups -> LSS options.
LSS_LOCAL_CONV = {"Only DWConv": "dw", "DWConv + Conv": "conv1x1+dw"}
LSS_GROUPS = {1: {"hss_per_lss": 1, "lss_residual": True},
              2: {"hss_per_lss": 1, "lss_residual": False},
              3: {"hss_per_lss": None, "lss_residual": True}}


def lss_row_label(paper_row: Mapping[str, Any]) -> str:
    """An LSS-table row -> ``"G3 conv1x1+dw 5,7"`` (group, local convolution, kernels)."""
    return f"G{int(paper_row['group'])} {LSS_LOCAL_CONV[paper_row['local_conv']]} {paper_row['kernels']}"


def lss_grid() -> list[dict[str, Any]]:
    """The LSS table's rows as grid rows (label + ``model.*`` options), in the paper's order."""
    rows = []
    for paper_row in paper_rows("lss_design"):
        kernels = [int(k) for k in str(paper_row["kernels"]).split(",")]
        rows.append({"label": lss_row_label(paper_row), **LSS_GROUPS[int(paper_row["group"])],
                     "local_conv": LSS_LOCAL_CONV[paper_row["local_conv"]], "local_kernels": kernels})
    return rows


# ---- several methods ---------------------------------------------------------------------------


def _multi_column_frame(table: Mapping[str, Mapping[tuple[str, str], Any]], index_name: str) -> pd.DataFrame:
    """A data frame with (method, metric) column levels from rows keyed by ``index_name``."""
    frame = pd.DataFrame.from_dict(table, orient="index")
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    frame.index.name = index_name
    return frame


def defect_type_table(comparison: Mapping[str, Any]) -> pd.DataFrame:
    """Per-defect-type AUROCs (percent) of every method of a
    :func:`~mambaad_lib.experiments.inspection.defect_type_comparison`.

    Rows: defect types (LAS-like flagged); columns: (method, image/pixel AUROC).
    """
    table: dict[str, dict[tuple[str, str], Any]] = {}
    for label, entry in comparison["methods"].items():
        for row in entry["per_defect_type"]:
            target = table.setdefault(row["defect_type"], {("", "LAS-like"): row["las_like"]})
            target[(label, "image AUROC")] = pct(row["i_auroc"])
            target[(label, "pixel AUROC")] = pct(row["p_auroc"])
    return _multi_column_frame(table, "defect type")


def defect_group_table(comparison: Mapping[str, Any]) -> pd.DataFrame:
    """Mean AUROCs (percent) of the LAS-like and the thin/structural defect groups per method."""
    table: dict[str, dict[tuple[str, str], Any]] = {}
    for label, entry in comparison["methods"].items():
        for group in entry["groups"]:
            target = table.setdefault(group["group"], {})
            target[(label, "image AUROC")] = pct(group["i_auroc"])
            target[(label, "pixel AUROC")] = pct(group["p_auroc"])
    return _multi_column_frame(table, "defect group")


# ---- benchmarks (efficiency notebook) ------------------------------------------------------------


def _machine(payload: Mapping[str, Any]) -> str:
    provenance = payload.get("provenance") or payload.get("environment") or {}
    return str(provenance.get("cpu") or provenance.get("gpu") or provenance.get("platform") or "unknown machine")


def _milliseconds(seconds: float | None) -> float | None:
    """Seconds -> milliseconds rounded to 0.01 (a benchmark that did not time a pass has None)."""
    return None if seconds is None else round(1e3 * seconds, 2)


def benchmark_tables(scan: Mapping[str, Any] | None, model: Mapping[str, Any] | None) -> dict[str, pd.DataFrame]:
    """Data frames of the scan and model benchmark files (``benchmarks/bench_scan.py``,
    ``bench_model.py``) that exist; keys are titles naming the machine."""
    tables = {}
    if scan and scan.get("stages"):
        rows = []
        for stage in scan["stages"]:
            for backend, timing in stage["backends"].items():
                rows.append({"channels": stage["channels"], "length": stage["length"], "backend": backend,
                             "forward ms": _milliseconds(timing.get("forward_s")),
                             "forward+backward ms": _milliseconds(timing.get("forward_backward_s")),
                             "forward speed-up vs reference": timing.get("forward_speedup_vs_loop"),
                             "fwd+bwd speed-up vs reference": timing.get("forward_backward_speedup_vs_loop"),
                             "fp32 relative error": timing.get("fp32_relative_error_vs_fp64")})
        tables[f"selective scan per decoder stage, batch {scan['stages'][0]['batch']} ({_machine(scan)})"] = \
            pd.DataFrame(rows).set_index(["channels", "length", "backend"])
    if model and model.get("backends"):
        rows = [{"backend": name, "inference images/s": timing.get("inference_images_per_s"),
                 "training images/s": timing.get("train_images_per_s"),
                 "scan share of inference": timing.get("scan_share_inference"),
                 "scan share of training": timing.get("scan_share_train")}
                for name, timing in model["backends"].items()]
        tables[f"full model, {model.get('image_size')}px, batch {model.get('batch')} ({_machine(model)})"] = \
            pd.DataFrame(rows).set_index("backend").round(3)
    return tables


def cost_vs_auroc_points(backbone_summary: Mapping[str, Any] | None, profile: str) -> list[dict[str, Any]]:
    """Points for the cost-vs-AUROC plots: the paper's Table 2 and our backbones-chapter rows
    (``backbone_summary``: notebook 02's summary, or None when it did not run).

    Our points use the ader protocol's image AUROC (the paper's evaluation) and the
    parameters/FLOPs at 256x256.
    """
    points = [{"label": f"{short_backbone(row['backbone'])} {row['decoder_depth']}", "group": "paper (MVTec-AD)",
               "params_m": row["params_m"], "flops_g": row["flops_g"], "i_auroc": row["i_auroc"]}
              for row in paper_rows("backbone_depth")]
    rows = [row for row in (backbone_summary or {}).get("rows", []) if row.get("trained")]
    first = {row["label"]: row for row in reversed(rows)}  # the costs are the same for every seed
    for label, values in seed_stats(rows, "ader.i_auroc").items():  # one point per row: mean over seeds
        points.append({"label": label, "group": f"ours ({profile} profile, ader, mean over seeds)",
                       "params_m": first[label]["params_m_256"], "flops_g": first[label]["flops_g_256"],
                       "i_auroc": pct(values.mean)})
    return points
