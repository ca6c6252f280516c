"""The loader, the meta file and the dataset validator: items, transforms and every error path."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep import validate
from mambaad_lib.data.synthetic import make_synthetic_dataset
from mambaad_lib.data import (IMAGENET_MEAN, IMAGENET_STD, AnomalyDataset, denormalize, read_meta, transform_mask,
                              transform_mask_soft, write_meta)

CLASSES = ["gravel", "coin"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    make_synthetic_dataset(root, image_size=64, n_train=4, n_test=5, classes=CLASSES)
    return root


@pytest.fixture
def root(pristine, tmp_path) -> Path:
    """A private copy that a test may break."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def _edit_meta(root: Path, edit) -> None:
    path = root / "meta_synthetic.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _first_anomalous(root: Path) -> dict:
    return next(item for item in read_meta(root, "synthetic")["test"]["gravel"] if item["anomaly"])


def test_items_shapes_labels_and_masks(pristine):
    data = AnomalyDataset(pristine, "synthetic", "test", image_size=72, crop_size=64)
    assert data.classes == CLASSES and len(data) == 10
    labels = []
    for item in data:
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 64, 64)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert isinstance(item["label"], int)
        assert (item["mask"].sum() > 0) == bool(item["label"])
        assert item["img_path"].startswith(f"synthetic/{item['cls_name']}/test/{item['specie_name']}/")
        labels.append(item["label"])
    assert 0 < sum(labels) < len(labels)


def test_normalisation_round_trips_at_native_size(pristine):
    data = AnomalyDataset(pristine, "synthetic", "train", classes=["coin"], image_size=64, crop_size=64)
    item = data[0]
    original = torch.from_numpy(np.asarray(Image.open(pristine / item["img_path"]), np.float32) / 255).permute(2, 0, 1)
    assert torch.allclose(denormalize(item["image"]), original, atol=1e-5)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(item["image"], (original - mean) / std, atol=1e-5)


def test_mask_transform_is_nearest_and_binary():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 3:7] = 255
    out = transform_mask(Image.fromarray(mask), image_size=20, crop_size=20)
    assert out.shape == (1, 20, 20) and set(out.unique().tolist()) == {0.0, 1.0}
    assert out.sum().item() == 12 * 4  # 3x4 defect pixels, each becoming 2x2
    odd_values = transform_mask(Image.fromarray((mask > 0).astype(np.uint8) * 3), 10, 10)  # VisA-like 0/3
    assert odd_values.sum().item() == 12


def test_class_filter(pristine):
    data = AnomalyDataset(pristine, "synthetic", "train", classes=["coin"])
    assert data.classes == ["coin"] and len(data) == 4
    assert {item["cls_name"] for item in data.items} == {"coin"}


@pytest.mark.parametrize("kwargs, error, match", [
    ({"split": "val"}, ValueError, "split"),
    ({"classes": ["bottle"]}, ValueError, "bottle"),
    ({"name": "mvtec"}, FileNotFoundError, "meta_mvtec.json"),
    ({"crop_size": 300}, ValueError, "crop_size"),
])
def test_construction_errors(pristine, kwargs, error, match):
    arguments = {"root": pristine, "name": "synthetic", "split": "test", **kwargs}
    with pytest.raises(error, match=match):
        AnomalyDataset(**arguments)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AnomalyDataset(tmp_path / "nowhere", "synthetic", "train")


