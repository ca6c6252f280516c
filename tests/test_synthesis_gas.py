"""Global Anomaly Synthesis: projection bands and gradient ascent."""
import pytest
import torch
import torch.nn.functional as F

from mambaad_lib.models.glass import Discriminator
from mambaad_lib.synthesis.gas import GASConfig, hypersphere_radius, project_to_band, synthesize_gas

DIM = 32


def features(n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def test_manifold_projection_bounds_the_perturbation_and_keeps_inside_points():
    normal = features()
    scales = torch.tensor([0.01, 0.7, 5.0]).repeat_interleave(len(normal) // 3 + 1)[: len(normal), None]
    direction = F.normalize(torch.randn_like(normal), dim=1)
    fake = normal + scales * direction
    projected = project_to_band(fake, normal, GASConfig(band="manifold"))
    norms = (projected - normal).norm(dim=1)
    assert norms.min() >= 0.5 - 1e-5 and norms.max() <= 1.0 + 1e-5
    inside = scales[:, 0] == 0.7
    assert torch.allclose(projected[inside], fake[inside], atol=1e-5)


def test_hypersphere_projection_puts_features_in_the_shell():
    normal = features()
    center = normal.mean(dim=0)
    radius = torch.quantile((normal - center).norm(dim=1), 0.75)
    fake = center + torch.randn_like(normal) * torch.rand(len(normal), 1) * 3
    projected = project_to_band(fake, normal, GASConfig(band="hypersphere"))
    distances = (projected - center).norm(dim=1)
    assert distances.min() >= radius - 1e-4 and distances.max() <= 2 * radius + 1e-4
    assert torch.isclose(hypersphere_radius(normal, center, 0.75), radius)


@pytest.mark.parametrize("band", ["manifold", "hypersphere"])
def test_gas_features_lie_in_the_chosen_band(band):
    normal = features()
    discriminator = Discriminator(DIM, hidden=16).eval()
    config = GASConfig(band=band, steps=7, project_every=3)
    fake = synthesize_gas(normal, discriminator, config, torch.Generator().manual_seed(0))
    if band == "manifold":
        norms = (fake - normal).norm(dim=1)
        assert norms.min() >= config.manifold_min - 1e-5 and norms.max() <= config.manifold_max + 1e-5
    else:
        center = normal.mean(dim=0)
        radius = hypersphere_radius(normal, center, config.radius_quantile)
        distances = (fake - center).norm(dim=1)
        assert distances.min() >= radius - 1e-4 and distances.max() <= 2 * radius + 1e-4
    again = synthesize_gas(normal, discriminator, config, torch.Generator().manual_seed(0))
    assert torch.equal(fake, again)
    assert all(p.requires_grad and p.grad is None for p in discriminator.parameters())


def test_gradient_ascent_raises_the_discriminator_loss():
    normal = features()
    discriminator = Discriminator(DIM, hidden=16).eval()
    # A band wide enough never to bind isolates the ascent itself.
    wide = dict(band="manifold", manifold_min=0.0, manifold_max=1e6, noise_std=0.1)
    noise_only = synthesize_gas(normal, discriminator, GASConfig(steps=0, **wide), torch.Generator().manual_seed(1))
    ascended = synthesize_gas(normal, discriminator, GASConfig(steps=10, step_size=0.05, **wide),
                              torch.Generator().manual_seed(1))

    def loss(x):
        with torch.no_grad():
            return F.binary_cross_entropy(discriminator(x), torch.ones(len(x), 1)).item()

    assert loss(ascended) > loss(noise_only)
    # Each step moves every feature by exactly step_size (normalised gradient): 10 steps of
    # 0.05 move a feature by at most 0.5, exactly 0.5 when the gradient keeps its direction.
    moved = (ascended - noise_only).norm(dim=1)
    assert moved.max() <= 0.5 + 1e-4 and moved.min() > 0.25


def test_bad_gas_config_is_rejected():
    with pytest.raises(ValueError, match="band"):
        GASConfig(band="sphere")
    with pytest.raises(ValueError, match="fake"):
        project_to_band(torch.zeros(3, DIM), torch.zeros(4, DIM), GASConfig())
