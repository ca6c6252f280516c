"""MMAD: frozen CNN encoder -> Dilated Mamba Fuser -> Hybrid Mamba Decoder (xyd2023/MMAD ``model/mmad.py``).

Data flow at 256x256 with ResNet34 (the release's default):

    images (B,3,256,256) -> encoder -> f1 (B,64,64,64), f2 (B,128,32,32), f3 (B,256,16,16)
    DMF([f1,f2,f3]) -> (B,512,8,8)
    HMD stages 512@8 (1 HSS module) -> 256@16 (2) -> 128@32 (2) -> 64@64 (1)
    anomaly map = blur_4(sum_s upsample(1 - cos(f_s, d_s))), image score = max of the map

Same encoder, loss, anomaly map and training protocol as MambaAD (except batch 8, lr 0.0025);
see :mod:`~mambaad_lib.models.mmad_fuser` and :mod:`~mambaad_lib.models.mmad_decoder` for
the two new parts and for what ``release_compat`` switches.

Deterministic inference: with ``release_compat=True`` the decoder draws a Gumbel sample at
every evaluation forward (as the release does). ``inference_seed`` makes evaluation
forwards draw it from a generator seeded afresh on every call (the global RNG is left
untouched), so the same batch gives the same maps; ``release_compat=False`` uses argmax
masks and needs no seed.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from mambaad_lib.models.decoder import split_depth
from mambaad_lib.models.encoders import build_encoder, encoder_spec
from mambaad_lib.models.mambaad import (
    BOTTLENECK_STRIDE, MIN_IMAGE_SIDE, ReconstructionModel, check_scan_backend, check_scan_grid)
from mambaad_lib.models.mmad_decoder import DEFAULT_GROUP_SCANS, HybridMambaDecoder
from mambaad_lib.models.mmad_fuser import DilatedMambaFuser
from mambaad_lib.scan import direction_counts

FUSER_STRIDE = 16  # the fuser's Mamba block scans the f3 grid: image side / 16
GSS_GROUPS = 4


@dataclass
class MMADConfig:
    """Everything that defines an MMAD model (round-trips through ``asdict``).

    Attributes:
        backbone: ``resnet18`` or ``resnet34`` (the release's widths); the ResNet50 family
            also builds, at a far larger size.
        depths: the release's depth config per decoder stage; a stage gets
            ``len(split_depth(depth))`` HSS modules ([3,4,6,3] -> 1, 2, 2, 1).
        group_scans: scan order of each VSS block in a GSS group chain.
        fuser_scan: scan order of the fuser's plain Mamba block.
        directions: scan directions of every SS2D (1, 2, 4, 8).
        dilations: dilation rates of the fuser's branch chains.
        release_compat: reproduce the release's quirks (doubled fuser residual, attention
            weights added as a constant, inert q/k/offset parameters, Gumbel-sampled token
            budget at inference); False = the corrected behaviour.
        inference_seed: seed of the Gumbel draw at inference (release_compat only); None
            draws from the global RNG like the release.
        encoder_weights: None (random), ``"imagenet"`` or a local ``.pth`` path.
        image_size: side of the square images (a multiple of 32, at least 64, giving grids the
            scans accept: powers of two for hilbert/zorder).
        drop_path_rate: largest stochastic-depth rate of the decoder.
        fuser_drop_path, fuser_dropout: the fuser's Mamba block (training only).
        scan_backend: selective-scan backend (``"auto"`` or a name in ``mambaad_lib.ops.BACKENDS``).
    """

    backbone: str = "resnet34"
    depths: tuple[int, ...] = (3, 4, 6, 3)
    group_scans: tuple[str, ...] = DEFAULT_GROUP_SCANS
    fuser_scan: str = "hilbert"
    directions: int = 8
    dilations: tuple[int, ...] = (1, 3, 5)
    release_compat: bool = True
    inference_seed: int | None = None
    encoder_weights: str | None = None
    image_size: int = 256
    drop_path_rate: float = 0.2
    fuser_drop_path: float = 0.1
    fuser_dropout: float = 0.1
    scan_backend: str = "auto"

    def __post_init__(self) -> None:
        encoder_spec(self.backbone)
        if isinstance(self.depths, (str, bytes)) or not isinstance(self.depths, Sequence) or len(self.depths) != 4:
            raise ValueError(f"depths must be 4 integers (the release's decoder depth config), got {self.depths!r}")
        self.depths = tuple(self.depths)
        for depth in self.depths:
            split_depth(depth)
        if isinstance(self.group_scans, str) or not self.group_scans:
            raise ValueError(f"group_scans must be a non-empty list of scan names, got {self.group_scans!r}")
        self.group_scans = tuple(self.group_scans)
        for scan in (*self.group_scans, self.fuser_scan):
            direction_counts(scan, self.directions)
        self.dilations = tuple(self.dilations)
        if not isinstance(self.release_compat, bool):
            raise ValueError(f"release_compat must be true or false, got {self.release_compat!r}")
        if self.inference_seed is not None and (not isinstance(self.inference_seed, int)
                                                or isinstance(self.inference_seed, bool)):
            raise ValueError(f"inference_seed must be an integer or None, got {self.inference_seed!r}")
        check_scan_backend(self.scan_backend)
        for name in ("drop_path_rate", "fuser_drop_path", "fuser_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not isinstance(self.image_size, int) or self.image_size < MIN_IMAGE_SIDE \
                or self.image_size % BOTTLENECK_STRIDE:
            raise ValueError(f"image_size must be a multiple of {BOTTLENECK_STRIDE} and at least {MIN_IMAGE_SIDE} "
                             f"(e.g. 256 -> 64/32/16/8 grids), got {self.image_size!r}")
        check_mmad_grids(self, self.image_size, self.image_size, "image_size")


def check_mmad_grids(config: MMADConfig, height: int, width: int, parameter: str) -> None:
    """Raise a ValueError naming ``parameter`` when an image size gives grids a scan cannot traverse.

    The decoder grids are image side / 32 .. / 4; the fuser's grid (side / 16) is one of them.
    """
    for scan in dict.fromkeys((*config.group_scans, config.fuser_scan)):
        check_scan_grid(scan, config.directions, height, width, parameter)


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for the duration of the block, then restore the previous state."""
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class MMAD(ReconstructionModel):
    """The MMAD reconstruction model. Build it with :func:`build_mmad` or :meth:`from_config`.

    Images are ImageNet-normalised (B, 3, H, W) with H, W multiples of 32 that the scans accept.
    Its anomaly map is the sum over the three scales (the release's ``amap_mode='add'``).
    """

    config_class = MMADConfig
    map_scale = "sum"

    def __init__(self, config: MMADConfig) -> None:
        super().__init__()
        self.config = config
        spec = encoder_spec(config.backbone)
        c1, c2, c3 = spec.channels
        grid = config.image_size // BOTTLENECK_STRIDE
        fuser_grid = config.image_size // FUSER_STRIDE
        self.encoder = build_encoder(config.backbone, config.encoder_weights)
        self.bottleneck = DilatedMambaFuser(
            spec.channels, grid_size=(fuser_grid, fuser_grid), dilations=config.dilations, scan=config.fuser_scan,
            directions=config.directions, drop_path=config.fuser_drop_path, dropout=config.fuser_dropout,
            release_compat=config.release_compat, scan_backend=config.scan_backend)
        self.decoder = HybridMambaDecoder(
            dims=(2 * c3, c3, c2, c1), depths=config.depths, bottleneck_grid=(grid, grid),
            drop_path_rate=config.drop_path_rate, release_compat=config.release_compat, groups=GSS_GROUPS,
            scans=config.group_scans, directions=config.directions, scan_backend=config.scan_backend)

    def set_inference_seed(self, seed: int | None) -> None:
        """Seed the inference-time Gumbel draw (None: the global RNG, as the release)."""
        self.config = replace(self.config, inference_seed=seed)

    def check_grids(self, height: int, width: int) -> None:
        check_mmad_grids(self.config, height, width, "images")

    def decoding_context(self, device: torch.device) -> AbstractContextManager:
        """Seeded RNG for an evaluation forward when ``inference_seed`` is set, else a no-op."""
        seed = self.config.inference_seed
        if self.training or seed is None or device.type == "meta":
            return nullcontext()
        return seeded_rng(seed, device)


@torch.no_grad()
def repeated_image_scores(model: MMAD, images: Tensor, draws: int) -> Tensor:
    """Image scores of ``draws`` evaluation forwards of the same images: (draws, B).

    Shows what the release's inference-time Gumbel draw does to the scores: with
    ``inference_seed=None`` (and ``release_compat=True``) the rows differ, with a seed or with
    ``release_compat=False`` they are identical. The model is put in eval mode.
    """
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    model.eval()
    return torch.stack([model.anomaly_map(images)[1] for _ in range(draws)])


def build_mmad(config: MMADConfig | None = None, **options: Any) -> MMAD:
    """Build MMAD; defaults are the released model (ResNet34, depths [3,4,6,3], 4-group
    hilbert -> zorder -> zigzag scanning, 8 directions, release quirks on).

    Args:
        config: an :class:`MMADConfig` (or any dataclass with its fields, such as the
            ``model:`` section of ``method: mmad``); None starts from the defaults.
        **options: fields to set or override (see :class:`MMADConfig`).

    ``build_mmad(**asdict(model.config))`` rebuilds the same architecture.
    """
    return MMAD.from_config(config, **options)
