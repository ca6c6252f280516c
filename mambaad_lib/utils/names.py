"""Names that become folder or file names: run ids, experiment names, class names.

A name is used as one path component (``runs/<experiment>/<run_id>/<class>/``,
``results/.../<run_id>_examples/<class>_...png``), so it must not be able to point anywhere
else: letters, digits and ``. _ + -`` only, no leading dot (hidden files, ``..``), at most
128 characters.
"""
from __future__ import annotations

import re

from mambaad_lib.utils.errors import ConfigError

__all__ = ["check_name", "name_problem"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
RULE = "use letters, digits and . _ + - (no '/', no leading dot, at most 128 characters)"


def name_problem(value: object, what: str) -> str | None:
    """Why ``value`` cannot be one path component (a sentence naming ``what``), or None."""
    if isinstance(value, str) and _SAFE_NAME.match(value):
        return None
    return f"{what} {value!r} is not usable as a folder name: {RULE}"


def check_name(value: str, what: str) -> str:
    """``value`` if it is safe as one path component, else a ``ConfigError`` naming ``what``."""
    problem = name_problem(value, what)
    if problem:
        raise ConfigError(problem)
    return value
