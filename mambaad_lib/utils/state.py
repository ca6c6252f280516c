"""Reading torch files without running their code, checksums of weights, strict loading.

Every ``.pt``/``.pth`` file the library opens -- our checkpoints, the authors' released
weights, encoder weight files -- goes through :func:`read_torch_file`, which reads it once
with ``torch.load(weights_only=True)``: tensors, plain Python data and a short list of known
harmless types (:data:`SAFE_GLOBALS`) are rebuilt; any other object a pickle names is
refused with an error that names it, before anything of it runs. A pickle can name any
Python function (``os.system``, say), and a full unpickle calls it: that happens only with
``trust=True`` (``--trust-checkpoint`` on the command line), for files you made yourself.
"""
from __future__ import annotations

import argparse
import hashlib
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn


def _numpy_globals() -> list[Any]:
    """numpy's scalar and array reconstruction, which training checkpoints contain when a
    metric or a random-number state was stored as numpy data (e.g. ADer's metric records).

    numpy 2 moved ``numpy.core`` to ``numpy._core`` and pickles name the module they were
    written under, so both names are registered: files written under numpy 1 (the authors'
    releases) load under numpy 2 and the other way round.
    """
    core = getattr(np, "_core", None) or np.core
    module = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes by their class
    dtypes = [getattr(module, name) for name in dir(module) if name.endswith("DType")] if module else []
    multiarray = [(function, f"{package}.multiarray.{function.__name__}")
                  for function in (core.multiarray.scalar, core.multiarray._reconstruct)
                  for package in ("numpy.core", "numpy._core")]
    return [*multiarray, np.ndarray, np.dtype, *dtypes]


# Types that real checkpoints contain and whose reconstruction runs no code of the file:
# argparse.Namespace (training scripts store their parsed options) and numpy data. Entries
# are objects or (object, name it is pickled under) pairs, as torch.serialization takes them.
SAFE_GLOBALS: list[Any] = [argparse.Namespace, *_numpy_globals()]


class UnsafeCheckpointError(ValueError):
    """A file needs Python objects beyond tensors and plain data to be unpickled."""


def read_torch_file(path: str | Path, trust: bool = False) -> Any:
    """The object stored in a ``torch.save`` file, read without running code from it.

    Args:
        path: the file.
        trust: unpickle fully (``weights_only=False``): the file may run any code. Only for
            files you made yourself or whose source you trust.
    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file names an object outside :data:`SAFE_GLOBALS` (the
            message names it and how to proceed).
        ValueError: not a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error)))) or ["an unsupported object"]
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it names {', '.join(names)}, which is not a tensor or plain data, and "
            "unpickling it could run code from the file. If you made it yourself or trust its source, load it with "
            "--trust-checkpoint (trust=True in Python) where offered, or re-save its tensors as a plain state dict"
        ) from None
    except Exception as error:  # zip and stream errors of truncated or foreign files come in many types
        raise ValueError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt? "
                         f"({type(error).__name__}: {error})") from None


def tensor_checksum(state: Mapping[str, Any]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor in ``state`` (nested
    dicts and lists are walked in order), so that a flipped byte anywhere changes it."""
    digest = hashlib.sha256()

    def walk(value: Any, name: str) -> None:
        if isinstance(value, Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)  # 1-D: 0-d tensors cannot be viewed as bytes
            digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, Mapping):
            for key in value:
                walk(value[key], f"{name}.{key}")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{name}[{index}]")

    walk(dict(state), "")
    return digest.hexdigest()


def _shorten(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str, model_description: str) -> None:
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
    module.load_state_dict(dict(state), strict=True)
