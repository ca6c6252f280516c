"""The book builds offline, with warnings as errors, from the hand-written pages and a
notebook executed with the smoke profile, in a temporary folder; the runner's helpers."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mambaad_lib.reproduce import (REPO_ROOT, discover_notebooks, notebook_parameters, run_notebooks, toc_text)


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


@pytest.mark.slow
def test_book_builds_from_smoke_outputs(tmp_path: Path) -> None:
    pytest.importorskip("jupyter_book")
    pytest.importorskip("papermill")
    from mambaad_lib.experiments import Context
    from mambaad_lib.reproduce import build_book

    book = tmp_path / "book_root"
    (book / "book").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "_config.yml", book / "_config.yml")
    for page in (REPO_ROOT / "book").glob("*.md"):
        shutil.copy(page, book / "book" / page.name)
    if (REPO_ROOT / "book" / "figures").is_dir():
        shutil.copytree(REPO_ROOT / "book" / "figures", book / "book" / "figures")
    Context("test", dataset_root=str(tmp_path / "data"), dataset_name="synthetic_smoke").ensure_dataset()
    run_notebooks("smoke", ["03_scan_methods"], dataset_root=str(tmp_path / "data"), dataset_name="synthetic_smoke",
                  results_root=str(tmp_path / "results"), runs_root=str(tmp_path / "runs"),
                  out_dir=book / "book" / "experiments", progress=False)
    index = build_book(book, quiet=True)
    assert index.is_file()
    chapter = book / "_build" / "html" / "book" / "experiments" / "03_scan_methods.html"
    html = chapter.read_text(encoding="utf-8")
    assert "Scan orders and directions" in html and "<img" in html
    assert "Traceback" not in html
