"""The README's demo table: the book's base-model runs, trained against untrained, per seed.

The demo profile (``mambaad train --profile demo``) is the base model of the book's demo
chapters, so the README shows the runs chapter 01 made rather than separate ones: the
rows come from ``<results>/01_main_results/demo/summary.json`` (its ``seed_rows`` and
``baseline_rows``). ``python -m mambaad_lib.experiments.readme`` prints the block;
``--write README.md`` replaces the one between the README's ``demo-table`` markers, and a
test checks the committed README against the committed results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from mambaad_lib.experiments.provenance import block_command, markdown_table
from mambaad_lib.experiments.summary import read_summary
from mambaad_lib.experiments.tables import seed_table

START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"
NOTEBOOK = "01_main_results"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def demo_rows(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per seed of the base model, then the mean ± std over seeds (percent,
    :func:`~mambaad_lib.experiments.tables.seed_table`'s format)."""
    keys = {"image AUROC": "standard.i_auroc", "pixel AUROC": "standard.p_auroc"}
    baseline = {row["seed"]: row for row in summary.get("baseline_rows") or []}
    rows, per_seed = [], []
    for run in summary["seed_rows"]:
        values = {}
        for name, key in keys.items():
            values[f"{name} untrained"] = run.get(f"untrained.{key}")
            values[f"{name} trained"] = run.get(key)
            values[f"{name} nearest neighbour"] = (baseline.get(run["seed"]) or {}).get(key)
        per_seed.append({"label": "mean ± std", **values})
        rows.append({"seed": str(run["seed"]), **{column: _percent(value) for column, value in values.items()},
                     "plateau": {True: "yes", False: "no"}.get(run.get("plateaued"), "—"),
                     "training time": f"{run['train_time_s']:.0f} s"})
    columns = [column for column in per_seed[0] if column != "label"]
    spread = seed_table(per_seed, {column: column for column in columns}).iloc[0]
    rows.append({"seed": "mean ± std", **{column: spread[column] or "—" for column in columns},
                 "plateau": f"{sum(row['plateau'] == 'yes' for row in rows)}/{len(rows)}", "training time": "—"})
    return rows


def gain_sentence(summary: Mapping[str, Any]) -> str:
    """What training bought on every seed, and the commit the runs started at."""
    runs: Sequence[Mapping[str, Any]] = summary["seed_rows"]
    gains = [run["standard.p_auroc"] - run["untrained.standard.p_auroc"] for run in runs
             if run.get("standard.p_auroc") is not None and run.get("untrained.standard.p_auroc") is not None]
    commits = sorted({f"{(run.get('git_commit') or 'unknown')[:7]}{' (dirty)' if run.get('git_dirty') else ''}"
                      for run in runs})
    made = (f"Runs started at commit {', '.join(commits)}, as written by "
            "`mambaad reproduce --profile demo --into-book`.")
    if not gains:
        return f"The untrained model was not evaluated. {made}"
    return (f"Training raises pixel AUROC by {100 * min(gains):.1f} to {100 * max(gains):.1f} points over the "
            f"untrained model on each of the {len(gains)} seeds. {made}")


def readme_block(results_dir: str | Path) -> str:
    """The block between the README's markers for the results under ``results_dir``."""
    summary = read_summary(results_dir, NOTEBOOK, "demo")
    return f"{START}\n{markdown_table(demo_rows(summary))}\n\n{gain_sentence(summary)}\n{END}"


def main(argv: list[str] | None = None) -> None:
    block_command("python -m mambaad_lib.experiments.readme", __doc__.split("\n")[0], readme_block, START, END, argv)


if __name__ == "__main__":
    main()
