"""DevNet and DRA, and what they share with AHL: open-set supervised methods on frozen features.

These detectors learn from the normal training images of one class **and** M labelled
anomalies of it (the engine takes them out of the class's test split by the rule of
``model.openset``, :mod:`mambaad_lib.data.openset`). Their :meth:`OpenSetMethod.fit` is a
procedure of its own rather than the engine's step loop:

1. the frozen encoder (a random encoder's BatchNorm statistics are re-estimated first, in
   ``prepare``) caches two-scale feature maps of the normal training images, of one DRAEM,
   CutPaste and CutMix version of each, and of the labelled anomalies;
2. the heads train on batches of that cache (``base_training``; AHL adds its collaborative
   learning, :mod:`mambaad_lib.methods.ahl`);
3. the model after the last epoch (no selection on the test set) is the model.

Departures from the papers, by necessity: the encoder is frozen (the papers fine-tune the
base model's ResNet-18 end to end and cache its ``layer4`` maps at 448/224 px); features are
``feature_level`` of the library's frozen encoders (default ``layer3``, stride 16, fitting
CPU-sized images); anomaly maps are the heads' 1x1-convolution maps (the papers report image
level only), so pixel metrics are a by-product, not a claim of the papers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mambaad_lib.data.openset import OpenSetConfig
from mambaad_lib.data.subsets import dataset_items
from mambaad_lib.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mambaad_lib.methods.base import AnomalyMethod, LearningType, StepLoop, TrainingData
from mambaad_lib.methods.encoder import FrozenEncoderOptions, prepare_random_encoder
from mambaad_lib.models.base_training import BaseTrainingConfig, train_heads
from mambaad_lib.models.devnet import build_devnet
from mambaad_lib.models.dra import COMPOSITE_HEADS, build_dra
from mambaad_lib.models.encoders import build_encoder, reestimate_batchnorm
from mambaad_lib.models.openset_features import BatchSampler, FeatureBank, MultiScaleFeatures, SampleSet
from mambaad_lib.models.pseudo_anomalies import GENERATORS, pseudo_anomalies
from mambaad_lib.synthesis.textures import resolve_texture_source
from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.utils.schema import to_plain

BASE_MODELS = ("devnet", "dra")


@dataclass
class OpenSetMethodConfig(FrozenEncoderOptions):
    """``model:`` options shared by devnet, dra and ahl.

    ``feature_level``: 0/1/2 = layer1/2/3 of the frozen encoder. ``pseudo_rotation``:
    CutPaste/CutMix rotation range in degrees (180 in the released code). ``texture_dir``:
    DRAEM textures (a DTD folder; null = textures bundled with scikit-image). ``openset``:
    which labelled anomalies the class's test split lends (the engine applies it).
    """

    backbone: str = "resnet18"
    feature_level: int = 2
    n_scales: int = 2
    topk_ratio: float = 0.1
    n_reference: int = 5
    dra_hidden: int = 256
    composite: str = "dra"
    pseudo_rotation: float = 180.0
    texture_dir: str | None = None
    openset: OpenSetConfig = field(default_factory=OpenSetConfig)
    base_training: BaseTrainingConfig = field(default_factory=BaseTrainingConfig)

    def __post_init__(self) -> None:
        self.check_encoder_options()
        if self.composite not in COMPOSITE_HEADS:
            raise ConfigError(f"config key 'model.composite': must be one of {list(COMPOSITE_HEADS)}, "
                              f"got {self.composite!r}")
        if not 0 < self.topk_ratio <= 1:
            raise ConfigError(f"config key 'model.topk_ratio': must be in (0, 1], got {self.topk_ratio}")
        if self.n_reference < 1:
            raise ConfigError(f"config key 'model.n_reference': must be >= 1, got {self.n_reference}")


@dataclass
class DevNetMethodConfig(OpenSetMethodConfig):
    """DevNet: 50 epochs of 20 batches of 24 normal + 24 labelled anomalies."""

    base_training: BaseTrainingConfig = field(default_factory=lambda: BaseTrainingConfig(epochs=50))


@dataclass
class DRAMethodConfig(OpenSetMethodConfig):
    """DRA: 30 epochs of 20 batches of 16 normal + 16 CutPaste pseudo + 16 labelled anomalies."""


# ---- network ---------------------------------------------------------------------------


class OpenSetNet(nn.Module):
    """Frozen multi-scale features + scoring heads (+ DRA's fixed reference normals).

    ``reference_<s>`` buffers (R, C, h, w): the reference normal features used at inference
    (a fixed random draw of ``n_reference`` training normals, set by :meth:`set_reference`).
    """

    def __init__(self, features: MultiScaleFeatures, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = head
        for scale in range(features.n_scales):
            self.register_buffer(f"reference_{scale}", torch.zeros(0))

    @property
    def reference(self) -> list[Tensor]:
        return [getattr(self, f"reference_{scale}") for scale in range(self.features.n_scales)]

    def set_reference(self, reference: list[Tensor]) -> None:
        for scale, value in enumerate(reference):
            setattr(self, f"reference_{scale}", value.detach().clone())

    def score_features(self, features: list[Tensor]) -> Tensor:
        """Image scores (B,) of cached features (per scale (B, C, h, w))."""
        return self.head.score(self.head(features, self.reference))

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) -> anomaly maps (B, 1, H, W), scores (B,)."""
        features = self.features(images)
        maps = self.head.anomaly_map(features, tuple(images.shape[-2:]))
        return maps, self.score_features(features)


def stack_images(dataset: Dataset, batch_size: int = 32) -> Tensor:
    """Every item's ``image`` of ``dataset``, in order: (N, 3, H, W)."""
    return torch.cat([batch["image"] for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False)])