def test_malformed_meta(root):
    (root / "meta_synthetic.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AnomalyDataset(root, "synthetic", "train")


def test_anomalous_item_without_mask_path(root):
    def drop_mask(meta):
        next(item for item in meta["test"]["gravel"] if item["anomaly"])["mask_path"] = ""
    _edit_meta(root, drop_mask)
    with pytest.raises(ValueError, match="has no mask_path"):
        AnomalyDataset(root, "synthetic", "test")


def test_unreadable_and_missing_image(root):
    data = AnomalyDataset(root, "synthetic", "train", classes=["gravel"])
    (root / data.items[0]["img_path"]).write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot be read"):
        data[0]
    (root / data.items[1]["img_path"]).unlink()
    with pytest.raises(FileNotFoundError, match=data.items[1]["img_path"].split("/")[-1]):
        data[1]


def test_mask_file_missing_and_size_mismatch(root):
    item = _first_anomalous(root)
    data = AnomalyDataset(root, "synthetic", "test", classes=["gravel"])
    index = next(i for i, it in enumerate(data.items) if it["img_path"] == item["img_path"])
    Image.new("L", (32, 32)).save(root / item["mask_path"])
    with pytest.raises(ValueError, match="32x32"):
        data[index]
    (root / item["mask_path"]).unlink()
    with pytest.raises(FileNotFoundError, match="mask file"):
        data[index]


def test_write_meta_round_trip_and_rejection(pristine, tmp_path):
    meta = read_meta(pristine, "synthetic")
    path = write_meta(tmp_path, "copy", meta)
    assert path == tmp_path / "meta_copy.json" and read_meta(tmp_path, "copy") == meta
    meta["train"]["coin"][0]["anomaly"] = 2
    with pytest.raises(ValueError, match="anomaly must be 0 or 1"):
        write_meta(tmp_path, "bad", meta)
    assert not (tmp_path / "meta_bad.json").exists() and not list(tmp_path.glob(".*tmp"))


def test_validator_reports_every_problem_at_once(root, capsys):
    meta = read_meta(root, "synthetic")
    normal, second = meta["train"]["gravel"][0], meta["train"]["gravel"][1]
    anomalous = [item for item in meta["test"]["gravel"] + meta["test"]["coin"] if item["anomaly"]]
    (root / normal["img_path"]).unlink()                                      # missing image
    Image.new("L", (16, 16)).save(root / anomalous[0]["mask_path"])           # wrong mask size
    Image.new("L", (64, 64), 128).save(root / anomalous[1]["mask_path"])      # mask values
    second["mask_path"] = anomalous[1]["mask_path"]                           # normal with a mask
    meta["train"]["coin"].append(dict(meta["train"]["coin"][0]))             # listed twice
    (root / "meta_synthetic.json").write_text(json.dumps(meta))
    problems = validate.validate_dataset(root, "synthetic")
    text = "\n".join(problems)
    assert len(problems) == 5, text
    assert "does not exist" in text and "16x16" in text and "other than 0 and 255: 128" in text
    assert "normal image" in text and "more than once" in text
    assert validate.main(["--root", str(root), "--name", "synthetic"]) == 1
    assert "5 problem(s)" in capsys.readouterr().out


def test_validator_on_a_good_dataset_and_missing_pieces(pristine, tmp_path, capsys):
    assert validate.validate_dataset(pristine, "synthetic") == []
    assert validate.main(["--root", str(pristine), "--name", "synthetic"]) == 0
    assert "OK" in capsys.readouterr().out
    assert "not found" in validate.validate_dataset(pristine, "other")[0]
    assert "does not exist" in validate.validate_dataset(tmp_path / "nowhere", "synthetic")[0]
    (tmp_path / "meta_x.json").write_text(json.dumps({"train": {}}))
    assert validate.validate_dataset(tmp_path, "x") == [f"{tmp_path / 'meta_x.json'}: missing the 'test' split"]


def _drop_first_mask(meta):
    next(item for item in meta["test"]["gravel"] if item["anomaly"])["mask_path"] = ""


def test_kept_anomaly_without_mask_has_a_flag_and_a_blank_mask(root):
    item = _first_anomalous(root)
    assert AnomalyDataset(root, "synthetic", "test").images_without_mask == {}  # a meta without the key: default

    def keep_without_mask(meta):
        _drop_first_mask(meta)
        meta["missing_mask"] = "keep"
    _edit_meta(root, keep_without_mask)
    data = AnomalyDataset(root, "synthetic", "test", image_size=64, crop_size=64)
    assert data.images_without_mask == {"gravel": 1}
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=len(data))))  # collates as usual
    index = list(batch["img_path"]).index(item["img_path"])
    assert batch["has_mask"].dtype == torch.bool and batch["has_mask"].tolist().count(False) == 1
    assert not batch["has_mask"][index] and batch["label"][index] == 1 and batch["mask"][index].sum() == 0
    others = [i for i in range(len(data)) if i != index]
    assert all((batch["mask"][i].sum() > 0) == bool(batch["label"][i]) for i in others)


def test_meta_keys_are_checked(root):
    _edit_meta(root, lambda meta: meta.update(missing_mask="sometimes"))
    with pytest.raises(ValueError, match="'missing_mask' must be one of"):
        AnomalyDataset(root, "synthetic", "test")
    _edit_meta(root, lambda meta: meta.update(missing_mask="error", unlabeled={"test": {"coin": ["/abs.png"]}}))
    with pytest.raises(ValueError, match="cannot be named like the split 'test'") as raised:
        AnomalyDataset(root, "synthetic", "test")
    assert "'/abs.png' must be relative to the root" in str(raised.value)


