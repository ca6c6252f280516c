"""SS2D (2-D selective scan, VMamba-style) and the HSS block built on it.

Two data flows compute the same function (tests compare them, values and gradients):

- *sequence* (the release's, every backend): gather the K direction sequences of the map,
  project each (x_proj, dt_proj), scan them, permute the outputs back and sum them;
- *fused* (``cpu`` backend): project the map once in token order (x_proj is per-token
  linear, so projecting before permuting changes nothing), then one kernel call applies
  dt_proj and scans all K directions, reading each in its order and summing on the grid. No
  (B, K, d, L) tensor is made: neither permuted inputs, nor step sizes, nor outputs.

Tensor layouts follow the released MambaAD checkpoints so that a loader only renames keys
(and reorders the direction axis, see :data:`mambaad_lib.scan.RELEASE_DIRECTION_INDEX`):

- ``in_proj.weight`` (2*d_inner, C): rows ``[x; z]``.
- ``x_proj_weight`` (K, r + 2n, d_inner): rows ``[dt; B; C]`` per direction.
- ``dt_projs_weight`` (K, d_inner, r), ``dt_projs_bias`` (K, d_inner).
- ``A_logs`` (K*d_inner, n) and ``Ds`` (K*d_inner,): direction-major, row ``k*d_inner + d``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambaad_lib.models.batch_randomness import per_sample_draw
from mambaad_lib.ops import permute_sequences, resolve_backend, selective_scan, selective_scan_directions
from mambaad_lib.scan import ScanSpec, direction_counts, inverse_orders, scan_directions

LAYER_NORM_EPS = 1e-5


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``p``.

    The per-sample mask is drawn through :func:`~mambaad_lib.models.batch_randomness.per_sample_draw`,
    so a sample's mask does not depend on how many processes share its batch.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = per_sample_draw(x.shape[0], lambda n: x.new_empty((n,) + (1,) * (x.dim() - 1)).bernoulli_(keep))
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


class SS2D(nn.Module):
    """Multi-direction 2-D selective scan over a (B, H, W, C) feature map.

    Args:
        dim: C, channels in and out.
        grid_size: (H, W) the scan index buffers are built for; other sizes are indexed on
            the fly (from the cache of :mod:`mambaad_lib.scan`).
        scan: scan method name or mapping method -> direction count.
        directions: K, number of scan directions (1, 2, 4 or 8).
        d_state: n, SSM state size per channel.
        expand: d_inner = expand * C.
        dt_min, dt_max, dt_init_floor: range of the initial step sizes.
        scan_backend: backend passed to :func:`mambaad_lib.ops.selective_scan`.
    """

    def __init__(
        self,
        dim: int,
        grid_size: tuple[int, int],
        scan: ScanSpec = "hilbert",
        directions: int = 8,
        d_state: int = 16,
        expand: int = 2,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.scan_spec = direction_counts(scan, directions)
        self.directions = directions
        self.d_inner = expand * dim
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.scan_backend = scan_backend
        k, d, n, r = directions, self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(dim, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, kernel_size=3, padding=1, groups=d, bias=True)
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d))
        self.A_logs = nn.Parameter(torch.empty(k * d, n))
        self.Ds = nn.Parameter(torch.empty(k * d))
        self.out_norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.out_proj = nn.Linear(d, dim, bias=False)

        self.grid_size = tuple(grid_size)
        orders = scan_directions(dict(self.scan_spec), *self.grid_size, directions=k)
        # Not learned and recomputable: buffers outside the state dict.
        self.register_buffer("scan_orders", orders, persistent=False)  # (K, L)
        self.register_buffer("scan_inverse", inverse_orders(orders), persistent=False)  # (K, L)
        self.dt_bounds = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation of the scan parameters."""
        dt_min, dt_max, dt_floor = self.dt_bounds
        nn.init.uniform_(self.x_proj_weight, -self.d_inner ** -0.5, self.d_inner ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        # Step sizes log-uniform in [dt_min, dt_max]; the bias is their inverse softplus.
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        states = torch.arange(1, self.d_state + 1, dtype=self.A_logs.dtype, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(states).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def _scan_indices(self, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if (height, width) == self.grid_size:
            return self.scan_orders, self.scan_inverse
        orders = scan_directions(dict(self.scan_spec), height, width, directions=self.directions).to(device)
        return orders, inverse_orders(orders)

    def _scan_parameters(self) -> dict[str, Tensor]:
        return dict(A=-torch.exp(self.A_logs.float()), D=self.Ds.float(),
                    delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True)

    def uses_fused_kernel(self, device: torch.device) -> bool:
        """Whether :meth:`forward` takes the fused path on ``device`` (the ``cpu`` backend)."""
        return device.type == "cpu" and resolve_backend(self.scan_backend, device) == "cpu"

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, _ = x.shape
        d = self.d_inner
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (B, H, W, d) each
        if self.uses_fused_kernel(x.device):
            # Channels-last in memory: oneDNN's direct depthwise kernels (its NCHW weight gradient is
            # a slow per-group GEMM), and the token-major map the kernel reads is then a free view.
            x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)))
            y = self._scan_fused(x)
        else:
            y = self._scan_sequences(F.silu(self.conv2d(x.permute(0, 3, 1, 2))))  # (B, d, H, W)
        y = self.out_norm(y.view(batch, height, width, d)) * F.silu(z)
        return self.out_proj(y)  # (B, H, W, C)

    def _scan_sequences(self, x: Tensor) -> Tensor:
        """Sequence path: (B, d, H, W) after conv and SiLU -> summed scan outputs (B, H*W, d)."""
        batch, d, height, width = x.shape
        k, n, r = self.directions, self.d_state, self.dt_rank
        length = height * width
        orders, inverse = self._scan_indices(height, width, x.device)
        # xs[b, k, :, p] = x_flat[b, :, orders[k, p]]; the backward gathers by the inverse order.
        xs = permute_sequences(x.reshape(batch, 1, d, length), orders, inverse)  # (B, K, d, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)  # (B, K, r+2n, L)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)  # (B, K, d, L)
        if x.is_meta:
            # Meta tensors carry shapes only (FLOP counting); the scan keeps u's shape.
            ys = torch.empty_like(xs)
        else:
            ys = selective_scan(xs.reshape(batch, k * d, length), dts.reshape(batch, k * d, length),
                                B=Bs.contiguous(), C=Cs.contiguous(), backend=self.scan_backend,
                                **self._scan_parameters()).view(batch, k, d, length)
        # Every direction's outputs back on the grid, summed.
        y = permute_sequences(ys, inverse, orders).sum(dim=1)  # (B, d, L)
        return y.transpose(1, 2)

    def _scan_fused(self, x: Tensor) -> Tensor:
        """Fused path: (B, d, H, W) after conv and SiLU -> summed scan outputs (B, H*W, d)."""
        batch, d, height, width = x.shape
        k, n, r = self.directions, self.d_state, self.dt_rank
        length = height * width
        orders, _ = self._scan_indices(height, width, x.device)
        tokens = x.permute(0, 2, 3, 1).reshape(batch, length, d)  # (B, L, d); a view when channels-last
        # x_proj of every direction in one matrix product, in token order: (B, L, K, r+2n).
        x_dbl = F.linear(tokens, self.x_proj_weight.reshape(k * (r + 2 * n), d)).view(batch, length, k, r + 2 * n)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=3)
        # dt_proj happens in the kernel: it forms each block's step sizes from the rank-r factors.
        return selective_scan_directions(tokens, dts, B=Bs, C=Cs, orders=orders, delta_weight=self.dt_projs_weight,
                                         backend=self.scan_backend, **self._scan_parameters())

    def extra_repr(self) -> str:
        return (f"scan={dict(self.scan_spec)}, directions={self.directions}, d_inner={self.d_inner}, "
                f"d_state={self.d_state}, dt_rank={self.dt_rank}, grid_size={self.grid_size}")


class HSSBlock(nn.Module):
    """Hybrid State Space block: ``x + DropPath(SS2D(LayerNorm(x)))`` on (B, H, W, C); no MLP."""

    def __init__(self, dim: int, grid_size: tuple[int, int], drop_path: float = 0.0, **ss2d_kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ss2d = SS2D(dim, grid_size, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        return x + self.drop_path(self.ss2d(self.norm(x)))
