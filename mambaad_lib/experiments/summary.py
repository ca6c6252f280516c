"""A notebook's summary file: the one JSON its page's tables, figures and sentences are drawn from.

``<results_root>/<notebook>/<profile>/summary.json`` holds ``schema``, ``notebook``,
``profile``, ``environment`` (versions and the code's commit, read when the file is
written) and the notebook's own keys. Every notebook writes one through
:meth:`~mambaad_lib.experiments.Context.write_summary`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from mambaad_lib.engine.results import environment
from mambaad_lib.utils.files import atomic_write_json
from mambaad_lib.utils.schema import to_plain

SUMMARY_SCHEMA = "mambaad-companion/notebook-summary"


def summary_path(results_root: str | Path, notebook: str, profile: str, name: str = "summary") -> Path:
    """``<results_root>/<notebook>/<profile>/<name>.json``."""
    return Path(results_root) / notebook / profile / f"{name}.json"


def write_summary(results_root: str | Path, notebook: str, profile: str, payload: Mapping[str, Any],
                  name: str = "summary") -> Path:
    """Write a notebook's summary atomically, with its schema header and provenance."""
    path = summary_path(results_root, notebook, profile, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"schema": SUMMARY_SCHEMA, "notebook": notebook, "profile": profile, "environment": environment(),
              **to_plain(dict(payload))}
    return atomic_write_json(path, record)


def read_summary(results_root: str | Path, notebook: str, profile: str, name: str = "summary") -> dict[str, Any]:
    """What :func:`write_summary` wrote.

    Raises:
        FileNotFoundError: with the command that writes it.
    """
    path = summary_path(results_root, notebook, profile, name)
    if not path.is_file():
        raise FileNotFoundError(f"no summary {str(path)!r}: run notebook {notebook} with profile {profile!r} first "
                                f"(mambaad reproduce --profile {profile} --only {notebook})")
    return json.loads(path.read_text(encoding="utf-8"))
