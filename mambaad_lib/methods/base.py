"""The interface every anomaly detector implements, its traits, and the method registry.

A method is a class that says what it is (traits on the class) and how it fits, predicts and
saves its state; the engine (:mod:`mambaad_lib.engine`) owns everything else about a run:
seeding, run folders, resumption, checkpoints, evaluation in every metric protocol and the
results file. Adding a method is one class and one :func:`register_method` call; no other
file of the library changes::

    @register_method
    class MyMethod(AnomalyMethod):
        name = "my_method"
        config_class = MyConfig            # a dataclass: the `model:` section of a run config
        per_class = True                   # one model per class (the engine fans out)
        profiles = {"smoke": "/path/my_smoke.yaml"}
        ...

Traits (class attributes):

- ``learning_type``: :class:`LearningType` -- unsupervised (normal images only) or open-set
  supervised (normal images plus a few labelled anomalies, see :mod:`mambaad_lib.data.openset`);
- ``per_class``: one model per class instead of one unified model for all classes;
- ``one_pass``: "training" is a single pass over the normal images (e.g. filling a memory
  bank), not an optimisation;
- ``resumable``: the engine's step loop drives training (so an interrupted run resumes
  exactly); methods that override :meth:`AnomalyMethod.fit` with their own loop are not;
- ``profiles``: the packaged (or any) YAML profile of each size -- ``smoke`` (seconds, for
  tests), ``demo`` (a 2-core CPU in minutes), ``paper`` (the published setting, a GPU);
- ``distributed``: it trains under ``torchrun`` in several processes (it implements
  :meth:`AnomalyMethod.distribute`); others are refused there with a clear message;
- ``precisions``: the ``train.precision`` values it trains at (``fp32`` always).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, ClassVar, Iterable, Mapping, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mambaad_lib.methods.training import TrainConfig
from mambaad_lib.models.costs import count_parameters
from mambaad_lib.models.encoders import encoder_weights_info
from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.utils.state import load_strict

PROFILE_SIZES = ("smoke", "demo", "paper")


class LearningType(str, Enum):
    """What a method learns from."""

    UNSUPERVISED = "unsupervised"           # normal training images only
    OPEN_SET = "open-set supervised"        # normal images and a few labelled anomalies


@dataclass
class TrainingData:
    """What :meth:`AnomalyMethod.fit` receives.

    ``normal``: the normal training images (items with ``image`` (3,H,W), ``cls_name``, ...);
    ``labelled_anomalies``: open-set methods' labelled anomalies (None for unsupervised
    methods); ``seed``: the run's seed; ``batch_size``: the run's ``train.batch_size``;
    ``num_workers``: data-loader workers; ``shared_cache``: a dict that runs of one grid share
    so that a method can reuse expensive deterministic preprocessing (e.g. frozen features),
    or None.
    """

    normal: Dataset
    labelled_anomalies: Dataset | None
    seed: int
    batch_size: int
    num_workers: int = 0
    shared_cache: dict[str, Any] | None = None


class StepLoop(Protocol):
    """The engine's training loop as a method sees it (see :class:`mambaad_lib.engine.trainer.Trainer`)."""

    def run(self, normal: Dataset) -> dict[str, Any]:
        """Drive the method's ``configure_optimization`` and ``training_step`` over ``normal``
        for the configured epochs (checkpointing and resuming); returns facts for the results file."""


