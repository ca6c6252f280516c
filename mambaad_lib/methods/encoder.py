"""Options and preparation shared by every method built on a frozen pretrained CNN encoder.

``model.encoder_weights`` says where the encoder's weights come from: ``imagenet`` (the
weights the methods' releases load), a path to a local weights file, or ``none``: a random
encoder, for offline runs, whose BatchNorm statistics are then re-estimated on the normal
training images (at most ``model.bn_reestimate_images`` of them). Results of a random
encoder are labelled as such in the log and in the results file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from mambaad_lib.utils.errors import ConfigError

logger = logging.getLogger(__name__)
_random_encoder_warned = False  # set by the first warning of this process

RANDOM_ENCODER_WARNING = (
    "RANDOM ENCODER: no pretrained weights were used (encoder_weights=none); BatchNorm statistics of "
    "the random encoder were re-estimated on the normal training images. Numbers from this run check "
    "that the pipeline learns; they are NOT comparable with the paper's ImageNet-pretrained results.")


@dataclass
class FrozenEncoderOptions:
    """The ``model.encoder_weights`` / ``model.bn_reestimate_images`` keys (a mixin of method configs)."""

    encoder_weights: str = "imagenet"
    bn_reestimate_images: int | None = None

    def check_encoder_options(self) -> None:
        """Raise :class:`ConfigError` naming the key of an invalid encoder option."""
        if not isinstance(self.encoder_weights, str) or not self.encoder_weights:
            raise ConfigError("config key 'model.encoder_weights': expected imagenet, none or a file path")
        if self.bn_reestimate_images is not None and self.bn_reestimate_images < 1:
            raise ConfigError(f"config key 'model.bn_reestimate_images': must be >= 1 or null, "
                              f"got {self.bn_reestimate_images}")

    def __post_init__(self) -> None:
        self.check_encoder_options()

    @property
    def random_encoder(self) -> bool:
        return self.encoder_weights.lower() == "none"

    def encoder_weights_argument(self, pretrained: bool = True) -> str | None:
        """What the encoder builders take: None for a random encoder (or when a checkpoint is
        about to replace every weight, ``pretrained=False``), else the setting itself."""
        return None if self.random_encoder or not pretrained else self.encoder_weights


def prepare_random_encoder(options: FrozenEncoderOptions, reestimate: Callable[[Iterable[Tensor]], int],
                           batches: Iterable[Tensor], device: torch.device) -> dict[str, Any]:
    """BatchNorm re-estimation of a random encoder, shared by every method with a frozen encoder.

    Args:
        options: the method's config.
        reestimate: the network's re-estimation function, called with (B,3,H,W) batches;
            returns the number of images it used.
        batches: normal training batches.
    Returns:
        the facts for the results file's ``encoder`` entry (and logs the random-encoder
        warning: loudly the first time in a process, at info level after that).
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
    # Loud once per process; a notebook training dozens of runs would otherwise repeat it for
    # every one (each results file records it under encoder.warning either way).
    global _random_encoder_warned
    log = logger.info if _random_encoder_warned else logger.warning
    log("%s (re-estimated on %d images)", RANDOM_ENCODER_WARNING, n_images)
    _random_encoder_warned = True
    return {"encoder_weights": "none (random)", "batchnorm_reestimated_on": n_images,
            "warning": RANDOM_ENCODER_WARNING}
