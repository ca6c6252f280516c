"""The built book, read as a reader meets it: no NaN, no reference to a file the repository
does not have, no dead relative link, and a "What we found" section in every experiment
chapter.

Two books are checked. The committed one (``book/*.md`` and the executed notebooks in
``book/experiments/``): every hand-written page and every chapter. And a chapter executed here with the smoke profile, in a
temporary folder (``test_smoke_chapter_reads_as_a_finished_text``), which checks the
notebooks' current code end to end. The jupytext sources are checked without executing.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mambaad_lib.reproduce import REPO_ROOT, build_book, discover_notebooks, prepare_scratch_book, run_notebooks

FINDINGS_HEADING = "What we found"
# Wordings of references to notes that are not part of the repository.
MISSING_SOURCE_PHRASES = ("facts file", "facts table", "_facts.md")
MD_REFERENCE = re.compile(r"\b([\w./-]+\.md)\b")
# NaN shown as a value: a table cell, or a word of a printed output (stream or plain-text result)
NAN_CELL = re.compile(r"<t[dh][^>]*>\s*(?:NaN|nan)\s*</t[dh]>")
PRINTED_OUTPUT = re.compile(r'class="output (?:stream|text_plain)[^"]*">(.*?)</pre>', re.S)


class _Page(HTMLParser):
    """The visible text of the article and its relative links."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.links: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        for name, value in attrs:
            if name in ("href", "src") and value and not re.match(r"^(https?:|mailto:|#|data:|javascript:)", value):
                self.links.append(value.split("#")[0].split("?")[0])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def _read(page: Path) -> _Page:
    parsed = _Page()
    parsed.feed(page.read_text(encoding="utf-8"))
    return parsed


def _repository_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return {Path(line).name for line in listed.stdout.splitlines()}


def _problems(page: Path, known_files: set[str]) -> list[str]:
    """What a reader should not meet on ``page``: NaN, references to missing files, dead links."""
    parsed = _read(page)
    text = " ".join(parsed.text)
    # a value shown as NaN (prose that explains when a metric is NaN, as the metrics page does, is fine)
    html = page.read_text(encoding="utf-8")
    shown = NAN_CELL.findall(html) + [block for block in PRINTED_OUTPUT.findall(html)
                                      if re.search(r"\b(?:NaN|nan)\b", block)]
    problems = [f"{len(shown)} NaN value(s) in {page.name}"] if shown else []
    problems += [f"{page.name} mentions {phrase!r}" for phrase in MISSING_SOURCE_PHRASES if phrase in text]
    problems += [f"{page.name} names {name}, not in the repository" for name in set(MD_REFERENCE.findall(text))
                 if Path(name).name not in known_files]
    for link in parsed.links:
        if link and not (page.parent / link).exists():
            problems.append(f"{page.name} links {link}, which the build does not have")
    return problems


def _chapter_has_findings(notebook: Path) -> bool:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return any(cell["cell_type"] == "markdown" and f"## {FINDINGS_HEADING}" in "".join(cell["source"])
               for cell in cells)


def test_every_notebook_source_ends_with_what_we_found() -> None:
    """Each jupytext source has the heading, then a cell that renders sentences built by the
    library's helpers (numbers interpolated), before its closing "Try it yourself"."""
    for source in discover_notebooks():
        text = source.read_text(encoding="utf-8")
        assert f"# ## {FINDINGS_HEADING}" in text, source.name
        section = text.split(f"# ## {FINDINGS_HEADING}", 1)[1].split("# ## Try it yourself", 1)[0]
        assert "display(Markdown(ex.findings(" in section, source.name
        assert "ex.provenance_sentence(" in section or source.stem == "06_efficiency", source.name


@pytest.fixture(scope="module")
def committed_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("jupyter_book")
    output = tmp_path_factory.mktemp("committed_book")
    build_book(REPO_ROOT, output=output, update_toc=False, quiet=True)
    return output / "_build" / "html"


@pytest.mark.slow
def test_committed_pages_have_no_nan_missing_files_or_dead_links(committed_book: Path) -> None:
    known = _repository_files()
    pages = [committed_book / "book" / f"{path.stem}.html" for path in (REPO_ROOT / "book").glob("*.md")]
    assert pages and all(page.is_file() for page in pages)
    problems = [problem for page in pages for problem in _problems(page, known)]
    assert not problems, problems


@pytest.mark.slow
def test_committed_chapters_read_as_finished_texts(committed_book: Path) -> None:
    known = _repository_files()
    chapters = sorted((REPO_ROOT / "book" / "experiments").glob("[0-9][0-9]_*.ipynb"))
    sources = sorted(path.stem for path in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert [path.stem for path in chapters] == sources, "every notebook has a committed execution"
    problems = []
    for notebook in chapters:
        assert _chapter_has_findings(notebook), f"{notebook.stem}: executed before its 'What we found' section"
        page = committed_book / "book" / "experiments" / f"{notebook.stem}.html"
        text = " ".join(_read(page).text)
        problems += _problems(page, known)
        assert FINDINGS_HEADING in text, notebook.stem
        assert "Traceback" not in text, notebook.stem
    assert not problems, problems


@pytest.mark.slow
def test_smoke_chapter_reads_as_a_finished_text(tmp_path: Path) -> None:
    """One chapter executed with the smoke profile into a scratch book, built strictly."""
    pytest.importorskip("jupyter_book")
    pytest.importorskip("papermill")
    from mambaad_lib.experiments import Context

    book = prepare_scratch_book(REPO_ROOT, tmp_path / "book_root")
    Context("test", dataset_root=str(tmp_path / "data"), dataset_name="synthetic_smoke").ensure_dataset()
    run_notebooks("smoke", ["03_scan_methods"], dataset_root=str(tmp_path / "data"), dataset_name="synthetic_smoke",
                  results_root=str(tmp_path / "results"), runs_root=str(tmp_path / "runs"),
                  out_dir=book / "book" / "experiments", progress=False)
    html = build_book(book, quiet=True).parent
    page = html / "book" / "experiments" / "03_scan_methods.html"
    text = " ".join(_read(page).text)
    assert FINDINGS_HEADING in text and "run(s) shown were trained in this execution" in text
    assert "Traceback" not in text
    problems = _problems(page, _repository_files())
    assert not problems, problems
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)  # checkpoints of ~80 MB: free the disk now
