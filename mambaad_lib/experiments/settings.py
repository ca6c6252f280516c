"""How a notebook's rows are trained under each profile size: data, schedule and base architecture.

A notebook's experiment is a grid of rows that differ in a few ``model.*`` options; every
row starts from the run config of the notebook's profile size for its method
(:func:`mambaad_lib.engine.load_config`, e.g. ``demo`` + ``glass`` -> the GLASS demo
profile) and then takes the notebook's :class:`TrainingSettings`:

- the **data** (size, classes, images per class) -- always, so that rows compare on the
  same images;
- the **schedule** (epochs, batch, untrained evaluation, example figures) -- for the rows
  the notebook trains on one budget;
- the **architecture** (``model.*`` options of the base model the rows vary) -- for the
  rows of that model family.

Methods of another family (e.g. GLASS beside MambaAD) keep their own profile's model and
schedule and share only the data.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from mambaad_lib.utils.schema import to_plain

SIZES = ("smoke", "demo", "paper")
# The experiment (results/<experiment>/, runs/<profile>/<experiment>/) of rows trained under
# ``shared`` settings, whichever notebook asks for them first.
SHARED_EXPERIMENT = "shared"
# Seeds a notebook runs when its ``seeds`` parameter is None: the rows a chapter compares run
# on three seeds except in the smoke profile, which only checks the pipeline.
DEFAULT_SEEDS = {"smoke": (0,), "demo": (0, 1, 2), "paper": (0, 1, 2)}


@dataclass(frozen=True)
class TrainingSettings:
    """How every trained row of one notebook is run under one profile size.

    ``architecture`` holds the base model that grid rows modify (e.g. the ablation
    notebooks vary the scan of this model). ``shared``: rows trained under these settings
    are stored under one experiment for every notebook (:data:`SHARED_EXPERIMENT`) and named
    by their configuration, so a row two notebooks train alike is trained once
    (:meth:`mambaad_lib.experiments.Context.config`). ``note`` says why, for the book.
    """

    image_size: int
    classes: tuple[str, ...] | None
    train_per_class: int | None
    test_per_class: int | None
    epochs: int
    batch_size: int
    architecture: Mapping[str, Any] = field(default_factory=dict)
    num_examples: int = 0
    evaluate_untrained: bool = False
    shared: bool = False
    note: str = ""

    def overrides(self, schedule: bool = True, architecture: bool = True) -> dict[str, Any]:
        """Dotted config keys these settings set: the data always, the schedule and the
        base architecture when asked."""
        values: dict[str, Any] = {
            "data.image_size": self.image_size, "data.crop_size": self.image_size,
            "data.classes": list(self.classes) if self.classes else None,
            "data.train_per_class": self.train_per_class, "data.test_per_class": self.test_per_class,
        }
        if schedule:
            values.update({"train.epochs": self.epochs, "train.batch_size": self.batch_size,
                           "train.evaluate_untrained": self.evaluate_untrained,
                           "eval.num_examples": self.num_examples})
        if architecture:
            values.update({f"model.{key}": to_plain(value) for key, value in self.architecture.items()})
        return values

    def describe(self) -> str:
        """One line for the notebook page: what every trained row sees."""
        classes = ", ".join(self.classes) if self.classes else "all classes"
        per_class = (f"{self.train_per_class or 'all'} normal training / {self.test_per_class or 'all'} test "
                     "images per class")
        model = ", ".join(f"{key}={to_plain(value)}" for key, value in self.architecture.items())
        text = (f"{self.image_size}x{self.image_size} images; {classes}; {per_class}; "
                f"{self.epochs} epochs at batch {self.batch_size}")
        return text + (f"; base model {model}" if model else "") + (f" ({self.note})" if self.note else "")

    def replace(self, **changes: Any) -> "TrainingSettings":
        """A copy with fields changed (``architecture`` entries are merged)."""
        if "architecture" in changes:
            changes["architecture"] = {**self.architecture, **changes["architecture"]}
        return dataclasses.replace(self, **changes)


# Test splits are never capped: the engine's cap keeps the first images of a class, which
# are all normal in the synthetic benchmark.
_SMOKE = dict(image_size=64, classes=("brick", "coin"), train_per_class=4, test_per_class=None, epochs=1,
              batch_size=4, note="checks the pipeline only: the numbers mean nothing")
# One demo setting for every MambaAD-family notebook, so that a row two chapters share (the
# base model is a row of chapters 01-05 and 07) is trained once per seed (``shared``).
# Budget (2-core CPU, idle, fused `cpu` scan): one step of the base model at 64x64, batch 8,
# takes ~0.18 s, so 40 epochs x 10 steps ~ 75 s; at 128x128 ~0.55 s (3x), which would leave
# room for a third of the rows. Epochs, from trial runs of the base model (seed 0) against the
# plateau rule (mambaad_lib.engine.convergence: < 2.5% over the last tenth): at 64x64, 30
# epochs fell 2.2% (close to the bar) and 80 epochs 1.6%; 40 leaves a margin for other seeds
# and rows. At 128x128, 15 epochs fell 3.9%.
_DEMO = dict(
    image_size=64, classes=("brick", "grass", "retina", "logo"), train_per_class=20, test_per_class=None,
    epochs=40, batch_size=8, architecture={"backbone": "resnet18", "depths": (1, 1, 1, 1)}, num_examples=4,
    evaluate_untrained=True, shared=True,
    note="CPU-sized: random encoder, 64x64 images (decoder scan grids 2x2..16x16), 4 classes, 20 normal "
         "training images per class, trained to a plateau of the training loss; the same data and schedule in "
         "every chapter, so a configuration two chapters show is trained once per seed")
_PAPER = dict(image_size=256, classes=None, train_per_class=None, test_per_class=None, epochs=500, batch_size=16)

# notebook kind -> profile size -> settings. ``main``: notebook 01; ``ablation``: 02-04;
# ``synthesis``: notebook 05; ``mmad``: notebook 07. Every kind shares the demo setting.
PROFILE_SETTINGS: dict[str, dict[str, TrainingSettings]] = {
    "main": {
        "smoke": TrainingSettings(**{**_SMOKE, "num_examples": 2, "evaluate_untrained": True}),
        "demo": TrainingSettings(**_DEMO),
        "paper": TrainingSettings(**_PAPER, num_examples=8, note="the paper profile"),
    },
    "ablation": {
        "smoke": TrainingSettings(**{**_SMOKE, "architecture": {"backbone": "resnet18", "depths": (1, 1, 1, 1),
                                                                "local_kernels": (3,)}}),
        "demo": TrainingSettings(**_DEMO),
        "paper": TrainingSettings(**_PAPER, architecture={"backbone": "resnet34", "depths": (3, 4, 6, 3)},
                                  note="the paper's ablation setting (MVTec-AD, ImageNet ResNet34, [3,4,6,3])"),
    },
    "synthesis": {
        "smoke": TrainingSettings(**_SMOKE),
        "demo": TrainingSettings(**_DEMO),
        "paper": TrainingSettings(**_PAPER, num_examples=4),
    },
    "mmad": {
        "smoke": TrainingSettings(**{**_SMOKE, "architecture": {"backbone": "resnet18", "depths": (1, 1, 1, 1)}}),
        "demo": TrainingSettings(**_DEMO),
        "paper": TrainingSettings(**_PAPER, num_examples=8,
                                  note="each method's published protocol (the mmad_paper and paper profiles)"),
    },
}


def training_settings(kind: str, profile: str) -> TrainingSettings:
    """Settings of notebook ``kind`` (``main``, ``ablation``, ``synthesis``, ``mmad``) under ``profile``."""
    if kind not in PROFILE_SETTINGS:
        raise ValueError(f"unknown notebook kind {kind!r}; expected one of {sorted(PROFILE_SETTINGS)}")
    if profile not in PROFILE_SETTINGS[kind]:
        raise ValueError(f"profile must be one of {list(SIZES)}, got {profile!r}")
    return PROFILE_SETTINGS[kind][profile]
