"""The synthetic benchmark: layout, exact masks, determinism, foregrounds, reuse rules."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from data_prep import synthetic as synthetic_command
from mambaad_lib.data import synthetic
from mambaad_lib.data.synthetic import (CLASSES, DEFECT_TYPES, OBJECT_CLASSES, TEXTURE_CLASSES, foreground_mask,
                                 image_rng, make_synthetic_dataset, species_of_test_split, synthesize_image)
from mambaad_lib.data.synthetic.defects import DEFECT_PARAMS
from mambaad_lib.data.synthetic.sources import NORMAL_JITTER, render_normal
from mambaad_lib.data.validate import validate_dataset

SMOKE = dict(image_size=64, n_train=6, n_test=6, classes=["brick", "retina"])


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, **SMOKE)
    return root


def test_class_and_defect_tables():
    assert set(TEXTURE_CLASSES) | set(OBJECT_CLASSES) == set(CLASSES) and len(CLASSES) >= 6
    assert not set(TEXTURE_CLASSES) & set(OBJECT_CLASSES)
    assert len(DEFECT_TYPES) >= 5 and len(set(DEFECT_TYPES)) == len(DEFECT_TYPES)


def test_default_test_split_composition():
    species = species_of_test_split("brick", 40)
    assert species.count("good") == 16
    assert all(species.count(defect) == 4 for defect in DEFECT_TYPES)
    # small sets rotate the defect types by class, so together the classes cover every type
    covered = {s for c in CLASSES for s in species_of_test_split(c, 6)}
    assert set(DEFECT_TYPES) <= covered


def test_layout_meta_and_validation(smoke_root):
    meta = json.loads((smoke_root / "meta_synthetic.json").read_text())
    assert list(meta["train"]) == ["brick", "retina"] and list(meta["test"]) == ["brick", "retina"]
    for cls_name in ("brick", "retina"):
        train, test = meta["train"][cls_name], meta["test"][cls_name]
        assert [item["img_path"] for item in train] == [f"synthetic/{cls_name}/train/good/{i:03d}.png" for i in range(6)]
        assert all(item["anomaly"] == 0 and item["mask_path"] == "" for item in train)
        assert [item["specie_name"] for item in test] == species_of_test_split(cls_name, 6)
        for item in test:
            assert item["anomaly"] == int(item["specie_name"] != "good")
            assert item["img_path"].startswith(f"synthetic/{cls_name}/test/{item['specie_name']}/")
            if item["anomaly"]:
                stem = Path(item["img_path"]).stem
                assert item["mask_path"] == f"synthetic/{cls_name}/ground_truth/{item['specie_name']}/{stem}_mask.png"
    assert validate_dataset(smoke_root, "synthetic") == []


def test_same_seed_same_bytes_other_seed_other_bytes(smoke_root, tmp_path):
    make_synthetic_dataset(tmp_path / "again", **SMOKE)
    make_synthetic_dataset(tmp_path / "other", seed=1, **SMOKE)
    first, again, other = _digests(smoke_root), _digests(tmp_path / "again"), _digests(tmp_path / "other")
    assert first == again
    images = [k for k in first if k.endswith(".png")]
    assert all(first[k] != other[k] for k in images if "train" in k)


def test_a_class_does_not_depend_on_the_other_classes(smoke_root, tmp_path):
    make_synthetic_dataset(tmp_path, **{**SMOKE, "classes": ["retina"]})
    alone = {k: v for k, v in _digests(tmp_path).items() if k.startswith("synthetic/retina/")}
    together = {k: v for k, v in _digests(smoke_root).items() if k.startswith("synthetic/retina/")}
    assert alone == together and alone


@pytest.mark.parametrize("cls_name", CLASSES)
def test_masks_are_exact_and_defects_visible(cls_name):
    size = 64
    min_pixels = max(4, int(DEFECT_PARAMS.min_area * size * size))
    for index, defect in enumerate(DEFECT_TYPES):
        image, mask, normal = synthesize_image(cls_name, defect, size, image_rng(0, cls_name, "test", index))
        changed = (image != normal).any(axis=2)
        assert not (changed & ~mask).any(), f"{cls_name}/{defect}: pixels outside the mask changed"
        assert mask.sum() >= min_pixels, f"{cls_name}/{defect}: mask too small"
        change = np.abs(image.astype(float) - normal.astype(float))[mask].mean()
        # visibility is enforced before 8-bit rounding and noise; allow for both
        assert change >= 255 * DEFECT_PARAMS.min_visibility - 4, f"{cls_name}/{defect}: invisible defect"
    good, good_mask, same = synthesize_image(cls_name, "good", size, image_rng(0, cls_name, "test", 0))
    assert not good_mask.any() and np.array_equal(good, same)


@pytest.mark.parametrize("cls_name", OBJECT_CLASSES)
def test_object_defects_stay_on_the_object_and_cuts_show_background(cls_name):
    for index, defect in enumerate(DEFECT_TYPES):
        rng = image_rng(3, cls_name, "test", index)
        rendered = render_normal(cls_name, 96, image_rng(3, cls_name, "test", index))
        image, mask, _ = synthesize_image(cls_name, defect, 96, rng)
        assert not (mask & ~rendered.foreground).any(), f"{cls_name}/{defect} left the object"
        if defect == "cut":
            border = np.concatenate([image[0], image[-1]]).astype(float)
            background = np.median(border, axis=0)
            assert np.abs(image[mask].astype(float) - background).max() < 255 * 0.1


@pytest.mark.parametrize("cls_name", CLASSES)
def test_foreground_mask_recovers_the_rendered_foreground(cls_name):
    rng = image_rng(0, cls_name, "train", 0)
    rendered = render_normal(cls_name, 128, rng)
    noisy = rendered.image + rng.normal(0, NORMAL_JITTER.noise_sigma, rendered.image.shape)
    found = foreground_mask(np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8), cls_name)
    if cls_name in TEXTURE_CLASSES:
        assert found.all()
    else:
        iou = (found & rendered.foreground).sum() / (found | rendered.foreground).sum()
        assert 0.05 < rendered.foreground.mean() < 0.95 and iou > 0.95


def test_foreground_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown synthetic class"):
        foreground_mask(np.zeros((8, 8, 3), np.uint8), "bottle")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        foreground_mask(np.zeros((8, 8), np.uint8), "coin")


def test_reuse_overwrite_and_refusals(tmp_path):
    kwargs = dict(image_size=32, n_train=1, n_test=2, classes=["coin"])
    meta = make_synthetic_dataset(tmp_path, **kwargs)
    stamp = meta.stat().st_mtime_ns
    assert make_synthetic_dataset(tmp_path, **kwargs) == meta and meta.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="overwrite"):
        make_synthetic_dataset(tmp_path, **{**kwargs, "seed": 5})
    make_synthetic_dataset(tmp_path, **{**kwargs, "seed": 5}, overwrite=True)
    assert json.loads((tmp_path / "synthetic" / synthetic.CONFIG_FILE).read_text())["seed"] == 5
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileExistsError, match="not made by"):
        make_synthetic_dataset(tmp_path, name="mine", **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"classes": ["bottle"]}, "unknown synthetic classes"),
    ({"image_size": 16}, "image_size"),
    ({"n_train": 0}, "n_train"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_dataset(tmp_path, **kwargs)


def test_command_line(tmp_path, capsys):
    code = synthetic_command.main(["--root", str(tmp_path), "--name", "tiny", "--image-size", "32", "--n-train", "2",
                           "--n-test", "2", "--classes", "grass", "logo"])
    assert code == 0 and (tmp_path / "meta_tiny.json").is_file()
    assert validate_dataset(tmp_path, "tiny") == []
