"""Global Anomaly Synthesis (GAS), the feature-level half of GLASS.

Starting from adapted normal patch features ``h`` (N, D):

1. ``h' = h + eps`` with ``eps ~ N(0, noise_std^2 I)``;
2. ``steps`` steps of gradient *ascent* on the discriminator's loss for calling ``h'``
   anomalous (BCE with target 1): ``h' <- h' + step_size * g / ||g||`` (per feature), which
   pushes the synthetic features towards what the discriminator still takes for normal,
   i.e. towards hard, near-normal anomalies;
3. every ``project_every`` steps (and after the last step), a projection back into a band
   that keeps them anomalous but close:

   - ``manifold``: the perturbation ``h' - h`` is rescaled so that its norm lies in
     [``manifold_min``, ``manifold_max``] (GLASS: [0.5, 1]);
   - ``hypersphere``: the offset from the centre ``c`` of the normal features is rescaled so
     that ``||h' - c||`` lies in [r, 2r], r = the ``radius_quantile`` quantile of the normal
     features' distances to ``c`` (GLASS: 0.75).

The discriminator is only read (its parameters get no gradient here); the training loop
then fits it with BCE on normal (label 0) versus GAS (label 1) features.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

BANDS = ("manifold", "hypersphere")


@dataclass
class GASConfig:
    """Parameters of Global Anomaly Synthesis (defaults are GLASS's)."""

    noise_std: float = 0.015
    steps: int = 20
    step_size: float = 0.001
    project_every: int = 5
    band: str = "manifold"
    manifold_min: float = 0.5
    manifold_max: float = 1.0
    radius_quantile: float = 0.75

    def __post_init__(self) -> None:
        if self.band not in BANDS:
            raise ValueError(f"band must be one of {BANDS}, got {self.band!r}")
        if self.noise_std < 0 or self.step_size < 0:
            raise ValueError(f"noise_std and step_size must be >= 0, got {self.noise_std}, {self.step_size}")
        if self.steps < 0 or self.project_every < 1:
            raise ValueError(f"need steps >= 0 and project_every >= 1, got {self.steps}, {self.project_every}")
        if not 0 <= self.manifold_min <= self.manifold_max:
            raise ValueError(f"need 0 <= manifold_min <= manifold_max, got {self.manifold_min}, {self.manifold_max}")
        if not 0 < self.radius_quantile < 1:
            raise ValueError(f"radius_quantile must be in (0, 1), got {self.radius_quantile}")


def _rescale_norm(offset: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
    """Rescale each row of ``offset`` (N, D) so that its L2 norm is clamped into [low, high].

    A zero row has no direction; it gets a fixed unit direction (first axis) scaled to ``low``.
    """
    norm = offset.norm(dim=1, keepdim=True)  # (N, 1)
    fallback = torch.zeros_like(offset)
    fallback[:, 0] = 1.0
    direction = torch.where(norm > 1e-12, offset / norm.clamp_min(1e-12), fallback)
    low = torch.as_tensor(low, dtype=offset.dtype, device=offset.device)
    high = torch.as_tensor(high, dtype=offset.dtype, device=offset.device)
    return direction * torch.minimum(torch.maximum(norm, low), high)


def hypersphere_radius(normal: torch.Tensor, center: torch.Tensor, quantile: float = 0.75) -> torch.Tensor:
    """The ``quantile`` of the distances of normal features (N, D) to ``center`` (D,): scalar."""
    return torch.quantile((normal - center).norm(dim=1), quantile)


def project_to_band(fake: torch.Tensor, normal: torch.Tensor, config: GASConfig,
                    center: torch.Tensor | None = None, radius: torch.Tensor | float | None = None) -> torch.Tensor:
    """Project synthetic features (N, D) into the configured band around ``normal`` (N, D).

    ``center`` (D,) and ``radius`` are used by the hypersphere band; when omitted they are
    the mean of ``normal`` and the ``radius_quantile`` of its distances to that mean.
    """
    if fake.shape != normal.shape:
        raise ValueError(f"fake {tuple(fake.shape)} and normal {tuple(normal.shape)} features must have the same shape")
    if config.band == "manifold":
        return normal + _rescale_norm(fake - normal, config.manifold_min, config.manifold_max)
    if center is None:
        center = normal.mean(dim=0)
    if radius is None:
        radius = hypersphere_radius(normal, center, config.radius_quantile)
    return center + _rescale_norm(fake - center, radius, 2 * radius)


def synthesize_gas(normal: torch.Tensor, discriminator: nn.Module, config: GASConfig | None = None,
                   generator: torch.Generator | None = None, center: torch.Tensor | None = None,
                   radius: torch.Tensor | float | None = None) -> torch.Tensor:
    """GAS features (N, D) from adapted normal features (N, D); detached from any graph.

    ``discriminator`` maps (N, D) to anomaly probabilities (N, 1). ``generator`` seeds the
    Gaussian noise. ``center``/``radius`` fix the hypersphere band (see :func:`project_to_band`).
    """
    config = config or GASConfig()
    normal = normal.detach()
    noise = torch.randn(normal.shape, generator=generator, dtype=normal.dtype, device="cpu").to(normal.device)
    fake = normal + config.noise_std * noise
    requires_grad = [parameter.requires_grad for parameter in discriminator.parameters()]
    for parameter in discriminator.parameters():
        parameter.requires_grad_(False)
    try:
        for step in range(config.steps):
            fake = fake.detach().requires_grad_(True)
            loss = F.binary_cross_entropy(discriminator(fake).clamp(1e-7, 1 - 1e-7),
                                          torch.ones(len(fake), 1, dtype=fake.dtype, device=fake.device))
            (gradient,) = torch.autograd.grad(loss, fake)
            step_direction = gradient / gradient.norm(dim=1, keepdim=True).clamp_min(1e-12)
            fake = fake.detach() + config.step_size * step_direction
            if (step + 1) % config.project_every == 0 or step + 1 == config.steps:
                fake = project_to_band(fake, normal, config, center, radius)
    finally:
        for parameter, flag in zip(discriminator.parameters(), requires_grad):
            parameter.requires_grad_(flag)
    if config.steps == 0:
        fake = project_to_band(fake, normal, config, center, radius)
    return fake.detach()
