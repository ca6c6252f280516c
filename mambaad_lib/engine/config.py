"""Run configuration: the sections of a run, profiles, and the one rule that resolves them.

A run is described by one :class:`RunConfig`. Every key can be overridden as
``section.key=value`` (the CLI spells it ``--section.key VALUE``); unknown keys are errors
that name the key and suggest the closest valid one. The ``model`` section belongs to the
method (``method: glass`` -> the GLASS method's config dataclass).

**Profiles.** ``smoke`` (seconds, tests), ``demo`` (a 2-core CPU, minutes) and ``paper`` (the
published setting, a GPU) are *sizes*: every method declares its own YAML profile of each
size it supports (``AnomalyMethod.profiles``). :func:`load_config` is the single rule the
command line, the experiments and the notebooks use:

- ``profile`` a size, ``method`` given or not (default ``mambaad``): that method's profile
  of that size; a method without one is an error, never a silent switch to another size;
- ``profile`` a profile name (``glass_demo``, packaged in ``mambaad_lib/configs/``) or a
  YAML path: that file; asking for another method than the file's is an error;
- no profile: ``base`` (e.g. a checkpoint's stored config) or the defaults.

A profile may start from another with ``extends: <profile>``: the other is read first and
this file's sections are merged into it, key by key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from mambaad_lib.methods.base import PROFILE_SIZES, get_method_class
from mambaad_lib.methods.training import TrainConfig
from mambaad_lib.metrics import DEFAULT_PROTOCOLS, check_protocol
from mambaad_lib.metrics import PROTOCOLS as _PROTOCOL_FUNCTIONS
from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.utils.resources import CONFIGS_DIR
from mambaad_lib.utils.schema import dataclass_from_dict, leaf_keys, require, to_plain

__all__ = ["ConfigError", "DataConfig", "EvalConfig", "PathsConfig", "RunConfig", "SyntheticConfig", "TrainConfig",
           "apply_overrides", "available_profiles", "config_from_dict", "config_keys", "config_to_dict",
           "load_config", "parse_override", "read_yaml", "resolve_profile"]

DEFAULT_METHOD = "mambaad"
DEVICES = ("auto", "cpu", "cuda")
PROTOCOLS = tuple(_PROTOCOL_FUNCTIONS)  # ("standard", "ader", "adeval"); adeval needs the adeval extra


@dataclass
class DataConfig:
    """Which dataset to read and how images are sized.

    ``root``/``name`` locate ``<root>/meta_<name>.json`` (written by ``mambaad prep`` or
    ``mambaad synth``). Images are resized to ``image_size`` and centre-cropped to
    ``crop_size`` (defaults to ``image_size``), the release protocol. Classes without normal
    training images stop a run before training unless ``allow_empty_classes``.
    """

    root: str = "data"
    name: str = "synthetic"
    classes: list[str] | None = None
    image_size: int = 256
    crop_size: int | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    num_workers: int = 0
    allow_empty_classes: bool = False

    def __post_init__(self) -> None:
        require(self.image_size >= 8, "data.image_size", f"must be >= 8, got {self.image_size}")
        if self.crop_size is None:
            self.crop_size = self.image_size
        require(8 <= self.crop_size <= self.image_size, "data.crop_size",
                f"must be in [8, image_size={self.image_size}], got {self.crop_size}")
        for key in ("train_per_class", "test_per_class"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"data.{key}", f"must be >= 1 or null, got {value}")
        require(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.classes is None or len(self.classes) > 0, "data.classes",
                "must be null (all classes) or a non-empty list")


@dataclass
class SyntheticConfig:
    """How ``mambaad synth`` generates the synthetic benchmark into ``data.root``/``data.name``.

    Defaults are the benchmark's (all classes, 60 training and 40 test images per class,
    256x256); ``data.classes``/``data.*_per_class`` then choose what a run uses.
    """

    n_train: int = 60
    n_test: int = 40
    seed: int = 0
    image_size: int = 256
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        require(self.n_train >= 1, "synthetic.n_train", f"must be >= 1, got {self.n_train}")
        require(self.n_test >= 2, "synthetic.n_test", f"must be >= 2, got {self.n_test}")
        require(self.image_size >= 16, "synthetic.image_size", f"must be >= 16, got {self.image_size}")


@dataclass
class EvalConfig:
    """Test-split evaluation: batch size, metric protocols, example figures, schedule.

    ``every_epochs``: also evaluate after every this many epochs (the release evaluates every
    ``epochs / 20``); each evaluation is recorded in the results file, the final model's is the
    headline. null: only the final model.
    """

    batch_size: int = 16
    protocols: list[str] = field(default_factory=lambda: list(DEFAULT_PROTOCOLS))
    num_examples: int = 4
    every_epochs: int | None = None

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {self.batch_size}")
        unknown = [name for name in self.protocols if name not in PROTOCOLS]
        require(not unknown and len(self.protocols) > 0, "eval.protocols",
                f"must be a non-empty subset of {list(PROTOCOLS)}, got {self.protocols}")
        for name in self.protocols:
            # A protocol needing an optional package fails here, before any training starts.
            try:
                check_protocol(name)
            except ImportError as error:
                raise ConfigError(f"config key 'eval.protocols': {error}") from None
        require(self.num_examples >= 0, "eval.num_examples", f"must be >= 0, got {self.num_examples}")
        require(self.every_epochs is None or self.every_epochs >= 1, "eval.every_epochs",
                f"must be >= 1 or null, got {self.every_epochs}")


@dataclass
class PathsConfig:
    """Where results (committed) and checkpoints/scratch (git-ignored) go."""

    results_dir: str = "results"
    runs_dir: str = "runs"


@dataclass
class RunConfig:
    """Everything one ``mambaad train`` / ``evaluate`` needs. ``model`` is the method's config."""

    experiment: str = "default"
    profile: str = "custom"
    method: str = DEFAULT_METHOD
    seed: int = 42
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def __post_init__(self) -> None:
        require(self.device in DEVICES, "device", f"must be one of {list(DEVICES)}, got {self.device!r}")
        for key in ("experiment", "profile"):
            value = getattr(self, key)
            require(bool(value) and "/" not in value and "\\" not in value and value not in (".", ".."),
                    key, f"must be a plain folder name, got {value!r}")
        if self.model is None:
            self.model = _method_config_class(self.method)()


