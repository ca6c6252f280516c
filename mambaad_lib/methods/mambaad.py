"""MambaAD as an engine method: release training protocol around ``build_mambaad``.

Optimisation (mambaad_facts.md section 3): AdamW with the learning rate scaled by the batch
size, weight decay only on weight matrices and kernels (none on 1-D parameters and biases),
one step decay at a fraction of training, gradient-norm clipping, loss = sum over the three
scales of MSE(encoder feature, decoder feature). The frozen encoder stays in eval mode.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from mambaad_lib.utils.errors import ConfigError
from mambaad_lib.methods.base import AnomalyMethod

logger = logging.getLogger(__name__)

ENCODER_WEIGHT_CHOICES = ("imagenet", "none")
RANDOM_ENCODER_WARNING = (
    "RANDOM ENCODER: no pretrained weights were used (encoder_weights=none); BatchNorm statistics of "
    "the random encoder were re-estimated on the normal training images. Numbers from this run check "
    "that the pipeline learns; they are NOT comparable with the paper's ImageNet-pretrained results.")


@dataclass
class MambaADMethodConfig:
    """The ``model:`` section for ``method: mambaad`` (arguments of ``build_mambaad``).

    ``encoder_weights``: ``imagenet`` (torchvision weights, needs network or a cached file),
    ``none`` (random encoder, BatchNorm re-estimated on the training images) or a path to a
    local weights file. ``bn_reestimate_images`` caps the images used for that re-estimation
    (null: every training image).
    """

    backbone: str = "resnet34"
    depths: tuple[int, ...] = (3, 4, 6, 3)
    scan: str | dict[str, int] = "hilbert"  # a method, or method -> direction count (Table 3's mixed rows)
    directions: int = 8
    hss_per_lss: int | None = None
    lss_residual: bool = True
    local_kernels: tuple[int, ...] = (5, 7)
    local_conv: str = "conv1x1+dw"
    encoder_weights: str = "imagenet"
    drop_path_rate: float = 0.2
    scan_backend: str = "auto"
    bn_reestimate_images: int | None = None

    def __post_init__(self) -> None:
        check_encoder_options(self)

    @property
    def random_encoder(self) -> bool:
        return self.encoder_weights.lower() == "none"


def encoder_weights_argument(value: str) -> str | None:
    """``none`` -> None (random encoder); ``imagenet`` and file paths pass through."""
    return None if value.lower() == "none" else value

def check_encoder_options(options: Any) -> None:
    """Validate the ``model.encoder_weights`` / ``model.bn_reestimate_images`` keys every
    frozen-encoder method shares; raises :class:`ConfigError` naming the key."""
    if not options.encoder_weights:
        raise ConfigError("config key 'model.encoder_weights': expected imagenet, none or a file path")
    if getattr(options, "bn_reestimate_images", None) is not None and options.bn_reestimate_images < 1:
        raise ConfigError(f"config key 'model.bn_reestimate_images': must be >= 1 or null, "
                          f"got {options.bn_reestimate_images}")


def prepare_random_encoder(options: Any, reestimate: Callable[[Iterable[Tensor]], int],
                           batches: Iterable[Tensor], device: torch.device) -> dict[str, Any]:
    """BatchNorm re-estimation of a random encoder, shared by every method with a frozen encoder.

    Args:
        options: a method config with ``random_encoder``, ``encoder_weights`` and
            ``bn_reestimate_images`` (cap on the number of images; None = all).
        reestimate: the network's re-estimation function, called with (B,3,H,W) batches;
            returns the number of images it used.
        batches: normal training batches.
    Returns:
        the facts for the results file (and logs the random-encoder warning loudly).
    """
    if not options.random_encoder:
        return {"encoder_weights": options.encoder_weights, "batchnorm_reestimated_on": 0}
    cap = options.bn_reestimate_images

    def capped() -> Iterable[Tensor]:
        seen = 0
        for images in batches:
            if cap is not None and seen >= cap:
                return
            images = images if cap is None else images[: cap - seen]
            seen += images.shape[0]
            yield images.to(device)

    n_images = reestimate(capped())
    logger.warning("%s (re-estimated on %d images)", RANDOM_ENCODER_WARNING, n_images)
    return {"encoder_weights": "none (random)", "batchnorm_reestimated_on": n_images,
            "warning": RANDOM_ENCODER_WARNING}


def release_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed (>= 2-D weights) and undecayed (1-D, biases)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class MambaADMethod(AnomalyMethod):
    """MambaAD (frozen CNN encoder, MFF_OCE bottleneck, LSS/HSS Mamba decoder)."""

    name = "mambaad"
    config_class = MambaADMethodConfig

    def __init__(self, config: MambaADMethodConfig, image_size: int, device: torch.device,
                 pretrained: bool = True) -> None:
        super().__init__(config, image_size, device, pretrained)
        weights = encoder_weights_argument(config.encoder_weights) if pretrained else None
        try:
            model = self.build_model(weights)
        except RuntimeError as error:
            if weights != "imagenet":
                raise
            raise RuntimeError(f"{error}\nOn the command line: --encoder-weights /path/to/weights.pth "
                               "(or --encoder-weights none for an offline random-encoder check).") from error
        self.model = model.to(self.device)
        from mambaad_lib.ops import resolve_backend

        self._scan_backend = resolve_backend(config.scan_backend, self.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.grad_clip_norm: float | None = None

    def build_model(self, encoder_weights: str | None) -> nn.Module:
        """The network this method trains, for ``self.config`` at ``self.image_size``."""
        from mambaad_lib.models import build_mambaad

        c = self.config
        return build_mambaad(
            backbone=c.backbone, depths=tuple(c.depths), scan=c.scan, directions=c.directions,
            hss_per_lss=c.hss_per_lss, lss_residual=c.lss_residual, local_kernels=tuple(c.local_kernels),
            local_conv=c.local_conv, encoder_weights=encoder_weights, image_size=self.image_size,
            drop_path_rate=c.drop_path_rate, scan_backend=c.scan_backend)

    @property
    def network(self) -> nn.Module:
        return self.model

    @property
    def scan_backend(self) -> str:
        return self._scan_backend

    def summary(self) -> str:
        c = self.config
        return (f"mambaad(backbone={c.backbone}, depths={list(c.depths)}, scan={c.scan}x{c.directions}, "
                f"local_kernels={list(c.local_kernels)}, image_size={self.image_size})")

    def describe(self) -> dict[str, Any]:
        from mambaad_lib.models.costs import count_flops, count_parameters

        return {"parameters": count_parameters(self.model),
                "flops": count_flops(self.model, self.image_size),
                "architecture": self.summary()}

    # ---- training -----------------------------------------------------------------------
    def prepare(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        """Re-estimate the encoder's BatchNorm statistics when the encoder is random."""
        return prepare_random_encoder(self.config, self.model.reestimate_encoder_batchnorm, batches, self.device)

    def configure_optimization(self, train, total_steps: int) -> None:
        self.optimizer = torch.optim.AdamW(
            release_param_groups(self.model, train.weight_decay), lr=train.scaled_lr, betas=tuple(train.betas))
        milestone = max(1, math.ceil(train.lr_step_at * total_steps))
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=[milestone],
                                                              gamma=train.lr_step_gamma)
        self.grad_clip_norm = train.grad_clip_norm

    def training_loss(self, images: Tensor) -> Tensor:
        """The scalar loss of one training batch (B,3,H,W): the release's feature MSE."""
        return self.model.loss(images)

    def training_step(self, images: Tensor) -> float:
        if self.optimizer is None:
            raise RuntimeError("configure_optimization must be called before training_step")
        loss = self.training_loss(images)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def optimization_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_optimization_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    # ---- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self.model.eval()
        return self.model.anomaly_map(images.to(self.device))  # (B,1,H,W), (B,)
