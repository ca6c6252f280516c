"""Dataclasses as validated configuration: dict -> dataclass with type checks, and back.

Every configuration in the library (a run, a method's ``model:`` section, a GLASS band, ...)
is a dataclass. :func:`dataclass_from_dict` builds one from a mapping as read from YAML or
the command line, checking each value against the field's annotation; an unknown key is an
error that names it and suggests the closest valid one. :func:`to_plain` turns a dataclass
back into nested dicts and lists (YAML/JSON), leaving out fields that are not init
arguments (values the library sets itself, such as a model's image size).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Mapping, Sequence

import yaml

from mambaad_lib.utils.errors import ConfigError

__all__ = ["dataclass_from_dict", "leaf_keys", "require", "to_plain", "type_name"]


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("config key '<key>': <message>")`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def type_name(hint: Any) -> str:
    """A readable name of a type annotation (``int``, ``list[int] | None``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(hint))
    if typing.get_args(hint):
        return str(hint).replace("typing.", "").replace("collections.abc.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint``; lists become tuples, ints floats, where annotated."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': expected {type_name(hint)}, got {value!r}")
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
    if origin in (dict, collections.abc.Mapping):
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
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(number):  # inf and nan are never a valid setting
            raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, prefix=key)
    raise ConfigError(f"config key '{key}': unsupported type {type_name(hint)}")


def _unknown_key_error(key: str, valid: Sequence[str]) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint} Valid keys here: {', '.join(sorted(valid))}")


def dataclass_from_dict(cls: type, values: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are ``ConfigError``s.

    ``prefix`` is the dotted path of the section (``"model"``), used in messages.
    """
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


def to_plain(value: Any) -> Any:
    """Nested dicts/lists of a dataclass (tuples become lists); non-init fields are left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value


def leaf_keys(config: Any, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, type name, current value) of every settable leaf option of a dataclass."""
    rows: list[tuple[str, str, Any]] = []
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        if not item.init:
            continue
        value = getattr(config, item.name)
        dotted = f"{prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            rows += leaf_keys(value, dotted + ".")
        else:
            rows.append((dotted, type_name(hints[item.name]), value))
    return rows
