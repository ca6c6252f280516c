"""Frozen ResNet feature extractors (stem + layer1..layer3) and their weights.

Inputs are ImageNet-normalised images (B, 3, H, W); outputs are f1, f2, f3 at strides 4, 8,
16. Parameter names equal torchvision's and timm's ResNets (``conv1``, ``bn1``,
``layer1.0.conv1``...), so their state dicts load directly.

Which weights (``build_encoder(backbone, weights)``):

- ``"imagenet"``: the file the released code loads. MambaAD and MMAD run on the ADer code
  base, whose README pins ``timm==0.8.15dev0``; its encoder is ``timm_<backbone>`` with
  ``features_only=True, out_indices=[1, 2, 3]``. MambaAD's config loads
  ``model/pretrain/resnet34-43635321.pth`` explicitly, MMAD's sets ``pretrained=True``;
  both resolve to the file timm 0.8.15.dev0 downloads for ``pretrained=True`` (the ``url``
  of its ``default_cfgs`` in ``timm/models/resnet.py``), listed in :data:`ENCODERS`.
- ``"torchvision"``: torchvision's ``IMAGENET1K_V1`` weights (this library's default before
  the release's weights were adopted; results files written before then used these).
- a path: a local torchvision or timm ResNet state dict.
- ``None``: random initialisation (offline checks only).

timm is not a dependency: for these four backbones timm's ResNet has torchvision's
architecture (7x7 stem + max-pool, BasicBlock / Bottleneck with the stride on the 3x3 conv,
``downsample`` = 1x1 conv + BatchNorm, eps 1e-5) and the same parameter and buffer names; only
parameter-free modules are named differently (timm ``act1``/``act2`` vs torchvision
``relu``), so timm's state dict maps to ours key for key, unchanged. timm's own loader is
non-strict; ours is strict on the encoder's keys (layer4 and fc are ignored).

The files live in torch hub's cache (``<torch.hub.get_dir()>/checkpoints/<file name>``),
where timm and torchvision put them. The 8 hex digits before ``.pth`` in each file name are
the start of the file's SHA-256 (torch hub's convention, which timm's hash check follows).
What was loaded is recorded in ``encoder.weights_info`` (:class:`EncoderWeightsInfo`: source,
file name, SHA-256).

Without pretrained weights (offline) a random encoder's BatchNorm statistics make feature
scales explode; :func:`reestimate_batchnorm` recomputes them on real images.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from mambaad_lib.utils.state import read_torch_file

RELEASE_TIMM_VERSION = "0.8.15.dev0"
WEIGHT_CHOICES = ("imagenet", "torchvision")
_TIMM_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download"


@dataclass(frozen=True)
class EncoderSpec:
    """A supported backbone.

    Attributes:
        builder: torchvision constructor name.
        weights: torchvision weights enum (its ``IMAGENET1K_V1`` is the ``torchvision`` choice).
        channels: channels of f1, f2, f3.
        release_url: the file timm 0.8.15.dev0 downloads for ``timm.create_model(builder,
            pretrained=True)`` (the ``imagenet`` choice).
    """

    builder: str
    weights: str
    channels: tuple[int, int, int]
    release_url: str


ENCODERS: dict[str, EncoderSpec] = {
    # timm 0.8.15.dev0 reuses torchvision's original (pre-0.13) ResNet-18 file.
    "resnet18": EncoderSpec("resnet18", "ResNet18_Weights", (64, 128, 256),
                            "https://download.pytorch.org/models/resnet18-5c106cde.pth"),
    # timm's own ResNet-34 (timm >= 0.9 calls it resnet34.bt_in1k); MambaAD's config names this file.
    "resnet34": EncoderSpec("resnet34", "ResNet34_Weights", (64, 128, 256),
                            f"{_TIMM_RELEASES}/v0.1-weights/resnet34-43635321.pth"),
    # timm's "ResNet strikes back" A1 recipe (timm >= 0.9: resnet50.a1_in1k).
    "resnet50": EncoderSpec("resnet50", "ResNet50_Weights", (256, 512, 1024),
                            f"{_TIMM_RELEASES}/v0.1-rsb-weights/resnet50_a1_0-14fe96d1.pth"),
    # timm's own WRN-50-2 (timm >= 0.9: wide_resnet50_2.racm_in1k); MambaAD's base config names it.
    "wide_resnet50_2": EncoderSpec("wide_resnet50_2", "Wide_ResNet50_2_Weights", (256, 512, 1024),
                                   f"{_TIMM_RELEASES}/v0.1-weights/wide_resnet50_racm-8234f177.pth"),
}


def encoder_spec(backbone: str) -> EncoderSpec:
    if backbone not in ENCODERS:
        raise ValueError(f"backbone must be one of {list(ENCODERS)}, got {backbone!r}")
    return ENCODERS[backbone]


@dataclass(frozen=True)
class EncoderWeightsInfo:
    """What an encoder's weights are, for results files.

    Attributes:
        choice: ``"imagenet"`` (the release's timm file), ``"torchvision"``, ``"file"`` (a
            local path) or ``"none"`` (random).
        source: who published the weights, in words.
        file_name: the weights file's name (None when random).
        sha256: SHA-256 of the file's bytes, hex (None when random).
        url: where the file is published (None for local files and random weights).
        sha256_matches_name: for published files, whether the SHA-256 starts with the hex
            digits in the file name; False means the cached file is not the published one.
            None for local files and random weights.
    """

    choice: str
    source: str
    file_name: str | None = None
    sha256: str | None = None
    url: str | None = None
    sha256_matches_name: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the fields."""
        return asdict(self)


