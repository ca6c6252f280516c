"""The runner's helpers: notebook discovery, parameters, the table of contents. The book
built from a smoke-executed chapter is tested in tests/test_book_html.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from mambaad_lib.reproduce import discover_notebooks, notebook_parameters, toc_text


def test_discover_notebooks_orders_and_selects() -> None:
    stems = [path.stem for path in discover_notebooks()]
    assert stems == sorted(stems) and "03_scan_methods" in stems
    assert [path.stem for path in discover_notebooks(only=["03"])] == ["03_scan_methods"]
    with pytest.raises(FileNotFoundError, match="no such notebook"):
        discover_notebooks(only=["99_missing"])


def test_notebook_parameters_rejects_unknown_profile() -> None:
    assert notebook_parameters("demo", device="cpu") == {"profile": "demo", "device": "cpu"}
    with pytest.raises(ValueError, match="profile"):
        notebook_parameters("huge")


def test_toc_lists_existing_pages_and_executed_notebooks(tmp_path: Path) -> None:
    (tmp_path / "book" / "experiments").mkdir(parents=True)
    for page in ("intro", "datasets", "api"):
        (tmp_path / "book" / f"{page}.md").write_text(f"# {page}\n")
    for stem in ("02_b", "01_a"):
        (tmp_path / "book" / "experiments" / f"{stem}.ipynb").write_text("{}")
    (tmp_path / "book" / "experiments" / "03_c.failed.ipynb").write_text("{}")
    toc = toc_text(tmp_path)
    files = [line.split("file: ")[1] for line in toc.splitlines() if "file: " in line]
    assert files == ["book/datasets", "book/experiments/01_a", "book/experiments/02_b", "book/api"]
    assert "root: book/intro" in toc
