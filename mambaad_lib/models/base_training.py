"""Supervised training of DevNet / DRA heads on cached features (released DRA/DevNet ``train.py``).

Recipe of both official codes: Adam (lr 2e-4, weight decay 1e-5), learning rate x0.1 every
10 epochs, gradient-norm clipping at 1.0, ``steps_per_epoch`` (20) batches per epoch; 30
epochs for DRA, 50 for DevNet. Here the backbone is frozen and its features cached, so
only the heads train (the papers fine-tune the ResNet-18 end to end).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from mambaad_lib.models.openset_features import BatchSampler


@dataclass
class HeadSchedule:
    """Epochs, batch composition and step decay of a head-training schedule (base training and CDL).

    ``per_kind``: samples of each kind (normal, pseudo anomaly, labelled anomaly) per batch;
    the learning rate is multiplied by ``lr_gamma`` every ``lr_step_epochs`` epochs;
    gradients are clipped to norm ``grad_clip``.
    """

    epochs: int = 30
    per_kind: int = 16
    lr_step_epochs: int = 10
    lr_gamma: float = 0.1
    grad_clip: float = 1.0

    def check(self, section: str, counts: tuple[str, ...], rates: tuple[str, ...]) -> None:
        """Raise a ValueError naming ``section.key`` unless every count is >= 1 and every rate > 0."""
        for key in ("epochs", "per_kind", "lr_step_epochs", *counts):
            if getattr(self, key) < 1:
                raise ValueError(f"{section}.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("grad_clip", *rates):
            if getattr(self, key) <= 0:
                raise ValueError(f"{section}.{key} must be > 0, got {getattr(self, key)}")


@dataclass
class BaseTrainingConfig(HeadSchedule):
    """The base heads' recipe: ``steps_per_epoch`` Adam steps (``lr``, ``weight_decay``) per epoch."""

    steps_per_epoch: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5

    def __post_init__(self) -> None:
        self.check("base_training", counts=("steps_per_epoch",), rates=("lr",))


def train_heads(head: nn.Module, sampler: BatchSampler, config: BaseTrainingConfig,
                generator: torch.Generator, progress: bool = False) -> list[float]:
    """Train ``head`` (DevNetHead or DRAHeads) on the sampler's batches; returns mean loss per epoch."""
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_epochs, config.lr_gamma)
    head.train()
    losses = []
    for _ in tqdm(range(config.epochs), desc="base model", unit="epoch", disable=not progress, leave=False):
        total = 0.0
        for _ in range(config.steps_per_epoch):
            features, labels, reference = sampler.sample()
            loss = head.loss(head(features, reference), labels, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
            optimizer.step()
            total += float(loss.detach())
        scheduler.step()
        losses.append(total / config.steps_per_epoch)
        if not torch.isfinite(torch.tensor(losses[-1])):
            raise FloatingPointError(f"base-model loss became {losses[-1]}; lower base_training.lr")
    head.eval()
    return losses
