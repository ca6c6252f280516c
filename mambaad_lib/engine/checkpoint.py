"""Checkpoints: what they hold, how they are written, and how they are read back safely.

A checkpoint is one ``torch.save`` file, written atomically::

    {"format": "mambaad-companion/checkpoint", "format_version": 2,
     "method": "mambaad", "config": <run config dict>,
     "model": <state dict>, "optimization": <optimiser, scheduler and random-stream state>,
     "rng": <seeding.rng_state()>, "progress": <TrainProgress as dict>,
     "extras": <facts gathered before training, e.g. untrained metrics>,
     "processes": {"world_size", "nodes", "backend"} (optional; absent: one process),
     "finished": bool, "checksum": <SHA-256 of every tensor above>,
     "calibration": <optional: thresholds from normal images, see engine.calibration>}

``runs/<experiment>/<run_id>/last.pt`` is rewritten every ``train.checkpoint_every`` epochs
and when a run is interrupted (the previous one is kept as ``last.prev.pt``, a fallback when
the newest is damaged); ``final.pt`` is written once training ends.

**Versions.** Files change under one plan: new fields get defaults, the version goes up,
and older files keep loading. Version 1 (before the checksum) loads with a note that it
carries no checksum; version 2 files whose tensors do not match their checksum are refused.
Reading never runs code from the file (:func:`mambaad_lib.utils.state.read_torch_file`).

**Each file is read once.** Commands look at a checkpoint before they use it (``evaluate`` and
``predict`` take the run config from it, then its weights; ``--resume`` checks ``last.pt``
before the trainer restores it). Such a first look passes ``pass_on=True`` to
:func:`load_checkpoint`, which then hands the content to the next call for the same,
unchanged file (same path, inode, size and modification time) and lets it go, so the pair
reads and verifies the file once.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from mambaad_lib.models.release import RELEASE_STATE_DICT, RELEASE_TRAINING_CHECKPOINT, detect_checkpoint_format
from mambaad_lib.utils.files import atomic_torch_save
from mambaad_lib.utils.state import read_torch_file, tensor_checksum

logger = logging.getLogger(__name__)

FORMAT = "mambaad-companion/checkpoint"
FORMAT_VERSION = 2
LAST = "last.pt"
PREVIOUS = "last.prev.pt"
FINAL = "final.pt"

# (identity of the file, trust, content) of the last checkpoint read, for the next reader of that file.
_handover: tuple[tuple[Any, ...], dict[str, Any]] | None = None


def save_checkpoint(path: str | Path, keep_previous: bool = False, **content: Any) -> Path:
    """Write a checkpoint atomically (``content`` = the fields listed in the module doc).

    With ``keep_previous`` an existing file at ``path`` is first renamed to
    ``last.prev.pt`` beside it, so a damaged newest checkpoint has a fallback.
    """
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **content}
    payload["checksum"] = tensor_checksum(payload)
    if keep_previous and path.is_file():
        os.replace(path, path.with_name(PREVIOUS))
    return atomic_torch_save(path, payload)


def load_checkpoint(path: str | Path, trust: bool = False, pass_on: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (any version), or a bare state dict.

    A bare state dict (e.g. weights from elsewhere) comes back as ``{"model": state}`` with
    no config; callers then need a config from a profile.

    Args:
        trust: unpickle fully (the file may run code); see
            :func:`~mambaad_lib.utils.state.read_torch_file`.
        pass_on: keep the content for the next call that loads this same unchanged file
            (for a caller that only looks before another part of the program loads it).
    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint or state dict, the authors' released weights (which have
            their own loader), a newer format version, or tensors that do not match the
            stored checksum.
    """
    global _handover
    path = Path(path)
    identity = _identity(path, trust)
    if _handover is not None and identity is not None and _handover[0] == identity:
        content = _handover[1]
        if not pass_on:  # a look that passes on again keeps it for the next load
            _handover = None
        return content
    content = _read_checkpoint(path, trust)
    _handover = (identity, content) if pass_on and identity is not None else None
    return content


def _identity(path: Path, trust: bool) -> tuple[Any, ...] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, trust


def _read_checkpoint(path: Path, trust: bool) -> dict[str, Any]:
    content = read_torch_file(path, trust=trust)
    if detect_checkpoint_format(content) in (RELEASE_STATE_DICT, RELEASE_TRAINING_CHECKPOINT):
        raise ValueError(f"{path} is a released MambaAD checkpoint (the authors' weights, net_t./mff_oce./net_s. "
                         f"keys); evaluate it with --release-checkpoint {path} "
                         "(mambaad_lib.models.load_release_checkpoint)")
    if isinstance(content, dict) and content.get("format") == FORMAT:
        return _check_version(path, content)
    if isinstance(content, dict) and "state_dict" in content and isinstance(content["state_dict"], dict):
        content = content["state_dict"]
    if isinstance(content, dict) and content and all(isinstance(v, Tensor) for v in content.values()):
        return {"model": content}
    raise ValueError(f"{path}: neither a mambaad-companion checkpoint nor a state dict of tensors")


def _check_version(path: Path, content: dict[str, Any]) -> dict[str, Any]:
    version = content.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {version} is newer than this library reads "
                         f"({FORMAT_VERSION}); upgrade mambaad-companion")
    if version < 2:
        logger.info("%s: format version %d carries no checksum; its tensors cannot be verified", path, version)
        return content
    stored = content.get("checksum")
    actual = tensor_checksum({key: value for key, value in content.items() if key != "checksum"})
    if stored != actual:
        raise ValueError(f"{path}: the checkpoint is damaged: its tensors do not match the checksum stored in it "
                         "(a partial copy or flipped bytes); use another copy, or last.prev.pt beside a last.pt")
    return content


def latest_run_dir(runs_dir: str | Path, experiment: str, require: str) -> Path:
    """The most recently modified ``runs/<experiment>/<run_id>/`` that holds ``require``.

    Raises:
        FileNotFoundError: no run of this experiment holds that file.
    """
    folder = Path(runs_dir) / experiment
    candidates = sorted((path.parent for path in folder.glob(f"*/{require}")),
                        key=lambda run: (run / require).stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no run under {str(folder)!r} has a {require}; train one first "
                                f"(mambaad train) or pass --checkpoint/--resume with a path")
    return candidates[-1]
