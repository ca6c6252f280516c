"""MambaAD: frozen CNN encoder -> MFF_OCE bottleneck -> Mamba decoder, anomaly maps, factory.

Data flow at 256x256 with ResNet34 (the paper's default):

    images (B,3,256,256) -> encoder -> f1 (B,64,64,64), f2 (B,128,32,32), f3 (B,256,16,16)
    MFF_OCE([f1,f2,f3]) -> (B,512,8,8)
    decoder stages 512@8 -> 256@16 -> 128@32 -> 64@64; d1, d2, d3 = stage 4, 3, 2 outputs
    anomaly map = blur(mean_s upsample(1 - cos(f_s, d_s))), image score = max of the map
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambaad_lib.models.bottleneck import MFFOCE
from mambaad_lib.models.decoder import MambaDecoder, split_depth
from mambaad_lib.models.encoders import build_encoder, encoder_spec, reestimate_batchnorm
from mambaad_lib.models.lss import LOCAL_CONV_KINDS, check_local_kernels
from mambaad_lib.models.ss2d import SS2D
from mambaad_lib.ops import BACKENDS
from mambaad_lib.scan import ScanSpec, direction_counts, scan_directions

# Total stride of encoder + bottleneck: a 256x256 image gives an 8x8 bottleneck grid.
BOTTLENECK_STRIDE = 32
# InstanceNorm in the LSS local branches needs more than one pixel: a 2x2 bottleneck at least.
MIN_IMAGE_SIDE = 2 * BOTTLENECK_STRIDE
MAP_SIGMA = 4.0
# The release weights its summed per-scale MSE by 5 (the released trainer, lewandofskee/MambaAD).
RELEASE_LOSS_WEIGHT = 5.0


@dataclass
class MambaADConfig:
    """Everything that defines a MambaAD model (round-trips through ``asdict``).

    Attributes:
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``wide_resnet50_2``.
        depths: HSS blocks per decoder stage (4 stages).
        scan: scan method name, or a mapping method -> direction count summing to ``directions``.
        directions: scan directions per SS2D (1, 2, 4, 8).
        hss_per_lss: HSS blocks per LSS module; None = release rule (see ``split_depth``).
        lss_residual: add each LSS module's input to its output.
        local_kernels: depthwise kernel sizes of the LSS local branches; () = none.
        local_conv: ``"conv1x1+dw"`` (paper default) or ``"dw"``.
        encoder_weights: None (random), ``"imagenet"`` or a local ``.pth`` path.
        image_size: side of the square training/eval images (a multiple of 32, at least 64).
        drop_path_rate: largest stochastic-depth rate of the decoder.
        scan_backend: selective-scan backend (``"auto"`` or a name in ``mambaad_lib.ops.BACKENDS``).
    """

    backbone: str = "resnet34"
    depths: tuple[int, ...] = (3, 4, 6, 3)
    scan: ScanSpec = "hilbert"
    directions: int = 8
    hss_per_lss: int | None = None
    lss_residual: bool = True
    local_kernels: tuple[int, ...] = (5, 7)
    local_conv: str = "conv1x1+dw"
    encoder_weights: str | None = None
    image_size: int = 256
    drop_path_rate: float = 0.2
    scan_backend: str = "auto"

    def __post_init__(self) -> None:
        encoder_spec(self.backbone)
        if isinstance(self.depths, (str, bytes)) or not isinstance(self.depths, Sequence) or len(self.depths) != 4:
            raise ValueError(f"depths must be 4 integers (HSS blocks per decoder stage), got {self.depths!r}")
        self.depths = tuple(self.depths)
        for depth in self.depths:
            split_depth(depth, self.hss_per_lss)
        if isinstance(self.scan, Mapping):
            self.scan = dict(self.scan)
        direction_counts(self.scan, self.directions)
        self.local_kernels = check_local_kernels(self.local_kernels)
        if self.local_conv not in LOCAL_CONV_KINDS:
            raise ValueError(f"local_conv must be one of {list(LOCAL_CONV_KINDS)}, got {self.local_conv!r}")
        check_scan_backend(self.scan_backend)
        if not isinstance(self.drop_path_rate, (int, float)) or not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")
        if not isinstance(self.image_size, int) or self.image_size < MIN_IMAGE_SIDE \
                or self.image_size % BOTTLENECK_STRIDE:
            raise ValueError(f"image_size must be a multiple of {BOTTLENECK_STRIDE} and at least {MIN_IMAGE_SIDE} "
                             f"(e.g. 256 -> 64/32/16/8 grids), got {self.image_size!r}")
        check_scan_grid(self.scan, self.directions, self.image_size, self.image_size, "image_size")


def check_scan_backend(name: str) -> str:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"scan_backend must be 'auto' or one of {sorted(BACKENDS)}, got {name!r}")
    return name


def check_scan_grid(scan: ScanSpec, directions: int, height: int, width: int, parameter: str) -> None:
    """Raise a ValueError naming ``parameter`` when a decoder grid of this image size cannot be scanned."""
    grid = (height // BOTTLENECK_STRIDE, width // BOTTLENECK_STRIDE)
    for level in range(4):
        try:
            scan_directions(scan, grid[0] << level, grid[1] << level, directions)
        except ValueError as error:
            raise ValueError(
                f"{parameter} {height}x{width} gives decoder grids {grid[0]}x{grid[1]} .. "
                f"{grid[0] << 3}x{grid[1] << 3}, which scan {scan!r} cannot traverse: {error}") from error


class ReconstructionModel(nn.Module):
    """Frozen encoder -> trainable bottleneck -> trainable decoder, compared scale by scale.

    The shell MambaAD and MMAD share. Subclasses build ``encoder``, ``bottleneck`` and
    ``decoder`` from their config dataclass (``config_class``) and may override
    :meth:`check_grids` (which image sizes the scans accept), :meth:`decoding_context`
    (e.g. a seeded RNG around bottleneck and decoder) and ``map_scale`` (1 = mean of the
    per-scale maps; the number of scales = their sum).
    """

    config_class: ClassVar[type]
    map_scale: ClassVar[str] = "mean"

    encoder: nn.Module
    bottleneck: nn.Module
    decoder: nn.Module

    @classmethod
    def from_config(cls, config: Any = None, **options: Any) -> "ReconstructionModel":
        """A fresh model from a config and/or keyword options that override its fields.

        ``config`` may be ``config_class`` itself, any dataclass that has its fields (e.g. a
        method's ``model:`` section, which adds options of its own) or its ``asdict`` form
        read back from YAML/JSON; None starts from the defaults.

        Raises:
            TypeError: an option that is not a field of ``config_class`` (the message lists them).
        """
        names = [item.name for item in fields(cls.config_class)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(f"{cls.__name__} has no options {unknown}; its options are {names}")
        if config is None:
            values = {}
        elif isinstance(config, Mapping):
            values = dict(config)
        else:
            values = {name: getattr(config, name) for name in names}
        return cls(cls.config_class(**{**values, **options}))

    @property
    def scan_backend(self) -> str:
        return self.config.scan_backend

    def set_scan_backend(self, name: str) -> None:
        """Use selective-scan backend ``name`` ("auto", "reference", "cpu", ...) in every SS2D."""
        self.config = replace(self.config, scan_backend=check_scan_backend(name))
        for module in self.modules():
            if isinstance(module, SS2D):
                module.scan_backend = name

    def check_grids(self, height: int, width: int) -> None:
        """Raise a ValueError when the scans cannot traverse this image size's grids."""
        check_scan_grid(self.config.scan, self.config.directions, height, width, "images")

    def decoding_context(self, device: torch.device) -> AbstractContextManager:
        """Context around bottleneck and decoder in :meth:`forward`; none by default."""
        return nullcontext()

    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
        height, width = images.shape[-2:]
        if height % BOTTLENECK_STRIDE or width % BOTTLENECK_STRIDE or min(height, width) < MIN_IMAGE_SIDE:
            raise ValueError(f"images height and width must be multiples of {BOTTLENECK_STRIDE} and at least "
                             f"{MIN_IMAGE_SIDE}, got {height}x{width}")
        self.check_grids(height, width)

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(B, 3, H, W) -> ([f1, f2, f3], [d1, d2, d3]) with d_s shaped like f_s.

        Shapes (ResNet34): f1/d1 (B,64,H/4,W/4), f2/d2 (B,128,H/8,W/8), f3/d3 (B,256,H/16,W/16).
        """
        self._check_images(images)
        with torch.no_grad():
            encoder_features = self.encoder(images)
        with self.decoding_context(images.device):
            bottleneck = self.bottleneck(encoder_features)  # (B, 2*c3, H/32, W/32)
            decoder_features = self.decoder(bottleneck)
        return encoder_features, decoder_features

    def loss(self, images: Tensor, weight: float = RELEASE_LOSS_WEIGHT) -> Tensor:
        """Training loss: ``weight * sum_s MSE(f_s, d_s)`` (the release uses weight 5)."""
        return reconstruction_loss(*self(images), weight=weight)

    @torch.no_grad()
    def anomaly_map(self, images: Tensor, sigma: float = MAP_SIGMA) -> tuple[Tensor, Tensor]:
        """Anomaly maps and image scores (call ``model.eval()`` first).

        Returns:
            maps (B, 1, H, W): blurred mean (``map_scale="mean"``) or sum (``"sum"``) over
            scales of 1 - cosine(f_s, d_s);
            scores (B,): the maximum of each map.
        """
        encoder_features, decoder_features = self(images)
        maps = cosine_anomaly_map(encoder_features, decoder_features, tuple(images.shape[-2:]))
        if self.map_scale == "sum":
            maps = len(encoder_features) * maps
        if sigma > 0:
            maps = gaussian_blur(maps, sigma)
        return maps, maps.amax(dim=(1, 2, 3))

    @torch.no_grad()
    def reestimate_encoder_batchnorm(self, batches: Iterable[Tensor]) -> int:
        """Recompute the frozen encoder's BatchNorm statistics on image batches; returns images used.

        For random (offline) encoders; see :func:`mambaad_lib.models.encoders.reestimate_batchnorm`.
        """
        return reestimate_batchnorm(self.encoder, batches)


class MambaAD(ReconstructionModel):
    """The MambaAD reconstruction model. Build it with :func:`build_mambaad` or :meth:`from_config`.

    Images are ImageNet-normalised (B, 3, H, W) with H, W multiples of 32 that the scan accepts.
    """

    config_class = MambaADConfig

    def __init__(self, config: MambaADConfig) -> None:
        super().__init__()
        self.config = config
        spec = encoder_spec(config.backbone)
        c1, c2, c3 = spec.channels
        grid = config.image_size // BOTTLENECK_STRIDE
        self.encoder = build_encoder(config.backbone, config.encoder_weights)
        self.bottleneck = MFFOCE(spec.channels)
        self.decoder = MambaDecoder(
            dims=(2 * c3, c3, c2, c1), depths=config.depths, bottleneck_grid=(grid, grid),
            drop_path_rate=config.drop_path_rate, hss_per_lss=config.hss_per_lss,
            local_kernels=config.local_kernels, local_conv=config.local_conv, residual=config.lss_residual,
            scan=config.scan, directions=config.directions, scan_backend=config.scan_backend)


def reconstruction_loss(encoder_features: Sequence[Tensor], decoder_features: Sequence[Tensor],
                        weight: float = RELEASE_LOSS_WEIGHT) -> Tensor:
    """``weight * sum over scales of mean((f_s - d_s)^2)``; scalar."""
    return weight * sum(F.mse_loss(dec, enc.detach()) for enc, dec in zip(encoder_features, decoder_features))


def cosine_anomaly_map(encoder_features: Sequence[Tensor], decoder_features: Sequence[Tensor],
                       size: tuple[int, int]) -> Tensor:
    """Mean over scales of ``1 - cos(f_s, d_s)`` over channels, bilinearly upsampled to ``size``.

    Returns:
        (B, 1, H, W).
    """
    maps = [
        F.interpolate((1 - F.cosine_similarity(enc, dec, dim=1)).unsqueeze(1), size=size,
                      mode="bilinear", align_corners=True)
        for enc, dec in zip(encoder_features, decoder_features)
    ]
    return torch.stack(maps).mean(dim=0)


def _reflect_indices(length: int, radius: int, device: torch.device) -> Tensor:
    # scipy's mode="reflect" (half-sample symmetric: d c b a | a b c d | d c b a), any radius.
    index = torch.arange(-radius, length + radius, device=device) % (2 * length)
    return torch.where(index >= length, 2 * length - 1 - index, index)


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian filter over the last two dims, as ``scipy.ndimage.gaussian_filter``
    (radius ``int(truncate * sigma + 0.5)``, ``mode="reflect"``).

    Args:
        maps: (B, 1, H, W).
    Returns:
        (B, 1, H, W).
    """
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    height, width = maps.shape[-2:]
    out = maps.index_select(-1, _reflect_indices(width, radius, maps.device))
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))  # along W
    out = out.index_select(-2, _reflect_indices(height, radius, maps.device))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))  # along H


def build_mambaad(config: MambaADConfig | None = None, **options: Any) -> MambaAD:
    """Build MambaAD; defaults are the paper's model (ResNet34, depths [3,4,6,3], Hilbert x 8).

    Args:
        config: a :class:`MambaADConfig` (or any dataclass with its fields, such as the
            ``model:`` section of ``method: mambaad``); None starts from the defaults.
        **options: fields to set or override: ``backbone``, ``depths``, ``scan``,
            ``directions``, ``hss_per_lss``, ``lss_residual``, ``local_kernels``,
            ``local_conv``, ``encoder_weights`` (None = random, ``"imagenet"`` or a path),
            ``image_size``, ``drop_path_rate``, ``scan_backend`` (see :class:`MambaADConfig`).

    ``build_mambaad(model.config)`` and ``build_mambaad(**asdict(model.config))`` rebuild the
    same architecture.
    """
    return MambaAD.from_config(config, **options)
