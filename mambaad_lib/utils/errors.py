"""Exceptions shared by every layer, so that a low layer can raise what the CLI reports."""
from __future__ import annotations

import errno

__all__ = ["ConfigError", "os_error_message"]

# What to do about the operating-system errors a long run meets (the CLI prints one line).
_OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere with --runs-dir, --results-dir, --out or --root",
    errno.EDQUOT: "the disk quota is used up: free space or write elsewhere with --runs-dir, --results-dir, --out "
                  "or --root",
    errno.EACCES: "choose a folder you can write with --runs-dir, --results-dir, --out or --root",
    errno.EPERM: "choose a folder you can write with --runs-dir, --results-dir, --out or --root",
    errno.EROFS: "write elsewhere with --runs-dir, --results-dir, --out or --root",
}


class ConfigError(ValueError):
    """A configuration value or key is invalid (the message names the key)."""


def os_error_message(error: OSError) -> str:
    """One line for an operating-system error: what failed, on which path(s), what to do."""
    paths = [str(name) for name in (error.filename, error.filename2) if name is not None]
    text = f"{error.strerror or error}" + (f": {' -> '.join(paths)}" if paths else "")
    hint = _OS_ERROR_HINTS.get(error.errno)
    return f"{text} ({hint})" if hint else text