RANDOM_WEIGHTS = EncoderWeightsInfo(choice="none", source="none (random initialisation)")


class FrozenResNetEncoder(nn.Module):
    """ResNet stem + layer1..layer3, frozen: no gradients, and always in eval mode.

    Args:
        backbone: a key of :data:`ENCODERS`.

    Attributes:
        weights_info: :class:`EncoderWeightsInfo` of the loaded weights (set by
            :func:`build_encoder`; random until weights are loaded).
    """

    def __init__(self, backbone: str = "resnet34") -> None:
        super().__init__()
        spec = encoder_spec(backbone)
        net = getattr(torchvision.models, spec.builder)(weights=None)
        self.backbone = backbone
        self.channels = spec.channels
        self.weights_info = RANDOM_WEIGHTS
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


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_weights_file(path: Path, what: str) -> Any:
    """A weights file's content, read without running code from it (:func:`read_torch_file`)."""
    try:
        return read_torch_file(path)
    except ValueError as error:  # unpickling refused, truncated zip, foreign format: one message naming the file
        raise ValueError(f"{what} {path} is not a readable PyTorch weights file ({error})") from None


@dataclass(frozen=True)
class PublishedWeights:
    """A published weights file for one backbone and one choice (``imagenet`` or ``torchvision``)."""

    backbone: str
    choice: str
    source: str
    url: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def name_hash(self) -> str | None:
        """The hex digits torch hub reads from the file name as the SHA-256's start."""
        match = re.search(torch.hub.HASH_REGEX, self.file_name)
        return match.group(1) if match else None

    @property
    def cache_path(self) -> Path:
        """Where torch hub (and timm) keep the file: ``<torch.hub.get_dir()>/checkpoints/<file name>``."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name


def published_weights(backbone: str, choice: str) -> PublishedWeights:
    """The file ``choice`` (``"imagenet"``: the release's timm file; ``"torchvision"``) means for ``backbone``."""
    spec = encoder_spec(backbone)
    if choice == "imagenet":
        return PublishedWeights(backbone, choice, f"timm {RELEASE_TIMM_VERSION} ImageNet weights "
                                f"(what the MambaAD/ADer release loads)", spec.release_url)
    if choice == "torchvision":
        return PublishedWeights(backbone, choice, f"torchvision {spec.weights}.IMAGENET1K_V1",
                                getattr(tv_resnet, spec.weights).IMAGENET1K_V1.url)
    raise ValueError(f"encoder weights choice must be one of {WEIGHT_CHOICES}, got {choice!r}")


def fetch_published_weights(weights: PublishedWeights) -> tuple[dict[str, Tensor], EncoderWeightsInfo]:
    """Read ``weights`` from the torch hub cache, downloading it first when it is not there.

    A download is verified against the hash in the file name (torch hub deletes a mismatch);
    a file placed in the cache by hand is read as it is, and its SHA-256 is recorded.

    Returns:
        (state dict, its :class:`EncoderWeightsInfo`).
    Raises:
        RuntimeError: the file is not cached and cannot be downloaded; the message names the
            file, the cache folder and the local-path option.
        ValueError: the cached file is not a PyTorch weights file.
    """
    path = weights.cache_path
    if path.is_file():
        state = _read_weights_file(path, f"cached {weights.backbone} weights file")
    else:
        try:
            state = torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True,
                                                       file_name=weights.file_name, weights_only=True)
        except Exception as error:  # network, DNS, proxy, hash: all end the same way for the user
            raise RuntimeError(
                f"could not fetch the {weights.choice} weights of {weights.backbone} ({weights.source}): "
                f"{weights.file_name} is not in the torch hub cache {path.parent}/ and downloading "
                f"{weights.url} failed ({type(error).__name__}: {error}). Without network, download that "
                f"file elsewhere and put it in {path.parent}/, or pass "
                f"encoder_weights='/path/to/{weights.file_name}' (a local torchvision or timm ResNet state "
                f"dict). encoder_weights=None gives a random encoder (offline checks only).") from error
    sha256 = file_sha256(path)
    matches = None if weights.name_hash is None else sha256.startswith(weights.name_hash)
    info = EncoderWeightsInfo(choice=weights.choice, source=weights.source, file_name=weights.file_name,
                              sha256=sha256, url=weights.url, sha256_matches_name=matches)
    return state, info


