"""GLASS as an engine method: LAS + GAS training of an adaptor and a discriminator.

One training step on a batch of normal images (B, 3, H, W):

1. LAS images and masks from the batch (:class:`~mambaad_lib.synthesis.las.LocalAnomalySynthesizer`,
   foreground by the rule of ``model.foreground``);
2. adapted features of the clean and the LAS images (frozen patch features -> adaptor);
3. GAS features from the clean ones (:func:`~mambaad_lib.synthesis.gas.synthesize_gas`); the
   ascent reads the discriminator in eval mode (running BatchNorm statistics), so its passes
   neither update those statistics nor normalise the synthetic features by their own batch;
   the perturbation found is then added to the adapted features (gradients reach the adaptor);
4. one discriminator pass over [normal, GAS, LAS] features together (one set of BatchNorm
   batch statistics for all three), loss = BCE(normal, 0) + BCE(GAS, 1) + focal(LAS, mask);
5. Adam steps for the adaptor (``adaptor_lr``) and the discriminator (``discriminator_lr``).

GLASS's learning rates are in the ``model`` section; ``train.lr`` and the step decay are not
used. GLASS trains one model per class (``mambaad_lib.methods.per_class``); run as a single
unified model it is a different (multi-class) experiment. The LAS and GAS random streams are
seeded by ``model.synthesis_seed`` and saved in checkpoints, so a resumed run is identical.

Under torchrun (:meth:`GLASSMethod.distribute`) adaptor and discriminator train through
DistributedDataParallel (the discriminator's BatchNorm synchronised); LAS and GAS are
computed on the gathered global batch from the streams every process shares, and each
process keeps its rows, so the result equals the one-process run's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambaad_lib.data.transforms import denormalize
from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.methods.base import AnomalyMethod, Parallel
from mambaad_lib.methods.encoder import FrozenEncoderOptions, prepare_random_encoder
from mambaad_lib.models.glass import GLASSNet, GLASSNetConfig, focal_loss, patch_labels
from mambaad_lib.models.patch_features import PatchFeatureConfig, PatchFeatureExtractor
from mambaad_lib.synthesis.gas import GASConfig, synthesize_gas
from mambaad_lib.synthesis.las import LASConfig, build_las, estimate_foreground


FOREGROUND_RULES = ("estimate", "whole")


@dataclass
class PatchFeatureOptions(FrozenEncoderOptions):
    """Frozen-feature options shared by ``glass`` and ``nearest_neighbor`` (``model.*``)."""

    backbone: str = "wide_resnet50_2"
    layers: tuple[str, ...] = ("layer2", "layer3")
    neighbourhood: int = 3
    embed_dim: int | None = None
    map_sigma: float = 4.0

    def __post_init__(self) -> None:
        self.check_encoder_options()
        if self.map_sigma < 0:
            raise ConfigError(f"config key 'model.map_sigma': must be >= 0, got {self.map_sigma}")
        try:
            self.feature_config(resolve_weights=False)
        except ValueError as error:
            raise ConfigError(f"config section 'model': {error}") from None

    def feature_config(self, resolve_weights: bool = True) -> PatchFeatureConfig:
        weights = self.encoder_weights_argument(resolve_weights)
        return PatchFeatureConfig(self.backbone, weights, tuple(self.layers), self.neighbourhood, self.embed_dim)


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


@dataclass
class GLASSMethodConfig(PatchFeatureOptions):
    """The ``model:`` section for ``method: glass`` (GLASS defaults).

    ``texture_dir``: a DTD copy or any image folder for LAS textures (null: textures cut
    from scikit-image's bundled images). ``foreground``: ``estimate`` (objects get
    :func:`~mambaad_lib.synthesis.las.estimate_foreground`, textures the whole image by its
    border rule) or ``whole`` (always the whole image).
    """

    discriminator_hidden: int = 1024
    adaptor_lr: float = 1e-4
    discriminator_lr: float = 2e-4
    focal_gamma: float = 2.0
    texture_dir: str | None = None
    foreground: str = "estimate"
    synthesis_seed: int = 0
    las: LASConfig = field(default_factory=LASConfig)
    gas: GASConfig = field(default_factory=GASConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.foreground not in FOREGROUND_RULES:
            raise ConfigError(f"config key 'model.foreground': must be one of {list(FOREGROUND_RULES)}, "
                              f"got {self.foreground!r}")
        for key in ("adaptor_lr", "discriminator_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key 'model.{key}': must be > 0, got {getattr(self, key)}")


class GLASSMethod(AnomalyMethod):
    """GLASS: frozen patch features, linear adaptor, MLP discriminator; LAS + GAS training."""

    name = "glass"
    config_class = GLASSMethodConfig
    per_class = True  # the release trains one model per class
    profiles = {"smoke": "glass_smoke", "demo": "glass_demo"}
    distributed = True

    def __init__(self, config: GLASSMethodConfig, image_size: int, device: torch.device,
                 pretrained: bool = True) -> None:
        super().__init__(config, image_size, device, pretrained)
        self.net = GLASSNet(build_patch_features(config, self.device, pretrained),
                            GLASSNetConfig(config.discriminator_hidden)).to(self.device)
        self.las = build_las(config.texture_dir, config.las)
        self.las_rng = np.random.default_rng(config.synthesis_seed)
        self.gas_generator = torch.Generator().manual_seed(config.synthesis_seed)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.loss_forward = self.loss  # through DDP once distributed

    @property
    def network(self) -> nn.Module:
        return self.net

    def summary(self) -> str:
        c = self.config
        return (f"glass(backbone={c.backbone}, layers={list(c.layers)}, dim={self.net.features.dim}, "
                f"gas_band={c.gas.band}, textures={self.las.textures.description}, image_size={self.image_size})")

    # ---- training -----------------------------------------------------------------------
    def prepare(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        return prepare_patch_features(self.net.features, self.config, batches, self.device)

    def distribute(self, parallel: Parallel) -> None:
        self.parallel = parallel
        self.loss_forward = parallel.wrap(self.net, self.loss)

    def configure_optimization(self, train, total_steps: int) -> None:
        self.optimizers = {
            "adaptor": torch.optim.Adam(self.net.adaptor.parameters(), lr=self.config.adaptor_lr),
            "discriminator": torch.optim.Adam(self.net.discriminator.parameters(), lr=self.config.discriminator_lr),
        }

    def _foregrounds(self, clean: Tensor) -> Tensor | None:
        """(B, 1, H, W) bool foregrounds of clean images in [0, 1], or None for whole images."""
        if self.config.foreground == "whole":
            return None
        return torch.stack([estimate_foreground(image) for image in clean])[:, None]

    def _las(self, cpu_images: Tensor) -> tuple[Tensor, Tensor]:
        """LAS images (B, 3, H, W) and masks (B, 1, H, W) of this process's images: the whole
        global batch is synthesized (one stream for all processes), each keeps its rows."""
        images = self.parallel.gather(cpu_images)
        las_images, las_masks = self.las(images, self.las_rng, self._foregrounds(denormalize(images)))
        return self.parallel.local(las_images), self.parallel.local(las_masks)

    def loss(self, images: Tensor) -> tuple[Tensor, dict[str, float]]:
        """GLASS loss on normal images (B, 3, H, W) and its three terms."""
        las_images, las_masks = self._las(images.detach().cpu())  # (B,3,H,W), (B,1,H,W)

        normal, grid = self.net.adapted(images)                       # (N, D)
        las_features, _ = self.net.adapted(las_images.to(self.device))  # (N, D)
        labels = patch_labels(las_masks, grid).to(self.device)        # (N, 1)

        discriminator = self.net.discriminator
        was_training = discriminator.training
        discriminator.eval()
        anchor = normal.detach()
        # On the global batch's features, like LAS: the noise stream and the hypersphere band's
        # centre are those of the one-process run.
        gas = self.parallel.local(synthesize_gas(self.parallel.gather(anchor), discriminator, self.config.gas,
                                                 self.gas_generator))
        discriminator.train(was_training)
        gas_features = normal + (gas - anchor)

        scores = discriminator(torch.cat([normal, gas_features, las_features]))  # (3N, 1)
        normal_scores, gas_scores, las_scores = scores.split(normal.shape[0])
        terms = {
            "normal_bce": F.binary_cross_entropy(normal_scores, torch.zeros_like(normal_scores)),
            "gas_bce": F.binary_cross_entropy(gas_scores, torch.ones_like(gas_scores)),
            "las_focal": focal_loss(las_scores, labels, self.config.focal_gamma),
        }
        return sum(terms.values()), {key: float(value.detach()) for key, value in terms.items()}

    def training_step(self, images: Tensor) -> float:
        if not self.optimizers:
            raise RuntimeError("configure_optimization must be called before training_step")
        loss, _ = self.loss_forward(images)
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers.values():
            optimizer.step()
        return float(loss.detach())

    def optimization_state(self) -> dict[str, Any]:
        return {"optimizers": {key: opt.state_dict() for key, opt in self.optimizers.items()},
                "las_rng": self.las_rng.bit_generator.state,
                "gas_generator": self.gas_generator.get_state()}

    def load_optimization_state(self, state: dict[str, Any]) -> None:
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        self.las_rng.bit_generator.state = state["las_rng"]
        self.gas_generator.set_state(state["gas_generator"])

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
        inside = patch_labels(las_masks, grid).to(self.device)[:, 0] > 0.5
        gas = synthesize_gas(normal, net.discriminator, self.config.gas, torch.Generator().manual_seed(seed))
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