class Parallel(Protocol):
    """The engine's process group as a method sees it (:class:`mambaad_lib.engine.distributed.Distributed`).

    Process ``rank`` of ``world_size`` holds rows ``rank * b .. (rank + 1) * b`` of every
    global training batch (b = batch / world size).
    """

    rank: int
    world_size: int

    def wrap(self, network: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``forward`` (which runs ``network``) as DistributedDataParallel over ``network``'s
        trainable parameters, its trainable BatchNorm layers synchronised across processes."""

    def gather(self, rows: Tensor) -> Tensor:
        """This process's rows of a global batch -> the global batch's rows, on every process."""

    def local(self, rows: Tensor) -> Tensor:
        """A global batch's rows -> this process's rows."""


class SingleProcess:
    """:class:`Parallel` of a run in one process: nothing to wrap, gather or split."""

    rank = 0
    world_size = 1

    def wrap(self, network: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        return forward

    def gather(self, rows: Tensor) -> Tensor:
        return rows

    def local(self, rows: Tensor) -> Tensor:
        return rows


SINGLE_PROCESS = SingleProcess()


class AnomalyMethod(ABC):
    """An anomaly detector the engine can fit, checkpoint, evaluate and use for prediction.

    Subclasses set ``name`` and ``config_class`` (and traits, see the module docstring) and
    own their network(s) and optimisation state. For a run the engine calls, in order:

    1. ``prepare(batches)`` once (e.g. BatchNorm re-estimation of a random encoder);
    2. ``fit(data, loop)``; the default hands the method to the engine's step loop, which
       calls ``configure_optimization(train, total_steps)`` and ``training_step(images)``;
    3. ``predict(images)`` for evaluation and for users' images.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    learning_type: ClassVar[LearningType] = LearningType.UNSUPERVISED
    per_class: ClassVar[bool] = False
    one_pass: ClassVar[bool] = False
    resumable: ClassVar[bool] = True
    profiles: ClassVar[Mapping[str, str]] = {}
    distributed: ClassVar[bool] = False
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self, config: Any, image_size: int, device: torch.device, pretrained: bool = True) -> None:
        """``pretrained=False`` skips loading external pretrained weights (e.g. an ImageNet
        encoder) because a checkpoint is about to replace every weight."""
        self.config = config
        self.image_size = image_size
        self.device = torch.device(device)
        self.parallel: Parallel = SINGLE_PROCESS

    # ---- networks -----------------------------------------------------------------------
    @property
    @abstractmethod
    def network(self) -> nn.Module:
        """The module whose ``state_dict`` is the method's weights."""

    @property
    def scan_backend(self) -> str | None:
        """The resolved selective-scan backend, for methods that use one."""
        return None

    def summary(self) -> str:
        """One line naming the method and its architecture, for messages."""
        return f"{self.name}({self.config})"

    def describe(self) -> dict[str, Any]:
        """Facts for the results file: parameter counts of :attr:`network` and :meth:`summary`."""
        return {"parameters": count_parameters(self.network), "architecture": self.summary()}

    def encoder_weights(self) -> dict[str, Any] | None:
        """What the frozen encoder's weights are ({choice, source, file_name, sha256, url,
        sha256_matches_name}), for the results file; None for methods without one."""
        info = encoder_weights_info(self.network)
        return info.as_dict() if info is not None else None

    def train(self, mode: bool = True) -> "AnomalyMethod":
        """Switch the network between training and inference behaviour."""
        self.network.train(mode)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """The weights (and buffers) of :attr:`network`."""
        return self.network.state_dict()

    def load_state_dict(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Load weights strictly; a mismatch raises a ``ValueError`` listing the keys."""
        load_strict(self.network, state, source=source, model_description=self.summary())

    # ---- fitting ------------------------------------------------------------------------
    def prepare(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        """Work done once before fitting on the normal training images ((B,3,H,W) batches).

        Returns facts for the results file's ``encoder`` entry. The default does nothing.
        """
        return {}

    def fit(self, data: TrainingData, loop: StepLoop) -> dict[str, Any]:
        """Learn from ``data``; returns facts for the results file's ``training`` entry.

        The default lets the engine's step loop drive :meth:`training_step` over the normal
        images (resumable, checkpointed). Methods with a training procedure of their own
        (e.g. on labelled anomalies and cached features) override this and set
        ``resumable = False``.
        """
        return loop.run(data.normal)

    def distribute(self, parallel: Parallel) -> None:
        """Train as one of ``parallel.world_size`` processes (called once, before
        ``configure_optimization``): run the training forward pass through
        ``parallel.wrap`` and, where a step draws random numbers per batch or keeps state
        built from the batch (synthesis, a memory bank), work on ``parallel.gather``-ed global
        batches so that the result equals the one-process run. Methods that support this set
        the ``distributed`` trait.

        Raises:
            ConfigError: the method trains in one process only (the default).
        """
        raise ConfigError(f"method {self.name!r} trains in one process only; run it without torchrun "
                          "(or with --nproc_per_node 1)")

    def configure_optimization(self, train: TrainConfig, total_steps: int) -> None:
        """Create optimiser(s) and learning-rate schedule for ``total_steps`` steps."""
        raise NotImplementedError(f"method {self.name!r} does not train with the engine's step loop")

    def training_step(self, images: Tensor) -> float:
        """One optimisation step on normal images (B,3,H,W); returns the loss value."""
        raise NotImplementedError(f"method {self.name!r} does not train with the engine's step loop")

    def optimization_state(self) -> dict[str, Any]:
        """Optimiser, scheduler and random-stream state, for checkpoints (plain data and tensors)."""
        return {}

    def load_optimization_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`optimization_state` returned (after ``configure_optimization``)."""

    # ---- inference ----------------------------------------------------------------------
    @abstractmethod
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly maps (B,1,H,W) and image scores (B,) for ImageNet-normalised (B,3,H,W)."""

    # ---- traits as data -----------------------------------------------------------------
    @classmethod
    def traits(cls) -> dict[str, Any]:
        """The class's traits as plain data (for results files, ``mambaad info`` and docs)."""
        return {"learning_type": cls.learning_type.value, "per_class": cls.per_class, "one_pass": cls.one_pass,
                "resumable": cls.resumable, "profiles": sorted(cls.profiles), "distributed": cls.distributed,
                "precisions": list(cls.precisions)}


# ---- registry ----------------------------------------------------------------------------

# Built-in methods by import path, imported only when asked for; register_method adds classes.
METHODS: dict[str, str | type[AnomalyMethod]] = {
    "mambaad": "mambaad_lib.methods.mambaad:MambaADMethod",
    "mambaad_las": "mambaad_lib.methods.mambaad_las:MambaADLASMethod",
    "glass": "mambaad_lib.methods.glass:GLASSMethod",
    "glass_unified": "mambaad_lib.methods.glass:GLASSUnifiedMethod",
    "nearest_neighbor": "mambaad_lib.methods.nearest_neighbor:NearestNeighborMethod",
    "mmad": "mambaad_lib.methods.mmad:MMADMethod",
    "devnet": "mambaad_lib.methods.openset:DevNetMethod",
    "dra": "mambaad_lib.methods.openset:DRAMethod",
    "ahl": "mambaad_lib.methods.ahl:AHLMethod",
}


def register_method(cls: type[AnomalyMethod], replace: bool = False) -> type[AnomalyMethod]:
    """Register ``cls`` under ``cls.name`` (usable as a class decorator).

    Raises:
        ValueError: the name is taken by another method (pass ``replace=True`` to replace it),
            or the class lacks ``name``/``config_class`` or has a profile size other than
            smoke, demo or paper.
    """
    for attribute in ("name", "config_class"):
        if not getattr(cls, attribute, None):
            raise ValueError(f"method class {cls.__qualname__} must set {attribute!r}")
    unknown = sorted(set(cls.profiles) - set(PROFILE_SIZES))
    if unknown:
        raise ValueError(f"method {cls.name!r}: profile sizes {unknown} are not among {list(PROFILE_SIZES)}")
    existing = METHODS.get(cls.name)
    if existing is not None and existing is not cls and not replace:
        raise ValueError(f"a method named {cls.name!r} is already registered; pass replace=True to replace it")
    METHODS[cls.name] = cls
    return cls


def get_method_class(name: str) -> type[AnomalyMethod]:
    """The class registered as ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; available methods: {sorted(METHODS)}")
    entry = METHODS[name]
    if isinstance(entry, str):
        module_name, _, class_name = entry.partition(":")
        entry = METHODS[name] = getattr(importlib.import_module(module_name), class_name)
    return entry


def get_method(name: str, config: Any, image_size: int, device: torch.device | str,
               pretrained: bool = True) -> AnomalyMethod:
    """Instantiate method ``name`` with its config dataclass (see :class:`AnomalyMethod`)."""
    return get_method_class(name)(config, image_size=image_size, device=torch.device(device),
                                  pretrained=pretrained)
