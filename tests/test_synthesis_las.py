"""Local Anomaly Synthesis: Perlin masks, textures, augmentations, blending, bad input."""
import numpy as np
import pytest
import torch
from PIL import Image

from mambaad_lib.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mambaad_lib.synthesis.las import (
    DRAEM_AUGMENTATIONS, GLASS_AUGMENTATIONS, NONEMPTY_RATE, LASConfig, LocalAnomalySynthesizer, augment_texture,
    blend, cover_and_crop, estimate_foreground, las_mask, sample_beta)
from mambaad_lib.synthesis.textures import TextureSource, resolve_texture_source

SIZE = (64, 64)


@pytest.fixture(scope="module")
def textures():
    return TextureSource.bundled(patch_size=64)


def centred_foreground(fraction_side: float = 0.5) -> np.ndarray:
    foreground = np.zeros(SIZE, bool)
    low, high = int(SIZE[0] * (0.5 - fraction_side / 2)), int(SIZE[0] * (0.5 + fraction_side / 2))
    foreground[low:high, low:high] = True
    return foreground


# ---------------------------------------------------------------------------- masks
def test_masks_are_deterministic_per_seed_and_vary_across_seeds():
    first, mode_a = las_mask(SIZE, np.random.default_rng(3))
    again, mode_b = las_mask(SIZE, np.random.default_rng(3))
    other = [las_mask(SIZE, np.random.default_rng(seed))[0] for seed in range(4, 9)]
    assert np.array_equal(first, again) and mode_a == mode_b
    assert any(not np.array_equal(first, mask) for mask in other)


def test_masks_are_binary_and_inside_the_foreground():
    foreground = centred_foreground()
    for seed in range(30):
        mask, _ = las_mask(SIZE, np.random.default_rng(seed), foreground=foreground)
        assert mask.dtype == bool and mask.shape == SIZE
        assert not (mask & ~foreground).any()


def test_masks_are_non_empty_at_the_documented_rate():
    foreground = centred_foreground()  # a quarter of the image
    rates = []
    for fg in (None, foreground):
        rates.append(np.mean([las_mask(SIZE, np.random.default_rng(seed), foreground=fg)[0].any()
                              for seed in range(200)]))
    assert min(rates) >= NONEMPTY_RATE, rates
    # An empty foreground leaves nothing to corrupt: the mask is empty, not an error.
    assert not las_mask(SIZE, np.random.default_rng(0), foreground=np.zeros(SIZE, bool))[0].any()


def test_combination_modes_order_mask_areas():
    def mean_area(mode: str) -> float:
        config = LASConfig(combine_modes=(mode,), max_attempts=1)
        return np.mean([las_mask(SIZE, np.random.default_rng(s), config)[0].mean() for s in range(60)])

    intersection, single, union = mean_area("intersection"), mean_area("single"), mean_area("union")
    assert intersection < single < union


def test_foreground_of_another_size_is_rejected():
    with pytest.raises(ValueError, match="foreground has shape"):
        las_mask(SIZE, np.random.default_rng(0), foreground=np.ones((32, 64), bool))
    synthesizer = LocalAnomalySynthesizer(TextureSource.bundled(patch_size=64))
    with pytest.raises(ValueError, match="foreground"):
        synthesizer.synthesize(torch.rand(3, *SIZE), np.random.default_rng(0), torch.ones(1, 48, 48))


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="combine_modes"):
        LASConfig(combine_modes=("xor",))
    with pytest.raises(ValueError, match="n_augmentations"):
        LASConfig(n_augmentations=10)
    with pytest.raises(ValueError, match="augmentations"):
        LASConfig(augmentations="imgaug")


# ------------------------------------------------------------------------ foreground
def test_estimated_foreground_finds_an_object_and_keeps_textures_whole():
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 30) ** 2 < 18 ** 2
    image = torch.full((3, 64, 64), 0.1)
    image[:, torch.from_numpy(disc)] = torch.tensor([0.8, 0.6, 0.3])[:, None]
    found = estimate_foreground(image).numpy()
    iou = (found & disc).sum() / (found | disc).sum()
    assert iou > 0.95
    texture = torch.from_numpy(np.random.default_rng(0).random((3, 64, 64), dtype=np.float32))
    assert estimate_foreground(texture).all()


