"""GLASS as an engine method: LAS + GAS training of an adaptor and a discriminator.

One training step on a batch of normal images (B, 3, H, W), as the release's
``_train_discriminator`` (``glass.py`` of cqylunlun/GLASS):

1. LAS images and masks from the batch (:class:`~mambaad_lib.synthesis.las.LocalAnomalySynthesizer`;
   foreground from files when given, else by the rule of ``model.foreground``); patch labels
   are 1 where *any* pixel of a patch's cell is defect (:func:`~mambaad_lib.models.glass.patch_labels`);
2. adapted features of the clean and of the LAS images (frozen patch features -> adaptor);
3. the centre of every patch position: the adaptor applied to the training set's mean frozen
   feature at that position (computed in :meth:`GLASSMethod.prepare`, refreshed at the start
   of every epoch; equal to the release's mean of adapted features because the adaptor is
   affine); r = the 0.75 quantile of the distances of the normal patches (clean images and
   LAS cells without defect) to their centres;
4. GAS features from the clean ones (:func:`~mambaad_lib.synthesis.gas.synthesize_gas`): the
   discriminator, in training mode, scores ``[normal, GAS]`` in one pass per ascent step;
   one more pass gives BCE(normal, 0) + BCE(GAS, 1);
5. hypersphere classes only: LAS defect features pushed to [2r, 4r] from their centres;
6. a separate discriminator pass over the LAS features; the focal loss on the hardest 50%
   of LAS patches (squared error at least its median);
7. loss = BCE + focal; Adam (weight decay 1e-5) steps the adaptor, AdamW (default decay
   0.01) the discriminator at twice the learning rate.

Why the earlier version inverted (discriminator lower on LAS defects than on normal
patches). Two departures from the release, each enough to invert it on its own:

- *Patch labels.* A patch was labelled defective only when more than half of its cell was
  covered. Perlin defects are thin: on the synthetic demo about 2% of LAS cells passed that
  rule while 15-20% contain defect pixels, so most defect-touched cells (and, through the 3x3
  descriptor, their neighbours) were taught as *normal*. LAS-looking features were pushed
  below clean normal patches, which the discriminator cannot push far down without also
  pushing down their GAS neighbours (label 1).
- *One pass over [normal, GAS, LAS].* The discriminator scored all three sets in one
  BatchNorm batch, and the gradient ascent read it in eval mode (running statistics), so GAS
  was searched on a different function from the one being trained.

Measured at smoke size (4 brick images, 64 px, 20 steps, 6 seeds), mean of (output on LAS
defect cells - output on normal cells): earlier code -0.16 (inverted on 6/6 seeds); with only
the any-pixel labels -0.00 (2/6 still inverted); the release's step +0.11 (0/6); the
release's step with the old labels -0.02 (3/6), with the old single pass -0.02 (3/6). The
hardest-half selection, the descriptor and the augmentation list do not change the sign.
``tests/test_glass.py::test_smoke_training_ranks_las_defects_above_normal`` fails on the
earlier code and passes now.

Demo profile after the fix (``mambaad train --profile demo --model glass --seed N`` at commit
a8159a3: ``glass_demo``, random ResNet18 with re-estimated BatchNorm, 128 px, 20 training
images per class, 40 epochs = 80 steps per class, GAS band manifold; final models, standard
protocol). Class mean pixel AUROC 0.730 / 0.790 / 0.752 for seeds 0 / 1 / 2 (image AUROC
0.813 / 0.736 / 0.699); per class over the seeds, pixel AUROC brick 0.926-0.964, retina
0.748-0.898, grass 0.609-0.676, logo 0.548-0.691. On every class and seed the
discriminator's mean output on test-image patches that contain a defect pixel (0.47-0.67)
exceeds that on the other patches (0.42-0.48): not inverted.

The release keeps the best of its 640 epochs by image+pixel AUROC on the test set; the engine
evaluates the final model instead (never select on the test set). GLASS trains one model per
class (trait ``per_class``: the engine fans out, checkpoints and results per class, one
summary); ``glass_unified`` is our unified multi-class extension. The LAS and GAS random streams are seeded by
``model.synthesis_seed`` and saved in checkpoints, so a resumed run is identical.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambaad_lib.data.io import load_mask
from mambaad_lib.data.transforms import denormalize, transform_mask
from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.methods.base import AnomalyMethod, StepLoop, TrainingData
from mambaad_lib.methods.encoder import FrozenEncoderOptions, prepare_random_encoder
from mambaad_lib.models.glass import GLASSNet, GLASSNetConfig, focal_loss, hardest_patches, patch_labels
from mambaad_lib.models.patch_features import DESCRIPTORS, PatchFeatureConfig, PatchFeatureExtractor, flatten_patches
from mambaad_lib.synthesis.gas import (BANDS, GASConfig, clamp_offset, hypersphere_radius, release_band,
                                       synthesize_gas)
from mambaad_lib.synthesis.las import LASConfig, build_las, estimate_foreground

logger = logging.getLogger(__name__)

FOREGROUND_RULES = ("estimate", "whole")
DISTRIBUTIONS = ("table",) + BANDS
# MVTec AD classes the release resizes to 329/288 of the crop before its centre crop
# (datasets/mvtec.py), keeping more of their border out of the image.
RELEASE_LARGER_RESIZE_CLASSES = ("toothbrush", "wood")


def release_image_size(class_name: str, crop_size: int = 288) -> int:
    """The release's resize side for ``class_name`` before the ``crop_size`` centre crop:
    ``round(crop_size * 329 / 288)`` for wood and toothbrush, else ``crop_size``."""
    return round(crop_size * 329 / 288) if class_name in RELEASE_LARGER_RESIZE_CLASSES else crop_size


@dataclass
class PatchFeatureOptions(FrozenEncoderOptions):
    """Frozen-feature options shared by ``glass`` and ``nearest_neighbor`` (``model.*``).

    ``descriptor``: ``concat`` or ``release`` (:mod:`mambaad_lib.models.patch_features`);
    ``pre_embed_dim`` for ``release`` only.
    """

    backbone: str = "wide_resnet50_2"
    layers: tuple[str, ...] = ("layer2", "layer3")
    neighbourhood: int = 3
    embed_dim: int | None = None
    map_sigma: float = 4.0
    descriptor: str = "concat"
    pre_embed_dim: int | None = None

    def __post_init__(self) -> None:
        self.check_encoder_options()
        if self.map_sigma < 0:
            raise ConfigError(f"config key 'model.map_sigma': must be >= 0, got {self.map_sigma}")
        if self.descriptor not in DESCRIPTORS:
            raise ConfigError(f"config key 'model.descriptor': must be one of {list(DESCRIPTORS)}, "
                              f"got {self.descriptor!r}")
        try:
            self.feature_config(resolve_weights=False)
        except ValueError as error:
            raise ConfigError(f"config section 'model': {error}") from None

    def feature_config(self, resolve_weights: bool = True) -> PatchFeatureConfig:
        weights = self.encoder_weights_argument(resolve_weights)
        return PatchFeatureConfig(self.backbone, weights, tuple(self.layers), self.neighbourhood, self.embed_dim,
                                  self.descriptor, self.pre_embed_dim)


def build_patch_features(options: PatchFeatureOptions, device: torch.device, pretrained: bool = True
                         ) -> PatchFeatureExtractor:
    """The frozen extractor described by ``options`` on ``device``; ``pretrained=False`` skips
    loading the encoder weights (a checkpoint is about to replace them)."""
    return PatchFeatureExtractor(options.feature_config(resolve_weights=pretrained)).to(device)


def prepare_patch_features(extractor: PatchFeatureExtractor, options: PatchFeatureOptions,
                           batches: Iterable[Tensor], device: torch.device) -> dict[str, Any]:
    """Re-estimate BatchNorm statistics of a random encoder on (at most a capped number of)
    normal training batches; returns the facts for the results file's ``encoder`` entry."""
    return prepare_random_encoder(options, extractor.fit_batchnorm, batches, device)


