"""MambaAD with LAS on its input path: the loss targets clean features; the LAS stream is checkpointed."""
import numpy as np
import torch

from mambaad_lib.methods.mambaad_las import MambaADLASMethod, MambaADLASMethodConfig, las_reconstruction_loss
from mambaad_lib.methods.training import TrainConfig
from mambaad_lib.models.mambaad import build_mambaad
from mambaad_lib.synthesis.las import LocalAnomalySynthesizer
from mambaad_lib.synthesis.textures import TextureSource
from mambaad_lib.utils.schema import dataclass_from_dict

SIZE = (64, 64)


def test_las_reconstruction_loss_targets_clean_features():
    textures = TextureSource.bundled(patch_size=64)
    model = build_mambaad(backbone="resnet18", depths=(1, 1, 1, 1), image_size=64)
    images = torch.randn(2, 3, *SIZE)
    never = LocalAnomalySynthesizer(textures, probability=0.0)
    always = LocalAnomalySynthesizer(textures, probability=1.0)
    plain = model.loss(images)
    assert torch.allclose(las_reconstruction_loss(model, images, never, np.random.default_rng(0)), plain)
    corrupted = las_reconstruction_loss(model, images, always, np.random.default_rng(0))
    assert corrupted.requires_grad and not torch.allclose(corrupted, plain)


def test_mambaad_las_method_trains_and_checkpoints_its_las_stream():
    config = dataclass_from_dict(MambaADLASMethodConfig, {
        "backbone": "resnet18", "depths": [1, 1, 1, 1], "local_kernels": [3], "encoder_weights": "none",
        "las_probability": 1.0}, prefix="model")
    method = MambaADLASMethod(config, image_size=64, device=torch.device("cpu"))
    method.configure_optimization(TrainConfig(epochs=1, batch_size=2), total_steps=2)
    state = method.optimization_state()["las_rng"]
    assert np.isfinite(method.training_step(torch.randn(2, 3, *SIZE)))
    assert method.optimization_state()["las_rng"] != state  # LAS drew from its own stream
    method.load_optimization_state({**method.optimization_state(), "las_rng": state})
    assert method.optimization_state()["las_rng"] == state