def _method_config_class(method: str) -> type:
    try:
        return get_method_class(method).config_class
    except KeyError as error:
        raise ConfigError(f"config key 'method': {error.args[0]}") from None


def config_from_dict(values: Mapping[str, Any]) -> RunConfig:
    """Validate a nested mapping (as read from YAML) into a :class:`RunConfig`."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    values = dict(values)
    method = values.get("method", DEFAULT_METHOD)
    if not isinstance(method, str):
        raise ConfigError(f"config key 'method': expected a string, got {method!r}")
    model_values = values.pop("model", None)
    config = dataclass_from_dict(RunConfig, values)
    config.model = dataclass_from_dict(_method_config_class(method), model_values, prefix="model")
    return config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""
    return to_plain(config)


def config_keys(config: RunConfig) -> list[tuple[str, str, Any]]:
    """(dotted key, type, current value) for every leaf option: what ``--help`` lists."""
    return leaf_keys(config)


# ---- profiles, files and overrides -------------------------------------------------------


def available_profiles() -> list[str]:
    """Names of the packaged YAML profiles (``mambaad_lib/configs/``)."""
    return sorted(path.stem for path in CONFIGS_DIR.glob("*.yaml"))


def resolve_profile(profile: str) -> Path:
    """A packaged profile name (``glass_demo``) or a path to a YAML file -> an existing file path."""
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml") or len(candidate.parts) > 1:
        if not candidate.is_file():
            raise FileNotFoundError(f"config file {profile!r} does not exist")
        return candidate
    path = CONFIGS_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"unknown profile {profile!r}; sizes: {list(PROFILE_SIZES)}, packaged profiles: "
                                f"{available_profiles()} (or pass a path to a YAML file)")
    return path


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return data


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, section by section (``update`` wins)."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, Mapping) and isinstance(
            merged.get(key), Mapping) else value
    return merged


def read_profile(profile: str, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile's sections with its ``extends:`` chain resolved; ``profile`` names the result."""
    path = resolve_profile(profile)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    values = read_yaml(path)
    own_name = values.get("profile")
    parent = values.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: 'extends' must name a profile, got {parent!r}")
        values = _merge(read_profile(parent, (*seen, path.resolve())), values)
    values["profile"] = own_name or path.stem
    return values


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)`` (values parsed as YAML scalars/lists)."""
    key, separator, raw = text.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    raw = raw.strip()
    return key.strip(), (yaml.safe_load(raw) if raw else "")


def apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); sections are created as needed."""
    result = yaml.safe_load(yaml.safe_dump(values))  # deep copy of plain data
    for dotted, value in overrides.items():
        *sections, leaf = dotted.split(".")
        target = result
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override '{dotted}': '{section}' is not a section")
        target[leaf] = value
    return result


def load_config(profile: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                base: Mapping[str, Any] | None = None) -> RunConfig:
    """Build a validated :class:`RunConfig` by the one rule of this module's docstring.

    Args:
        profile: a size (``smoke``, ``demo``, ``paper``), a packaged profile name or a YAML
            path; None -> ``base`` or the defaults.
        overrides: dotted keys -> values, applied last; ``method`` chooses the method.
        base: a config dict to start from when no profile is given (e.g. a checkpoint's).
    Raises:
        ConfigError: a method without a profile of the asked size, a profile of another
            method, or any invalid key or value.
    """
    overrides = dict(overrides or {})
    method = overrides.pop("method", None)
    if profile is not None and str(profile) in PROFILE_SIZES:
        size = str(profile)
        method = method or (base or {}).get("method") or DEFAULT_METHOD
        try:
            method_class = get_method_class(method)
        except KeyError as error:
            raise ConfigError(f"config key 'method': {error.args[0]}") from None
        if size not in method_class.profiles:
            sizes = sorted(method_class.profiles)
            raise ConfigError(f"method {method!r} has no {size!r} profile (it has: {', '.join(sizes) or 'none'}); "
                              f"pass a YAML file with --profile, or start from its "
                              f"{'/'.join(sizes) or 'default'} settings and override keys")
        values = read_profile(method_class.profiles[size])
        values.update(method=method, profile=size)
    elif profile is not None:
        values = read_profile(str(profile))
        stated = values.get("method", DEFAULT_METHOD)
        if method is not None and method != stated:
            raise ConfigError(f"profile {str(profile)!r} is for method {stated!r}, not {method!r}; use "
                              f"--profile smoke|demo|paper --model {method} (that method's own settings) or a "
                              "YAML file written for it")
    else:
        values = dict(base or {})
        stated = values.get("method", DEFAULT_METHOD)
        if method is not None and method != stated:
            if base:
                raise ConfigError(f"the stored config is for method {stated!r}, not {method!r}")
            values["method"] = method
    return config_from_dict(apply_overrides(values, overrides))
