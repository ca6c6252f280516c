"""Run configuration: dataclasses, YAML profiles, validation and command-line overrides.

A run is described by one :class:`RunConfig`. Profiles are YAML files in the repository's
``configs/`` folder (``smoke``, ``demo``, ``paper``); any other YAML path works too. Every
key can be overridden as ``section.key=value`` (the CLI spells it ``--section.key VALUE``).
Unknown keys are errors that name the key and suggest the closest valid one.

The ``model`` section belongs to the method (``method: mambaad`` -> the MambaAD method's
config dataclass), so adding a detector adds its own validated options.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from mambaad_lib.metrics import DEFAULT_PROTOCOLS
from mambaad_lib.metrics import PROTOCOLS as _PROTOCOL_FUNCTIONS
from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.utils.resources import CONFIGS_DIR

PROFILES_DIR = CONFIGS_DIR
DEVICES = ("auto", "cpu", "cuda")
PROTOCOLS = tuple(_PROTOCOL_FUNCTIONS)  # ("standard", "ader", "adeval"); adeval needs the adeval extra


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


@dataclass
class DataConfig:
    """Which dataset to read and how images are sized.

    ``root``/``name`` locate ``<root>/meta_<name>.json`` (written by ``mambaad prep`` or
    ``mambaad synth``). Images are resized to ``image_size`` and centre-cropped to
    ``crop_size`` (defaults to ``image_size``), the release protocol.
    """

    root: str = "data"
    name: str = "synthetic"
    classes: list[str] | None = None
    image_size: int = 256
    crop_size: int | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        _require(self.image_size >= 8, "data.image_size", f"must be >= 8, got {self.image_size}")
        if self.crop_size is None:
            self.crop_size = self.image_size
        _require(8 <= self.crop_size <= self.image_size, "data.crop_size",
                 f"must be in [8, image_size={self.image_size}], got {self.crop_size}")
        for key in ("train_per_class", "test_per_class"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"data.{key}", f"must be >= 1 or null, got {value}")
        _require(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _require(self.classes is None or len(self.classes) > 0, "data.classes",
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
        _require(self.n_train >= 1, "synthetic.n_train", f"must be >= 1, got {self.n_train}")
        _require(self.n_test >= 2, "synthetic.n_test", f"must be >= 2, got {self.n_test}")
        _require(self.image_size >= 16, "synthetic.image_size", f"must be >= 16, got {self.image_size}")


@dataclass
class TrainConfig:
    """Optimisation, release protocol by default (mambaad_facts.md section 3).

    The learning rate is ``lr * batch_size / lr_reference_batch``; it is multiplied by
    ``lr_step_gamma`` once, after ``lr_step_at`` of all optimisation steps.
    """

    epochs: int = 500
    batch_size: int = 16
    lr: float = 0.005
    lr_reference_batch: int = 16
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    lr_step_at: float = 0.8
    lr_step_gamma: float = 0.1
    grad_clip_norm: float | None = 5.0
    checkpoint_every: int = 50
    checkpoint_every_steps: int | None = None
    evaluate_untrained: bool = False
    deterministic: bool = True

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _require(self.lr_reference_batch >= 1, "train.lr_reference_batch",
                 f"must be >= 1, got {self.lr_reference_batch}")
        _require(all(0 <= beta < 1 for beta in self.betas), "train.betas",
                 f"must be two numbers in [0, 1), got {list(self.betas)}")
        _require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(0 < self.lr_step_at <= 1, "train.lr_step_at", f"must be in (0, 1], got {self.lr_step_at}")
        _require(0 < self.lr_step_gamma <= 1, "train.lr_step_gamma",
                 f"must be in (0, 1], got {self.lr_step_gamma}")
        _require(self.grad_clip_norm is None or self.grad_clip_norm > 0, "train.grad_clip_norm",
                 f"must be > 0 or null, got {self.grad_clip_norm}")
        _require(self.checkpoint_every >= 1, "train.checkpoint_every",
                 f"must be >= 1 (epochs), got {self.checkpoint_every}")
        _require(self.checkpoint_every_steps is None or self.checkpoint_every_steps >= 1,
                 "train.checkpoint_every_steps", f"must be >= 1 or null, got {self.checkpoint_every_steps}")

    @property
    def scaled_lr(self) -> float:
        """The learning rate actually used: linear scaling with the batch size."""
        return self.lr * self.batch_size / self.lr_reference_batch


@dataclass
class EvalConfig:
    """Test-split evaluation: batch size, metric protocols, example figures."""

    batch_size: int = 16
    protocols: list[str] = field(default_factory=lambda: list(DEFAULT_PROTOCOLS))
    num_examples: int = 4

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {self.batch_size}")
        unknown = [name for name in self.protocols if name not in PROTOCOLS]
        _require(not unknown and len(self.protocols) > 0, "eval.protocols",
                 f"must be a non-empty subset of {list(PROTOCOLS)}, got {self.protocols}")
        _require(self.num_examples >= 0, "eval.num_examples", f"must be >= 0, got {self.num_examples}")


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
    method: str = "mambaad"
    seed: int = 42
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def __post_init__(self) -> None:
        _require(self.device in DEVICES, "device", f"must be one of {list(DEVICES)}, got {self.device!r}")
        for key in ("experiment", "profile"):
            value = getattr(self, key)
            _require(bool(value) and "/" not in value and "\\" not in value and value not in (".", ".."),
                     key, f"must be a plain folder name, got {value!r}")
        if self.model is None:
            self.model = _method_config_class(self.method)()


def _method_config_class(method: str) -> type:
    from mambaad_lib.methods import get_method_class  # lazy: methods import the engine

    try:
        return get_method_class(method).config_class
    except KeyError as error:
        raise ConfigError(f"config key 'method': {error.args[0]}") from None


# ----------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"config key '{key}': expected {_type_name(hint)}, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):  # "1,2,3" from a command line
            value = [yaml.safe_load(part) for part in value.split(",")] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}': expected {len(args)} values, got {list(value)}")
            return tuple(_coerce(item, arg, key) for item, arg in zip(value, args))
        item_hint = args[0] if args else Any
        items = [_coerce(item, item_hint, key) for item in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        key_hint, value_hint = args or (Any, Any)
        return {_coerce(k, key_hint, key): _coerce(v, value_hint, key) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, prefix=key)
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(hint)}")


def _unknown_key_error(key: str, valid: Sequence[str]) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint} Valid keys here: {', '.join(sorted(valid))}")


def dataclass_from_dict(cls: type, values: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are errors."""
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key '{prefix or cls.__name__}': expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise _unknown_key_error(dotted, names)
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a dataclass without defaults for some field
        raise ConfigError(f"config section '{prefix or cls.__name__}': {error}") from None