# ------------------------------------------------------------------ textures and blend
def test_blend_matches_the_formula_on_known_inputs():
    image = torch.full((3, 4, 4), 0.2)
    texture = torch.full((3, 4, 4), 0.9)
    mask = torch.zeros(1, 4, 4)
    mask[:, :2] = 1.0
    out = blend(image, texture, mask, beta=0.3)
    # inside: 0.3 * 0.2 + 0.7 * 0.9 = 0.69; outside: the image
    assert torch.allclose(out[:, :2], torch.full((3, 2, 4), 0.69))
    assert torch.equal(out[:, 2:], image[:, 2:])


def test_synthesizer_output_equals_the_blend_of_its_parts(textures):
    synthesizer = LocalAnomalySynthesizer(textures)
    image = torch.rand(3, *SIZE)
    sample = synthesizer.synthesize(image, np.random.default_rng(5))
    inside = sample.mask.bool().expand(3, -1, -1)
    expected = (1 - sample.beta) * sample.texture + sample.beta * image
    assert sample.mask.any()
    assert torch.allclose(sample.image[inside], expected[inside], atol=1e-6)
    assert torch.equal(sample.image[~inside], image[~inside])
    assert set(sample.mask.unique().tolist()) <= {0.0, 1.0}
    again = synthesizer.synthesize(image, np.random.default_rng(5))
    assert torch.equal(sample.image, again.image) and torch.equal(sample.mask, again.mask)


def test_beta_is_clipped_normal():
    rng = np.random.default_rng(0)
    betas = np.array([sample_beta(rng) for _ in range(2000)])
    assert betas.min() >= 0.2 and betas.max() <= 0.8
    assert abs(betas.mean() - 0.5) < 0.01 and 0.08 < betas.std() < 0.11


@pytest.mark.parametrize("kind, table", [("glass", GLASS_AUGMENTATIONS), ("draem", DRAEM_AUGMENTATIONS)])
def test_three_distinct_augmentations_keep_shape_and_range(textures, kind, table):
    texture = textures.sample(np.random.default_rng(0), SIZE)
    out, names = augment_texture(texture, np.random.default_rng(1), 3, kind)
    assert len(set(names)) == 3 and set(names) <= set(table)
    assert out.shape == texture.shape and out.min() >= 0 and out.max() <= 1
    for name, augmentation in table.items():
        assert augmentation(texture, np.random.default_rng(2)).shape == texture.shape, name


