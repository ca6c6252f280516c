"""A tiny resumable method and dataset for tests of run handling: a whole run takes about a
second, so locks, resumption, interruption and bad data can be tried for real.

Also used by subprocesses (``python -c``) that the tests kill, hence a module, not a fixture.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from mambaad_lib.data.synthetic import make_synthetic_dataset
from mambaad_lib.methods import METHODS, AnomalyMethod, register_method

NAME = "step_toy"


@dataclass
class StepToyConfig:
    """The toy's ``model:`` section."""

    step_seconds: float = 0.0  # a pause in every step, so that a test can stop training midway
    progress_file: str = ""    # a line is appended after every step, so that a test sees training going


class StepToyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.center = nn.Parameter(torch.zeros(3))


class StepToyMethod(AnomalyMethod):
    """Learns the mean colour of the normal images by SGD; the map is the distance to it."""

    name = NAME
    config_class = StepToyConfig

    def __init__(self, config, image_size, device, pretrained=True):
        super().__init__(config, image_size, device, pretrained)
        self.net = StepToyNet().to(self.device)
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def network(self) -> nn.Module:
        return self.net

    def configure_optimization(self, train, total_steps: int) -> None:
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=train.lr, momentum=0.9)

    def training_step(self, images: Tensor) -> float:
        loss = ((images.mean(dim=(2, 3)) - self.net.center) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        time.sleep(self.config.step_seconds)
        if self.config.progress_file:
            with open(self.config.progress_file, "a", encoding="utf-8") as handle:
                handle.write("step\n")
        return float(loss.detach())

    def optimization_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_optimization_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        maps = (images.to(self.device) - self.net.center.detach().view(1, 3, 1, 1)).abs().sum(dim=1, keepdim=True)
        return maps, maps.amax(dim=(1, 2, 3))


def register() -> None:
    """Register the toy (again, after a test restored the registry)."""
    register_method(StepToyMethod, replace=True)


def unregister() -> None:
    METHODS.pop(NAME, None)


def write_profile(folder: Path, data_root: Path, name: str = "toy", **sections) -> Path:
    """A profile YAML for the toy on dataset ``name`` under ``data_root``, writing under ``folder``;
    ``sections`` update the profile's sections (e.g. ``train={"epochs": 3}``)."""
    profile = {"experiment": "toy", "method": NAME, "seed": 0, "device": "cpu",
               "data": {"root": str(data_root), "name": name, "image_size": 32},
               "model": {"step_seconds": 0.0},
               "train": {"epochs": 2, "batch_size": 2, "lr": 0.1, "checkpoint_every": 1},
               "eval": {"batch_size": 8, "num_examples": 0, "protocols": ["standard"]},
               "paths": {"results_dir": str(folder / "results"), "runs_dir": str(folder / "runs")}}
    for section, values in sections.items():
        profile[section] = {**profile[section], **values} if isinstance(values, dict) else values
    path = folder / "toy_profile.yaml"
    path.write_text(yaml.safe_dump(profile), encoding="utf-8")
    return path


def make_dataset(root: Path, name: str = "toy", n_train: int = 4, n_test: int = 5) -> Path:
    """Two synthetic classes (brick, coin) of 32x32 images; returns the meta file."""
    return make_synthetic_dataset(root, name=name, seed=0, image_size=32, n_train=n_train, n_test=n_test,
                                  classes=["brick", "coin"])
