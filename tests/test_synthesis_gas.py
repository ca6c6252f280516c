"""Global Anomaly Synthesis: projection bands, gradient ascent and the release's class table."""
import pytest
import torch
import torch.nn.functional as F

from mambaad_lib.models.glass import Discriminator
from mambaad_lib.synthesis.gas import (
    RELEASE_HYPERSPHERE_CLASSES, GASConfig, clamp_offset, hypersphere_radius, project_to_band, release_band,
    synthesize_gas)

DIM = 32


def features(n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def test_manifold_projection_bounds_the_perturbation_and_keeps_inside_points():
    normal = features()
    scales = torch.tensor([0.01, 0.7, 5.0]).repeat_interleave(len(normal) // 3 + 1)[: len(normal), None]
    direction = F.normalize(torch.randn_like(normal), dim=1)
    fake = normal + scales * direction
    projected = project_to_band(fake, normal, GASConfig(), "manifold")
    norms = (projected - normal).norm(dim=1)
    assert norms.min() >= 0.5 - 1e-5 and norms.max() <= 1.0 + 1e-5
    inside = scales[:, 0] == 0.7
    assert torch.allclose(projected[inside], fake[inside], atol=1e-5)


def test_hypersphere_projection_puts_features_in_the_shell_around_per_patch_centres():
    normal = features()
    centers = features(seed=1) * 0.1  # one centre per patch, as the release's per-position mean
    radius = hypersphere_radius(normal, centers, 0.75)
    assert torch.isclose(radius, torch.quantile((normal - centers).norm(dim=1), 0.75))
    fake = centers + torch.randn_like(normal) * torch.rand(len(normal), 1) * 3
    projected = project_to_band(fake, normal, GASConfig(), "hypersphere", centers, radius)
    distances = (projected - centers).norm(dim=1)
    assert distances.min() >= radius - 1e-4 and distances.max() <= 2 * radius + 1e-4
    # Directions from the centres are kept.
    assert torch.allclose(F.normalize(projected - centers, dim=1), F.normalize(fake - centers, dim=1), atol=1e-5)


def test_clamp_offset_is_the_las_push_to_2r_4r():
    anchors, points = features(seed=2), features(seed=3) * 5
    pushed = clamp_offset(points, anchors, 2.0, 4.0)
    distances = (pushed - anchors).norm(dim=1)
    assert distances.min() >= 2.0 - 1e-5 and distances.max() <= 4.0 + 1e-5


@pytest.mark.parametrize("band", ["manifold", "hypersphere"])
def test_gas_features_lie_in_the_chosen_band(band):
    normal = features()
    discriminator = Discriminator(DIM, hidden=16).eval()
    config = GASConfig(steps=6, project_every=3)
    fake = synthesize_gas(normal, discriminator, config, torch.Generator().manual_seed(0), band)
    if band == "manifold":
        norms = (fake - normal).norm(dim=1)
        assert norms.min() >= config.manifold_min - 1e-5 and norms.max() <= config.manifold_max + 1e-5
    else:
        center = normal.mean(dim=0)
        radius = hypersphere_radius(normal, center, config.radius_quantile)
        distances = (fake - center).norm(dim=1)
        assert distances.min() >= radius - 1e-4 and distances.max() <= 2 * radius + 1e-4
    again = synthesize_gas(normal, discriminator, config, torch.Generator().manual_seed(0), band)
    assert torch.equal(fake, again)
    assert all(p.grad is None for p in discriminator.parameters())  # only read


def test_gradient_ascent_raises_the_discriminator_loss():
    normal = features()
    discriminator = Discriminator(DIM, hidden=16).eval()
    # A band wide enough never to bind isolates the ascent itself.
    wide = dict(manifold_min=0.0, manifold_max=1e6, noise_std=0.1)
    noise_only = synthesize_gas(normal, discriminator, GASConfig(steps=0, **wide), torch.Generator().manual_seed(1))
    ascended = synthesize_gas(normal, discriminator, GASConfig(steps=10, step_size=0.05, **wide),
                              torch.Generator().manual_seed(1))

    def loss(x):
        with torch.no_grad():
            return F.binary_cross_entropy(discriminator(x), torch.ones(len(x), 1)).item()

    assert loss(ascended) > loss(noise_only)
    # Each step moves every feature by exactly step_size (normalised gradient): 10 steps of
    # 0.05 move a feature by at most 0.5, exactly 0.5 when the gradient keeps its direction.
    moved = (ascended - noise_only).detach().norm(dim=1)
    assert moved.max() <= 0.5 + 1e-4 and moved.min() > 0.25


def test_ascent_uses_train_mode_batchnorm_over_normal_and_gas_and_keeps_the_graph():
    normal = features(64).requires_grad_(True)
    discriminator = Discriminator(DIM, hidden=16).train()
    calls = []
    discriminator.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].detach().clone()))
    fake = synthesize_gas(normal, discriminator, GASConfig(steps=5, project_every=5),
                          torch.Generator().manual_seed(0))
    # One pass per step over [normal, GAS]: BatchNorm batch statistics over both, as the release.
    assert len(calls) == 5 and all(call.shape == (128, DIM) for call in calls)
    assert all(torch.equal(call[:64], normal.detach()) for call in calls)
    # The GAS features keep the graph of the normal ones (the release's loss reaches the adaptor).
    fake.sum().backward()
    assert normal.grad is not None and normal.grad.abs().sum() > 0
    assert all(p.grad is None for p in discriminator.parameters())


def test_release_distribution_table():
    assert set(RELEASE_HYPERSPHERE_CLASSES["mvtec"]) == {"bottle", "cable", "pill", "screw", "transistor"}
    assert [release_band(name) for name in ("bottle", "screw", "carpet", "hazelnut")] == [
        "hypersphere", "hypersphere", "manifold", "manifold"]
    assert release_band("brick") == "manifold" and release_band("brick", default="hypersphere") == "hypersphere"
    assert release_band("pcb1") == "hypersphere" and release_band("pcb3") == "manifold"


def test_bad_gas_config_is_rejected():
    with pytest.raises(ValueError, match="band"):
        synthesize_gas(features(), Discriminator(DIM, hidden=4), GASConfig(), band="sphere")
    with pytest.raises(ValueError, match="fake"):
        project_to_band(torch.zeros(3, DIM), torch.zeros(4, DIM), GASConfig())
    with pytest.raises(ValueError, match="las_shell"):
        GASConfig(las_shell=(4.0, 2.0))
