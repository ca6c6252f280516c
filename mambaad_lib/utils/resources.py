"""Where the package's data files are, and the source checkout when there is one.

Profiles (``configs/*.yaml``) and the paper's tables (``paper/*.csv``) ship inside the
package, so a plain ``pip install`` can run ``mambaad train --profile smoke`` anywhere.
Only writing the book needs the repository checkout (notebooks, ``book/``):
:func:`repository_root` finds it, or says that there is none.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONFIGS_DIR = PACKAGE_DIR / "configs"
PAPER_TABLES_DIR = PACKAGE_DIR / "paper"


def repository_root() -> Path | None:
    """The source checkout this package was imported from (it holds ``pyproject.toml`` and
    ``notebooks/`` beside the package), or None for an installed copy."""
    candidate = PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").is_file() and (candidate / "notebooks").is_dir():
        return candidate
    return None


def require_repository(what: str) -> Path:
    """:func:`repository_root`, or a ``FileNotFoundError`` saying that ``what`` needs a checkout."""
    root = repository_root()
    if root is None:
        raise FileNotFoundError(
            f"{what} needs the source checkout of mambaad-companion (notebooks/ and book/), but this copy "
            f"of the package is installed at {PACKAGE_DIR} without one; clone the repository and run "
            "`pip install -e .` there")
    return root
