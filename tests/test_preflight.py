"""Bad data stops before training; 16-bit images are scaled, not saturated; prep leaves no
stale, half-written or empty folders (issue 21, items 4-6 and 9)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import toy_method
from data_prep import mvtec
from mambaad_lib.cli import main
from mambaad_lib.data import DataProblemsError, load_image, preflight
from mambaad_lib.data.dataset import AnomalyDataset
from mambaad_lib.data.validate import check_dataset
from mambaad_lib.engine import runner
from mambaad_lib.engine.config import load_config
from mambaad_lib.engine.images import load_input
from test_data_prep import _fake_mvtec


@pytest.fixture
def toy(tmp_path):
    """(config, tmp_path): the toy method on its two-class dataset, training counted in ``steps``."""
    toy_method.register()
    toy_method.make_dataset(tmp_path / "data")
    profile = toy_method.write_profile(tmp_path, tmp_path / "data")
    yield load_config(str(profile), {"model.progress_file": str(tmp_path / "steps.txt")}), tmp_path
    toy_method.unregister()


def _meta(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "data" / "meta_toy.json").read_text())


def _write_meta(tmp_path: Path, meta: dict) -> None:
    (tmp_path / "data" / "meta_toy.json").write_text(json.dumps(meta))


def _refused_before_training(config, tmp_path: Path, *expected: str) -> str:
    with pytest.raises(DataProblemsError) as raised:
        runner.train(config, progress=False)
    message = str(raised.value)
    for text in expected:
        assert text in message, message
    assert not (tmp_path / "steps.txt").exists(), "training started"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    return message


# ---- 16-bit images ------------------------------------------------------------------------------


def _png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG (greyscale (H,W) or RGB (H,W,3)), written chunk by chunk: PIL cannot write 16-bit colour."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


RAMP = (np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472


@pytest.mark.parametrize("kind", ["PNG I;16", "TIFF I;16B", "TIFF I"])
def test_16_bit_greyscale_is_scaled_to_8_bits_not_saturated(tmp_path, kind):
    path = tmp_path / ("grey.png" if kind.startswith("PNG") else "grey.tif")
    if kind == "PNG I;16":
        _png16(path, RAMP)
    elif kind == "TIFF I;16B":
        Image.frombytes("I;16B", (32, 32), RAMP.astype(">u2").tobytes()).save(path)
    else:
        Image.fromarray(RAMP.astype(np.int32), mode="I").save(path)
    assert Image.open(path).mode == kind.split()[1]
    expected = np.rint(RAMP / 257.0).astype(np.uint8)
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (32, 32, 3)
    assert np.array_equal(loaded[..., 0], expected) and np.array_equal(loaded[..., 2], expected)
    assert (loaded == 255).mean() < 0.01  # saturation turned 99.6 % of this ramp into 255
    assert np.array_equal(np.asarray(load_input(path)), loaded)  # predict: the same rule


def test_16_bit_colour_and_unusable_depths(tmp_path):
    colour = np.zeros((8, 8, 3), np.uint16)
    colour[..., 0], colour[..., 1], colour[..., 2] = 65535, 257 * 100, 300
    assert np.asarray(load_image(_png16(tmp_path / "rgb16.png", colour)))[0, 0].tolist() == [255, 100, 1]
    floating = tmp_path / "float.tif"
    Image.fromarray(np.ones((8, 8), np.float32)).save(floating)
    with pytest.raises(ValueError, match="float.tif' holds floating-point pixels"):
        load_image(floating)
    beyond = tmp_path / "beyond.tif"
    Image.fromarray(np.full((8, 8), 70000, np.int32), mode="I").save(beyond)
    with pytest.raises(ValueError, match="values 70000..70000, outside the 16-bit range"):
        load_image(beyond)


def test_16_bit_images_go_through_prep_and_validation_scaled(tmp_path):
    src = _fake_mvtec(tmp_path / "raw")
    _png16(src / "bottle" / "test" / "good" / "000.png", np.full((20, 24), 257 * 80, np.uint16))
    mvtec.convert(src, tmp_path / "data", "mvtec")
    assert check_dataset(tmp_path / "data", "mvtec").problems == []
    image = load_image(tmp_path / "data" / "mvtec" / "bottle" / "test" / "good" / "000.png")
    assert np.unique(np.asarray(image)).tolist() == [80]


# ---- bad test data stops the run before training ---------------------------------------------------


def test_a_corrupt_or_truncated_test_image_stops_the_run_before_training(toy):
    config, tmp_path = toy
    assert not config.train.evaluate_untrained  # as in the paper profiles: nothing reads the test split early
    meta = _meta(tmp_path)
    garbage, truncated = (tmp_path / "data" / item["img_path"] for item in meta["test"]["brick"][:2])
    garbage.write_bytes(b"not an image at all")
    truncated.write_bytes(truncated.read_bytes()[:-40])
    message = _refused_before_training(config, tmp_path, "2 problem(s)", f"{garbage}' cannot be read as an image",
                                       f"{truncated}' cannot be read", "truncated")
    assert "found before training" in message


def test_a_mask_of_the_wrong_size_stops_the_run_before_training(toy):
    config, tmp_path = toy
    item = next(item for item in _meta(tmp_path)["test"]["coin"] if item["anomaly"])
    mask = tmp_path / "data" / item["mask_path"]
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask)
    _refused_before_training(config, tmp_path, f"{mask}' is 16x16 but its image", "is 32x32")


def test_preflight_reads_headers_not_pixels(toy, monkeypatch):
    config, tmp_path = toy
    datasets = runner.build_datasets(config)
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image) or real_load(image))
    report = preflight(config.data.root, datasets["test"], datasets["train"])
    assert report.problems == [] and report.files_checked == len(datasets["train"]) + 10 + 6  # + test images, masks
    assert decoded == []


def test_png_with_bytes_after_its_end_is_fine(toy):
    config, tmp_path = toy
    image = tmp_path / "data" / _meta(tmp_path)["test"]["brick"][0]["img_path"]
    image.write_bytes(image.read_bytes() + b"\x00" * 100)  # some tools pad files
    datasets = runner.build_datasets(config)
    assert preflight(config.data.root, datasets["test"], datasets["train"]).problems == []


# ---- classes -------------------------------------------------------------------------------------


def _rename_class(meta: dict, old: str, new: str) -> dict:
    for split in ("train", "test"):
        items = meta[split].pop(old)
        meta[split][new] = [{**item, "cls_name": new} for item in items]
    return meta


def test_a_class_name_that_is_no_folder_name_is_refused_by_validation_and_before_training(toy, capsys):
    config, tmp_path = toy
    _write_meta(tmp_path, _rename_class(_meta(tmp_path), "coin", "coin/old"))
    report = check_dataset(tmp_path / "data", "toy")
    assert report.problems == ["class name 'coin/old' is not usable as a folder name: use letters, digits and "
                               ". _ + - (no '/', no leading dot, at most 128 characters)"]
    assert main(["validate-data", "--root", str(tmp_path / "data"), "--name", "toy"]) == 1
    assert "'coin/old' is not usable" in capsys.readouterr().out
    _refused_before_training(config, tmp_path, "class name 'coin/old' is not usable as a folder name")


def test_a_class_without_training_images_is_an_error_unless_allowed(toy, capsys):
    config, tmp_path = toy
    meta = _meta(tmp_path)
    meta["train"]["coin"] = []
    _write_meta(tmp_path, meta)
    _refused_before_training(config, tmp_path, "'coin' have no normal training images", "--allow-empty-classes")

    allowed = load_config(None, {"data.allow_empty_classes": True}, base=runner.config_to_dict(config))
    record = runner.train(allowed, run_id="allowed", progress=False).record
    assert record["data"]["classes"] == ["brick", "coin"] and record["data"]["n_train"] == 4
    profile = tmp_path / "toy_profile.yaml"
    assert main(["train", "--profile", str(profile), "--run-id", "flag", "--quiet"]) == 2
    assert "have no normal training images" in capsys.readouterr().err
    assert main(["train", "--profile", str(profile), "--run-id", "flag", "--allow-empty-classes", "--quiet"]) == 0


@pytest.mark.parametrize("keep", ["normal", "anomalous"])
def test_a_test_split_with_one_label_stops_the_run_instead_of_giving_nan(toy, keep):
    config, tmp_path = toy
    meta = _meta(tmp_path)
    for cls_name in meta["test"]:
        meta["test"][cls_name] = [item for item in meta["test"][cls_name] if item["anomaly"] == (keep == "anomalous")]
    _write_meta(tmp_path, meta)
    missing = "anomalous" if keep == "normal" else "normal"
    message = _refused_before_training(config, tmp_path, f"class 'brick': the test split has no {missing} images",
                                       f"class 'coin': the test split has no {missing} images", "NaN")
    with pytest.raises(DataProblemsError, match=f"has no {missing} images"):
        runner.evaluate(config, tmp_path / "any.pt", progress=False)  # evaluate checks before loading anything
    assert message.count("NaN") == 2


# ---- prep --------------------------------------------------------------------------------------


def test_prep_reports_a_dangling_symlinked_image(tmp_path, capsys):
    src = _fake_mvtec(tmp_path / "raw")
    (src / "wood" / "train" / "good" / "002.png").symlink_to(tmp_path / "moved_away.png")
    assert mvtec.main(["--src", str(src), "--root", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert "002.png' is a symbolic link to" in err and "moved_away.png', which does not exist" in err
    assert not (tmp_path / "data").exists()


def test_prep_rerun_removes_the_previous_conversions_stale_files_only(tmp_path, capsys):
    src = _fake_mvtec(tmp_path / "raw")
    root = tmp_path / "data"
    mvtec.convert(src, root, "mvtec")
    mine = root / "mvtec" / "NOTES.txt"
    mine.write_text("the user's own file")
    shutil.rmtree(src / "wood")
    (src / "bottle" / "train" / "good" / "001.png").unlink()
    capsys.readouterr()
    mvtec.convert(src, root, "mvtec", dry_run=True)
    assert "remove " + str(root / "mvtec" / "bottle" / "train" / "good" / "001.png") in capsys.readouterr().out
    mvtec.convert(src, root, "mvtec")
    assert "6 stale file(s) of the previous conversion removed" in capsys.readouterr().out
    listed = {item["img_path"] for split in ("train", "test") for items in json.loads(
        (root / "meta_mvtec.json").read_text())[split].values() for item in items}
    images = {path.relative_to(root).as_posix() for path in (root / "mvtec").rglob("*.png")
              if "ground_truth" not in path.parts}
    assert images == listed and not (root / "mvtec" / "wood").exists()
    assert mine.read_text() == "the user's own file"


def test_a_failed_link_leaves_no_folders(tmp_path, monkeypatch):
    src = _fake_mvtec(tmp_path / "raw")

    def cross_device(source, target):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(source), str(target))

    monkeypatch.setattr(os, "link", cross_device)
    with pytest.raises(ValueError, match="cannot hard-link .*share a file system"):
        mvtec.convert(src, tmp_path / "data", "mvtec", link=True)
    assert not (tmp_path / "data").exists()


def test_a_full_disk_during_prep_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import data_prep.common as common

    src = _fake_mvtec(tmp_path / "raw")
    copies = []

    def copy_until_full(source, target):
        copies.append(target)
        if len(copies) == 3:
            Path(target).write_bytes(Path(source).read_bytes()[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return shutil.copyfile(source, target)

    monkeypatch.setattr(common.shutil, "copyfile", copy_until_full)
    root = tmp_path / "data"
    assert main(["prep", "mvtec", str(src), "--root", str(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: No space left on device: ")
    assert "/mvtec/" in err and "the disk is full" in err
    assert not root.exists()
