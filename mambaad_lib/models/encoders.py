"""Frozen ResNet feature extractors (stem + layer1..layer3) and their weights.

Inputs are ImageNet-normalised images (B, 3, H, W); outputs are f1, f2, f3 at strides 4, 8,
16. Parameter names equal torchvision's and timm's ResNets (``conv1``, ``bn1``,
``layer1.0.conv1``...), so their state dicts load directly.

Without pretrained weights (offline) a random encoder's BatchNorm statistics make feature
scales explode; :func:`reestimate_batchnorm` recomputes them on real images.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet


@dataclass(frozen=True)
class EncoderSpec:
    """A supported backbone: its torchvision constructor, weights enum and feature channels."""

    builder: str
    weights: str
    channels: tuple[int, int, int]


ENCODERS: dict[str, EncoderSpec] = {
    "resnet18": EncoderSpec("resnet18", "ResNet18_Weights", (64, 128, 256)),
    "resnet34": EncoderSpec("resnet34", "ResNet34_Weights", (64, 128, 256)),
    "resnet50": EncoderSpec("resnet50", "ResNet50_Weights", (256, 512, 1024)),
    "wide_resnet50_2": EncoderSpec("wide_resnet50_2", "Wide_ResNet50_2_Weights", (256, 512, 1024)),
}


def encoder_spec(backbone: str) -> EncoderSpec:
    if backbone not in ENCODERS:
        raise ValueError(f"backbone must be one of {list(ENCODERS)}, got {backbone!r}")
    return ENCODERS[backbone]


class FrozenResNetEncoder(nn.Module):
    """ResNet stem + layer1..layer3, frozen: no gradients, and always in eval mode.

    Args:
        backbone: a key of :data:`ENCODERS`.
    """

    def __init__(self, backbone: str = "resnet34") -> None:
        super().__init__()
        spec = encoder_spec(backbone)
        net = getattr(torchvision.models, spec.builder)(weights=None)
        self.backbone = backbone
        self.channels = spec.channels
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenResNetEncoder:
        """Ignore ``mode``: a frozen encoder keeps its BatchNorm statistics fixed."""
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> [f1 (B, c1, H/4, W/4), f2 (B, c2, H/8, W/8), f3 (B, c3, H/16, W/16)]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # (B, 64, H/4, W/4)
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]


def _unwrap_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and "conv1.weight" not in obj:
        for key in ("state_dict", "model", "net"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} does not hold a state dict (got {type(obj).__name__})")
    return {key.removeprefix("module."): value for key, value in obj.items()}


def load_encoder_state(encoder: FrozenResNetEncoder, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Copy a torchvision/timm ResNet state dict into ``encoder``; extra keys (layer4, fc) are ignored.

    Raises:
        ValueError: missing encoder keys or mismatched shapes (wrong backbone).
    """
    state = _unwrap_state_dict(state_dict, source)
    own = encoder.state_dict()
    missing = [key for key in own if key not in state]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} {encoder.backbone} encoder keys, e.g. {missing[:3]}")
    wrong = [f"{key}: {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
             for key in own if tuple(state[key].shape) != tuple(own[key].shape)]
    if wrong:
        raise ValueError(f"{source} does not fit a {encoder.backbone} encoder: shapes differ, e.g. {wrong[:3]}")
    encoder.load_state_dict({key: state[key] for key in own}, strict=True)


def imagenet_state_dict(backbone: str) -> dict[str, Tensor]:
    """torchvision's IMAGENET1K_V1 weights (from the torch hub cache or the network).

    Raises:
        RuntimeError: the file cannot be fetched; the message names the local-path option.
    """
    weights = getattr(tv_resnet, encoder_spec(backbone).weights).IMAGENET1K_V1
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    except Exception as error:  # network, DNS, proxy, hash: all end the same way for the user
        raise RuntimeError(
            f"could not fetch ImageNet weights for {backbone} from {weights.url} "
            f"({type(error).__name__}: {error}). Without network, download that file elsewhere "
            f"and pass encoder_weights='/path/to/{os.path.basename(weights.url)}' (a local torchvision "
            f"or timm ResNet state dict), or place it in {torch.hub.get_dir()}/checkpoints/. "
            f"encoder_weights=None gives a random encoder (offline checks only).") from error


def build_encoder(backbone: str = "resnet34", weights: str | os.PathLike | None = None) -> FrozenResNetEncoder:
    """A frozen encoder with ``weights`` = None (random), ``"imagenet"`` or a local ``.pth`` path."""
    encoder = FrozenResNetEncoder(backbone)
    if weights is None:
        return encoder
    if weights == "imagenet":
        load_encoder_state(encoder, imagenet_state_dict(backbone), f"ImageNet weights of {backbone}")
        return encoder
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"encoder_weights must be None, 'imagenet' or a file path, got {weights!r}")
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder_weights file not found: {path}")
    load_encoder_state(encoder, torch.load(path, map_location="cpu", weights_only=True), f"encoder_weights file {path}")
    return encoder


@torch.no_grad()
def reestimate_batchnorm(encoder: nn.Module, batches: Iterable[Tensor]) -> int:
    """Recompute every BatchNorm's running statistics of ``encoder`` from image batches.

    Running stats are reset and averaged cumulatively (``momentum=None``: every batch counts
    equally) over forward passes with BatchNorm in training mode; the encoder ends in eval
    mode with its original momenta.

    Args:
        encoder: a module containing BatchNorm layers (e.g. :class:`FrozenResNetEncoder`).
        batches: iterable of (B, 3, H, W) image tensors, normalised as for training.
    Returns:
        Number of images used.
    Raises:
        ValueError: a batch that is not a (B, 3, H, W) tensor, or no batches at all (the
            statistics are then restored to what they were).
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, {k: v.clone() for k, v in m.named_buffers()}) for m in norms]
    device = next(encoder.parameters()).device
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.training = True  # only the norms: the encoder's own train() is pinned to eval
    images = 0
    try:
        for batch in batches:
            if not isinstance(batch, Tensor) or batch.dim() != 4 or batch.shape[1] != 3:
                raise ValueError("reestimate_batchnorm batches must be (B, 3, H, W) tensors, got "
                                 f"{tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__}")
            encoder(batch.to(device))
            images += batch.shape[0]
        if images == 0:
            raise ValueError("reestimate_batchnorm got no image batches")
    except BaseException:
        # Leave the encoder as it was rather than with half-estimated statistics.
        for norm, (_, buffers) in zip(norms, saved):
            for name, value in buffers.items():
                getattr(norm, name).copy_(value)
        raise
    finally:
        for norm, (momentum, _) in zip(norms, saved):
            norm.momentum = momentum
            norm.training = False
    return images
