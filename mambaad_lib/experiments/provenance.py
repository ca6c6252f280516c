"""Which encoder weights, masks and metric protocols the book's published numbers used.

Built from the results files themselves, so the reproducibility page's table is a
function of ``results/``: ``python -m mambaad_lib.experiments.provenance`` prints it and
``--write PAGE`` replaces the table between the page's ``provenance`` markers; a test
checks the committed page against the committed results.
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from mambaad_lib.engine.results import load_results
from mambaad_lib.utils.files import atomic_write

START, END = "<!-- provenance:start -->", "<!-- provenance:end -->"
_WEIGHTS = {"none": "random (offline), BatchNorm re-estimated", "imagenet": "ImageNet (the release's timm file)",
            "torchvision": "ImageNet (torchvision IMAGENET1K_V1)", "file": "local file"}
_MASKS = {"nearest": "nearest, > 0", "bilinear": "bilinear, > 0.5"}


def _weights(record: Mapping[str, Any]) -> str:
    weights = (record.get("encoder") or {}).get("weights") or {}
    choice = weights.get("choice")
    if choice is None:
        return "no frozen encoder"
    if choice == "file" and "released checkpoint" in str(weights.get("source")):
        return "released checkpoint"
    return _WEIGHTS.get(choice, choice)


def _protocols(record: Mapping[str, Any]) -> list[str]:
    ground_truth = record.get("ground_truth") or {}
    return [f"{protocol} (masks {_MASKS.get(rule['masks'], rule['masks'])}"
            f"{'; labels = mask maxima' if rule['labels_from_masks'] else ''})"
            for protocol, rule in sorted(ground_truth.items())]


def provenance_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per (experiment, profile): runs, methods, encoder weights, protocols and their
    masks, and the commits (with ``dirty`` where a run started from a tree with changes).

    Args:
        records: results records (as :func:`~mambaad_lib.engine.results.load_results` gives).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["experiment"], record["profile"])].append(record)
    rows = []
    for (experiment, profile), group in sorted(groups.items()):
        commits = sorted({f"{(r['environment'].get('git_commit') or 'unknown')[:7]}"
                          f"{' dirty' if r['environment'].get('git_dirty') else ''}" for r in group})
        rows.append({"experiment": experiment, "profile": profile, "runs": str(len(group)),
                     "methods": ", ".join(sorted({r["method"] for r in group})),
                     "encoder weights": "; ".join(sorted({_weights(r) for r in group})),
                     "protocols (masks)": "; ".join(sorted({p for r in group for p in _protocols(r)})),
                     "commits": ", ".join(commits)})
    return rows


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Rows of equal keys as a Markdown table (``|`` inside cells escaped); the provenance page and
    the README's demo table use it."""
    if not rows:
        return "No results files."
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[key].replace("|", "\\|") for key in header) + " |" for row in rows]
    return "\n".join(lines)


def page_table(results_dir: str | Path) -> str:
    """The block between the markers for the results under ``results_dir``."""
    records = [record for record in load_results(results_dir) if record.get("experiment")]
    return f"{START}\n{markdown_table(provenance_rows(records))}\n{END}"


def replace_table(page_text: str, table: str, start: str = START, end: str = END) -> str:
    """``page_text`` with its block between the ``start`` and ``end`` markers replaced by ``table``.

    Raises:
        ValueError: the page lacks the markers.
    """
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(page_text):
        raise ValueError(f"the page has no {start} ... {end} block")
    return pattern.sub(lambda _: table, page_text, count=1)


def block_command(prog: str, description: str, block: Callable[[str], str], start: str = START, end: str = END,
                  argv: list[str] | None = None) -> None:
    """A ``python -m`` command that prints ``block(results folder)`` or, with ``--write FILE``,
    replaces the block between ``start`` and ``end`` in that Markdown file (atomically)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    parser.add_argument("--write", metavar="FILE", help="replace the marked block in this Markdown file")
    args = parser.parse_args(argv)
    text = block(args.results)
    if args.write is None:
        print(text)
        return
    page = Path(args.write)
    updated = replace_table(page.read_text(encoding="utf-8"), text, start, end)
    atomic_write(page, lambda handle: handle.write(updated.encode("utf-8")))


def main(argv: list[str] | None = None) -> None:
    block_command("python -m mambaad_lib.experiments.provenance", __doc__.split("\n")[0], page_table, argv=argv)


if __name__ == "__main__":
    main()
