"""Where a run lives: run ids, run folders, the lock that makes a run folder exclusive.

``runs/<experiment>/<run_id>/`` holds a run's ``config.yaml``, its checkpoints (per-class
methods: one sub-folder per class) and, once it has finished, ``run.json`` (the results file
it wrote). While a process owns the folder it holds ``.lock`` (pid, host, start time): a
second live run with the same id fails at once; a lock left by a process that died (same
host, pid gone) is taken over, so ``kill -9`` followed by ``--resume`` keeps working.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.utils.files import atomic_write_json

logger = logging.getLogger(__name__)

LOCK = ".lock"
FINISHED = "run.json"
CONFIG = "config.yaml"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_name(value: str, what: str) -> str:
    """``value`` if it is safe as one path component (letters, digits, ``._+-``; no ``/``,
    no leading dot), else a ``ConfigError`` naming ``what``."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or value in (".", ".."):
        raise ConfigError(f"{what} {value!r} is not usable as a folder name: use letters, digits and . _ + - "
                          "(no '/', no leading dot, at most 128 characters)")
    return value


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


class RunLock:
    """Exclusive ownership of a run folder for the duration of a ``with`` block.

    Raises (on entry):
        FileExistsError: another live process holds the folder (the message names it).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.owned = False

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                same_host = holder.get("host") == me["host"]
                if same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
                    logger.warning("run folder %s was locked by process %s, which is gone; taking it over",
                                   self.path.parent, holder["pid"])
                    self.path.unlink(missing_ok=True)
                    continue
                raise FileExistsError(
                    f"run folder {str(self.path.parent)!r} is in use by process {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} (since {holder.get('started', '?')}); choose another --run-id, or, "
                    f"if that process is dead on another machine, delete {str(self.path)!r}") from None
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(me, handle)
            self.owned = True
            return self
        raise FileExistsError(f"could not take the lock {str(self.path)!r}")

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False


def mark_finished(run_dir: Path, results_file: Path) -> Path:
    """Write ``run.json``: the run is complete and its results are in ``results_file``."""
    return atomic_write_json(run_dir / FINISHED, {"results_file": str(results_file),
                                                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED).is_file()
