"""MMAD's Hybrid Mamba Decoder (HMD) and its HSS module (xyd2023/MMAD ``model/mmad.py``: ``HMD``).

Naming: MMAD's "VSS block" is MambaAD's HSS block (:class:`~mambaad_lib.models.ss2d.HSSBlock`);
MMAD's **HSS module** (:class:`HybridStateSpaceModule`) is a larger unit that takes the place
of MambaAD's LSS module. On (B, C, H, W), with ``LN`` a LayerNorm over channels (eps 1e-6):

    x = LN(x + Mixer(x))                          post-norm, as the release
    x = LN(x + GatedFFN(x))

    Mixer(x):
      v          = conv1x1(x)
      ca, sa, p  = Predictor(x, coords)           channel gate (B,C,1,1), spatial gate (B,1,H,W),
                                                  token "complexity" probabilities (B,N,2)
      a          = v on complex tokens, v * sa on simple ones (TokenGate)
      g          = conv1x1(concat over 4 channel groups of GSS_group(a_group))
                   GSS_group = VSS(hilbert) -> VSS(zorder) -> VSS(zigzag) at C/4, 8 directions
      l          = GELU(dw3 -> dw5 -> dw7 (g)) * ca + g
      Mixer(x)   = conv1x1(l)

The release's "attention" between the gate and the GSS runs with 1x1 windows: its softmax
is over a single key, so it returns ``v`` unchanged, and its query/key projections and its
offset head never influence the output nor receive a gradient. ``release_compat=True``
keeps those inert parameters (``gate.query``, ``gate.key``, ``predictor.offsets``: 0.88M in
the default model, part of the published 25.0M) without running them; ``False`` omits them.

Token routing (the mask ``m``, 1 = complex token):

- training: ``m`` = first component of a hard, straight-through Gumbel-softmax sample with
  ``p`` used as logits (both modes, as the release);
- inference, ``release_compat=True``: a fresh Gumbel mask is drawn; its fraction of ones
  ``r`` (over the batch and the tokens) sets how many tokens per image, ``int(N * r)``, keep
  ``v``: those with the highest ``p[..., 0]``. Stochastic unless the caller seeds the RNG
  (:class:`~mambaad_lib.models.mmad.MMAD` does that when ``inference_seed`` is set);
- inference, ``release_compat=False``: ``m = p[..., 0] > p[..., 1]`` (the argmax, deterministic).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambaad_lib.models.batch_randomness import gumbel_softmax_hard
from mambaad_lib.models.decoder import PatchExpand, decoder_drop_paths, split_depth
from mambaad_lib.models.lss import conv_norm_act
from mambaad_lib.models.ss2d import HSSBlock

HMD_NORM_EPS = 1e-6
DEFAULT_GROUP_SCANS: tuple[str, ...] = ("hilbert", "zorder", "zigzag")


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a channels-first map: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, eps: float = HMD_NORM_EPS) -> None:
        super().__init__(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def coordinate_channels(x: Tensor) -> Tensor:
    """Row and column coordinates in [-1, 1] for every pixel of x (B, C, H, W): (B, 2, H, W)."""
    batch, _, height, width = x.shape
    rows = torch.linspace(-1, 1, height, device=x.device, dtype=x.dtype)
    cols = torch.linspace(-1, 1, width, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))  # (2, H, W)
    return grid.unsqueeze(0).expand(batch, -1, -1, -1)


class Predictor(nn.Module):
    """The HSS module's gates from x and pixel coordinates (m = C + 2 inputs, q = m // 4 hidden).

    Returns ``ca`` (B, C, 1, 1) and ``sa`` (B, 1, H, W), sigmoid gates, and ``probs``
    (B, N, 2), a softmax over a per-token score computed from the channel mean of the hidden map.

    Args:
        dim: C.
        inert_offsets: build the release's offset head (conv1x1 q -> m // 8 -> 2). Its output
            only feeds the size-1 attention, so it is never run (see the module docstring).
    """

    def __init__(self, dim: int, inert_offsets: bool = True) -> None:
        super().__init__()
        inputs = dim + 2
        hidden, offset_hidden = inputs // 4, inputs // 8
        self.embed = nn.Sequential(
            nn.Conv2d(inputs, hidden, kernel_size=1, bias=True),
            ChannelLayerNorm(hidden),
            nn.LeakyReLU(0.1),
        )
        self.channel_gate = nn.Conv2d(hidden, dim, kernel_size=1, bias=True)
        self.spatial_gate = nn.Conv2d(hidden, 1, kernel_size=3, padding=1, bias=True)
        self.score = nn.Sequential(nn.Linear(1, 1), nn.LeakyReLU(0.1), nn.Linear(1, 2))
        self.offsets = nn.Sequential(
            nn.Conv2d(hidden, offset_hidden, kernel_size=1, bias=True),
            nn.LeakyReLU(0.1),
            nn.Conv2d(offset_hidden, 2, kernel_size=1, bias=True),
        ) if inert_offsets else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C, H, W) -> ca (B, C, 1, 1), sa (B, 1, H, W), probs (B, H*W, 2)."""
        hidden = self.embed(torch.cat([x, coordinate_channels(x)], dim=1))  # (B, q, H, W)
        ca = torch.sigmoid(self.channel_gate(F.adaptive_avg_pool2d(hidden, 1)))
        sa = torch.sigmoid(self.spatial_gate(hidden))
        token_means = hidden.mean(dim=1).flatten(1).unsqueeze(-1)  # (B, N, 1)
        probs = self.score(token_means).softmax(dim=-1)  # (B, N, 2)
        return ca, sa, probs


