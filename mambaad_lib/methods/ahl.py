"""DevNet, DRA and AHL as engine methods (``method: devnet | dra | ahl``), open-set supervised.

These detectors learn from the normal training images **and** M labelled anomalies
(:mod:`mambaad_lib.data.openset`), so they are trained by :func:`train_openset` (one model per
class) rather than by the engine's unsupervised :class:`~mambaad_lib.engine.trainer.Trainer`;
``predict``, checkpoints and the results schema are the engine's.

One run, for one class:

1. the open-set split of the class's test images (labelled anomalies out of the test set);
2. the frozen encoder (random encoders get their BatchNorm statistics re-estimated on the
   normal training images) caches two-scale feature maps of the normal training images,
   of one DRAEM, CutPaste and CutMix version of each, and of the labelled anomalies;
3. DevNet / DRA: their heads train on batches of the cache (``base_training``);
   AHL: the base heads train first (``init_from_base``, the paper's plug-in reading; the
   released code starts g from random weights), then HADG builds the episodes and CDL trains
   the unified model g (:mod:`mambaad_lib.models.ahl`);
4. the model after the last epoch (no selection on the test set) scores the test split.

Departures from the paper, by necessity: the encoder is frozen (the papers fine-tune the
base model's ResNet-18 end to end and cache its ``layer4`` maps at 448/224 px); features are
``feature_level`` of the library's frozen encoders (default ``layer3``, stride 16, fitting
CPU-sized images); anomaly maps are the heads' 1x1-convolution maps (the papers report image
level only), so pixel metrics are a by-product, not a claim of the papers.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from mambaad_lib.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mambaad_lib.engine.config import ConfigError, RunConfig, config_to_dict
from mambaad_lib.methods.base import AnomalyMethod
from mambaad_lib.methods.mambaad import check_encoder_options, encoder_weights_argument, prepare_random_encoder
from mambaad_lib.models.ahl import CDLConfig, collaborative_training
from mambaad_lib.models.base_training import BaseTrainingConfig, train_heads
from mambaad_lib.models.devnet import build_devnet
from mambaad_lib.models.dra import COMPOSITE_HEADS, build_dra
from mambaad_lib.models.encoders import build_encoder, reestimate_batchnorm
from mambaad_lib.models.hadg import HADGConfig, build_episodes, cluster_normals
from mambaad_lib.models.openset_features import BatchSampler, FeatureBank, MultiScaleFeatures, SampleSet
from mambaad_lib.models.pseudo_anomalies import GENERATORS, pseudo_anomalies
from mambaad_lib.data.openset import OpenSetConfig, OpenSetSplit, split_openset
from mambaad_lib.synthesis.textures import resolve_texture_source

logger = logging.getLogger(__name__)

BASE_MODELS = ("devnet", "dra")


# ---- configuration ---------------------------------------------------------------------


@dataclass
class OpenSetMethodConfig:
    """``model:`` options shared by devnet, dra and ahl.

    ``encoder_weights``: imagenet, none (random; BatchNorm re-estimated on at most
    ``bn_reestimate_images`` normal images) or a local file. ``feature_level``: 0/1/2 =
    layer1/2/3 of the frozen encoder. ``pseudo_rotation``: CutPaste/CutMix rotation range in
    degrees (180 in the released code). ``texture_dir``: DRAEM textures (a DTD folder;
    null = textures bundled with scikit-image).
    """

    backbone: str = "resnet18"
    encoder_weights: str = "imagenet"
    bn_reestimate_images: int | None = None
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
        check_encoder_options(self)
        if self.composite not in COMPOSITE_HEADS:
            raise ConfigError(f"config key 'model.composite': must be one of {list(COMPOSITE_HEADS)}, "
                              f"got {self.composite!r}")
        if not 0 < self.topk_ratio <= 1:
            raise ConfigError(f"config key 'model.topk_ratio': must be in (0, 1], got {self.topk_ratio}")
        if self.n_reference < 1:
            raise ConfigError(f"config key 'model.n_reference': must be >= 1, got {self.n_reference}")

    @property
    def random_encoder(self) -> bool:
        return self.encoder_weights.lower() == "none"


@dataclass
class DevNetMethodConfig(OpenSetMethodConfig):
    """DevNet: 50 epochs of 20 batches of 24 normal + 24 labelled anomalies."""

    base_training: BaseTrainingConfig = field(default_factory=lambda: BaseTrainingConfig(epochs=50))


@dataclass
class DRAMethodConfig(OpenSetMethodConfig):
    """DRA: 30 epochs of 20 batches of 16 normal + 16 CutPaste pseudo + 16 labelled anomalies."""


@dataclass
class AHLMethodConfig(OpenSetMethodConfig):
    """AHL on ``base`` (dra or devnet). ``release_compat``: follow the released code where it
    departs from the paper (cluster-prefix bug, anomaly/generator sharing, psi error set and
    weight use, delayed Adam step, zero-initialised composite head, random init of g);
    ``init_from_base``: start g from the trained base heads (ignored with release_compat)."""

    base: str = "dra"
    release_compat: bool = False
    init_from_base: bool = True
    hadg: HADGConfig = field(default_factory=HADGConfig)
    cdl: CDLConfig = field(default_factory=CDLConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base not in BASE_MODELS:
            raise ConfigError(f"config key 'model.base': must be one of {list(BASE_MODELS)}, got {self.base!r}")


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


# ---- the method ------------------------------------------------------------------------


class OpenSetMethod(AnomalyMethod):
    """Common part of devnet, dra and ahl: encoder, feature cache, prediction, checkpoints."""

    @staticmethod
    def run_training(config: RunConfig, run_id: str | None = None, progress: bool = True):
        """The engine's ``train`` delegates here: open-set methods train on labelled anomalies."""
        return train_openset(config, run_id=run_id, progress=progress)

    def __init__(self, config: OpenSetMethodConfig, image_size: int, device: torch.device,
                 pretrained: bool = True) -> None:
        super().__init__(config, image_size, device, pretrained)
        weights = encoder_weights_argument(config.encoder_weights) if pretrained else None
        features = MultiScaleFeatures(build_encoder(config.backbone, weights), config.feature_level, config.n_scales)
        self.net = OpenSetNet(features, self.build_head(features.channels)).to(self.device)
        self.training_facts: dict[str, Any] = {}

    @property
    def base_model(self) -> str:
        raise NotImplementedError

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
        trainable = sum(p.numel() for p in self.net.head.parameters())
        total = sum(p.numel() for p in self.net.parameters())
        return {"parameters": {"total": total, "trainable": trainable, "frozen": total - trainable},
                "architecture": self.summary(), "training": self.training_facts}

    def load_state_dict(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        for scale in range(self.net.features.n_scales):  # reference shapes depend on the image size
            key = f"reference_{scale}"
            if key in state:
                setattr(self.net, key, torch.zeros_like(state[key], device=self.device))
        super().load_state_dict(state, source)

    # ---- preparation and feature cache ------------------------------------------------
    def prepare(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        """BatchNorm re-estimation of a random encoder on (capped) normal batches."""
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

    # ---- training on cached features --------------------------------------------------
    def fit_features(self, bank: FeatureBank, seed: int, progress: bool = False,
                     base_state: dict[str, Tensor] | None = None) -> dict[str, Any]:
        """Train the heads on the cache; sets the inference reference; returns facts for results."""
        raise NotImplementedError

    def _train_base(self, bank: FeatureBank, generator: torch.Generator, progress: bool) -> list[float]:
        samples = SampleSet(normal=np.arange(bank.n_normal), anomalies=np.arange(bank.n_anomalies),
                            pseudo={"cutpaste": np.arange(bank.n_normal)} if self.base_model == "dra" else {})
        if self.base_model == "dra":  # DRA: half of the normal-index samples are CutPaste pseudo anomalies
            order = torch.randperm(bank.n_normal, generator=generator).numpy()
            half = bank.n_normal // 2
            samples = SampleSet(normal=np.sort(order[half:]), anomalies=samples.anomalies,
                                pseudo={"cutpaste": np.sort(order[:half])})
        sampler = BatchSampler(bank, samples, self.config.base_training.per_kind, generator, self.n_reference)
        return train_heads(self.net.head, sampler, self.config.base_training, generator, progress)

    def _finish(self, bank: FeatureBank, generator: torch.Generator) -> None:
        rows = torch.randperm(bank.n_normal, generator=generator)[:self.config.n_reference]
        self.net.set_reference([features[rows].to(self.device) for features in bank.normal])
        self.net.eval()

    # ---- engine interface -------------------------------------------------------------
    def configure_optimization(self, train, total_steps: int) -> None:
        raise ConfigError(f"method {self.name!r} is open-set supervised: it trains on labelled anomalies "
                          "with mambaad_lib.methods.ahl.train_openset, not with the unsupervised trainer")

    def training_step(self, images: Tensor) -> float:
        raise ConfigError(f"method {self.name!r} has no unsupervised training step; use train_openset")

    def optimization_state(self) -> dict[str, Any]:
        return {"training": self.training_facts}

    def load_optimization_state(self, state: dict[str, Any]) -> None:
        self.training_facts = dict(state.get("training", {}))

    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.net.reference_0.numel() == 0:
            raise RuntimeError(f"{self.name} has not been trained (no reference features); run train_openset")
        self.net.eval()
        return self.net(images.to(self.device))


class DevNetMethod(OpenSetMethod):
    name = "devnet"
    config_class = DevNetMethodConfig
    base_model = "devnet"

    def fit_features(self, bank: FeatureBank, seed: int, progress: bool = False,
                     base_state: dict[str, Tensor] | None = None) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(seed)
        losses = self._train_base(bank, generator, progress)
        self._finish(bank, generator)
        self.training_facts = {"base_epoch_losses": losses, "model_selection": "last epoch"}
        return self.training_facts


class DRAMethod(DevNetMethod):
    name = "dra"
    config_class = DRAMethodConfig
    base_model = "dra"


class AHLMethod(OpenSetMethod):
    name = "ahl"
    config_class = AHLMethodConfig

    def __init__(self, config: AHLMethodConfig, image_size: int, device: torch.device,
                 pretrained: bool = True) -> None:
        if config.release_compat and config.composite != "ahl_release":
            config = dataclasses.replace(config, composite="ahl_release")
        super().__init__(config, image_size, device, pretrained)

    @property
    def base_model(self) -> str:
        return self.config.base

    def fit_features(self, bank: FeatureBank, seed: int, progress: bool = False,
                     base_state: dict[str, Tensor] | None = None) -> dict[str, Any]:
        """``base_state``: trained base heads to start g from (else they are trained here when
        ``init_from_base``)."""
        c = self.config
        generator = torch.Generator().manual_seed(seed)
        facts: dict[str, Any] = {"protocol": "released-code behaviour" if c.release_compat else "paper protocol",
                                 "model_selection": "last epoch"}
        if c.init_from_base and not c.release_compat:
            if base_state is not None:
                self.net.head.load_state_dict(base_state)
                facts["init"] = "trained base heads (given)"
            else:
                facts["base_epoch_losses"] = self._train_base(bank, generator, progress)
                facts["init"] = "trained base heads"
        else:
            facts["init"] = "random"
        scale0 = bank.normal[0]  # (N, C, h, w)
        inputs = scale0.flatten(1) if c.hadg.cluster_on == "flattened" else scale0.mean(dim=(2, 3))
        clusters = cluster_normals(inputs.numpy(), c.hadg.n_clusters, seed)
        episodes = build_episodes(clusters, bank.n_anomalies, c.hadg, np.random.default_rng([seed, 0xE915]),
                                  c.release_compat)
        history = collaborative_training(self.net.head, bank, episodes, c.cdl, generator, self.n_reference,
                                         c.release_compat, progress)
        self._finish(bank, generator)
        facts.update({"clustered_on": c.hadg.cluster_on, "cluster_sizes": [len(members) for members in clusters], "n_episodes": len(episodes),
                      "episode_generators": [list(e.generators) for e in episodes],
                      "cdl_epoch_losses": history.epoch_losses, "episode_weights": history.episode_weights,
                      "psi_losses": history.psi_losses})
        self.training_facts = facts
        return facts


# ---- runs --------------------------------------------------------------------------------


def _items(dataset: Dataset) -> list[dict[str, Any]]:
    """Meta items of an AnomalyDataset or a Subset of one, in dataset order."""
    if isinstance(dataset, Subset):
        inner = _items(dataset.dataset)
        return [inner[index] for index in dataset.indices]
    return list(dataset.items)


def _stack_images(dataset: Dataset, batch_size: int) -> Tensor:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    return torch.cat([batch["image"] for batch in loader])


@dataclass
class OpenSetData:
    """A class's open-set training and evaluation data."""

    cls_name: str
    train: Dataset
    labelled: Dataset
    test: Dataset
    split: OpenSetSplit


def openset_data(config: RunConfig) -> OpenSetData:
    """Build the datasets of a one-class run and apply the open-set split to its test split.

    Raises:
        ValueError: more than one class selected, or a split that cannot be drawn.
    """
    from mambaad_lib.engine.runner import build_datasets

    if not isinstance(config.model, OpenSetMethodConfig):
        raise ConfigError(f"method {config.method!r} is not an open-set method ({', '.join(OPENSET_METHODS)})")
    datasets = build_datasets(config)
    items = _items(datasets["test"])
    classes = sorted({item["cls_name"] for item in items})
    if len(classes) != 1:
        raise ValueError(f"open-set methods train one model per class; data.classes selects {classes}. "
                         "Set data.classes to one class or use train_openset_per_class")
    split = split_openset(items, config.model.openset)
    return OpenSetData(classes[0], datasets["train"], Subset(datasets["test"], list(split.labelled)),
                       Subset(datasets["test"], list(split.test)), split)


def _cache_key(config: RunConfig, cls_name: str) -> str:
    m = config.model
    return json.dumps([config.data.root, config.data.name, cls_name, config.data.image_size, config.data.crop_size,
                       config.data.train_per_class, config.seed, m.backbone, m.encoder_weights,
                       m.bn_reestimate_images, m.feature_level, m.n_scales, m.pseudo_rotation, m.texture_dir])


def train_openset(config: RunConfig, run_id: str | None = None, progress: bool = True,
                  feature_cache: dict[str, Any] | None = None,
                  base_state: dict[str, Tensor] | None = None):
    """Train and evaluate one open-set method on one class; write checkpoint and results.

    Args:
        config: a run config with ``method`` devnet, dra or ahl and one class selected.
        run_id: results/checkpoint name (default ``<method>-<class>-<setting>-seed<seed>``).
        feature_cache: a dict shared by runs of the same seed and data, so the normal and
            pseudo-anomaly features are computed once (the encoder is re-prepared each run).
        base_state: AHL only: trained base heads to initialise g (e.g. the DRA run's).
    Returns:
        a :class:`~mambaad_lib.engine.runner.RunOutcome`; its record has an ``openset`` entry.
    """
    from mambaad_lib.engine.checkpoint import FINAL, save_checkpoint
    from mambaad_lib.engine.evaluate import compute_protocol_metrics, predict_dataset
    from mambaad_lib.utils.files import ensure_writable_dir
    from mambaad_lib.engine.results import new_record, results_path, write_results
    from mambaad_lib.engine.runner import RunOutcome, resolve_device
    from mambaad_lib.engine.seeding import seed_everything, set_deterministic
    from mambaad_lib.methods import get_method

    started = time.perf_counter()
    device = resolve_device(config.device)
    data = openset_data(config)
    setting = config.model.openset
    run_id = run_id or (f"{config.method}-{data.cls_name}-{setting.setting}"
                        f"{'-' + setting.known_type if setting.known_type else ''}-seed{config.seed}")
    results_file = results_path(config.paths.results_dir, config.experiment, config.profile, run_id)
    ensure_writable_dir(results_file.parent, "results (--results-dir)")
    run_dir = ensure_writable_dir(Path(config.paths.runs_dir) / config.experiment / run_id, "runs (--runs-dir)")

    seed_everything(config.seed)
    set_deterministic(config.train.deterministic)
    method = get_method(config.method, config.model, config.data.crop_size, device)
    normals = _stack_images(data.train, config.eval.batch_size)
    encoder_facts = method.prepare(normals[start:start + config.eval.batch_size]
                                   for start in range(0, len(normals), config.eval.batch_size))
    key = _cache_key(config, data.cls_name)
    cached = None if feature_cache is None else feature_cache.get(key)
    if cached is None:
        cached = method.encode_normals_and_pseudo(normals, config.seed)
        if feature_cache is not None:
            feature_cache[key] = cached
    bank = FeatureBank(cached[0], cached[1], method.encode(_stack_images(data.labelled, config.eval.batch_size)))
    fit_started = time.perf_counter()
    facts = method.fit_features(bank, config.seed, progress, base_state=base_state)
    fit_seconds = time.perf_counter() - fit_started
    checkpoint = save_checkpoint(run_dir / FINAL, method=method.name, config=config_to_dict(config),
                                 model=method.state_dict(), optimization=method.optimization_state(),
                                 finished=True, extras={"prepare": encoder_facts})

    predictions = predict_dataset(method, data.test, config.eval.batch_size, progress=progress)
    metrics = compute_protocol_metrics(predictions, config.eval.protocols)
    record = new_record(
        run_id=run_id, experiment=config.experiment, profile=config.profile, kind="train", method=config.method,
        seed=config.seed, device=device.type, scan_backend=None, config=config_to_dict(config),
        encoder=encoder_facts,
        data={"root": config.data.root, "name": config.data.name, "classes": [data.cls_name],
              "n_train": len(data.train), "n_test": len(data.test)},
        openset={**data.split.summary(), "labelled_paths": [item["img_path"] for item in _items(data.labelled)]},
        model=method.describe(),
        training={"wall_time_s": fit_seconds, "checkpoint": str(checkpoint), **facts},
        evaluation={**predictions.timing, "checkpoint": str(checkpoint)},
        metrics=metrics, metrics_untrained=None, examples=[], wall_time_s=time.perf_counter() - started)
    write_results(results_file, record)
    logger.info("results written to %s", results_file)
    return RunOutcome(results_file, run_dir, record)


def train_openset_per_class(config: RunConfig, progress: bool = True) -> list:
    """:func:`train_openset` for every configured class (one model each), in class order."""
    from mambaad_lib.methods.per_class import _for_classes, configured_classes

    return [train_openset(_for_classes(config, [cls_name]), progress=progress) for cls_name in configured_classes(config)]


OPENSET_METHODS = ("devnet", "dra", "ahl")


# ---- the experiment grid of notebook 08 -----------------------------------------------------

GRID_METHODS = {"DevNet": ("devnet", None), "DRA": ("dra", None),
                "AHL (DevNet)": ("ahl", "devnet"), "AHL (DRA)": ("ahl", "dra")}
AHL_ONLY_KEYS = ("base", "release_compat", "init_from_base", "hadg", "cdl")


def _method_config(profile: str | Path, method: str, base: str | None, overrides: dict[str, Any]) -> RunConfig:
    """The profile's config for ``method`` (AHL-only model keys dropped for devnet/dra)."""
    from mambaad_lib.engine.config import load_config, read_yaml, resolve_profile

    values = read_yaml(resolve_profile(str(profile)))
    values.setdefault("profile", Path(str(profile)).stem)
    values["method"] = method
    model = dict(values.get("model") or {})
    if method != "ahl":
        model = {key: value for key, value in model.items() if key not in AHL_ONLY_KEYS}
    else:
        model["base"] = base
    values["model"] = model
    return load_config(None, overrides, base=values)


def openset_grid(profile: str | Path, classes: list[str], settings: list[dict[str, Any]], seeds: list[int],
                 methods: list[str] | None = None, overrides: dict[str, Any] | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate every (setting, class, seed, method) of the grid; one results file each.

    Args:
        profile: an ``ahl_*`` profile (its ``model`` section holds the AHL options too).
        classes: classes to run (one model per class).
        settings: ``model.openset`` dicts, e.g. ``{"setting": "hard", "n_anomalies": 10,
            "known_type": "stain"}``.
        seeds: run seeds (encoder init, pseudo anomalies, training); the split seed stays
            ``openset.seed``.
        methods: labels of :data:`GRID_METHODS` (default all four).
        overrides: dotted config keys applied to every run (e.g. ``paths.results_dir``).
    Returns:
        one row per run: label, method, setting, known_type, cls_name, seed, i_auroc, i_ap,
        p_auroc, results_file.

    AHL runs start g from the trained heads of the same grid cell's DevNet/DRA run when that
    run is in the grid (the heads AHL would otherwise retrain with the same recipe).
    """
    labels = methods or list(GRID_METHODS)
    unknown = [label for label in labels if label not in GRID_METHODS]
    if unknown:
        raise ValueError(f"unknown grid methods {unknown}; known: {list(GRID_METHODS)}")
    rows = []
    for seed in seeds:
        cache: dict[str, Any] = {}
        for cls_name in classes:
            for setting in settings:
                trained_heads: dict[str, dict[str, Tensor]] = {}
                for label in labels:
                    method, base = GRID_METHODS[label]
                    cell = {**dict(overrides or {}), "seed": seed, "data.classes": [cls_name],
                            **{f"model.openset.{key}": value for key, value in setting.items()}}
                    config = _method_config(profile, method, base, cell)
                    outcome = train_openset(config, progress=progress, feature_cache=cache,
                                            base_state=trained_heads.get(base) if method == "ahl" else None)
                    if method != "ahl":
                        trained_heads[method] = _head_state(outcome)
                    mean = outcome.record["metrics"]["standard"]["mean"]
                    rows.append({"label": label, "method": method, "setting": setting["setting"],
                                 "known_type": setting.get("known_type"), "cls_name": cls_name, "seed": seed,
                                 "i_auroc": mean["i_auroc"], "i_ap": mean["i_ap"], "p_auroc": mean["p_auroc"],
                                 "results_file": str(outcome.results_file)})
    return rows


def _head_state(outcome) -> dict[str, Tensor]:
    from mambaad_lib.engine.checkpoint import load_checkpoint

    state = load_checkpoint(outcome.record["training"]["checkpoint"])["model"]
    return {key.removeprefix("head."): value for key, value in state.items() if key.startswith("head.")}


def openset_rows(results_dir: str | Path) -> list[dict[str, Any]]:
    """Rows (as :func:`openset_grid` returns) of every open-set results file under ``results_dir``."""
    from mambaad_lib.engine.results import load_results

    labels = {value: key for key, value in GRID_METHODS.items()}
    rows = []
    for record in load_results(results_dir):
        if "openset" not in record:
            continue
        model = record["config"]["model"]
        mean = record["metrics"]["standard"]["mean"]
        rows.append({"label": labels[(record["method"], model.get("base") if record["method"] == "ahl" else None)],
                     "method": record["method"], "setting": record["openset"]["setting"],
                     "known_type": record["openset"]["known_type"], "cls_name": record["data"]["classes"][0],
                     "seed": record["seed"], "i_auroc": mean["i_auroc"], "i_ap": mean["i_ap"],
                     "p_auroc": mean["p_auroc"], "results_file": record["_path"]})
    return rows


def summarize_openset(rows: list[dict[str, Any]], metric: str = "i_auroc") -> list[dict[str, Any]]:
    """Mean and std over seeds of the per-seed average (over classes and known types) of ``metric``,
    per (setting, method label): the papers' "mean over classes, mean +- std over three runs"."""
    groups: dict[tuple[str, str], dict[int, list[float]]] = {}
    for row in rows:
        groups.setdefault((row["setting"], row["label"]), {}).setdefault(row["seed"], []).append(row[metric])
    out = []
    for (setting, label), per_seed in sorted(groups.items()):
        values = np.array([np.mean(v) for v in per_seed.values()])
        out.append({"setting": setting, "label": label, f"{metric}_mean": float(values.mean()),
                    f"{metric}_std": float(values.std(ddof=0)), "n_seeds": len(values),
                    "n_runs": sum(len(v) for v in per_seed.values())})
    return out