def test_validator_notes_kept_masks(root, capsys):
    def keep_without_mask(meta):
        _drop_first_mask(meta)
        meta["missing_mask"] = "keep"
    _edit_meta(root, keep_without_mask)
    report = validate.check_dataset(root, "synthetic")
    assert report.problems == [] and report.images_without_mask == {"test/gravel": 1}
    assert validate.main(["--root", str(root), "--name", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "note: 1 anomalous image(s) without a mask" in out and "test/gravel 1" in out and "OK" in out
    _edit_meta(root, lambda meta: meta.pop("missing_mask"))
    assert "has no mask_path" in validate.validate_dataset(root, "synthetic")[0]


# ---- the release's masks: bilinear resize, binarised at > 0.5 (protocols ader / adeval) -------

def _release_target_transform(image_size: int, crop_size: int):
    """MambaAD's config (``data.target_transforms``), written with torchvision's transform classes."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((image_size, image_size), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop((crop_size, crop_size)),
        transforms.ToTensor(),
    ])


@pytest.mark.parametrize("image_size, crop_size", [(64, 64), (72, 64), (300, 256)])
def test_soft_mask_is_the_release_target_transform(image_size, crop_size):
    rng = np.random.default_rng(image_size)
    mask = np.zeros((211, 211), np.uint8)
    mask[20:90, 30:41] = 3  # VisA-like value: the release makes any non-zero pixel 255 first
    mask[rng.random(mask.shape) < 0.02] = 255
    mask[150, 20:200] = 255  # a 1-pixel line: bilinear downscaling leaves it faint
    soft = transform_mask_soft(Image.fromarray(mask), image_size, crop_size)
    assert soft.shape == (1, crop_size, crop_size) and soft.dtype == torch.uint8
    binary = Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L")  # ADer's dataset does this
    release = _release_target_transform(image_size, crop_size)(binary)
    assert torch.equal(soft.float() / 255, release)
    assert 0 < int(((soft > 0) & (soft < 255)).sum())  # soft edges exist, so > 0.5 is not nearest's > 0
    assert not torch.equal(soft.float() / 255 > 0.5, transform_mask(Image.fromarray(mask), image_size, crop_size) > 0)


def test_items_carry_both_masks(pristine):
    data = AnomalyDataset(pristine, "synthetic", "test", image_size=72, crop_size=64)
    for item in data:
        assert item["mask_soft"].shape == (1, 64, 64) and item["mask_soft"].dtype == torch.uint8
        if not item["label"]:
            assert int(item["mask_soft"].max()) == 0
        # the nearest and the bilinear mask mark the same defect, up to its edges
        nearest, release = item["mask"] > 0, item["mask_soft"] > 127
        assert int((nearest ^ release).sum()) <= max(1, int(nearest.sum()) // 2)


def test_engine_evaluates_each_protocol_on_its_own_ground_truth(pristine):
    """compute_protocol_metrics gives ader the release's masks and labels, standard ours."""
    from mambaad_lib.engine.evaluate import Predictions, compute_protocol_metrics

    data = AnomalyDataset(pristine, "synthetic", "test", image_size=64, crop_size=64)
    items = [data[i] for i in range(len(data))]
    masks = np.stack([item["mask"][0].numpy() > 0 for item in items])
    soft = np.stack([item["mask_soft"][0].numpy() for item in items])
    soft[np.flatnonzero(masks.any(axis=(1, 2)))[0]] = 0  # one anomalous image loses its release mask
    labels = np.array([item["label"] for item in items])
    rng = np.random.default_rng(0)
    maps = (rng.random(masks.shape) + masks).astype(np.float32)
    predictions = Predictions(maps, maps.max(axis=(1, 2)), labels, masks, [item["cls_name"] for item in items],
                              [item["img_path"] for item in items], {}, soft)
    metrics = compute_protocol_metrics(predictions, ["standard", "ader"])
    by_protocol = {name: metrics[name]["per_class"] for name in ("standard", "ader")}
    # The image that lost its mask is normal for ader: its high score becomes a false positive.
    assert by_protocol["standard"][0]["i_auroc"] == 1.0 and by_protocol["ader"][0]["i_auroc"] < 1.0
    with pytest.raises(ValueError, match="mask_soft"):
        compute_protocol_metrics(Predictions(maps, maps.max(axis=(1, 2)), labels, masks, ["c"] * len(items),
                                             ["p"] * len(items), {}), ["ader"])
