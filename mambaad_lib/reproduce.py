"""``mambaad reproduce``: execute the book's notebooks with papermill, then build the book.

    mambaad reproduce --profile smoke --only 03_scan_methods   # into the scratch folder _rerun/
    mambaad reproduce --profile demo --into-book               # the committed book: book/experiments/, results/
    mambaad reproduce --profile paper --dataset-root /data --dataset-name mvtec --device cuda

Each notebook (jupytext percent format) is read with ``jupytext.read``, executed by
``papermill.execute_notebook`` with the profile's parameters in the repository root (so
``data/`` resolves there), and written atomically to ``<book>/book/experiments/<stem>.ipynb``.

Where outputs go (:func:`output_paths`): by default into the scratch folder ``_rerun/``
(ignored by git): executed notebooks in ``_rerun/book/experiments/``, results in
``_rerun/results/``, runs in ``_rerun/runs/``, and the book is built from a copy of the
hand-written pages in ``_rerun/`` (``_rerun/_build/html/``), so a rerun never overwrites the
committed book. ``--into-book`` writes the committed book instead: ``book/experiments/``,
``results/``, ``runs/`` and ``_build/html/`` in the repository root. The run's wall times go
to ``<results>/reproduce/<profile>.json``. ``_toc.yml`` is regenerated from the pages and
the executed notebooks that exist, then ``jupyter-book build`` renders them without
executing anything (``execute_notebooks: "off"``).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mambaad_lib.engine.results import environment
from mambaad_lib.utils.files import atomic_write_json, atomic_write_text
from mambaad_lib.utils.resources import PACKAGE_DIR, require_repository

REPO_ROOT = PACKAGE_DIR.parent  # the checkout when run from one (see require_repository)
NOTEBOOK_PATTERN = re.compile(r"^\d\d_[a-z0-9_]+\.py$")
PROFILES = ("smoke", "demo", "paper")
# Hand-written pages in reading order; a page that does not exist is left out of the toc.
BOOK_PAGES_BEFORE = ("book/datasets", "book/metrics")
BOOK_PAGES_AFTER = ("book/model_costs", "book/release_checkpoints", "book/deployment", "book/reproducibility",
                    "book/training_bigger", "book/api")
SCRATCH = "_rerun"  # where a rerun goes unless --into-book (ignored by git; RUN_OUTPUT_PATHS lists it)
# What a book in the scratch folder copies from the checkout (the notebooks' outputs are its own).
BOOK_SOURCES = ("_config.yml", "book/figures", "book/_static")


@dataclass(frozen=True)
class OutputPaths:
    """Where one ``reproduce`` writes: the book root (``_config.yml``, ``_toc.yml``, ``_build/``),
    its executed notebooks, and the notebooks' ``results_root`` and ``runs_root`` relative to
    the checkout (None: the notebooks' own ``results`` and ``runs``), so that summaries record
    paths that hold on every machine."""

    book_root: Path
    notebooks: Path
    results_root: str | None
    runs_root: str | None


def output_paths(into_book: bool = False, root: str | Path = REPO_ROOT) -> OutputPaths:
    """The committed book's folders under ``root`` (``into_book``), else those of ``root/_rerun/``."""
    if into_book:
        return OutputPaths(Path(root), Path(root) / "book" / "experiments", None, None)
    scratch = Path(root) / SCRATCH
    return OutputPaths(scratch, scratch / "book" / "experiments", f"{SCRATCH}/results", f"{SCRATCH}/runs")


def prepare_scratch_book(root: str | Path = REPO_ROOT, scratch: str | Path | None = None) -> Path:
    """Copy the book's hand-written pages, ``_config.yml`` and static files into ``scratch``
    (default ``root/_rerun``), replacing older copies; executed notebooks there are kept."""
    root = Path(root)
    scratch = Path(scratch) if scratch is not None else root / SCRATCH
    (scratch / "book").mkdir(parents=True, exist_ok=True)
    for page in (root / "book").glob("*.md"):
        shutil.copy2(page, scratch / "book" / page.name)
    for name in BOOK_SOURCES:
        source, target = root / name, scratch / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        elif source.is_file():
            shutil.copy2(source, target)
    return scratch


@dataclass
class NotebookRun:
    """One executed notebook: where it went and how long it took."""

    stem: str
    output: Path
    seconds: float


def discover_notebooks(notebooks_dir: str | Path = REPO_ROOT / "notebooks",
                       only: Sequence[str] | None = None) -> list[Path]:
    """Every ``NN_name.py`` in ``notebooks_dir`` in order, or the ones named in ``only``.

    ``only`` entries may be stems (``03_scan_methods``), file names or number prefixes (``03``).

    Raises:
        FileNotFoundError: the folder is missing, or an ``only`` entry matches no notebook.
    """
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"notebooks folder {str(folder)!r} does not exist")
    found = sorted(path for path in folder.iterdir() if NOTEBOOK_PATTERN.match(path.name))
    if not only:
        return found
    chosen = []
    for entry in only:
        key = Path(entry).stem
        matches = [path for path in found if path.stem == key or path.stem.split("_", 1)[0] == key]
        if not matches:
            raise FileNotFoundError(f"--only {entry!r}: no such notebook; available: {[p.stem for p in found]}")
        chosen += [path for path in matches if path not in chosen]
    return chosen


