"""Check a whole dataset in the standard layout as a command (:mod:`mambaad_lib.data.validate`).

    python -m data_prep.validate --root data --name mvtec
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mambaad_lib.data.validate import check_dataset, validate_dataset

__all__ = ["check_dataset", "validate_dataset", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.validate",
                                     description="Check a dataset's meta file and every file it names.")
    parser.add_argument("--root", required=True, type=Path, help="dataset root")
    parser.add_argument("--name", required=True, help="dataset name (meta_<name>.json)")
    args = parser.parse_args(argv)
    report = check_dataset(args.root, args.name)
    problems = report.problems
    for problem in problems:
        print(problem, file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}")
    print(f"{args.name}: {len(problems)} problem(s)" if problems else f"{args.name}: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