class TokenGate(nn.Module):
    """Route tokens: complex ones keep ``v``, simple ones get ``v * sa`` (see the module docstring).

    Args:
        dim: C.
        release_compat: Gumbel-sampled token budget at inference and the inert query/key
            projections (Linear C -> C each) of the release's size-1 attention; ``False``:
            argmax masks and no inert parameters.
    """

    def __init__(self, dim: int, release_compat: bool = True) -> None:
        super().__init__()
        self.release_compat = release_compat
        if release_compat:
            self.query = nn.Linear(dim, dim)
            self.key = nn.Linear(dim, dim)

    def complex_mask(self, probs: Tensor) -> Tensor:
        """(B, N, 2) probabilities -> (B, N) mask, 1 = complex token (see the module docstring)."""
        if self.training:
            # Straight-through: hard 0/1 forward, the soft sample's gradient backward.
            return gumbel_softmax_hard(probs, dim=-1)[..., 0]  # F.gumbel_softmax, noise drawn per sample
        if not self.release_compat:
            return (probs[..., 0] > probs[..., 1]).to(probs.dtype)
        ratio = F.gumbel_softmax(probs, hard=True, dim=-1)[..., 0].mean()
        kept = int(probs.shape[1] * float(ratio))
        ranks = probs[..., 0].argsort(dim=1, descending=True).argsort(dim=1)  # (B, N) rank of each token
        return (ranks < kept).to(probs.dtype)

    def forward(self, v: Tensor, sa: Tensor, probs: Tensor) -> Tensor:
        """v (B, C, H, W), sa (B, 1, H, W), probs (B, H*W, 2) -> (B, C, H, W)."""
        if v.is_meta:
            # Meta tensors carry shapes only (FLOP counting): the gate keeps v's shape.
            return torch.empty_like(v)
        mask = self.complex_mask(probs).view_as(sa)  # (B, 1, H, W)
        return v * mask + v * sa * (1 - mask)


