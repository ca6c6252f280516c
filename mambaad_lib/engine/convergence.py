"""When a training run counts as converged: the plateau rule the book's demo budget is held to.

A run has *plateaued* when its mean training loss improved by less than
:data:`PLATEAU_TOLERANCE` (2.5%) over the last :data:`PLATEAU_TAIL` (10%) of its epochs:
``(loss before the tail - final loss) / loss before the tail < 0.025``. With fewer than
:data:`MIN_EPOCHS` (20) epochs the tail is a single noisy epoch and says little, so no verdict
is given. The rule reads training losses only; it never looks at test metrics.

Why the last tenth and not the last fifth (the same rate, 0.25% per 1% of training): the
release's schedule multiplies the learning rate by 0.1 after 80% of the steps
(:class:`~mambaad_lib.methods.training.TrainConfig`), so a last fifth starts exactly at that
step, and the drop the step itself causes (measured on the demo model, 64x64, 80 epochs: 9%
in the four epochs after it, then 2.4% over the next twelve) would fail every run, however
long. The last tenth asks whether the final, low-rate phase has flattened. A run can still
improve at the full rate before the step; the book's chapters say so where it matters.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

PLATEAU_TAIL = 0.1
PLATEAU_TOLERANCE = 0.025
MIN_EPOCHS = 20


def convergence(epoch_losses: Sequence[float] | None) -> dict[str, Any] | None:
    """The plateau verdict of one run's per-epoch mean losses.

    Returns:
        None without losses; else ``{"tail_epochs", "late_improvement", "plateaued", "rule"}``:
        the relative improvement over the tail (None and ``plateaued`` None below
        :data:`MIN_EPOCHS` epochs or for a non-positive loss before the tail).
    """
    if not epoch_losses:
        return None
    losses = [float(value) for value in epoch_losses]
    tail = max(1, math.ceil(PLATEAU_TAIL * len(losses)))
    rule = (f"loss improved by < {PLATEAU_TOLERANCE:.1%} over the last {PLATEAU_TAIL:.0%} of epochs "
            f"(at least {MIN_EPOCHS} epochs)")
    before = losses[-tail - 1] if len(losses) > tail else None
    if len(losses) < MIN_EPOCHS or before is None or not before > 0:
        return {"tail_epochs": tail, "late_improvement": None, "plateaued": None, "rule": rule}
    improvement = (before - losses[-1]) / before
    return {"tail_epochs": tail, "late_improvement": improvement, "plateaued": improvement < PLATEAU_TOLERANCE,
            "rule": rule}
