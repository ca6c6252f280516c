"""The ``train:`` section of a run config: the schedule the engine's loop runs and the
optimisation settings the methods read (release protocol by default).

MambaAD's release (ADer ``configs/mambaad``): AdamW, learning rate 0.005 scaled linearly
with the batch size (``lr * batch_size / 16``), betas (0.9, 0.999), weight decay 1e-4, one
step decay x0.1 after 80 % of the optimisation steps, gradient-norm clipping at 5, fp32.

``adamw`` chooses torch's AdamW implementation, the same update rule in each (they differ only
in float rounding): ``fused`` (default; one kernel over all parameters, about 3x faster than
``foreach`` on CPU, see benchmarks/README.md), ``foreach`` (multi-tensor) or ``default``
(torch's own choice: foreach on CUDA, a per-parameter loop on CPU, as the release ran).

``precision`` chooses mixed precision for the training steps (:class:`MixedPrecision`):
``bf16`` or ``fp16`` autocast (fp16 with loss scaling); the selective scan stays in fp32
(:func:`mambaad_lib.ops.selective_scan`), as the release's. Evaluation always runs in fp32.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.utils.schema import require

# train.precision -> the autocast dtype (None: plain fp32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


ADAMW_IMPLEMENTATIONS = ("fused", "foreach", "default")


def adamw_options(implementation: str) -> dict[str, Any]:
    """Keyword arguments of ``torch.optim.AdamW`` for an ``adamw`` choice (ADAMW_IMPLEMENTATIONS)."""
    require(implementation in ADAMW_IMPLEMENTATIONS, "train.adamw",
            f"must be one of {', '.join(ADAMW_IMPLEMENTATIONS)}, got {implementation!r}")
    return {} if implementation == "default" else {implementation: True}


@dataclass
class TrainConfig:
    """Epochs, batch, optimisation and checkpointing of a run.

    The learning rate is ``lr * batch_size / lr_reference_batch``; it is multiplied by
    ``lr_step_gamma`` once, after ``lr_step_at`` of all optimisation steps. ``batch_size`` is
    the global batch: under torchrun each of W processes takes ``batch_size / W`` images of
    every batch the one-process run would use (so the learning rate does not change with W).
    ``precision``: ``fp32`` (the release), ``bf16`` or ``fp16`` mixed precision.

    Calibration (opt-in; :mod:`mambaad_lib.engine.calibration`): ``calibration_share`` of the
    normal training images of every class is held out of training (0: train on all, as the
    paper), or ``calibration_dir`` names a folder of normal images (``<dir>/<class>/`` for
    per-class methods); after training, thresholds at ``calibration_quantile`` of their
    scores are stored in ``final.pt``.
    """

    epochs: int = 500
    batch_size: int = 16
    lr: float = 0.005
    lr_reference_batch: int = 16
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    lr_step_at: float = 0.8
    lr_step_gamma: float = 0.1
    grad_clip_norm: float | None = 5.0
    adamw: str = "fused"
    checkpoint_every: int = 50
    checkpoint_every_steps: int | None = None
    evaluate_untrained: bool = False
    deterministic: bool = True
    calibration_share: float = 0.0
    calibration_dir: str | None = None
    calibration_quantile: float = 0.99
    precision: str = "fp32"

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        require(self.lr_reference_batch >= 1, "train.lr_reference_batch",
                f"must be >= 1, got {self.lr_reference_batch}")
        require(all(0 <= beta < 1 for beta in self.betas), "train.betas",
                f"must be two numbers in [0, 1), got {list(self.betas)}")
        require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 < self.lr_step_at <= 1, "train.lr_step_at", f"must be in (0, 1], got {self.lr_step_at}")
        require(0 < self.lr_step_gamma <= 1, "train.lr_step_gamma", f"must be in (0, 1], got {self.lr_step_gamma}")
        require(self.grad_clip_norm is None or self.grad_clip_norm > 0, "train.grad_clip_norm",
                f"must be > 0 or null, got {self.grad_clip_norm}")
        adamw_options(self.adamw)  # validates the choice
        require(self.checkpoint_every >= 1, "train.checkpoint_every",
                f"must be >= 1 (epochs), got {self.checkpoint_every}")
        require(self.checkpoint_every_steps is None or self.checkpoint_every_steps >= 1,
                "train.checkpoint_every_steps", f"must be >= 1 or null, got {self.checkpoint_every_steps}")
        require(0 <= self.calibration_share < 1, "train.calibration_share",
                f"must be in [0, 1) (a share of the training normals), got {self.calibration_share}")
        require(not (self.calibration_share > 0 and self.calibration_dir), "train.calibration_dir",
                "and train.calibration_share > 0 both choose calibration images; set one of them")
        require(0 < self.calibration_quantile < 1, "train.calibration_quantile",
                f"must be in (0, 1), got {self.calibration_quantile}")
        require(self.precision in PRECISIONS, "train.precision",
                f"must be one of {list(PRECISIONS)}, got {self.precision!r}")

    @property
    def scaled_lr(self) -> float:
        """The learning rate actually used: linear scaling with the batch size."""
        return self.lr * self.batch_size / self.lr_reference_batch


class MixedPrecision:
    """One optimisation step at ``train.precision`` on ``device``: the loss is computed under
    :meth:`autocast`, :meth:`step` does backward (loss-scaled for fp16), gradient-norm
    clipping on the unscaled gradients, and the optimiser steps.

    Raises:
        ConfigError: a precision the device cannot run (bf16 on a GPU without bf16 support).
    """

    def __init__(self, precision: str = "fp32", device: torch.device | str = "cpu") -> None:
        self.precision = precision
        self.device_type = torch.device(device).type
        self.dtype = PRECISIONS[precision]
        if self.dtype is not None and not torch.amp.is_autocast_available(self.device_type):
            raise ConfigError(f"config key 'train.precision': {precision} needs autocast, which torch does not "
                              f"offer on {self.device_type}; use fp32")
        if self.dtype is torch.bfloat16 and self.device_type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("config key 'train.precision': this GPU does not support bf16; use fp16 or fp32")
        self.scaler = torch.amp.GradScaler(self.device_type) if precision == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        """The context for a training forward pass (nothing at fp32)."""
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def step(self, loss: Tensor, optimizers: Sequence[torch.optim.Optimizer],
             clip: tuple[Iterable[nn.Parameter], float] | None = None) -> None:
        """Zero the gradients, backpropagate ``loss``, clip ``clip = (parameters, max_norm)``
        (after unscaling; under DDP the gradients are already averaged over processes), step."""
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            for optimizer in optimizers:
                self.scaler.unscale_(optimizer)
        if clip is not None:
            nn.utils.clip_grad_norm_(*clip)
        if self.scaler is None:
            for optimizer in optimizers:
                optimizer.step()
            return
        for optimizer in optimizers:
            self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The loss scaler's state (empty unless fp16), for checkpoints."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
