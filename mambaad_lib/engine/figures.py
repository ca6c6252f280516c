"""Heat-map overlays written by evaluation (book examples) and ``mambaad predict``.

Pure numpy + Pillow, so the core library does not need matplotlib.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Jet-like colour map: (H,W) in [0,1] -> (H,W,3) uint8 (blue low, red high)."""
    x = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peaks at x = 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def normalize_map(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    """Scale a map to [0, 1] with a shared range, so several maps are comparable."""
    return np.clip((anomaly_map - low) / max(high - low, 1e-12), 0.0, 1.0)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an RGB image (H,W,3) in [0,1] with a normalised map (H,W) in [0,1] -> uint8."""
    blended = (1 - alpha) * image + alpha * heat_colors(heat) / 255.0
    return (np.clip(blended, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def example_panel(image: np.ndarray, heat: np.ndarray, mask: np.ndarray | None) -> Image.Image:
    """Side by side: image | ground truth (when given) | overlay; all (H,W[,3]) in [0,1]."""
    tiles = [(np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)]
    if mask is not None:
        tiles.append(np.repeat((mask > 0).astype(np.uint8)[..., None] * 255, 3, axis=2))
    tiles.append(overlay(image, heat))
    gap = np.full((image.shape[0], 2, 3), 255, dtype=np.uint8)
    row = [tiles[0]]
    for tile in tiles[1:]:
        row += [gap, tile]
    return Image.fromarray(np.concatenate(row, axis=1))