# ---- the methods -----------------------------------------------------------------------


class OpenSetMethod(AnomalyMethod):
    """Common part of devnet, dra and ahl: encoder, feature cache, head training, prediction."""

    learning_type = LearningType.OPEN_SET
    per_class = True
    resumable = False  # minutes of head training on cached features, restarted when interrupted
    base_model: str

    def __init__(self, config: OpenSetMethodConfig, image_size: int, device: torch.device,
                 pretrained: bool = True) -> None:
        super().__init__(config, image_size, device, pretrained)
        encoder = build_encoder(config.backbone, config.encoder_weights_argument(pretrained))
        features = MultiScaleFeatures(encoder, config.feature_level, config.n_scales)
        self.net = OpenSetNet(features, self.build_head(features.channels)).to(self.device)
        self.training_facts: dict[str, Any] = {}
        self.normal_images: Tensor | None = None  # kept by prepare for the feature cache

    def build_head(self, channels: int) -> nn.Module:
        c = self.config
        if self.base_model == "devnet":
            return build_devnet(channels, c.topk_ratio)
        return build_dra(channels, c.topk_ratio, c.dra_hidden, c.composite)

    @property
    def n_reference(self) -> int:
        return self.config.n_reference if self.base_model == "dra" else 0

    @property
    def network(self) -> nn.Module:
        return self.net

    def summary(self) -> str:
        c = self.config
        return (f"{self.name}(base={self.base_model}, backbone={c.backbone}, level={c.feature_level}, "
                f"scales={c.n_scales}, image_size={self.image_size})")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "training": self.training_facts}

    def load_state_dict(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        for scale in range(self.net.features.n_scales):  # reference shapes depend on the image size
            key = f"reference_{scale}"
            if key in state:
                setattr(self.net, key, torch.zeros_like(state[key], device=self.device))
        super().load_state_dict(state, source)

    # ---- preparation and feature cache ------------------------------------------------
    def prepare(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        """BatchNorm re-estimation of a random encoder on (capped) normal batches; the normal
        images are kept for :meth:`fit`'s feature cache, so they are read once."""
        batches = list(batches)
        self.normal_images = torch.cat(batches)
        return prepare_random_encoder(self.config, partial(reestimate_batchnorm, self.net.features.encoder),
                                      batches, self.device)

    def encode(self, images: Tensor, batch_size: int = 32) -> list[Tensor]:
        """Features per scale of normalised images (N, 3, H, W), in batches, on the CPU."""
        parts = [self.net.features(images[start:start + batch_size].to(self.device))
                 for start in range(0, len(images), batch_size)]
        return [torch.cat([part[scale] for part in parts]).cpu() for scale in range(self.net.features.n_scales)]

    def encode_normals_and_pseudo(self, normals: Tensor, seed: int) -> tuple[list[Tensor], dict[str, list[Tensor]]]:
        """Features of the normal images (N, 3, H, W) and of one version per pseudo generator."""
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        clean = (normals * std + mean).clamp(0, 1)
        rng = np.random.default_rng([seed, 0xA41])
        textures = resolve_texture_source(self.config.texture_dir)
        pseudo = {}
        for generator in GENERATORS:
            images = pseudo_anomalies(clean, generator, rng, textures, self.config.pseudo_rotation)
            pseudo[generator] = self.encode((images - mean) / std)
        return self.encode(normals), pseudo

    def _features_key(self, data: TrainingData) -> str:
        """What determines the cached normal and pseudo-anomaly features of a run."""
        c = self.config
        paths = [item["img_path"] for item in dataset_items(data.normal)]
        return json.dumps(["features", paths, self.image_size, data.seed, c.backbone, c.encoder_weights,
                           c.bn_reestimate_images, c.feature_level, c.n_scales, c.pseudo_rotation, c.texture_dir])

    def feature_bank(self, data: TrainingData) -> FeatureBank:
        """The cache the heads train on (normal and pseudo features reused from
        ``data.shared_cache`` when a run of the same data and encoder computed them)."""
        if data.labelled_anomalies is None or len(data.labelled_anomalies) == 0:
            raise ValueError(f"method {self.name!r} is open-set supervised and needs labelled anomalies")
        key = self._features_key(data)
        cached = None if data.shared_cache is None else data.shared_cache.get(key)
        if cached is None:
            if self.normal_images is None or len(self.normal_images) != len(data.normal):
                self.normal_images = stack_images(data.normal)
            cached = self.encode_normals_and_pseudo(self.normal_images, data.seed)
            if data.shared_cache is not None:
                data.shared_cache[key] = cached
        return FeatureBank(cached[0], cached[1], self.encode(stack_images(data.labelled_anomalies)))

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, data: TrainingData, loop: StepLoop) -> dict[str, Any]:
        """Train the heads on the feature cache; sets the inference reference; returns facts."""
        bank = self.feature_bank(data)
        generator = torch.Generator().manual_seed(data.seed)
        self.training_facts = self.fit_features(bank, generator, data)
        self._finish(bank, generator)
        return self.training_facts

    def fit_features(self, bank: FeatureBank, generator: torch.Generator, data: TrainingData) -> dict[str, Any]:
        """DevNet / DRA: the base recipe; the trained heads are offered to AHL runs of the same cell."""
        losses = self._train_base(bank, generator)
        if data.shared_cache is not None:
            data.shared_cache[self.base_heads_key(data)] = {key: value.detach().clone()
                                                            for key, value in self.net.head.state_dict().items()}
        return {"base_epoch_losses": losses, "model_selection": "last epoch"}

    def base_heads_key(self, data: TrainingData) -> str:
        """What determines the heads the base recipe trains (for sharing them with AHL)."""
        c = self.config
        return json.dumps(["base_heads", self._features_key(data), self.base_model,
                           [item["img_path"] for item in dataset_items(data.labelled_anomalies)],
                           to_plain(c.base_training), c.topk_ratio, c.dra_hidden, c.composite, c.n_reference])

    def _train_base(self, bank: FeatureBank, generator: torch.Generator) -> list[float]:
        samples = SampleSet(normal=np.arange(bank.n_normal), anomalies=np.arange(bank.n_anomalies),
                            pseudo={"cutpaste": np.arange(bank.n_normal)} if self.base_model == "dra" else {})
        if self.base_model == "dra":  # DRA: half of the normal-index samples are CutPaste pseudo anomalies
            order = torch.randperm(bank.n_normal, generator=generator).numpy()
            half = bank.n_normal // 2
            samples = SampleSet(normal=np.sort(order[half:]), anomalies=samples.anomalies,
                                pseudo={"cutpaste": np.sort(order[:half])})
        sampler = BatchSampler(bank, samples, self.config.base_training.per_kind, generator, self.n_reference)
        return train_heads(self.net.head, sampler, self.config.base_training, generator)

    def _finish(self, bank: FeatureBank, generator: torch.Generator) -> None:
        rows = torch.randperm(bank.n_normal, generator=generator)[:self.config.n_reference]
        self.net.set_reference([features[rows].to(self.device) for features in bank.normal])
        self.net.eval()

    def optimization_state(self) -> dict[str, Any]:
        return {"training": self.training_facts}

    def load_optimization_state(self, state: dict[str, Any]) -> None:
        self.training_facts = dict(state.get("training", {}))

    # ---- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.net.reference_0.numel() == 0:
            raise RuntimeError(f"{self.name} has not been trained (no reference features)")
        self.net.eval()
        return self.net(images.to(self.device))


class DevNetMethod(OpenSetMethod):
    """DevNet (Pang et al., KDD 2019): deviation loss on top-k patch scores."""

    name = "devnet"
    config_class = DevNetMethodConfig
    base_model = "devnet"
    profiles = {"smoke": "devnet_smoke", "demo": "devnet_demo"}


class DRAMethod(OpenSetMethod):
    """DRA (Ding et al., CVPR 2022): seen, pseudo, latent-residual and composite heads."""

    name = "dra"
    config_class = DRAMethodConfig
    base_model = "dra"
    profiles = {"smoke": "dra_smoke", "demo": "dra_demo"}
