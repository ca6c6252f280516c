"""Checkpoints: what they hold, how they are written and read, and strict weight loading.

A checkpoint is one ``torch.save`` file, written atomically::

    {"format": "mambaad-companion/checkpoint", "format_version": 1,
     "method": "mambaad", "config": <run config dict>,
     "model": <state dict>, "optimization": <optimiser + scheduler state>,
     "rng": <seeding.rng_state()>, "progress": <TrainProgress as dict>,
     "extras": <facts gathered before training, e.g. untrained metrics>,
     "finished": bool}

``runs/<experiment>/<run_id>/last.pt`` is rewritten every ``train.checkpoint_every`` epochs
and when a run is interrupted; ``final.pt`` is written once training ends.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mambaad_lib.utils.files import atomic_torch_save

logger = logging.getLogger(__name__)

FORMAT = "mambaad-companion/checkpoint"
FORMAT_VERSION = 1
LAST = "last.pt"
FINAL = "final.pt"


def save_checkpoint(path: str | Path, **content: Any) -> Path:
    """Write a checkpoint atomically (``content`` = the fields listed in the module doc)."""
    return atomic_torch_save(path, {"format": FORMAT, "format_version": FORMAT_VERSION, **content})


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, or a bare state dict.

    A bare state dict (e.g. weights from elsewhere) comes back as ``{"model": state}`` with
    no config; callers then need a config from a profile.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint or state dict, or a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" not in str(error).lower():
            raise ValueError(f"{path}: not a readable torch checkpoint ({error})") from None
        # Holds Python objects beyond tensors and plain data (e.g. a method's own state):
        # full unpickling runs code from the file, so say so.
        logger.warning("%s needs full unpickling (weights_only=False); load only checkpoints you trust", path)
        content = _load_untrusted(path)
    except Exception as error:
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from None
    from mambaad_lib.models.release import RELEASE_STATE_DICT, RELEASE_TRAINING_CHECKPOINT, detect_checkpoint_format

    if detect_checkpoint_format(content) in (RELEASE_STATE_DICT, RELEASE_TRAINING_CHECKPOINT):
        raise ValueError(f"{path} is a released MambaAD checkpoint (the authors' weights, net_t./mff_oce./net_s. "
                         f"keys); evaluate it with --release-checkpoint {path} "
                         "(mambaad_lib.models.load_release_checkpoint)")
    if isinstance(content, dict) and content.get("format") == FORMAT:
        if content.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format version {content['format_version']} is newer "
                             f"than this library reads ({FORMAT_VERSION}); upgrade mambaad-companion")
        return content
    if isinstance(content, dict) and "state_dict" in content and isinstance(content["state_dict"], dict):
        content = content["state_dict"]
    if isinstance(content, dict) and content and all(isinstance(v, Tensor) for v in content.values()):
        return {"model": content}
    raise ValueError(f"{path}: neither a mambaad-companion checkpoint nor a state dict of tensors")


def _load_untrusted(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from None


def _shorten(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state: dict[str, Tensor], source: str, model_description: str) -> None:
    """Load ``state`` into ``module`` only if every key and shape matches.

    Raises:
        ValueError: listing missing keys, unexpected keys and shape mismatches, so that a
            checkpoint of another architecture is recognisable at a glance.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state) if tuple(state[key].shape) != tuple(expected[key].shape))
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model {model_description}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_shorten(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_shorten(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_shorten(mismatched, 6)}")
        lines.append("  The checkpoint was trained with another architecture or options; build the model "
                     "with the checkpoint's own config (omit --profile/--config) or pick a matching checkpoint.")
        raise ValueError("\n".join(lines))
    module.load_state_dict(state, strict=True)


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
