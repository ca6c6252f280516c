"""Shared test configuration: deterministic torch on a small thread budget, the smoke dataset."""
from pathlib import Path

import pytest
import torch

from mambaad_lib.data.synthetic import make_synthetic_dataset
from mambaad_lib.engine.config import load_config


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    """The smoke profile's synthetic dataset, generated once for this module."""
    config = load_config("smoke")
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(root, name=config.data.name, seed=config.synthetic.seed,
                           image_size=config.synthetic.image_size, n_train=config.synthetic.n_train,
                           n_test=config.synthetic.n_test, classes=config.synthetic.classes)
    return root
