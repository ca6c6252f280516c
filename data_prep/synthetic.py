"""The synthetic benchmark as a command (the generator is :mod:`mambaad_lib.data.synthetic`).

    python -m data_prep.synthetic --root data --name synthetic --seed 0
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from mambaad_lib.data.synthetic import CLASSES, make_synthetic_dataset

__all__ = ["make_synthetic_dataset", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.synthetic",
                                     description="Write the offline synthetic benchmark (MVTec layout).")
    parser.add_argument("--root", required=True, type=Path, help="dataset root")
    parser.add_argument("--name", default="synthetic", help="dataset name (default: synthetic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=60, help="training images per class")
    parser.add_argument("--n-test", type=int, default=40, help="test images per class (40 %% normal)")
    parser.add_argument("--classes", nargs="+", default=None, choices=CLASSES, metavar="CLASS",
                        help=f"subset of {', '.join(CLASSES)}")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args(argv)
    try:
        path = make_synthetic_dataset(args.root, args.name, args.seed, args.image_size, args.n_train, args.n_test,
                                      args.classes, args.overwrite)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}")
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
