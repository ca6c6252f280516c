"""Global Anomaly Synthesis (GAS), the feature-level half of GLASS, as the release does it
(``glass.py``, ``_train_discriminator``, of cqylunlun/GLASS).

Starting from adapted normal patch features ``h`` (N, D):

1. ``h' = h + eps`` with ``eps ~ N(0, noise_std^2 I)``;
2. ``steps`` steps of gradient *ascent* on the discriminator's BCE for calling ``h'``
   anomalous: ``h' <- h' + step_size * g / ||g||`` per feature. The discriminator scores
   ``[h, h']`` in one pass, so in training mode its BatchNorm normalises normal and GAS
   features with one set of batch statistics, as in the release; the ascent pushes the
   synthetic features towards what the discriminator still takes for normal, i.e. towards
   hard, near-normal anomalies;
3. after every ``project_every``-th step, a projection into a band that keeps them anomalous
   but close (:func:`project_to_band`):

   - ``manifold``: the perturbation ``h' - h`` is rescaled so that its norm lies in
     [``manifold_min``, ``manifold_max``] (release: [0.5, 1]);
   - ``hypersphere``: the offset from the centre ``c`` (per patch position: the mean of the
     training set's adapted features at that position) is rescaled so that ``||h' - c||``
     lies in [r, 2r], with r the ``radius_quantile`` (0.75) quantile of the normal features'
     distances to their centres.

In the hypersphere case the release also pushes LAS features of defect patches out to
[``las_shell[0]`` r, ``las_shell[1]`` r] = [2r, 4r] (:func:`clamp_offset`).

Which band a class gets is the release's distribution table (:data:`RELEASE_HYPERSPHERE_CLASSES`,
:func:`release_band`). The ascent only reads the discriminator (no parameter gradient is
accumulated); the GAS features keep the autograd graph of ``h`` (the steps are applied
without recording, the projections with), so the training loss reaches the adaptor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

BANDS = ("manifold", "hypersphere")

# The release's distribution table (datasets/excel/{mvtec,visa,mpdd}_distribution.xlsx,
# column "Distribution": 1 = hypersphere, 0 = manifold), by dataset.
RELEASE_HYPERSPHERE_CLASSES: dict[str, tuple[str, ...]] = {
    "mvtec": ("bottle", "cable", "pill", "screw", "transistor"),
    "visa": ("cashew", "fryum", "pcb1", "pcb2", "pcb4", "pipe_fryum"),
    "mpdd": (),
}
RELEASE_MANIFOLD_CLASSES: dict[str, tuple[str, ...]] = {
    "mvtec": ("carpet", "grid", "leather", "tile", "wood", "capsule", "hazelnut", "metal_nut", "toothbrush",
              "zipper"),
    "visa": ("candle", "capsules", "chewinggum", "macaroni1", "macaroni2", "pcb3"),
    "mpdd": ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"),
}


def release_band(class_name: str, default: str = "manifold") -> str:
    """The band the release's table gives ``class_name`` (MVTec AD, VisA or MPDD name);
    ``default`` for a class the table does not list."""
    if default not in BANDS:
        raise ValueError(f"default band must be one of {BANDS}, got {default!r}")
    if any(class_name in names for names in RELEASE_HYPERSPHERE_CLASSES.values()):
        return "hypersphere"
    if any(class_name in names for names in RELEASE_MANIFOLD_CLASSES.values()):
        return "manifold"
    return default


@dataclass
class GASConfig:
    """Parameters of Global Anomaly Synthesis (defaults are the release's)."""

    noise_std: float = 0.015
    steps: int = 20
    step_size: float = 0.001
    project_every: int = 5
    manifold_min: float = 0.5
    manifold_max: float = 1.0
    radius_quantile: float = 0.75
    las_shell: tuple[float, float] = (2.0, 4.0)
    # Format-1 files' key (one band for every class, before the per-class table); GLASS reads
    # it as ``model.distribution``. New configs leave it null.
    band: str | None = None

    def __post_init__(self) -> None:
        if self.noise_std < 0 or self.step_size < 0:
            raise ValueError(f"noise_std and step_size must be >= 0, got {self.noise_std}, {self.step_size}")
        if self.steps < 0 or self.project_every < 1:
            raise ValueError(f"need steps >= 0 and project_every >= 1, got {self.steps}, {self.project_every}")
        if not 0 <= self.manifold_min <= self.manifold_max:
            raise ValueError(f"need 0 <= manifold_min <= manifold_max, got {self.manifold_min}, {self.manifold_max}")
        if not 0 < self.radius_quantile < 1:
            raise ValueError(f"radius_quantile must be in (0, 1), got {self.radius_quantile}")
        if self.band is not None and self.band not in BANDS:
            raise ValueError(f"band must be one of {BANDS} or null, got {self.band!r}")
        self.las_shell = tuple(float(v) for v in self.las_shell)
        if len(self.las_shell) != 2 or not 0 <= self.las_shell[0] <= self.las_shell[1]:
            raise ValueError(f"las_shell must be two factors 0 <= low <= high, got {self.las_shell}")


def clamp_offset(points: torch.Tensor, anchors: torch.Tensor, low: torch.Tensor | float,
                 high: torch.Tensor | float) -> torch.Tensor:
    """``anchors + h * clamp(||h||, low, high) / ||h||`` with ``h = points - anchors`` (N, D):
    every point moved along its offset so that its distance to its anchor lies in
    [low, high] (differentiable; anchors (N, D) or (D,))."""
    offset = points - anchors
    norm = offset.norm(dim=1, keepdim=True)  # (N, 1)
    return anchors + offset * (norm.clamp(min=low, max=high) / (norm + 1e-10))


def hypersphere_radius(normal: torch.Tensor, center: torch.Tensor, quantile: float = 0.75) -> torch.Tensor:
    """The ``quantile`` of the distances of normal features (N, D) to ``center`` ((N, D) or (D,)): scalar."""
    return torch.quantile((normal - center).detach().norm(dim=1), quantile)


def project_to_band(fake: torch.Tensor, normal: torch.Tensor, config: GASConfig, band: str = "manifold",
                    center: torch.Tensor | None = None, radius: torch.Tensor | float | None = None) -> torch.Tensor:
    """Project synthetic features (N, D) into ``band`` around ``normal`` (N, D).

    ``center`` ((N, D) per patch, or (D,)) and ``radius`` are used by the hypersphere band;
    when omitted they are the mean of ``normal`` and the ``radius_quantile`` of its distances
    to that mean.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    if fake.shape != normal.shape:
        raise ValueError(f"fake {tuple(fake.shape)} and normal {tuple(normal.shape)} features must have the same shape")
    if band == "manifold":
        return clamp_offset(fake, normal, config.manifold_min, config.manifold_max)
    if center is None:
        center = normal.detach().mean(dim=0)
    if radius is None:
        radius = hypersphere_radius(normal, center, config.radius_quantile)
    return clamp_offset(fake, center, radius, 2 * radius)


def synthesize_gas(normal: torch.Tensor, discriminator: nn.Module, config: GASConfig | None = None,
                   generator: torch.Generator | None = None, band: str = "manifold",
                   center: torch.Tensor | None = None, radius: torch.Tensor | float | None = None) -> torch.Tensor:
    """GAS features (N, D) from adapted normal features (N, D).

    ``discriminator`` maps (N, D) to anomaly probabilities (N, 1) and is used in whatever
    mode it is in (training mode: BatchNorm over ``[normal, fake]``, as the release).
    ``generator`` seeds the Gaussian noise. ``band``, ``center`` and ``radius``: see
    :func:`project_to_band`. The result keeps ``normal``'s autograd graph.
    """
    config = config or GASConfig()
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    noise = torch.randn(normal.shape, generator=generator, dtype=normal.dtype, device="cpu").to(normal.device)
    anchor = normal.detach()
    fake = normal + config.noise_std * noise
    if not fake.requires_grad:  # a detached input: the ascent still needs gradients w.r.t. fake
        fake = fake.requires_grad_(True)
    for step in range(config.steps):
        scores = discriminator(torch.cat([anchor, fake]))[len(anchor):]  # (N, 1)
        loss = F.binary_cross_entropy(scores, torch.ones_like(scores))
        (gradient,) = torch.autograd.grad(loss, fake)
        with torch.no_grad():  # the step itself is not part of the graph (as the release)
            fake.add_(config.step_size * gradient / (gradient.norm(dim=1, keepdim=True) + 1e-10))
        if (step + 1) % config.project_every == 0:
            fake = project_to_band(fake, normal, config, band, center, radius)
    return fake