class GroupedStateSpace(nn.Module):
    """GSS: split channels into groups, run each through its own chain of VSS blocks, fuse by 1x1 conv.

    Group ``i`` holds channels ``[i*C/G, (i+1)*C/G)``; its chain is one VSS block (MambaAD's
    HSS block) per entry of ``scans``, in order, each with ``directions`` directions. No
    connection crosses groups before the fusion conv.

    Args:
        dim: C, divisible by ``groups``.
        grid_size: (H, W) of the stage.
        groups: G.
        scans: scan order of each block of a chain, e.g. ("hilbert", "zorder", "zigzag").
        drop_path: stochastic depth of every VSS block.
        **ss2d_kwargs: ``directions``, ``scan_backend``, ...
    """

    def __init__(self, dim: int, grid_size: tuple[int, int], groups: int = 4,
                 scans: Sequence[str] = DEFAULT_GROUP_SCANS, drop_path: float = 0.0, **ss2d_kwargs) -> None:
        super().__init__()
        if groups < 1 or dim % groups:
            raise ValueError(f"the HSS module width {dim} must be divisible by groups={groups}")
        if not scans:
            raise ValueError("scans must name at least one scan order per group chain")
        self.groups = groups
        self.chains = nn.ModuleList(
            nn.Sequential(*(HSSBlock(dim // groups, grid_size, drop_path=drop_path, scan=scan, **ss2d_kwargs)
                            for scan in scans))
            for _ in range(groups))
        self.fuse = nn.Conv2d(dim, dim, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        parts = x.permute(0, 2, 3, 1).chunk(self.groups, dim=-1)  # G x (B, H, W, C/G)
        scanned = torch.cat([chain(part) for chain, part in zip(self.chains, parts)], dim=-1)
        return self.fuse(scanned.permute(0, 3, 1, 2))  # (B, C, H, W)


class MultiKernelEnhancement(nn.Module):
    """``GELU(dw3 -> dw5 -> dw7 (x)) * ca + x``: depthwise convs (no bias), each with InstanceNorm and SiLU."""

    def __init__(self, dim: int, kernels: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__()
        self.convs = nn.Sequential(*(conv_norm_act(dim, dim, k, groups=dim, bias=False) for k in kernels))

    def forward(self, x: Tensor, ca: Tensor) -> Tensor:
        """x (B, C, H, W), ca (B, C, 1, 1) -> (B, C, H, W)."""
        return F.gelu(self.convs(x)) * ca + x


class HybridMixer(nn.Module):
    """The HSS module's token mixer: value projection, token gate, GSS, multi-kernel enhancement."""

    def __init__(self, dim: int, grid_size: tuple[int, int], drop_path: float = 0.0, release_compat: bool = True,
                 groups: int = 4, scans: Sequence[str] = DEFAULT_GROUP_SCANS, **ss2d_kwargs) -> None:
        super().__init__()
        self.value = nn.Conv2d(dim, dim, kernel_size=1, bias=True)
        self.predictor = Predictor(dim, inert_offsets=release_compat)
        self.gate = TokenGate(dim, release_compat=release_compat)
        self.gss = GroupedStateSpace(dim, grid_size, groups=groups, scans=scans, drop_path=drop_path,
                                     **ss2d_kwargs)
        self.enhance = MultiKernelEnhancement(dim)
        self.project = nn.Conv2d(dim, dim, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        ca, sa, probs = self.predictor(x)
        gated = self.gate(self.value(x), sa, probs)  # (B, C, H, W)
        return self.project(self.enhance(self.gss(gated), ca))


class GatedFFN(nn.Module):
    """conv1x1 C -> 2C, depthwise 3x3, ``GELU(a) * b`` over the two halves, conv1x1 C -> C (no biases)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(dim, 2 * dim, kernel_size=1, bias=False)
        self.depthwise = nn.Conv2d(2 * dim, 2 * dim, kernel_size=3, padding=1, groups=2 * dim, bias=False)
        self.project = nn.Conv2d(dim, dim, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        a, b = self.depthwise(self.expand(x)).chunk(2, dim=1)
        return self.project(F.gelu(a) * b)


class HybridStateSpaceModule(nn.Module):
    """MMAD's HSS module on (B, C, H, W): ``x = LN(x + Mixer(x)); x = LN(x + FFN(x))``.

    Args:
        dim: C (divisible by ``groups``).
        grid_size: (H, W) of the stage.
        drop_path: stochastic depth of every VSS block inside (none on the module's residuals).
        release_compat: see the module docstring.
        groups, scans: the GSS layout.
        **ss2d_kwargs: ``directions``, ``scan_backend``, ...
    """

    def __init__(self, dim: int, grid_size: tuple[int, int], drop_path: float = 0.0, release_compat: bool = True,
                 groups: int = 4, scans: Sequence[str] = DEFAULT_GROUP_SCANS, **ss2d_kwargs) -> None:
        super().__init__()
        self.mixer = HybridMixer(dim, grid_size, drop_path=drop_path, release_compat=release_compat,
                                 groups=groups, scans=scans, **ss2d_kwargs)
        self.norm1 = ChannelLayerNorm(dim)
        self.ffn = GatedFFN(dim)
        self.norm2 = ChannelLayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = self.norm1(x + self.mixer(x))
        return self.norm2(x + self.ffn(x))


@torch.no_grad()
def init_hmd_weights(module: nn.Module) -> None:
    """The release's HMD initialisation, for ``module.apply``: convs N(0, sqrt(2 / fan_out)) with
    fan_out = k*k*out/groups and zero bias; linears truncated-normal (std 0.02), zero bias;
    LayerNorms (1, 0). The SS2D scan parameters keep their own initialisation."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        module.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class HMDStage(nn.Module):
    """Optional PatchExpand, then HSS modules, on (B, C, H, W)."""

    def __init__(self, dim: int, grid_size: tuple[int, int], drop_paths: Sequence[float], upsample: bool,
                 **module_kwargs) -> None:
        super().__init__()
        self.upsample = PatchExpand(2 * dim) if upsample else None
        self.hss_modules = nn.ModuleList(
            HybridStateSpaceModule(dim, grid_size, drop_path=rate, **module_kwargs) for rate in drop_paths)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) or, with upsampling, (B, 2C, H/2, W/2) -> (B, C, H, W)."""
        if self.upsample is not None:
            x = self.upsample(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # PatchExpand is channels-last
        for module in self.hss_modules:
            x = module(x)
        return x


def hmd_module_drop_paths(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Drop-path rate of every HSS module, per stage (release rule).

    The stage's depth becomes ``len(split_depth(depth))`` modules (MambaAD's LSS rule: a depth
    divisible by 3 gives depth/3, otherwise depth/2 modules; [3,4,6,3] -> 1, 2, 2, 1), and
    module j of a stage takes the j-th rate of that stage's slice of the reversed
    ``linspace(0, rate, sum(depths))``.

    >>> [[round(p, 3) for p in stage] for stage in hmd_module_drop_paths((3, 4, 6, 3), 0.2)]
    [[0.2], [0.16, 0.147], [0.107, 0.093], [0.027]]
    """
    return [rates[: len(split_depth(depth))] for depth, rates in zip(depths, decoder_drop_paths(depths, rate))]


class HybridMambaDecoder(nn.Module):
    """HMD: four stages from the bottleneck to the encoder's finest scale (channels-first throughout).

    Args:
        dims: channels per stage, e.g. (512, 256, 128, 64); each half the previous.
        depths: the release's depth config, e.g. (3, 4, 6, 3) -> 1, 2, 2, 1 HSS modules.
        bottleneck_grid: (H, W) of the bottleneck map (8x8 at 256x256 input).
        drop_path_rate: largest stochastic-depth rate.
        **module_kwargs: ``release_compat``, ``groups``, ``scans``, ``directions``, ``scan_backend``.
    """

    def __init__(self, dims: Sequence[int], depths: Sequence[int], bottleneck_grid: tuple[int, int],
                 drop_path_rate: float = 0.2, **module_kwargs) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"depths must have one entry per decoder stage ({len(dims)}), got {tuple(depths)}")
        height, width = bottleneck_grid
        self.stages = nn.ModuleList(
            HMDStage(dim, (height << i, width << i), rates, upsample=i > 0, **module_kwargs)
            for i, (dim, rates) in enumerate(zip(dims, hmd_module_drop_paths(depths, drop_path_rate))))
        self.apply(init_hmd_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, C0, h, w) bottleneck map -> outputs of stages 3, 2, 1 (finest first, as [f1, f2, f3]).

        Returns:
            [(B, dims[3], 8h, 8w), (B, dims[2], 4h, 4w), (B, dims[1], 2h, 2w)].
        """
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[1:][::-1]
