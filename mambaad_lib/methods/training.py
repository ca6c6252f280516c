"""The ``train:`` section of a run config: the schedule the engine's loop runs and the
optimisation settings the methods read (release protocol by default).

MambaAD's release (ADer ``configs/mambaad``): AdamW, learning rate 0.005 scaled linearly
with the batch size (``lr * batch_size / 16``), betas (0.9, 0.999), weight decay 1e-4, one
step decay x0.1 after 80 % of the optimisation steps, gradient-norm clipping at 5.

``adamw`` chooses torch's AdamW implementation, the same update rule in each (they differ only
in float rounding): ``fused`` (default; one kernel over all parameters, about 3x faster than
``foreach`` on CPU, see benchmarks/README.md), ``foreach`` (multi-tensor) or ``default``
(torch's own choice: foreach on CUDA, a per-parameter loop on CPU, as the release ran).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mambaad_lib.utils.schema import require


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
    the global batch (split across processes under torchrun).

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

    @property
    def scaled_lr(self) -> float:
        """The learning rate actually used: linear scaling with the batch size."""
        return self.lr * self.batch_size / self.lr_reference_batch
