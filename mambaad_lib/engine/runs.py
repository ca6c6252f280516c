"""Where a run lives: run ids, run folders, the lock that makes a run folder exclusive.

``runs/<experiment>/<run_id>/`` holds a run's ``config.yaml``, its checkpoints (per-class
methods: one sub-folder per class) and, once it has finished, ``run.json`` (the results file
it wrote). While a process owns the folder it holds ``.lock`` (pid, host, start time): a
second live run with the same id fails at once; a lock left by a process that died is taken
over, so ``kill -9`` followed by ``--resume`` keeps working.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: the lock file's existence is the lock
    fcntl = None  # type: ignore[assignment]

from mambaad_lib.utils.files import atomic_write_json
from mambaad_lib.utils.names import check_name

logger = logging.getLogger(__name__)

LOCK = ".lock"
FINISHED = "run.json"
CONFIG = "config.yaml"

__all__ = ["LOCK", "FINISHED", "CONFIG", "check_name", "new_run_id", "RunLock", "lock_holder", "check_not_in_use",
           "mark_finished", "is_finished"]


def new_run_id(method: str, seed: int) -> str:
    """``<method>-seed<seed>-<UTC time to the microsecond>-<random suffix>``: unique and sortable."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return f"{method}-seed{seed}-{stamp}-{secrets.token_hex(2)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _may_be_alive(holder: dict[str, Any]) -> bool:
    """Whether the process a lock file names may still run (only a pid on this host can be checked)."""
    return holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int) \
        or _pid_alive(holder["pid"])


class RunLock:
    """Exclusive ownership of a run folder for the duration of a ``with`` block.

    Where the system offers ``flock`` (Linux, macOS) the lock is a kernel lock on ``.lock``:
    it ends with its process however that process ends (``kill -9`` included), so a lock
    file left behind is taken over and a reused pid can never look like a live owner.
    Elsewhere the file's existence is the lock and a dead owner is recognised by its pid
    (same host only).

    Raises (on entry):
        FileExistsError: another live process holds the folder (the message names it).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._descriptor: int | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _in_use(self, holder: dict[str, Any]) -> FileExistsError:
        return FileExistsError(
            f"run folder {str(self.path.parent)!r} is in use by process {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')} (since {holder.get('started', '?')}); wait for it, choose another --run-id, "
            f"or, if that process is dead on another machine, delete {str(self.path)!r}")

    def _take_over_note(self, holder: dict[str, Any]) -> None:
        if holder:
            logger.warning("run folder %s was locked by process %s on %s, which is gone; taking it over",
                           self.path.parent, holder.get("pid", "?"), holder.get("host", "?"))

    def _acquire_flock(self) -> int | None:
        """The locked descriptor, or None where this file system cannot ``flock``."""
        for _ in range(10):
            descriptor = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise self._in_use(self._holder()) from None
            except OSError:  # e.g. ENOLCK on some network file systems
                os.close(descriptor)
                return None
            try:  # the previous owner unlinks the file on release: make sure ours is still the one named .lock
                current = os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                current = False
            if current:
                return descriptor
            os.close(descriptor)
        raise FileExistsError(f"could not take the lock {str(self.path)!r}: it keeps changing")

    def _acquire_exclusive_file(self) -> int:
        for _ in range(2):
            try:
                return os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                holder = self._holder()
                if _may_be_alive(holder):
                    raise self._in_use(holder) from None
                self._take_over_note(holder)
                self.path.unlink(missing_ok=True)
        raise FileExistsError(f"could not take the lock {str(self.path)!r}")

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = self._acquire_flock() if fcntl is not None else None
        if descriptor is None:
            descriptor = self._acquire_exclusive_file()
        else:
            self._take_over_note(self._holder())
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps(me).encode("utf-8"))
        self._descriptor = descriptor
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._descriptor is not None:
            self.path.unlink(missing_ok=True)  # before releasing, so no one locks a file about to vanish
            os.close(self._descriptor)
            self._descriptor = None


def lock_holder(run_dir: str | Path) -> dict[str, Any] | None:
    """``{"pid", "host", "started"}`` of the live process that holds ``run_dir``, or None
    (a probe: it neither takes the lock nor changes the file)."""
    lock = RunLock(run_dir)
    try:
        descriptor = os.open(lock.path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return lock._holder()
            except OSError:
                pass  # no flock here: judge by the pid below
            else:
                return None
        holder = lock._holder()
        return holder if _may_be_alive(holder) else None
    finally:
        os.close(descriptor)


def check_not_in_use(run_dir: str | Path) -> None:
    """Raise ``FileExistsError`` naming the live process that holds ``run_dir``, if one does."""
    holder = lock_holder(run_dir)
    if holder is not None:
        raise RunLock(run_dir)._in_use(holder)


def mark_finished(run_dir: Path, results_file: Path) -> Path:
    """Write ``run.json``: the run is complete and its results are in ``results_file``."""
    return atomic_write_json(run_dir / FINISHED, {"results_file": str(results_file),
                                                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED).is_file()
