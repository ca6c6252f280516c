"""Converters: tiny fake datasets in each published layout -> the standard tree and meta, exactly."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import btad, folder, mpdd, mvtec, mvtec3d, mvtec_ad2, mvtec_loco, realiad, visa
from data_prep.common import MISSING_MASK_MODES, ConversionError
from mambaad_lib.data.validate import check_dataset, validate_dataset
from mambaad_lib.data import AnomalyDataset, read_meta

SIZE = (24, 20)  # (width, height) of the fake images


def _image(path: Path, value: int = 100, size=SIZE, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def _mask(path: Path, value: int = 255, size=SIZE, box=(slice(4, 9), slice(5, 12))) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[box] = value
    Image.fromarray(mask).save(path)
    return path


def _mask_pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _item(img, mask, cls, specie):
    return {"img_path": img, "mask_path": mask, "cls_name": cls, "specie_name": specie,
            "anomaly": int(specie != "good")}


# ----------------------------------------------------------------------------- MVTec-AD

def _fake_mvtec(src: Path) -> Path:
    for cls in ("bottle", "wood"):
        for i in range(2):
            _image(src / cls / "train" / "good" / f"{i:03d}.png", i)
        _image(src / cls / "test" / "good" / "000.png", 10)
        _image(src / cls / "test" / "broken" / "000.png", 11)
        _mask(src / cls / "ground_truth" / "broken" / "000_mask.png")
    (src / "license.txt").write_text("not a class")
    return src


def _mvtec_expected(name: str) -> dict:
    train, test = {}, {}
    for cls in ("bottle", "wood"):
        train[cls] = [_item(f"{name}/{cls}/train/good/{i:03d}.png", "", cls, "good") for i in range(2)]
        test[cls] = [_item(f"{name}/{cls}/test/broken/000.png", f"{name}/{cls}/ground_truth/broken/000_mask.png",
                           cls, "broken"),
                     _item(f"{name}/{cls}/test/good/000.png", "", cls, "good")]
    return {"train": train, "test": test}


def test_mvtec_tree_meta_counts_and_source_untouched(tmp_path):
    src = _fake_mvtec(tmp_path / "raw")
    before = _digests(src)
    counts = mvtec.convert(src, tmp_path / "data", "mvtec")
    assert counts == {cls: {"train": {"good": 2}, "test": {"broken": 1, "good": 1}} for cls in ("bottle", "wood")}
    assert json.loads((tmp_path / "data" / "meta_mvtec.json").read_text()) == _mvtec_expected("mvtec")
    converted = tmp_path / "data" / "mvtec"
    assert (converted / "bottle/test/broken/000.png").read_bytes() == (src / "bottle/test/broken/000.png").read_bytes()
    assert _digests(src) == before
    assert validate_dataset(tmp_path / "data", "mvtec") == []
    data = AnomalyDataset(tmp_path / "data", "mvtec", "test", image_size=32, crop_size=32)
    assert [item["label"] for item in data] == [1, 0, 1, 0]
    assert data[0]["mask"].sum() > 0


def test_idempotent_and_hard_links(tmp_path, capsys):
    src = _fake_mvtec(tmp_path / "raw")
    first = mvtec.convert(src, tmp_path / "data", "mvtec")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "data" / "mvtec").rglob("*.png")}
    capsys.readouterr()
    assert mvtec.convert(src, tmp_path / "data", "mvtec") == first
    assert "wrote 0 file(s)" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "data" / "mvtec").rglob("*.png")}

    mvtec.convert(src, tmp_path / "data", "linked", link=True)
    linked = tmp_path / "data" / "linked" / "wood" / "train" / "good" / "001.png"
    assert os.path.samefile(linked, src / "wood" / "train" / "good" / "001.png")
    before = _digests(src)
    mvtec.convert(src, tmp_path / "data", "linked", link=False)  # switching to copies breaks the links
    assert not os.path.samefile(linked, src / "wood" / "train" / "good" / "001.png")
    assert _digests(src) == before


def test_dry_run_writes_nothing(tmp_path, capsys):
    src = _fake_mvtec(tmp_path / "raw")
    counts = mvtec.convert(src, tmp_path / "data", "mvtec", dry_run=True)
    assert counts["wood"]["test"] == {"broken": 1, "good": 1}
    assert not (tmp_path / "data").exists()
    out = capsys.readouterr().out
    assert f"copy {src / 'wood/test/broken/000.png'} -> {tmp_path / 'data/mvtec/wood/test/broken/000.png'}" in out
    assert "ground_truth/broken/000_mask.png" in out and "dry run" in out


def test_every_bad_pair_is_reported_by_name(tmp_path):
    src = _fake_mvtec(tmp_path / "raw")
    (src / "bottle/ground_truth/broken/000_mask.png").unlink()                      # missing mask
    _mask(src / "wood/ground_truth/broken/000_mask.png", size=(10, 10))             # wrong size
    (src / "wood/train/good/001.png").write_bytes(b"garbage")                       # unreadable
    _image(src / "bottle/test/crack/000.png", 3)
    three_values = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    three_values[:2], three_values[2:4] = 128, 255
    (src / "bottle/ground_truth/crack").mkdir()
    Image.fromarray(three_values).save(src / "bottle/ground_truth/crack/000_mask.png")  # not binary
    with pytest.raises(ConversionError) as raised:
        mvtec.convert(src, tmp_path / "data", "mvtec")
    message = str(raised.value)
    assert "4 problem(s)" in message and "nothing was written" in message
    assert "bottle/test/broken/000.png' (broken) has no mask file" in message
    assert "wood/ground_truth/broken/000_mask.png' is 10x10" in message
    assert "wood/train/good/001.png' cannot be read" in message
    assert "crack/000_mask.png' is not binary" in message
    assert not (tmp_path / "data").exists()


def test_overlapping_source_and_target_is_refused(tmp_path):
    src = _fake_mvtec(tmp_path / "raw")
    with pytest.raises(ConversionError, match="overlap"):
        mvtec.convert(src, src, "mvtec")


# ----------------------------------------------------------------------------- VisA

def _fake_visa(src: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for cls in ("candle", "pcb1"):
        base = src / cls / "Data"
        for i in range(2):
            _image(base / "Images" / "Normal" / f"{i:04d}.JPG", i, fmt="JPEG")
            rows.append(f"{cls},{'train' if i == 0 else 'test'},normal,{cls}/Data/Images/Normal/{i:04d}.JPG,")
        _image(base / "Images" / "Anomaly" / "000.JPG", 5, fmt="JPEG")
        _mask(base / "Masks" / "Anomaly" / "000.png", value=3)  # VisA masks hold small class indices
        rows.append(f"{cls},test,anomaly,{cls}/Data/Images/Anomaly/000.JPG,{cls}/Data/Masks/Anomaly/000.png")
    (src / "split_csv").mkdir(parents=True)
    (src / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return src


def test_visa_tree_meta_and_binarised_masks(tmp_path):
    src = _fake_visa(tmp_path / "raw")
    counts = visa.convert(src, tmp_path / "data")
    assert counts == {c: {"train": {"good": 1}, "test": {"good": 1, "anomaly": 1}} for c in ("candle", "pcb1")}
    expected = {"train": {}, "test": {}}
    for cls in ("candle", "pcb1"):
        expected["train"][cls] = [_item(f"visa/{cls}/train/good/0000.JPG", "", cls, "good")]
        expected["test"][cls] = [_item(f"visa/{cls}/test/good/0001.JPG", "", cls, "good"),
                                 _item(f"visa/{cls}/test/anomaly/000.JPG",
                                       f"visa/{cls}/ground_truth/anomaly/000_mask.png", cls, "anomaly")]
    assert read_meta(tmp_path / "data", "visa") == expected
    mask = np.asarray(Image.open(tmp_path / "data/visa/pcb1/ground_truth/anomaly/000_mask.png"))
    assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 5 * 7
    assert validate_dataset(tmp_path / "data", "visa") == []


def test_visa_bad_csv(tmp_path):
    src = _fake_visa(tmp_path / "raw")
    csv_path = src / "split_csv" / "1cls.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines[:2] + ["candle,test,weird,x.JPG,"] + lines[2:]) + "\n")
    with pytest.raises(ConversionError, match=r"1cls.csv:3: split must be train/test"):
        visa.convert(src, tmp_path / "data")
    csv_path.write_text("object,image\ncandle,x.JPG\n")
    with pytest.raises(ConversionError, match="lacks the column"):
        visa.convert(src, tmp_path / "data")
    csv_path.unlink()
    with pytest.raises(FileNotFoundError, match="1cls.csv"):
        visa.convert(src, tmp_path / "data")


# ----------------------------------------------------------------------------- MVTec-3D

def _fake_mvtec3d(src: Path) -> Path:
    cls = src / "bagel"
    _image(cls / "train/good/rgb/000.png", 1)
    (cls / "train/good/xyz").mkdir(parents=True)
    (cls / "train/good/xyz/000.tiff").write_bytes(b"point cloud, ignored")
    _image(cls / "validation/good/rgb/000.png", 2)
    _image(cls / "test/good/rgb/000.png", 3)
    _mask(cls / "test/good/gt/000.png", value=0)
    _image(cls / "test/crack/rgb/000.png", 4)
    _mask(cls / "test/crack/gt/000.png")
    return src


@pytest.mark.parametrize("validation, train_names", [("ignore", ["000.png"]), ("merge", ["000.png", "val_000.png"])])
def test_mvtec3d(tmp_path, validation, train_names):
    src = _fake_mvtec3d(tmp_path / "raw")
    mvtec3d.convert(src, tmp_path / "data", validation=validation)
    assert read_meta(tmp_path / "data", "mvtec3d") == {
        "train": {"bagel": [_item(f"mvtec3d/bagel/train/good/{n}", "", "bagel", "good") for n in train_names]},
        "test": {"bagel": [_item("mvtec3d/bagel/test/crack/000.png", "mvtec3d/bagel/ground_truth/crack/000_mask.png",
                                 "bagel", "crack"),
                           _item("mvtec3d/bagel/test/good/000.png", "", "bagel", "good")]}}
    assert validate_dataset(tmp_path / "data", "mvtec3d") == []


# ----------------------------------------------------------------------------- Real-IAD

def _fake_realiad(src: Path) -> Path:
    images = src / "realiad_1024"
    _image(images / "audiojack/OK/S0001/audiojack_0001_OK_C1_1.jpg", 1, fmt="JPEG")
    _image(images / "audiojack/OK/S0002/audiojack_0002_OK_C1_2.jpg", 2, fmt="JPEG")
    _image(images / "audiojack/NG/AK/S0003/audiojack_0003_NG_AK_C1_3.jpg", 3, fmt="JPEG")
    _mask(images / "audiojack/NG/AK/S0003/audiojack_0003_NG_AK_C1_3.png")
    _image(images / "toy/OK/S0001/toy_0001_OK_C2_1.jpg", 4, fmt="JPEG")
    _image(images / "toy/NG/QS/S0002/toy_0002_NG_QS_C2_2.jpg", 5, fmt="JPEG")
    _mask(images / "toy/NG/QS/S0002/toy_0002_NG_QS_C2_2.png")
    jsons = src / "realiad_jsons_sv"
    jsons.mkdir(parents=True)
    (jsons / "audiojack.json").write_text(json.dumps({
        "meta": {"prefix": "audiojack/", "normal_class": "OK"},
        "train": [{"category": "audiojack", "anomaly_class": "OK", "image_path": "OK/S0001/audiojack_0001_OK_C1_1.jpg",
                   "mask_path": None}],
        "test": [{"category": "audiojack", "anomaly_class": "OK", "image_path": "OK/S0002/audiojack_0002_OK_C1_2.jpg"},
                 {"category": "audiojack", "anomaly_class": "AK",
                  "image_path": "NG/AK/S0003/audiojack_0003_NG_AK_C1_3.jpg",
                  "mask_path": "NG/AK/S0003/audiojack_0003_NG_AK_C1_3.png"}]}))
    # another release's keys: no meta, no category, img_path/mask/defect_type, paths from the image root
    (jsons / "toy.json").write_text(json.dumps({
        "train": [{"defect_type": "good", "img_path": "toy/OK/S0001/toy_0001_OK_C2_1.jpg"}],
        "test": [{"defect_type": "QS", "img_path": "toy/NG/QS/S0002/toy_0002_NG_QS_C2_2.jpg",
                  "mask": "toy/NG/QS/S0002/toy_0002_NG_QS_C2_2.png"}]}))
    return src


def test_realiad_reads_keys_defensively(tmp_path):
    src = _fake_realiad(tmp_path / "raw")
    counts = realiad.convert(src, tmp_path / "data")
    assert counts == {"audiojack": {"train": {"good": 1}, "test": {"good": 1, "AK": 1}},
                      "toy": {"train": {"good": 1}, "test": {"QS": 1}}}
    assert read_meta(tmp_path / "data", "realiad") == {
        "train": {"audiojack": [_item("realiad/audiojack/train/good/audiojack_0001_OK_C1_1.jpg", "", "audiojack", "good")],
                  "toy": [_item("realiad/toy/train/good/toy_0001_OK_C2_1.jpg", "", "toy", "good")]},
        "test": {"audiojack": [_item("realiad/audiojack/test/good/audiojack_0002_OK_C1_2.jpg", "", "audiojack", "good"),
                               _item("realiad/audiojack/test/AK/audiojack_0003_NG_AK_C1_3.jpg",
                                     "realiad/audiojack/ground_truth/AK/audiojack_0003_NG_AK_C1_3_mask.png",
                                     "audiojack", "AK")],
                 "toy": [_item("realiad/toy/test/QS/toy_0002_NG_QS_C2_2.jpg",
                               "realiad/toy/ground_truth/QS/toy_0002_NG_QS_C2_2_mask.png", "toy", "QS")]}}
    assert validate_dataset(tmp_path / "data", "realiad") == []


def test_realiad_missing_masks_and_anomalous_training_images(tmp_path, capsys):
    src = _fake_realiad(tmp_path / "raw")
    (src / "realiad_1024/toy/NG/QS/S0002/toy_0002_NG_QS_C2_2.png").unlink()
    with pytest.raises(ConversionError, match=r"toy.json test\[0\]: anomalous image .* has no mask"):
        realiad.convert(src, tmp_path / "data")
    counts = realiad.convert(src, tmp_path / "data", missing_mask="skip")
    assert counts["toy"] == {"train": {"good": 1}, "test": {}}
    assert "skipped 1 anomalous image" in capsys.readouterr().out
    document = json.loads((src / "realiad_jsons_sv/audiojack.json").read_text())
    document["train"][0]["anomaly_class"] = "AK"
    (src / "realiad_jsons_sv/audiojack.json").write_text(json.dumps(document))
    with pytest.raises(ConversionError, match="anomalous training image"):
        realiad.convert(src, tmp_path / "data", missing_mask="skip")


# ----------------------------------------------------------------------------- generic folder

def test_folder_converter_accepts_masks_without_suffix_and_rejects_odd_train(tmp_path):
    src = tmp_path / "unimedical"
    _image(src / "brain/train/good/a.png", 1)
    _image(src / "brain/test/good/b.png", 2)
    _image(src / "brain/test/Ungood/c.png", 3)
    _mask(src / "brain/ground_truth/Ungood/c.png")
    counts = folder.convert(src, tmp_path / "data", "unimedical")
    assert counts == {"brain": {"train": {"good": 1}, "test": {"Ungood": 1, "good": 1}}}
    assert read_meta(tmp_path / "data", "unimedical")["test"]["brain"][0]["mask_path"] == \
        "unimedical/brain/ground_truth/Ungood/c_mask.png"
    _image(src / "brain/train/bad/d.png", 4)
    with pytest.raises(ConversionError, match="besides good"):
        folder.convert(src, tmp_path / "data", "unimedical")
    with pytest.raises(ConversionError, match="no class folders"):
        folder.convert(tmp_path / "data" / "unimedical" / "brain" / "train", tmp_path / "other", "x")


def test_folder_converter_takes_other_folder_names(tmp_path, capsys):
    src = tmp_path / "parts"
    _image(src / "gear/train/ok/a.bmp", 1)
    _image(src / "gear/test/ok/b.bmp", 2)
    _image(src / "gear/test/ng/c.bmp", 3)
    _mask(src / "gear/gt/ng/c_gt.bmp")
    with pytest.raises(ConversionError, match=r"holds \['ok'\] besides good/"):
        folder.convert(src, tmp_path / "data", "parts")
    counts = folder.convert(src, tmp_path / "data", "parts", normal_names="ok", ground_truth="gt",
                            mask_suffixes=("_gt",))
    assert counts == {"gear": {"train": {"good": 1}, "test": {"good": 1, "ng": 1}}}
    assert read_meta(tmp_path / "data", "parts")["test"]["gear"] == [
        _item("parts/gear/test/ng/c.bmp", "parts/gear/ground_truth/ng/c_mask.png", "gear", "ng"),
        _item("parts/gear/test/good/b.bmp", "", "gear", "good")]
    argv = ["--src", str(src), "--root", str(tmp_path / "cli"), "--name", "parts", "--normal-name", "ok",
            "--ground-truth-name", "gt", "--mask-suffix", "_gt"]
    assert folder.main(argv) == 0
    assert read_meta(tmp_path / "cli", "parts") == read_meta(tmp_path / "data", "parts")
    _image(src / "gear/test/good/d.bmp", 4)  # 'good' is not normal when the normal folders are named 'ok'
    with pytest.raises(ConversionError, match="defect type named 'good'"):
        folder.convert(src, tmp_path / "data", "parts", normal_names="ok", ground_truth="gt")


# ----------------------------------------------------------------------------- BTAD

def _fake_btad(src: Path) -> Path:
    for cls, mask_ext in (("01", ".png"), ("03", ".bmp")):
        _image(src / cls / "train/ok/0000.bmp", 1)
        _image(src / cls / "test/ok/0001.bmp", 2)
        _image(src / cls / "test/ko/0002.bmp", 3)
        _mask(src / cls / f"ground_truth/ko/0002{mask_ext}", value=1)  # not 0/255: rewritten
    return src


def test_btad_tree_meta_and_masks(tmp_path):
    src = _fake_btad(tmp_path / "raw")
    counts = btad.convert(src, tmp_path / "data")
    assert counts == {cls: {"train": {"good": 1}, "test": {"good": 1, "ko": 1}} for cls in ("01", "03")}
    assert read_meta(tmp_path / "data", "btad") == {
        "train": {cls: [_item(f"btad/{cls}/train/good/0000.bmp", "", cls, "good")] for cls in ("01", "03")},
        "test": {cls: [_item(f"btad/{cls}/test/ko/0002.bmp", f"btad/{cls}/ground_truth/ko/0002_mask.png", cls, "ko"),
                       _item(f"btad/{cls}/test/good/0001.bmp", "", cls, "good")]  # source folders ko < ok
                 for cls in ("01", "03")}}
    for cls in ("01", "03"):
        mask = _mask_pixels(tmp_path / f"data/btad/{cls}/ground_truth/ko/0002_mask.png")
        assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 5 * 7
    assert validate_dataset(tmp_path / "data", "btad") == []


def test_btad_non_binary_mask_names_the_option(tmp_path):
    src = _fake_btad(tmp_path / "raw")
    graded = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    graded[2:6, 2:6], graded[6:8, 2:6] = 128, 255  # anti-aliased edge
    Image.fromarray(graded).save(src / "01/ground_truth/ko/0002.png")
    with pytest.raises(ConversionError, match="--mask-mode nonzero"):
        btad.convert(src, tmp_path / "data")
    btad.convert(src, tmp_path / "data", mask_mode="nonzero")
    assert (_mask_pixels(tmp_path / "data/btad/01/ground_truth/ko/0002_mask.png") == 255).sum() == 6 * 4


# ----------------------------------------------------------------------------- MVTec LOCO AD

def _fake_loco(src: Path) -> Path:
    cls = src / "juice_bottle"
    _image(cls / "train/good/000.png", 1)
    _image(cls / "validation/good/000.png", 2)
    _image(cls / "test/good/000.png", 3)
    _image(cls / "test/logical_anomalies/000.png", 4)
    # two partial masks, each with its own defect value, overlapping in one column
    _mask(cls / "ground_truth/logical_anomalies/000/000.png", value=255, box=(slice(2, 5), slice(2, 6)))
    _mask(cls / "ground_truth/logical_anomalies/000/001.png", value=254, box=(slice(10, 12), slice(5, 9)))
    _image(cls / "test/structural_anomalies/000.png", 5)
    _mask(cls / "ground_truth/structural_anomalies/000/000.png", value=255)
    (cls / "defects_config.json").write_text("[]")
    return src


@pytest.mark.parametrize("validation, train_names", [("ignore", ["000.png"]), ("merge", ["000.png", "val_000.png"])])
def test_mvtec_loco_merges_partial_masks(tmp_path, validation, train_names):
    src = _fake_loco(tmp_path / "raw")
    counts = mvtec_loco.convert(src, tmp_path / "data", validation=validation)
    assert counts == {"juice_bottle": {"train": {"good": len(train_names)},
                                       "test": {"good": 1, "logical_anomalies": 1, "structural_anomalies": 1}}}
    name, cls = "mvtec_loco", "juice_bottle"
    assert read_meta(tmp_path / "data", name) == {
        "train": {cls: [_item(f"{name}/{cls}/train/good/{n}", "", cls, "good") for n in train_names]},
        "test": {cls: [_item(f"{name}/{cls}/test/good/000.png", "", cls, "good")] + [
            _item(f"{name}/{cls}/test/{kind}/000.png", f"{name}/{cls}/ground_truth/{kind}/000_mask.png", cls, kind)
            for kind in ("logical_anomalies", "structural_anomalies")]}}
    merged = _mask_pixels(tmp_path / f"data/{name}/{cls}/ground_truth/logical_anomalies/000_mask.png")
    expected = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    expected[2:5, 2:6] = expected[10:12, 5:9] = 255
    assert np.array_equal(merged, expected)
    assert validate_dataset(tmp_path / "data", name) == []


def test_mvtec_loco_partial_masks_are_validated_one_by_one(tmp_path):
    src = _fake_loco(tmp_path / "raw")
    _mask(src / "juice_bottle/ground_truth/logical_anomalies/000/001.png", size=(10, 10))
    with pytest.raises(ConversionError, match=r"logical_anomalies/000/001.png' is 10x10"):
        mvtec_loco.convert(src, tmp_path / "data")


# ----------------------------------------------------------------------------- MVTec AD 2

def _fake_ad2(src: Path) -> Path:
    cls = src / "vial"
    _image(cls / "train/good/000_regular.png", 1)
    _image(cls / "validation/good/000_regular.png", 2)
    _image(cls / "test_public/good/000_regular.png", 3)
    _image(cls / "test_public/bad/001_regular.png", 4)
    _mask(cls / "test_public/ground_truth/bad/001_regular_mask.png")
    _image(cls / "test_private/000_regular.png", 5)
    _image(cls / "test_private/001_overexposed.png", 6)
    _image(cls / "test_private_mixed/000_shift_1.png", 7)
    return src


def test_mvtec_ad2_public_test_is_the_only_labeled_test_set(tmp_path):
    src = _fake_ad2(tmp_path / "raw")
    counts = mvtec_ad2.convert(src, tmp_path / "data")
    assert counts == {"vial": {"train": {"good": 1}, "test": {"good": 1, "bad": 1},
                               "test_private": {"unlabeled": 2}, "test_private_mixed": {"unlabeled": 1}}}
    name = "mvtec_ad2"
    assert read_meta(tmp_path / "data", name) == {
        "train": {"vial": [_item(f"{name}/vial/train/good/000_regular.png", "", "vial", "good")]},
        "test": {"vial": [_item(f"{name}/vial/test/bad/001_regular.png",
                                f"{name}/vial/ground_truth/bad/001_regular_mask.png", "vial", "bad"),
                          _item(f"{name}/vial/test/good/000_regular.png", "", "vial", "good")]},
        "unlabeled": {"test_private": {"vial": [f"{name}/vial/test_private/000_regular.png",
                                                f"{name}/vial/test_private/001_overexposed.png"]},
                      "test_private_mixed": {"vial": [f"{name}/vial/test_private_mixed/000_shift_1.png"]}}}
    assert (tmp_path / f"data/{name}/vial/test_private_mixed/000_shift_1.png").read_bytes() == \
        (src / "vial/test_private_mixed/000_shift_1.png").read_bytes()
    # the evaluation reads the test split only: the private images never reach a metric
    test = AnomalyDataset(tmp_path / "data", name, "test", image_size=32, crop_size=32)
    assert [item["img_path"].split("/")[2] for item in test.items] == ["test", "test"]
    report = check_dataset(tmp_path / "data", name)
    assert report.problems == [] and len(report.notes) == 2
    assert "unlabeled set 'test_private': 2 image(s)" in report.notes[0] and "never evaluated" in report.notes[0]
    (tmp_path / f"data/{name}/vial/test_private/000_regular.png").write_bytes(b"broken")
    assert "cannot be read" in validate_dataset(tmp_path / "data", name)[0]


def test_mvtec_ad2_options(tmp_path):
    src = _fake_ad2(tmp_path / "raw")
    counts = mvtec_ad2.convert(src, tmp_path / "data", private="ignore", validation="merge")
    assert counts == {"vial": {"train": {"good": 2}, "test": {"good": 1, "bad": 1}}}
    meta = read_meta(tmp_path / "data", "mvtec_ad2")
    assert "unlabeled" not in meta
    assert [item["img_path"] for item in meta["train"]["vial"]] == [
        "mvtec_ad2/vial/train/good/000_regular.png", "mvtec_ad2/vial/train/good/val_000_regular.png"]
    argv = ["--src", str(src), "--root", str(tmp_path / "cli"), "--private", "ignore", "--validation", "merge"]
    assert mvtec_ad2.main(argv) == 0
    assert read_meta(tmp_path / "cli", "mvtec_ad2") == meta


# ----------------------------------------------------------------------------- MPDD

def test_mpdd_is_mvtec_style(tmp_path):
    src = tmp_path / "raw"
    _image(src / "tubes/train/good/000.png", 1)
    _image(src / "tubes/test/good/000.png", 2)
    _image(src / "tubes/test/anomalous/000.png", 3)
    _mask(src / "tubes/ground_truth/anomalous/000_mask.png")
    counts = mpdd.convert(src, tmp_path / "data")
    assert counts == {"tubes": {"train": {"good": 1}, "test": {"anomalous": 1, "good": 1}}}
    assert read_meta(tmp_path / "data", "mpdd")["test"]["tubes"][0] == _item(
        "mpdd/tubes/test/anomalous/000.png", "mpdd/tubes/ground_truth/anomalous/000_mask.png", "tubes", "anomalous")
    assert validate_dataset(tmp_path / "data", "mpdd") == []


# ----------------------------------------------------------------------------- --missing-mask

def _without_mvtec_mask(src: Path) -> str:
    (src / "wood/ground_truth/broken/000_mask.png").unlink()
    return "wood"


def _without_visa_mask(src: Path) -> str:
    csv_path = src / "split_csv/1cls.csv"
    csv_path.write_text(csv_path.read_text().replace("pcb1/Data/Masks/Anomaly/000.png", ""))
    return "pcb1"


def _without_mvtec3d_mask(src: Path) -> str:
    (src / "bagel/test/crack/gt/000.png").unlink()
    return "bagel"


def _without_realiad_mask(src: Path) -> str:
    (src / "realiad_1024/toy/NG/QS/S0002/toy_0002_NG_QS_C2_2.png").unlink()
    return "toy"


def _without_btad_mask(src: Path) -> str:
    (src / "03/ground_truth/ko/0002.bmp").unlink()
    return "03"


def _without_loco_mask(src: Path) -> str:
    for mask in (src / "juice_bottle/ground_truth/structural_anomalies/000").iterdir():
        mask.unlink()  # an empty ground-truth folder is a missing mask
    return "juice_bottle"


def _without_ad2_mask(src: Path) -> str:
    (src / "vial/test_public/ground_truth/bad/001_regular_mask.png").unlink()
    return "vial"


MISSING_MASK_CASES = {
    "mvtec": (mvtec, _fake_mvtec, _without_mvtec_mask),
    "visa": (visa, _fake_visa, _without_visa_mask),
    "mvtec3d": (mvtec3d, _fake_mvtec3d, _without_mvtec3d_mask),
    "realiad": (realiad, _fake_realiad, _without_realiad_mask),
    "btad": (btad, _fake_btad, _without_btad_mask),
    "mvtec_loco": (mvtec_loco, _fake_loco, _without_loco_mask),
    "mvtec_ad2": (mvtec_ad2, _fake_ad2, _without_ad2_mask),
    "mpdd": (mpdd, _fake_mvtec, _without_mvtec_mask),
    "folder": (folder, _fake_mvtec, _without_mvtec_mask),
}


@pytest.mark.parametrize("mode", MISSING_MASK_MODES)
@pytest.mark.parametrize("converter", sorted(MISSING_MASK_CASES))
def test_missing_mask_modes(converter, mode, tmp_path, capsys):
    module, make, drop_mask = MISSING_MASK_CASES[converter]
    src = make(tmp_path / "raw")
    cls = drop_mask(src)
    root = tmp_path / "data"
    argv = ["--src", str(src), "--root", str(root), "--name", "d"]
    full = {c: sum(item["anomaly"] for item in items)
            for c, items in _reference_meta(module, make, tmp_path)["test"].items()}
    if mode == "error":
        assert module.main(argv) == 1
        err = capsys.readouterr().err
        assert "has no mask" in err and "--missing-mask skip" in err and not root.exists()
        return
    assert module.main(argv + ["--missing-mask", mode]) == 0
    out = capsys.readouterr().out
    meta = read_meta(root, "d")
    anomalous = {c: [item for item in items if item["anomaly"]] for c, items in meta["test"].items()}
    report = check_dataset(root, "d")
    assert report.problems == []
    if mode == "skip":
        assert f"skipped 1 anomalous image(s) without a mask ({cls} 1)" in out
        assert len(anomalous.get(cls, [])) == full[cls] - 1 and "missing_mask" not in meta
        assert all(item["mask_path"] for items in anomalous.values() for item in items)
        assert report.images_without_mask == {}
        return
    assert f"kept 1 anomalous image(s) without a mask ({cls} 1)" in out
    assert meta["missing_mask"] == "keep" and len(anomalous[cls]) == full[cls]
    assert [item["mask_path"] for item in anomalous[cls]].count("") == 1
    assert report.images_without_mask == {f"test/{cls}": 1}
    assert "1 anomalous image(s) without a mask" in report.notes[0]
    data = AnomalyDataset(root, "d", "test", classes=[cls], image_size=16, crop_size=16)
    assert data.images_without_mask == {cls: 1}
    flags = [(item["label"], item["has_mask"], float(item["mask"].sum())) for item in data]
    assert sum(1 for label, has_mask, _ in flags if label == 1 and not has_mask) == 1
    assert all(total == 0 for label, has_mask, total in flags if not has_mask)
    assert all(has_mask for label, has_mask, _ in flags if label == 0)


def _reference_meta(module, make, tmp_path) -> dict:
    """The meta of the same source converted with every mask present."""
    src = make(tmp_path / "reference_src")
    module.convert(src, tmp_path / "reference", "d")
    return read_meta(tmp_path / "reference", "d")


# ----------------------------------------------------------------------------- command lines

@pytest.mark.parametrize("module", [mvtec, visa, mvtec3d, realiad, folder, btad, mvtec_loco, mvtec_ad2, mpdd])
def test_command_line_help_and_failure(module, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        module.main(["--help"])
    assert raised.value.code == 0
    help_text = capsys.readouterr().out
    assert all(option in help_text for option in ("--src", "--root", "--name", "--link", "--dry-run", "--missing-mask"))
    assert module.main(["--src", str(tmp_path / "missing"), "--root", str(tmp_path / "data")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_command_line_converts(tmp_path):
    src = _fake_mvtec(tmp_path / "raw")
    assert mvtec.main(["--src", str(src), "--root", str(tmp_path / "data"), "--name", "m", "--link"]) == 0
    assert read_meta(tmp_path / "data", "m") == _mvtec_expected("m")


@pytest.mark.slow
def test_runs_as_a_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data_prep.mvtec3d", "--help"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and "--validation" in result.stdout


def test_mambaad_prep_passes_every_converter_option(tmp_path, capsys):
    from mambaad_lib.cli import DATASETS, main

    assert set(DATASETS) == {"mvtec", "visa", "mvtec3d", "realiad", "btad", "mvtec_loco", "mvtec_ad2", "mpdd",
                             "folder"}
    src = _fake_btad(tmp_path / "raw")
    _without_btad_mask(src)
    root = tmp_path / "data"
    assert main(["prep", "btad", str(src), "--root", str(root)]) == 1
    assert "has no mask" in capsys.readouterr().err
    assert main(["prep", "folder", str(src), "--root", str(root), "--name", "b", "--normal-name", "ok",
                 "--missing-mask", "keep"]) == 0
    assert read_meta(root, "b")["missing_mask"] == "keep"
    capsys.readouterr()
    assert main(["validate-data", "--root", str(root), "--name", "b"]) == 0
    out = capsys.readouterr().out
    assert "note: 1 anomalous image(s) without a mask" in out and out.rstrip().endswith("OK")
    with pytest.raises(SystemExit) as raised:
        main(["prep", "btad", str(src), "--root", str(root), "--no-such-option"])
    assert raised.value.code == 2
