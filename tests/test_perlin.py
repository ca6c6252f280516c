"""Perlin noise and masks: determinism, range, smoothness, rotation, threshold behaviour."""
import numpy as np
import pytest

from mambaad_lib.synthesis.perlin import as_generator, perlin_mask, perlin_noise


def test_noise_is_deterministic_per_seed_and_differs_between_seeds():
    a = perlin_noise((48, 80), (3, 5), 7)
    b = perlin_noise((48, 80), (3, 5), np.random.default_rng(7))
    c = perlin_noise((48, 80), (3, 5), 8)
    assert a.shape == (48, 80) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("scale", [1, 2, (4, 16), 64])
def test_noise_range_and_spread(scale):
    noise = perlin_noise(128, scale, 0)
    assert -1.0 <= noise.min() and noise.max() <= 1.0
    assert noise.std() > 0.1  # a real field, not a constant


def test_noise_is_continuous_at_cell_borders():
    # 8 cells over 256 px: a gradient-noise field changes by at most ~|grad| * sqrt(2) * 8/256 per pixel
    noise = perlin_noise(256, 8, 3)
    step = max(np.abs(np.diff(noise, axis=0)).max(), np.abs(np.diff(noise, axis=1)).max())
    assert step < 2 * np.sqrt(2) * np.sqrt(2) * 8 / 256


def test_rotation_by_ninety_degrees_turns_the_stripes():
    # 1 cell down, 16 across: the field varies fast along x; turned 90 degrees it varies fast along y.
    def roughness(field, axis):
        return np.abs(np.diff(field, axis=axis)).mean()

    flat = perlin_noise(128, (1, 16), 5)
    turned = perlin_noise(128, (1, 16), 5, angle=90.0)
    assert roughness(flat, 1) > 4 * roughness(flat, 0)
    assert roughness(turned, 0) > 4 * roughness(turned, 1)


def test_mask_is_bool_and_deterministic():
    a = perlin_mask((64, 96), 11)
    b = perlin_mask((64, 96), np.random.default_rng(11))
    assert a.dtype == bool and a.shape == (64, 96)
    assert np.array_equal(a, b)


def test_higher_threshold_gives_a_subset():
    low = perlin_mask(128, 4, threshold=0.3)
    high = perlin_mask(128, 4, threshold=0.6)
    assert high.sum() < low.sum()
    assert not (high & ~low).any()


def test_default_masks_cover_a_small_fraction():
    coverage = np.mean([perlin_mask(128, seed).mean() for seed in range(20)])
    assert 0.005 < coverage < 0.2


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        perlin_noise(32, 0, 0)
    with pytest.raises(ValueError, match="shape"):
        perlin_noise((32, 2.5), 2, 0)
    with pytest.raises(ValueError, match="min_scale_exp"):
        perlin_mask(32, 0, min_scale_exp=3, max_scale_exp=3)
    with pytest.raises(ValueError, match="threshold"):
        perlin_mask(32, 0, threshold=1.5)
    with pytest.raises(ValueError, match="seed"):
        as_generator("seven")
