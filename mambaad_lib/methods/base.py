"""The interface every anomaly detector implements, and the registry the engine uses.

The engine (training loop, evaluation, checkpoints, results) and the CLI only talk to
:class:`AnomalyMethod`, so ``--model mambaad|glass`` is the only place a method is named.

Adding a method is one line in :data:`METHODS`: ``"name": "module.path:ClassName"``. The
module is imported only when the method is asked for.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from mambaad_lib.engine.config import RunConfig, TrainConfig
    from mambaad_lib.engine.trainer import FitResult

METHODS: dict[str, str] = {
    "mambaad": "mambaad_lib.methods.mambaad:MambaADMethod",
    "mambaad_las": "mambaad_lib.methods.mambaad_las:MambaADLASMethod",
    "glass": "mambaad_lib.methods.glass:GLASSMethod",
    "nearest_neighbor": "mambaad_lib.methods.nearest_neighbor:NearestNeighborMethod",
    "mmad": "mambaad_lib.methods.mmad:MMADMethod",
    "devnet": "mambaad_lib.methods.ahl:DevNetMethod",
    "dra": "mambaad_lib.methods.ahl:DRAMethod",
    "ahl": "mambaad_lib.methods.ahl:AHLMethod",
}


class AnomalyMethod(ABC):
    """An unsupervised anomaly detector the engine can train, checkpoint and evaluate.

    Subclasses set ``name`` and ``config_class`` (a dataclass: the ``model:`` section of a
    run config) and own their network(s) and optimisation state. The engine drives them:

    1. ``prepare(batches)`` once before training (e.g. BatchNorm re-estimation);
    2. ``configure_optimization(train, total_steps)``;
    3. ``training_step(images)`` for every batch (forward, backward, optimiser step);
    4. ``predict(images)`` for evaluation and for users' images.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    #: Methods whose training is not the engine's unsupervised loop (the open-set supervised
    #: ones train on labelled anomalies) set this to a callable
    #: ``(config, run_id=None, progress=True) -> RunOutcome``; ``runner.train`` then delegates.
    run_training: ClassVar[Callable[..., Any] | None] = None

    def __init__(self, config: Any, image_size: int, device: torch.device, pretrained: bool = True) -> None:
        """``pretrained=False`` skips loading external pretrained weights (e.g. an ImageNet
        encoder) because a checkpoint is about to replace every weight."""
        self.config = config
        self.image_size = image_size
        self.device = torch.device(device)

    # ---- networks -----------------------------------------------------------------------
    @property
    @abstractmethod
    def network(self) -> nn.Module:
        """The module whose ``state_dict`` is the method's weights."""

    @property
    def scan_backend(self) -> str | None:
        """The resolved selective-scan backend, for methods that use one."""
        return None

    def describe(self) -> dict[str, Any]:
        """Facts for the results file (parameter counts, FLOPs, ...)."""
        return {}

    def train(self, mode: bool = True) -> "AnomalyMethod":
        """Switch the network between training and inference behaviour."""
        self.network.train(mode)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """The weights (and buffers) of :attr:`network`."""
        return self.network.state_dict()

    def load_state_dict(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Load weights strictly; a mismatch raises a ``ValueError`` listing the keys."""
        from mambaad_lib.engine.checkpoint import load_strict

        load_strict(self.network, state, source=source, model_description=self.summary())

    def summary(self) -> str:
        """One line naming the method and its architecture, for messages."""
        return f"{self.name}({self.config})"

    # ---- training -----------------------------------------------------------------------
    def prepare(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        """Work done once before training on the normal training images ((B,3,H,W) batches).

        Returns facts for the results file. The default does nothing.
        """
        return {}

    @abstractmethod
    def configure_optimization(self, train: "TrainConfig", total_steps: int) -> None:
        """Create optimiser(s) and learning-rate schedule for ``total_steps`` steps."""

    @abstractmethod
    def training_step(self, images: Tensor) -> float:
        """One optimisation step on normal images (B,3,H,W); returns the loss value."""

    @abstractmethod
    def optimization_state(self) -> dict[str, Any]:
        """Optimiser and scheduler state, for checkpoints."""

    @abstractmethod
    def load_optimization_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`optimization_state` returned (after ``configure_optimization``)."""

    def fit(self, train_data: torch.utils.data.Dataset, config: "RunConfig", **trainer_options: Any
            ) -> "FitResult":
        """Train on ``train_data`` (normal images) with the engine's :class:`Trainer`."""
        from mambaad_lib.engine.trainer import Trainer

        return Trainer(self, config, **trainer_options).fit(train_data)

    # ---- inference ----------------------------------------------------------------------
    @abstractmethod
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly maps (B,1,H,W) and image scores (B,) for ImageNet-normalised (B,3,H,W)."""


def get_method_class(name: str) -> type[AnomalyMethod]:
    """The class registered as ``name`` in :data:`METHODS`.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; available methods: {sorted(METHODS)}")
    module_name, _, class_name = METHODS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_method(name: str, config: Any, image_size: int, device: torch.device | str,
               pretrained: bool = True) -> AnomalyMethod:
    """Instantiate method ``name`` with its config dataclass (see :class:`AnomalyMethod`)."""
    return get_method_class(name)(config, image_size=image_size, device=torch.device(device),
                                  pretrained=pretrained)
