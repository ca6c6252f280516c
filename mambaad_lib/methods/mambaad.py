"""MambaAD as a method: the release's training protocol around :func:`~mambaad_lib.models.build_mambaad`.

Optimisation (the release's ADer config and trainer): AdamW with the learning rate scaled by
the batch size, weight decay only on weight matrices and kernels (none on 1-D parameters and
biases), one step decay at a fraction of training, gradient-norm clipping, loss = 5 x the sum
over the three scales of MSE(encoder feature, decoder feature). The frozen encoder stays in
eval mode.

Under torchrun (:meth:`MambaADMethod.distribute`) the training forward runs through
DistributedDataParallel over the bottleneck and decoder (the frozen encoder has no
gradients to synchronise) with MFF_OCE's BatchNorm synchronised; ``train.precision`` bf16
or fp16 runs it under autocast (:class:`~mambaad_lib.methods.training.MixedPrecision`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from mambaad_lib.methods.base import AnomalyMethod, Parallel
from mambaad_lib.methods.encoder import FrozenEncoderOptions, prepare_random_encoder
from mambaad_lib.methods.training import MixedPrecision, TrainConfig, adamw_options
from mambaad_lib.models.costs import count_flops
from mambaad_lib.models.mambaad import MambaADConfig, ReconstructionModel, build_mambaad
from mambaad_lib.ops import resolve_backend
from mambaad_lib.utils.errors import ConfigError


@dataclass
class MambaADMethodConfig(FrozenEncoderOptions, MambaADConfig):
    """The ``model:`` section of ``method: mambaad``: the architecture (:class:`MambaADConfig`)
    and how the encoder is prepared (:class:`FrozenEncoderOptions`).

    ``image_size`` is not a key here: the engine builds the model for ``data.crop_size``.
    """

    image_size: int = field(default=256, init=False, repr=False)

    def __post_init__(self) -> None:
        self.check_encoder_options()
        try:
            MambaADConfig.__post_init__(self)
        except ValueError as error:
            raise ConfigError(f"config section 'model': {error}") from None


def release_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed (>= 2-D weights) and undecayed (1-D, biases)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class MambaADMethod(AnomalyMethod):
    """MambaAD (frozen CNN encoder, MFF_OCE bottleneck, LSS/HSS Mamba decoder): one unified model."""

    name = "mambaad"
    config_class = MambaADMethodConfig
    profiles = {"smoke": "smoke", "demo": "demo", "paper": "paper"}
    distributed = True
    precisions = ("fp32", "bf16", "fp16")

    def __init__(self, config: MambaADMethodConfig, image_size: int, device: torch.device,
                 pretrained: bool = True) -> None:
        super().__init__(config, image_size, device, pretrained)
        weights = config.encoder_weights_argument(pretrained)
        try:
            model = self.build_model(weights)
        except RuntimeError as error:
            if weights != "imagenet":
                raise
            raise RuntimeError(f"{error}\nOn the command line: --encoder-weights /path/to/weights.pth "
                               "(or --encoder-weights none for an offline random-encoder check).") from error
        self.model = model.to(self.device)
        self._scan_backend = resolve_backend(config.scan_backend, self.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.grad_clip_norm: float | None = None
        self.precision = MixedPrecision("fp32", self.device)
        self.loss_forward = self.training_loss  # through DDP once distributed

    def build_model(self, encoder_weights: str | None) -> ReconstructionModel:
        """The network this method trains, for ``self.config`` at ``self.image_size``."""
        return build_mambaad(self.config, encoder_weights=encoder_weights, image_size=self.image_size)

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
        return {**super().describe(), "flops": count_flops(self.model, self.image_size)}

    # ---- training -----------------------------------------------------------------------
    def prepare(self, batches: Iterable[Tensor]) -> dict[str, Any]:
        """Re-estimate the encoder's BatchNorm statistics when the encoder is random."""
        return prepare_random_encoder(self.config, self.model.reestimate_encoder_batchnorm, batches, self.device)

    def distribute(self, parallel: Parallel) -> None:
        self.parallel = parallel
        self.loss_forward = parallel.wrap(self.model, self.training_loss)

    def configure_optimization(self, train: TrainConfig, total_steps: int) -> None:
        self.optimizer = torch.optim.AdamW(
            release_param_groups(self.model, train.weight_decay), lr=train.scaled_lr, betas=tuple(train.betas),
            **adamw_options(train.adamw))
        milestone = max(1, math.ceil(train.lr_step_at * total_steps))
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=[milestone],
                                                              gamma=train.lr_step_gamma)
        self.grad_clip_norm = train.grad_clip_norm
        self.precision = MixedPrecision(train.precision, self.device)

    def training_loss(self, images: Tensor) -> Tensor:
        """The scalar loss of one training batch (B,3,H,W): the release's feature MSE."""
        return self.model.loss(images)

    def training_step(self, images: Tensor) -> float:
        if self.optimizer is None:
            raise RuntimeError("configure_optimization must be called before training_step")
        with self.precision.autocast():
            loss = self.loss_forward(images)
        clip = (self.model.parameters(), self.grad_clip_norm) if self.grad_clip_norm is not None else None
        self.precision.step(loss, [self.optimizer], clip)
        self.scheduler.step()
        return float(loss.detach())

    def optimization_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "loss_scaler": self.precision.state_dict()}

    def load_optimization_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("loss_scaler", {}))  # absent before mixed precision

    # ---- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self.model.eval()
        return self.model.anomaly_map(images.to(self.device))  # (B,1,H,W), (B,)
