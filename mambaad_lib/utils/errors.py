"""Exceptions shared by every layer, so that a low layer can raise what the CLI reports."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value or key is invalid (the message names the key)."""