def test_glass_augmentations_are_the_release_list(textures):
    # datasets/mvtec.py rand_augmenter: 3 colour jitters, two flips, grayscale, autocontrast,
    # equalise and a +-45 degree affine rotation, no gamma/invert/solarise/posterise.
    assert set(GLASS_AUGMENTATIONS) == {"contrast", "brightness", "saturation_hue", "horizontal_flip",
                                        "vertical_flip", "grayscale", "autocontrast", "equalize", "rotate"}
    texture = textures.sample(np.random.default_rng(0), SIZE)
    rng = np.random.default_rng(0)
    assert torch.equal(GLASS_AUGMENTATIONS["horizontal_flip"](texture, rng), texture.flip(-1))
    assert torch.equal(GLASS_AUGMENTATIONS["vertical_flip"](texture, rng), texture.flip(-2))
    gray = GLASS_AUGMENTATIONS["grayscale"](texture, rng)
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    white = torch.ones(3, *SIZE)
    rotated = GLASS_AUGMENTATIONS["rotate"](white, np.random.default_rng(3))  # |angle| > 0: black corners
    assert rotated[:, 0, 0].max() == 0 and rotated[:, SIZE[0] // 2, SIZE[1] // 2].min() == 1
    # Brightness factor uniform in [0.8, 1.2]: a grey 0.5 lands in [0.4, 0.6], both ends reached.
    grey = [GLASS_AUGMENTATIONS["brightness"](torch.full((3, 2, 2), 0.5), np.random.default_rng(s)).mean().item()
            for s in range(200)]
    assert 0.4 - 1e-6 <= min(grey) < 0.42 and 0.58 < max(grey) <= 0.6 + 1e-6


def test_glass_textures_keep_their_aspect_ratio():
    # A 40x80 texture whose left fifth is red: covering 64x64 keeps the aspect (64x128), so
    # the centre crop (original columns 20..60) has no red; stretching keeps a red fifth.
    texture = torch.zeros(3, 40, 80)
    texture[0, :, :16] = 1.0
    covered = cover_and_crop(texture, SIZE)
    assert covered.shape == (3, *SIZE) and covered[0].max() < 0.05
    source = TextureSource(patches=(texture,), description="test")
    sample = LocalAnomalySynthesizer(source, LASConfig(n_augmentations=0)).synthesize(
        torch.zeros(3, *SIZE), np.random.default_rng(0))
    assert sample.texture[0].max() < 0.05 and sample.augmentations == []
    stretched = LocalAnomalySynthesizer(source, LASConfig(n_augmentations=0, augmentations="draem")).synthesize(
        torch.zeros(3, *SIZE), np.random.default_rng(0))
    assert stretched.texture[0, :, :8].min() > 0.95


def test_batch_call_round_trips_normalisation(textures):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    clean = torch.rand(3, 3, *SIZE)
    normalised = (clean - mean) / std
    untouched, masks = LocalAnomalySynthesizer(textures, probability=0.0)(normalised, np.random.default_rng(0))
    assert torch.allclose(untouched, normalised, atol=1e-5) and not masks.any()
    corrupted, masks = LocalAnomalySynthesizer(textures)(normalised, np.random.default_rng(0))
    assert masks.shape == (3, 1, *SIZE) and masks.flatten(1).any(dim=1).all()
    outside = (masks == 0).expand_as(corrupted)
    assert torch.allclose(corrupted[outside], normalised[outside], atol=1e-5)
    assert not torch.allclose(corrupted, normalised)


# --------------------------------------------------------------------- texture folders
def test_texture_dir_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextureSource.from_dir(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="contains no image files"):
        TextureSource.from_dir(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png")
    source = TextureSource.from_dir(broken)
    with pytest.raises(ValueError, match="bad.png"):
        source.sample(np.random.default_rng(0), SIZE)


def test_texture_dir_is_used_when_given(tmp_path):
    folder = tmp_path / "dtd" / "banded"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((40, 50, 3), (255, 0, 0), np.uint8)).save(folder / "red.jpg")
    source = resolve_texture_source(tmp_path / "dtd")
    assert len(source) == 1 and source.description.startswith("dir:")
    texture = source.sample(np.random.default_rng(0), SIZE)
    assert texture.shape == (3, *SIZE) and texture[0].mean() > 0.9 and texture[1:].mean() < 0.1
    assert resolve_texture_source(None).description.startswith("bundled:")


# ------------------------------------------------------------- uses: figures
def test_las_figure_has_one_row_per_class(textures, tmp_path):
    pytest.importorskip("matplotlib")
    from mambaad_lib.data.synthetic import make_synthetic_dataset
    from mambaad_lib.data import AnomalyDataset
    from mambaad_lib.viz import las_examples, plot_las_examples

    make_synthetic_dataset(tmp_path, name="tiny", image_size=64, n_train=1, n_test=2, classes=["brick", "coin"])
    dataset = AnomalyDataset(tmp_path, "tiny", "train", image_size=64, crop_size=64)
    examples = las_examples(dataset, LocalAnomalySynthesizer(textures), ["brick", "coin"], seed=0)
    figure = plot_las_examples(examples)
    assert len(figure.axes) == 2 * 4 and [e.cls_name for e in examples] == ["brick", "coin"]
    figure.savefig(tmp_path / "las.png")
    assert (tmp_path / "las.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no images"):
        las_examples(dataset, LocalAnomalySynthesizer(textures), ["wood"])