def notebook_parameters(profile: str, dataset_root: str | None = None, dataset_name: str | None = None,
                        device: str | None = None, seeds: Sequence[int] | None = None,
                        results_root: str | None = None, runs_root: str | None = None) -> dict[str, Any]:
    """The papermill parameters: ``profile`` and whichever of the others were given."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {profile!r}")
    given = {"dataset_root": dataset_root, "dataset_name": dataset_name, "device": device,
             "seeds": list(seeds) if seeds is not None else None, "results_root": results_root,
             "runs_root": runs_root}
    return {"profile": profile, **{key: value for key, value in given.items() if value is not None}}


def execute_notebook(source: Path, output: Path, parameters: dict[str, Any], cwd: Path = REPO_ROOT,
                     kernel_name: str = "python3", timeout: int | None = None) -> float:
    """Execute one jupytext notebook into ``output`` (written atomically); returns seconds.

    Raises:
        papermill.PapermillExecutionError: a cell failed (the partly executed notebook is
            left at ``output`` with ``.failed.ipynb`` appended, for inspection).
    """
    import jupytext
    import papermill

    notebook = jupytext.read(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=".ipynb", dir=output.parent)
    os.close(handle)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(notebook, temporary, parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(cwd), progress_bar=False, execution_timeout=timeout)
    except BaseException:
        if Path(temporary).exists():
            os.replace(temporary, output.with_suffix(".failed.ipynb"))
        raise
    os.replace(temporary, output)
    return time.perf_counter() - started


def run_notebooks(profile: str, only: Sequence[str] | None = None, *, dataset_root: str | None = None,
                  dataset_name: str | None = None, device: str | None = None, seeds: Sequence[int] | None = None,
                  results_root: str | None = None, runs_root: str | None = None,
                  notebooks_dir: str | Path = REPO_ROOT / "notebooks",
                  out_dir: str | Path = REPO_ROOT / "book" / "experiments", cwd: str | Path = REPO_ROOT,
                  kernel_name: str = "python3", timeout: int | None = None,
                  progress: bool = True) -> list[NotebookRun]:
    """Execute the notebooks with papermill, in order, into ``out_dir/<stem>.ipynb``.

    Stops at the first failing notebook with a ``RuntimeError`` naming it, the cell and the
    error. Writes the wall
    times to ``<results_root or cwd/results>/reproduce/<profile>.json`` (:func:`write_run_log`).
    """
    from tqdm.auto import tqdm

    parameters = notebook_parameters(profile, dataset_root, dataset_name, device, seeds, results_root, runs_root)
    sources = discover_notebooks(notebooks_dir, only)
    runs: list[NotebookRun] = []
    log_dir = Path(results_root) if results_root else Path(cwd) / "results"
    if not log_dir.is_absolute():
        log_dir = Path(cwd) / log_dir
    bar = tqdm(sources, desc=f"notebooks ({profile})", unit="notebook", disable=not progress)
    try:
        _execute_all(bar, runs, parameters, Path(out_dir), Path(cwd), kernel_name, timeout)
    finally:  # the notebooks that did finish are logged even when a later one fails
        if runs:
            write_run_log(log_dir / "reproduce" / f"{profile}.json", profile, parameters, runs)
    return runs


def _execute_all(bar: Any, runs: list[NotebookRun], parameters: dict[str, Any], out_dir: Path, cwd: Path,
                 kernel_name: str, timeout: int | None) -> None:
    for source in bar:
        bar.set_postfix_str(source.stem)
        output = out_dir / f"{source.stem}.ipynb"
        try:
            seconds = execute_notebook(source, output, parameters, cwd, kernel_name, timeout)
        except Exception as error:
            if type(error).__name__ != "PapermillExecutionError":
                raise
            raise RuntimeError(f"notebook {source.stem} failed in cell {error.exec_count}: {error.ename}: "
                               f"{error.evalue}\nthe partly executed notebook is "
                               f"{output.with_suffix('.failed.ipynb')}") from error
        runs.append(NotebookRun(source.stem, output, seconds))
        bar.write(f"{source.stem}: {seconds:.0f} s -> {output}")


def write_run_log(path: Path, profile: str, parameters: dict[str, Any], runs: Sequence[NotebookRun]) -> Path:
    """Record the runs' wall times in ``path``, merged with the notebooks already logged there.

    A notebook run again replaces its entry, so ``--only`` runs add up to one log per profile.
    """
    import json

    entries: dict[str, dict[str, Any]] = {}
    if path.is_file():
        entries = {entry["notebook"]: entry for entry in json.loads(path.read_text(encoding="utf-8"))["notebooks"]}
    for run in runs:
        entries[run.stem] = {"notebook": run.stem, "seconds": run.seconds, "output": str(run.output),
                             "parameters": parameters}
    notebooks = [entries[stem] for stem in sorted(entries)]
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, {
        "profile": profile, "environment": environment(), "cpu_count": os.cpu_count(), "notebooks": notebooks,
        "total_notebook_seconds": sum(entry["seconds"] for entry in notebooks)})


# ---- the book --------------------------------------------------------------------------


def toc_text(root: str | Path = REPO_ROOT, experiments_dir: str = "book/experiments") -> str:
    """``_toc.yml`` for the pages and executed notebooks that exist under ``root``.

    Order: introduction (root), datasets, metrics, one chapter per executed notebook
    (``NN_*.ipynb``, in number order), model costs, release checkpoints, deployment, reproducibility, API.
    """
    root = Path(root)

    def exists(page: str) -> bool:
        return (root / f"{page}.md").is_file() or (root / f"{page}.ipynb").is_file()

    chapters = [page for page in BOOK_PAGES_BEFORE if exists(page)]
    folder = root / experiments_dir
    if folder.is_dir():
        chapters += [f"{experiments_dir}/{path.stem}" for path in sorted(folder.glob("[0-9][0-9]_*.ipynb"))
                     if not path.name.endswith(".failed.ipynb")]
    chapters += [page for page in BOOK_PAGES_AFTER if exists(page)]
    lines = ["# Generated by mambaad_lib.reproduce.write_toc: hand-written pages and the executed notebooks",
             "# (book/experiments/*.ipynb, written by `mambaad reproduce`).",
             "format: jb-book", "root: book/intro", "chapters:"]
    lines += [f"  - file: {page}" for page in chapters]
    return "\n".join(lines) + "\n"


def write_toc(root: str | Path = REPO_ROOT) -> Path:
    """Regenerate ``<root>/_toc.yml`` (atomically) from what exists; returns its path."""
    return atomic_write_text(Path(root) / "_toc.yml", toc_text(root))


def build_book(root: str | Path = REPO_ROOT, output: str | Path | None = None, strict: bool = True,
               update_toc: bool = True, quiet: bool = False) -> Path:
    """Build the HTML book with ``jupyter-book build`` (never executes a notebook).

    Args:
        root: folder holding ``_config.yml`` and ``_toc.yml``.
        output: where ``_build/`` goes (default: ``root``).
        strict: warnings are errors (``-W -n --keep-going``).
        update_toc: regenerate ``_toc.yml`` first (:func:`write_toc`).
    Returns:
        the path of ``index.html``.
    Raises:
        RuntimeError: the build failed (its output is in the message).
    """
    root = Path(root)
    if update_toc:
        write_toc(root)
    # The package has no __main__; its console script is jupyter_book.cli.main:main.
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(root),
               "--builder", "html"]
    if strict:
        command += ["-W", "-n", "--keep-going"]
    if output is not None:
        command += ["--path-output", str(output)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (exit {completed.returncode}):\n"
                           f"{completed.stdout[-6000:]}\n{completed.stderr[-6000:]}")
    if not quiet:
        print(completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else "book built")
    return Path(output or root) / "_build" / "html" / "index.html"


# ---- command line ----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``mambaad reproduce`` (shared by the CLI and :func:`main`)."""
    parser.add_argument("--profile", choices=PROFILES, default="demo",
                        help="smoke (seconds per notebook), demo (CPU: under an hour on an idle 2-core machine, see "
                             "results/reproduce/demo.json), paper (GPU, real data)")
    parser.add_argument("--only", nargs="+", metavar="NOTEBOOK",
                        help="notebook stems or numbers to run (default: every notebooks/NN_*.py)")
    parser.add_argument("--dataset-root", help="dataset root (default: the notebooks' own, data/)")
    parser.add_argument("--dataset-name", help="dataset name, e.g. mvtec (default: synthetic)")
    parser.add_argument("--device", help="cpu or cuda (default: the notebooks' own, cpu)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="seeds of every compared row (default: the notebooks' own)")
    parser.add_argument("--timeout", type=int, help="seconds a single cell may run (default: no limit)")
    parser.add_argument("--into-book", action="store_true",
                        help="write the committed book (book/experiments/, results/, runs/, _build/) instead of "
                             f"the scratch folder {SCRATCH}/ (default; ignored by git)")
    steps = parser.add_mutually_exclusive_group()  # together they would do nothing
    steps.add_argument("--no-build", action="store_true", help="execute the notebooks but do not build the book")
    steps.add_argument("--build-only", action="store_true", help="only build the book from executed notebooks")
    return parser


def run(args: argparse.Namespace, root: str | Path | None = None) -> int:
    """What ``mambaad reproduce`` does with parsed arguments (``root``: the checkout, default
    :data:`REPO_ROOT`)."""
    if root is None:
        require_repository("mambaad reproduce (it executes the notebooks and writes the book)")
    root = Path(root) if root is not None else REPO_ROOT
    paths = output_paths(getattr(args, "into_book", False), root)
    if paths.book_root != root:
        prepare_scratch_book(root, paths.book_root)
        print(f"writing to the scratch folder {paths.book_root} (--into-book writes the committed book)")
    if not args.build_only:
        started = time.perf_counter()
        runs = run_notebooks(args.profile, args.only, dataset_root=args.dataset_root,
                             dataset_name=args.dataset_name, device=args.device, seeds=args.seeds,
                             results_root=paths.results_root, runs_root=paths.runs_root,
                             notebooks_dir=root / "notebooks", out_dir=paths.notebooks, cwd=root,
                             timeout=args.timeout, progress=not getattr(args, "quiet", False))
        print(f"{len(runs)} notebook(s) executed in {time.perf_counter() - started:.0f} s")
    if not args.no_build:
        started = time.perf_counter()
        index = build_book(paths.book_root)
        print(f"book built in {time.perf_counter() - started:.0f} s: open {index}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mambaad_lib.reproduce ...`` (the same as ``mambaad reproduce ...``)."""
    parser = add_arguments(argparse.ArgumentParser(prog="mambaad reproduce", description=__doc__.split("\n\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
