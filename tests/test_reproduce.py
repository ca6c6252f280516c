"""``mambaad reproduce`` writes into the scratch folder ``_rerun/`` unless ``--into-book``:
the committed book (``book/experiments/``, ``results/``) is never touched by a default rerun.

Notebook execution is replaced by a stub that writes a one-cell notebook and records the
papermill parameters it was given; the real execution is tested in tests/test_book.py.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest

from mambaad_lib import reproduce


def _checkout(root: Path) -> Path:
    """A minimal checkout: two notebooks, the book's config and two pages."""
    (root / "notebooks").mkdir(parents=True)
    for stem in ("01_first", "02_second"):
        (root / "notebooks" / f"{stem}.py").write_text("# %%\nprint('hello')\n")
    (root / "book" / "figures").mkdir(parents=True)
    (root / "book" / "figures" / "f.txt").write_text("figure")
    (root / "book" / "intro.md").write_text("# Intro\n")
    (root / "book" / "api.md").write_text("# API\n")
    (root / "_config.yml").write_text("title: test\n")
    return root


@pytest.fixture
def executed(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Stub execution: ``{output path: parameters}`` of every notebook 'executed'."""
    calls: dict[str, dict[str, Any]] = {}

    def fake_execute(source: Path, output: Path, parameters: dict[str, Any], cwd: Path, kernel_name: str,
                     timeout: int | None) -> float:
        output.parent.mkdir(parents=True, exist_ok=True)
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {source.stem}")])
        output.write_text(nbformat.writes(notebook))
        calls[str(output)] = dict(parameters, cwd=str(cwd))
        return 0.5

    monkeypatch.setattr(reproduce, "execute_notebook", fake_execute)
    return calls


def _args(*argv: str) -> argparse.Namespace:
    return reproduce.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_default_rerun_writes_only_the_scratch_folder(tmp_path: Path, executed: dict) -> None:
    root = _checkout(tmp_path / "repo")
    assert reproduce.run(_args("--profile", "smoke", "--only", "01", "--no-build"), root=root) == 0
    scratch = root / reproduce.SCRATCH
    output = scratch / "book" / "experiments" / "01_first.ipynb"
    assert list(executed) == [str(output)] and output.is_file()
    parameters = executed[str(output)]
    assert parameters["results_root"] == "_rerun/results" and parameters["runs_root"] == "_rerun/runs"
    assert parameters["cwd"] == str(root) and parameters["profile"] == "smoke"
    log = json.loads((scratch / "results" / "reproduce" / "smoke.json").read_text())
    assert [entry["notebook"] for entry in log["notebooks"]] == ["01_first"]
    # the scratch book has the pages and configuration of the checkout, the checkout no outputs
    assert (scratch / "book" / "intro.md").read_text() == "# Intro\n"
    assert (scratch / "_config.yml").is_file() and (scratch / "book" / "figures" / "f.txt").is_file()
    assert not (root / "book" / "experiments").exists() and not (root / "results").exists()


def test_into_book_writes_the_committed_book(tmp_path: Path, executed: dict) -> None:
    root = _checkout(tmp_path / "repo")
    reproduce.run(_args("--profile", "smoke", "--only", "02_second", "--no-build", "--into-book"), root=root)
    output = root / "book" / "experiments" / "02_second.ipynb"
    assert list(executed) == [str(output)]
    assert "results_root" not in executed[str(output)]  # the notebooks' own results/ and runs/
    assert (root / "results" / "reproduce" / "smoke.json").is_file()
    assert not (root / reproduce.SCRATCH).exists()


def test_scratch_book_is_rebuilt_from_the_current_pages(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "repo")
    scratch = reproduce.prepare_scratch_book(root)
    (scratch / "book" / "experiments").mkdir()
    (scratch / "book" / "experiments" / "01_first.ipynb").write_text("{}")
    (root / "book" / "intro.md").write_text("# Intro, edited\n")
    (root / "book" / "figures" / "f.txt").write_text("new figure")
    reproduce.prepare_scratch_book(root)
    assert (scratch / "book" / "intro.md").read_text() == "# Intro, edited\n"
    assert (scratch / "book" / "figures" / "f.txt").read_text() == "new figure"
    assert (scratch / "book" / "experiments" / "01_first.ipynb").is_file()  # executed notebooks are kept
    assert "book/experiments/01_first" in reproduce.toc_text(scratch)


def test_scratch_folder_is_ignored_by_git_and_provenance() -> None:
    from mambaad_lib.engine.results import RUN_OUTPUT_PATHS

    assert f"{reproduce.SCRATCH}/" in RUN_OUTPUT_PATHS
    ignored = (reproduce.REPO_ROOT / ".gitignore").read_text().splitlines()
    assert f"/{reproduce.SCRATCH}/" in ignored