def config_from_dict(values: Mapping[str, Any]) -> RunConfig:
    """Validate a nested mapping (as read from YAML) into a :class:`RunConfig`."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    values = dict(values)
    method = values.get("method", RunConfig.method)
    if not isinstance(method, str):
        raise ConfigError(f"config key 'method': expected a string, got {method!r}")
    model_values = values.pop("model", None)
    config = dataclass_from_dict(RunConfig, values)
    config.model = dataclass_from_dict(_method_config_class(method), model_values, prefix="model")
    return config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value

    return plain(config)


# ----------------------------------------------------------------------------------------
# profiles, files and overrides


def available_profiles() -> list[str]:
    """Names of the YAML profiles in the repository's ``configs/`` folder."""
    return sorted(path.stem for path in PROFILES_DIR.glob("*.yaml")) if PROFILES_DIR.is_dir() else []


def resolve_profile(profile: str) -> Path:
    """A profile name (``smoke``) or a path to a YAML file -> an existing file path."""
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml") or len(candidate.parts) > 1:
        if not candidate.is_file():
            raise FileNotFoundError(f"config file {profile!r} does not exist")
        return candidate
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"unknown profile {profile!r}: no {path}; available profiles: {available_profiles()} "
            "(or pass a path to a YAML file)")
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


def load_config(profile: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None,
                base: Mapping[str, Any] | None = None) -> RunConfig:
    """Build a validated :class:`RunConfig`.

    Args:
        profile: profile name in ``configs/`` or a YAML path; ``None`` -> ``base`` or defaults.
        overrides: dotted keys -> values, applied after the profile.
        base: a config dict to start from when no profile is given (e.g. a checkpoint's).
    """
    if profile is not None:
        path = resolve_profile(str(profile))
        values = read_yaml(path)
        values.setdefault("profile", path.stem)
    else:
        values = dict(base or {})
    values = apply_overrides(values, dict(overrides or {}))
    return config_from_dict(values)


def config_keys(config: RunConfig) -> list[tuple[str, str, Any]]:
    """(dotted key, type, current value) for every leaf option: what ``--help`` lists."""
    rows: list[tuple[str, str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for item in dataclasses.fields(obj):
            value = getattr(obj, item.name)
            dotted = f"{prefix}{item.name}"
            if dataclasses.is_dataclass(value):
                walk(value, dotted + ".")
            else:
                rows.append((dotted, _type_name(hints[item.name]), value))

    walk(config, "")
    return rows
