"""Run configuration: profiles, validation errors, overrides, round trips."""
from __future__ import annotations

import pytest

from mambaad_lib.engine.config import (
    ConfigError, RunConfig, apply_overrides, available_profiles, config_from_dict, config_keys, config_to_dict,
    load_config, parse_override)
from mambaad_lib.methods.mambaad import MambaADMethodConfig


@pytest.mark.parametrize("profile", ["smoke", "demo", "paper"])
def test_profiles_load_and_validate(profile):
    config = load_config(profile)
    assert config.profile == profile
    assert isinstance(config.model, MambaADMethodConfig)
    assert config.data.crop_size == config.data.image_size
    assert profile in available_profiles()


def test_paper_profile_follows_release_protocol():
    config = load_config("paper")
    assert (config.train.epochs, config.train.batch_size, config.data.image_size) == (500, 16, 256)
    assert config.train.scaled_lr == pytest.approx(0.005)
    assert config.train.grad_clip_norm == 5.0 and config.train.lr_step_at == 0.8
    assert config.model.encoder_weights == "imagenet" and tuple(config.model.depths) == (3, 4, 6, 3)


def test_round_trip_through_plain_dict():
    config = load_config("smoke", {"train.epochs": 7, "model.depths": "2,2,2,2"})
    assert config.train.epochs == 7 and config.model.depths == (2, 2, 2, 2)
    assert config_from_dict(config_to_dict(config)) == config


def test_unknown_key_names_it_and_suggests(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*did you mean 'epochs'"):
        load_config(str(path))


def test_unknown_section_and_model_key():
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        config_from_dict({"trian": {"epochs": 3}})
    with pytest.raises(ConfigError, match="unknown config key 'model.dephts'.*did you mean 'depths'"):
        load_config("smoke", {"model.dephts": [1, 1, 1, 1]})


@pytest.mark.parametrize("override, message", [
    ({"train.epochs": "ten"}, "train.epochs': expected an integer"),
    ({"train.batch_size": 0}, "train.batch_size': must be >= 1"),
    ({"train.betas": [0.9]}, "train.betas': expected 2 values"),
    ({"device": "tpu"}, "'device': must be one of"),
    ({"eval.protocols": ["standard", "mvtec"]}, "eval.protocols"),
    ({"data.crop_size": 512}, "data.crop_size"),
    ({"train.evaluate_untrained": "yes"}, "expected true or false"),
    ({"experiment": "../escape"}, "plain folder name"),
    ({"method": "patchcore"}, "unknown method 'patchcore'"),
])
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", override)


def test_profile_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper").mkdir()
    assert load_config("paper").profile == "paper"
    (tmp_path / "mine.yaml").write_text("experiment: mine\ntrain:\n  epochs: 2\n")
    config = load_config("mine.yaml")
    assert (config.profile, config.experiment, config.train.epochs) == ("mine", "mine", 2)


def test_missing_profile_lists_available():
    with pytest.raises(FileNotFoundError, match="packaged profiles"):
        load_config("smok")


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [epochs: 3\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(str(path))


def test_override_parsing():
    assert load_config("smoke", dict([parse_override("train.lr=1e-3")])).train.lr == 1e-3
    assert parse_override("data.classes=[a, b]") == ("data.classes", ["a", "b"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.epochs")
    nested = apply_overrides({"train": {"epochs": 1}}, {"train.batch_size": 2, "seed": 3})
    assert nested == {"train": {"epochs": 1, "batch_size": 2}, "seed": 3}


def test_config_keys_cover_every_section():
    keys = {key for key, _, _ in config_keys(RunConfig())}
    assert {"train.epochs", "model.encoder_weights", "data.root", "paths.results_dir", "seed"} <= keys


def test_scan_mapping_for_tables_mixed_rows():
    """Table 3's mixed rows (e.g. zigzag x4 + hilbert x4) are expressible in a run config."""
    from mambaad_lib.engine.config import load_config

    config = load_config("smoke", {"model.scan": {"zigzag": 4, "hilbert": 4}})
    assert config.model.scan == {"zigzag": 4, "hilbert": 4}
    with pytest.raises(ConfigError, match="model.scan"):
        load_config("smoke", {"model.scan": {"zigzag": "four"}})


def test_protocol_needing_a_missing_package_fails_at_config_time(monkeypatch):
    """eval.protocols: [adeval] without the adeval extra is a one-line config error naming
    the key and the install command, raised when the config loads (before any training)."""
    monkeypatch.setitem(__import__("sys").modules, "adeval", None)  # import adeval -> ImportError
    with pytest.raises(ConfigError, match=r"eval.protocols.*pip install") as caught:
        load_config("smoke", {"eval.protocols": ["standard", "adeval"]})
    assert "\n" not in str(caught.value)
    assert load_config("smoke", {"eval.protocols": ["ader"]}).eval.protocols == ["ader"]