def build_encoder(backbone: str = "resnet34", weights: str | os.PathLike | None = None) -> FrozenResNetEncoder:
    """A frozen encoder with ``weights`` = None (random), ``"imagenet"`` (the release's timm file),
    ``"torchvision"`` (torchvision's IMAGENET1K_V1) or a local ``.pth`` path.

    The result's ``weights_info`` (:class:`EncoderWeightsInfo`) records the source, file name
    and SHA-256. A published file whose SHA-256 does not match its name is loaded, with a
    warning, and recorded with ``sha256_matches_name=False``.

    Raises:
        RuntimeError: a published file is neither cached nor downloadable (see
            :func:`fetch_published_weights`).
        FileNotFoundError: a local path that does not exist.
        ValueError: an unreadable file, or one that does not fit ``backbone`` (the message names it).
    """
    encoder = FrozenResNetEncoder(backbone)
    if weights is None:
        return encoder
    if weights in WEIGHT_CHOICES:
        published = published_weights(backbone, str(weights))
        state, info = fetch_published_weights(published)
        if info.sha256_matches_name is False:
            warnings.warn(f"{published.cache_path}: SHA-256 {info.sha256[:16]}... does not start with "
                          f"{published.name_hash}, so it is not the published {published.file_name}; "
                          f"it is loaded and recorded as it is", stacklevel=2)
        load_encoder_state(encoder, state, f"{published.choice} weights file {published.cache_path}")
        encoder.weights_info = info
        return encoder
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"encoder_weights must be None, one of {WEIGHT_CHOICES} or a file path, got {weights!r}")
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"encoder_weights file not found: {path}")
    what = f"encoder_weights file {path}"
    load_encoder_state(encoder, _read_weights_file(path, "encoder_weights file"), what)
    encoder.weights_info = EncoderWeightsInfo(choice="file", source=f"local file {path.resolve()}",
                                              file_name=path.name, sha256=file_sha256(path))
    return encoder


def encoder_weights_info(model: nn.Module) -> EncoderWeightsInfo | None:
    """The :class:`EncoderWeightsInfo` of the frozen encoder inside ``model`` (None if it has none).

    Raises:
        ValueError: ``model`` holds several frozen encoders with different weights.
    """
    infos = {module.weights_info for module in model.modules() if isinstance(module, FrozenResNetEncoder)}
    if len(infos) > 1:
        raise ValueError(f"the model holds frozen encoders with different weights: {sorted(i.source for i in infos)}")
    return next(iter(infos), None)


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