def read_foregrounds(foreground_dir: str | os.PathLike, image_paths: Sequence[str], class_names: Sequence[str],
                     image_size: int, crop_size: int) -> Tensor:
    """Foreground masks (B, 1, crop, crop) in {0, 1} of training images, from files.

    The release's layout: ``<foreground_dir>/<class>/<image file name>`` (its ``fg_mask``
    folder), any non-zero pixel is foreground; resized and centre-cropped like the dataset's
    masks (``image_size``, ``crop_size``).
    """
    masks = []
    for image_path, class_name in zip(image_paths, class_names):
        path = Path(foreground_dir) / class_name / Path(image_path).name
        if not path.is_file():
            raise FileNotFoundError(f"foreground mask {str(path)!r} not found (model.foreground_dir expects "
                                    f"<foreground_dir>/<class>/<image file name>)")
        masks.append(transform_mask(load_mask(path), image_size, crop_size))
    return torch.stack(masks)


@dataclass
class GLASSMethodConfig(PatchFeatureOptions):
    """The ``model:`` section for ``method: glass`` (the release's defaults).

    ``texture_dir``: a DTD copy or any image folder for LAS textures (null: textures cut
    from scikit-image's bundled images). ``foreground``: ``estimate`` (objects get
    :func:`~mambaad_lib.synthesis.las.estimate_foreground`, textures the whole image by its
    border rule) or ``whole`` (always the whole image); foreground masks handed to
    :meth:`GLASSMethod.training_step` (read from ``foreground_dir`` with
    :func:`read_foregrounds`) take precedence. ``distribution``: the GAS band, ``table``
    (the release's per-class table, ``distribution_default`` for classes it does not list),
    ``manifold`` or ``hypersphere``. ``focal_quantile``: the focal loss sees the LAS patches
    whose squared error is at least this quantile (0.5: the hardest half; 0: all).
    """

    descriptor: str = "release"
    discriminator_hidden: int = 1024
    adaptor_lr: float = 1e-4
    adaptor_weight_decay: float = 1e-5
    discriminator_lr: float = 2e-4
    discriminator_weight_decay: float = 0.01
    focal_gamma: float = 2.0
    focal_quantile: float = 0.5
    distribution: str = "table"
    distribution_default: str = "manifold"
    texture_dir: str | None = None
    foreground: str = "estimate"
    foreground_dir: str | None = None
    synthesis_seed: int = 0
    las: LASConfig = field(default_factory=LASConfig)
    gas: GASConfig = field(default_factory=GASConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gas.band is not None:  # a format-1 config: its one band for every class
            self.distribution = self.gas.band
        if self.foreground not in FOREGROUND_RULES:
            raise ConfigError(f"config key 'model.foreground': must be one of {list(FOREGROUND_RULES)}, "
                              f"got {self.foreground!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(f"config key 'model.distribution': must be one of {list(DISTRIBUTIONS)}, "
                              f"got {self.distribution!r}")
        if self.distribution_default not in BANDS:
            raise ConfigError(f"config key 'model.distribution_default': must be one of {list(BANDS)}, "
                              f"got {self.distribution_default!r}")
        for key in ("adaptor_lr", "discriminator_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key 'model.{key}': must be > 0, got {getattr(self, key)}")
        for key in ("adaptor_weight_decay", "discriminator_weight_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'model.{key}': must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.focal_quantile < 1:
            raise ConfigError(f"config key 'model.focal_quantile': must be in [0, 1), got {self.focal_quantile}")
        if self.foreground_dir is not None and not Path(self.foreground_dir).is_dir():
            raise ConfigError(f"config key 'model.foreground_dir': {self.foreground_dir!r} is not a folder")


class GLASSMethod(AnomalyMethod):
    """GLASS: frozen patch features, linear adaptor, MLP discriminator; LAS + GAS training."""

    name = "glass"
    config_class = GLASSMethodConfig
    per_class = True  # the release trains one model per class
    profiles = {"smoke": "glass_smoke", "demo": "glass_demo", "paper": "glass_paper"}

    def __init__(self, config: GLASSMethodConfig, image_size: int, device: torch.device,
                 pretrained: bool = True) -> None:
        super().__init__(config, image_size, device, pretrained)
        self.net = GLASSNet(build_patch_features(config, self.device, pretrained),
                            GLASSNetConfig(config.discriminator_hidden)).to(self.device)
        self.las = build_las(config.texture_dir, config.las)
        self.las_rng = np.random.default_rng(config.synthesis_seed)
        self.gas_generator = torch.Generator().manual_seed(config.synthesis_seed)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.class_names: list[str] | None = None
        self.band = config.distribution if config.distribution in BANDS else config.distribution_default
        # Training-set mean frozen feature per patch position (h*w, D), from prepare(); the
        # centres are the adaptor's image of it, refreshed at the start of every epoch.
        self.feature_mean: Tensor | None = None
        self.center: Tensor | None = None
        self.steps_per_epoch = 1
        self.step = 0

    @property
    def network(self) -> nn.Module:
        return self.net

    def summary(self) -> str:
        c = self.config
        return (f"glass(backbone={c.backbone}, layers={list(c.layers)}, descriptor={c.descriptor}, "
                f"dim={self.net.features.dim}, gas_band={self.band}, textures={self.las.textures.description}, "
                f"image_size={self.image_size})")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gas_band": self.band}

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """The classes this model is trained on; with ``distribution: table`` they choose the GAS
        band (one class: its table entry; several: the shared entry if they agree, else
        ``distribution_default``). :meth:`fit` calls it with the training set's classes."""
        self.class_names = list(class_names)
        if self.config.distribution == "table":
            bands = {release_band(name, self.config.distribution_default) for name in self.class_names}
            self.band = bands.pop() if len(bands) == 1 else self.config.distribution_default

    # ---- training -----------------------------------------------------------------------
    def prepare(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        """BatchNorm re-estimation of a random encoder, then the training set's mean frozen
        feature at every patch position (both need every training batch: kept in memory for a
        random encoder, whose statistics must be final before the features are read)."""
        if self.config.random_encoder:
            batches = [images.cpu() for images in batches]
        facts = prepare_patch_features(self.net.features, self.config, batches, self.device)
        total, count = None, 0
        for images in batches:
            frozen = flatten_patches(self.net.frozen(images.to(self.device)))  # (B*h*w, D)
            per_image = frozen.view(images.shape[0], -1, frozen.shape[-1])    # (B, h*w, D)
            total = per_image.sum(0) if total is None else total + per_image.sum(0)
            count += images.shape[0]
        if total is None:
            raise ValueError("GLASS needs normal training images to compute its centres; none were given")
        self.feature_mean = total / count  # (h*w, D)
        return facts

    def fit(self, data: TrainingData, loop: StepLoop) -> dict[str, Any]:
        """The engine's step loop, after :meth:`set_class_names` with the training set's classes
        (they choose the GAS band under ``distribution: table``)."""
        classes = getattr(data.normal, "classes", None)
        if classes:
            self.set_class_names(classes)
        return loop.run(data.normal)

    def configure_optimization(self, train, total_steps: int) -> None:
        config = self.config
        self.optimizers = {
            "adaptor": torch.optim.Adam(self.net.adaptor.parameters(), lr=config.adaptor_lr,
                                        weight_decay=config.adaptor_weight_decay),
            "discriminator": torch.optim.AdamW(self.net.discriminator.parameters(), lr=config.discriminator_lr,
                                               weight_decay=config.discriminator_weight_decay),
        }
        self.steps_per_epoch = max(1, total_steps // max(1, train.epochs))
        self.step = 0

    def _foregrounds(self, clean: Tensor) -> Tensor | None:
        """(B, 1, H, W) bool foregrounds of clean images in [0, 1], or None for whole images."""
        if self.config.foreground == "whole":
            return None
        return torch.stack([estimate_foreground(image) for image in clean])[:, None]

    def _centers(self, n_images: int) -> Tensor:
        """Centres (B*h*w, D) of a batch of ``n_images``, refreshed at the start of every epoch."""
        if self.feature_mean is None:
            raise RuntimeError("GLASS needs prepare() on the normal training images before training "
                               "(it computes the centre of every patch position)")
        if self.center is None or self.step % self.steps_per_epoch == 0:
            with torch.no_grad():
                self.center = self.net.adaptor(self.feature_mean.to(self.device))  # (h*w, D)
        return self.center.repeat(n_images, 1)

    def _warn_about_unused_options(self, foregrounds: Tensor | None) -> None:
        """Say so when a configured option cannot take effect (logged at the first step)."""
        if self.class_names is None and self.config.distribution == "table":
            logger.warning("GLASS: class names were not set (set_class_names); distribution 'table' uses "
                           "distribution_default=%s", self.config.distribution_default)
        if foregrounds is None and self.config.foreground_dir is not None:
            logger.warning("GLASS: model.foreground_dir is set but no foreground masks were handed to "
                           "training_step; LAS uses the '%s' rule", self.config.foreground)

    def loss(self, images: Tensor, foregrounds: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """GLASS loss on normal images (B, 3, H, W) and its terms; ``foregrounds`` (B, 1, H, W)
        restrict the LAS masks (default: ``model.foreground``'s rule)."""
        if self.step == 0:
            self._warn_about_unused_options(foregrounds)
        cpu_images = images.detach().cpu()
        if foregrounds is None:
            foregrounds = self._foregrounds(denormalize(cpu_images))
        las_images, las_masks = self.las(cpu_images, self.las_rng, foregrounds)  # (B,3,H,W), (B,1,H,W)

        normal, grid = self.net.adapted(images)                          # (N, D)
        las_features, _ = self.net.adapted(las_images.to(self.device))   # (N, D)
        labels = patch_labels(las_masks, grid).to(self.device)           # (N, 1)
        defect = labels[:, 0] > 0.5
        centers = self._centers(images.shape[0])                         # (N, D)
        radius = hypersphere_radius(torch.cat([las_features[~defect], normal]),
                                    torch.cat([centers[~defect], centers]), self.config.gas.radius_quantile)

        discriminator = self.net.discriminator
        gas = synthesize_gas(normal, discriminator, self.config.gas, self.gas_generator, self.band, centers, radius)
        scores = discriminator(torch.cat([normal, gas]))  # (2N, 1): BatchNorm over [normal, GAS]
        normal_scores, gas_scores = scores.split(normal.shape[0])

        if self.band == "hypersphere" and defect.any():
            low, high = self.config.gas.las_shell
            pushed = clamp_offset(las_features[defect], centers[defect], low * radius, high * radius)
            las_features = las_features.index_put((defect.nonzero()[:, 0],), pushed)
        las_scores = discriminator(las_features)  # (N, 1): its own pass, as the release
        hard = hardest_patches(las_scores, labels, self.config.focal_quantile)[:, 0]
        terms = {
            "normal_bce": F.binary_cross_entropy(normal_scores, torch.zeros_like(normal_scores)),
            "gas_bce": F.binary_cross_entropy(gas_scores, torch.ones_like(gas_scores)),
            "las_focal": focal_loss(las_scores[hard], labels[hard], self.config.focal_gamma),
        }
        return sum(terms.values()), {key: float(value.detach()) for key, value in terms.items()}

    def training_step(self, images: Tensor, foregrounds: Tensor | None = None) -> float:
        """One step on normal images (B, 3, H, W); ``foregrounds``: optional (B, 1, H, W) masks."""
        if not self.optimizers:
            raise RuntimeError("configure_optimization must be called before training_step")
        loss, _ = self.loss(images, foregrounds)
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers.values():
            optimizer.step()
        self.step += 1
        return float(loss.detach())

    def optimization_state(self) -> dict[str, Any]:
        return {"optimizers": {key: opt.state_dict() for key, opt in self.optimizers.items()},
                "las_rng": self.las_rng.bit_generator.state,
                "gas_generator": self.gas_generator.get_state(),
                "feature_mean": self.feature_mean, "center": self.center, "step": self.step,
                "band": self.band, "class_names": self.class_names}

    def load_optimization_state(self, state: dict[str, Any]) -> None:
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        self.las_rng.bit_generator.state = state["las_rng"]
        self.gas_generator.set_state(state["gas_generator"])
        # Checkpoints are read onto the CPU; the centres live on the method's device.
        self.feature_mean, self.center = (None if state[key] is None else state[key].to(self.device)
                                          for key in ("feature_mean", "center"))
        self.step = state["step"]
        self.band, self.class_names = state["band"], state["class_names"]

    # ---- inference ----------------------------------------------------------------------
    def feature_sets(self, images: Tensor, seed: int = 0) -> dict[str, Tensor]:
        """GLASS's feature space on normal images (B, 3, H, W): their adapted patch features
        ``normal`` (N, D), the ``GAS`` features the trained discriminator's ascent makes from
        them, and the adapted ``LAS (inside defects)`` patches of LAS versions of the images
        that fall inside the synthesized defects (seeded by ``seed``)."""
        net = self.net.eval()
        cpu_images = images.detach().cpu()
        las_images, las_masks = self.las(cpu_images, np.random.default_rng(seed),
                                         self._foregrounds(denormalize(cpu_images)))
        with torch.no_grad():
            normal, grid = net.adapted(images.to(self.device))        # (N, D)
            las_all, _ = net.adapted(las_images.to(self.device))      # (N, D)
            # Per-position centres when training computed them, else project_to_band's batch mean.
            centers = None if self.feature_mean is None else self._centers(images.shape[0])
        inside = patch_labels(las_masks, grid).to(self.device)[:, 0] > 0.5
        gas = synthesize_gas(normal, net.discriminator, self.config.gas, torch.Generator().manual_seed(seed),
                             self.band, centers)
        return {"normal": normal, "GAS": gas.detach(), "LAS (inside defects)": las_all[inside]}

    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self.net.eval()
        return self.net.predict(images.to(self.device), self.config.map_sigma)  # (B,1,H,W), (B,)


class GLASSUnifiedMethod(GLASSMethod):
    """Our extension: one GLASS model for all classes at once (the unified, multi-class
    setting of MambaAD), not the release's per-class training."""

    name = "glass_unified"
    per_class = False
