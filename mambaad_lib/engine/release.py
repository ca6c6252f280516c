"""The authors' released MambaAD weights as one of our checkpoints (the CLI's ``--release-checkpoint``)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mambaad_lib.engine.checkpoint import save_checkpoint
from mambaad_lib.engine.config import RunConfig, config_to_dict
from mambaad_lib.methods import get_method
from mambaad_lib.models.encoders import file_sha256
from mambaad_lib.models.release import ReleaseLoadReport, load_release_weights


def release_checkpoint_for_engine(path: str | os.PathLike, config: RunConfig, strict: bool = True,
                                  out_path: str | os.PathLike | None = None,
                                  trust: bool = False) -> tuple[Path, ReleaseLoadReport]:
    """Convert a released file into a MambaAD Companion checkpoint that ``runner.evaluate``/``predict`` read.

    The model is built exactly as the engine builds it for ``config`` (method ``mambaad``,
    the profile's ``model:`` section, ``data.crop_size``), filled by
    :func:`~mambaad_lib.models.load_release_weights` and written atomically to ``out_path``
    (default ``<paths.runs_dir>/release/<file stem>.pt``) with the run config and, in
    ``extras``, the load report (so results files name the released file).

    Raises:
        ValueError: ``config.method`` is not ``mambaad``, or any loading problem (strict).
    """
    if config.method != "mambaad":
        raise ValueError(f"--release-checkpoint holds MambaAD weights, but the config's method is "
                         f"{config.method!r}; use a mambaad profile")
    method = get_method("mambaad", config.model, config.data.crop_size, torch.device("cpu"), pretrained=False)
    report = load_release_weights(path, method.network, strict=strict, trust=trust)
    default = Path(config.paths.runs_dir) / "release" / f"{Path(path).stem}.pt"
    target = Path(out_path) if out_path is not None else default
    target.parent.mkdir(parents=True, exist_ok=True)
    weights = {"choice": "file", "source": f"released checkpoint {path} (net_t)", "file_name": Path(path).name,
               "sha256": file_sha256(path), "url": None, "sha256_matches_name": None}
    provenance = {"weights": weights, "encoder_weights": f"released checkpoint {path} (net_t)",
                  "batchnorm_reestimated_on": 0,
                  "release_checkpoint": report.as_dict()}
    save_checkpoint(target, method="mambaad", config=config_to_dict(config), model=method.state_dict(),
                    extras={"prepare": provenance}, finished=True)
    return target, report
