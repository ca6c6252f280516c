"""The picture grid of the synthetic benchmark for the docs: one row per class, one column
per defect type (plus a normal image), defect masks ringed in yellow.

    python -m data_prep.figures --out book/figures/synthetic_grid.png

Uses only PIL so it runs wherever the generator does.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from mambaad_lib.data.synthetic import CLASSES, DEFECT_TYPES, image_rng, synthesize_image
from mambaad_lib.data.meta import NORMAL_SPECIE
from mambaad_lib.utils.files import atomic_write

__all__ = ["synthetic_grid", "main"]

OUTLINE = (255, 230, 0)


def _outlined(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A 2-px ring drawn one pixel outside the mask, so that thin defects stay visible."""
    ring = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask, iterations=1)
    out = image.copy()
    out[ring] = OUTLINE
    return out


def synthetic_grid(seed: int = 0, tile: int = 160, classes: Sequence[str] = CLASSES) -> Image.Image:
    """The grid as a PIL image; tile ``i`` of row ``c`` uses ``image_rng(seed, c, "test", 10_000 + i)``."""
    columns = (NORMAL_SPECIE,) + DEFECT_TYPES
    label_w, label_h, gap = 90, 24, 4
    font = ImageFont.load_default(size=15)
    grid = Image.new("RGB", (label_w + len(columns) * (tile + gap), label_h + len(classes) * (tile + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for j, column in enumerate(columns):
        draw.text((label_w + j * (tile + gap) + tile // 2, label_h // 2), column, fill="black", font=font, anchor="mm")
    for i, cls_name in enumerate(classes):
        top = label_h + i * (tile + gap)
        draw.text((label_w - 8, top + tile // 2), cls_name, fill="black", font=font, anchor="rm")
        for j, specie in enumerate(columns):
            image, mask, _ = synthesize_image(cls_name, specie, tile, image_rng(seed, cls_name, "test", 10_000 + j))
            grid.paste(Image.fromarray(_outlined(image, mask)), (label_w + j * (tile + gap), top))
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("book/figures/synthetic_grid.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, default=160)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette keeps the file about 4x smaller than full RGB (the images are noisy).
    grid = synthetic_grid(args.seed, args.tile).quantize(256, method=Image.Quantize.FASTOCTREE)
    atomic_write(args.out, lambda handle: grid.save(handle, format="PNG", optimize=True))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
