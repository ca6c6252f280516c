"""Atomic file writing: a reader never sees a half-written results file or checkpoint.

Every writer goes through :func:`atomic_write`: the bytes land in a temporary file in the
target's folder, are flushed and fsynced, and the temporary file is renamed over the target
with :func:`os.replace` (atomic on POSIX and Windows within one file system).
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import torch


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_DEFAULT_MODE = _default_mode()


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` if needed and prove that files can be written into it.

    Called before long work starts, so that an unwritable results or runs folder fails in
    the first second rather than after hours of training.

    Raises:
        PermissionError: the folder cannot be created or written (the message names it).
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise PermissionError(
            f"the {what} folder {str(folder)!r} is not writable ({error.strerror or error}); "
            f"choose another one (see --help for the option that sets it)") from error
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(handle)`` fills a temporary file that replaces it.

    The parent folder must exist. On any error the temporary file is removed and the
    previous content of ``path`` (if any) is untouched; an ``OSError`` that names no file
    (a full disk fails a write, not an open) is raised again naming ``path``.
    """
    target = Path(path)
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # Temporary files are private (0600); give the result the mode a plain open() would.
        os.chmod(handle.name, target.stat().st_mode & 0o777 if target.exists() else _DEFAULT_MODE)
        os.replace(handle.name, target)
    except OSError as error:
        Path(handle.name).unlink(missing_ok=True)
        if error.filename is None and error.errno is not None:
            raise type(error)(error.errno, error.strerror or str(error), str(target)) from error
        raise
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (not JSON) by None so that every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def atomic_write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically (non-finite floats become null)."""
    text = json.dumps(_json_safe(payload), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_torch_save(path: str | os.PathLike, payload: Any) -> Path:
    """``torch.save`` to ``path`` atomically (serialised in memory first, then written)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())
