"""The paper's published tables (``mambaad_lib/paper/*.csv``, package data), for side-by-side views."""
from __future__ import annotations

import csv

from mambaad_lib.utils.resources import PAPER_TABLES_DIR as PAPER_DIR


def paper_table(name: str) -> list[dict[str, str]]:
    """Rows of ``<name>.csv`` as dicts of strings (values are percentages as printed).

    Raises:
        FileNotFoundError: when the table does not exist (lists the ones that do).
    """
    path = PAPER_DIR / f"{name}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in PAPER_DIR.glob("*.csv"))
        raise FileNotFoundError(f"no paper table {name!r} at {path}; known tables: {known}")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
