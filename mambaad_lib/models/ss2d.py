"""SS2D (2-D selective scan, VMamba-style) and the HSS block built on it.

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
from mambaad_lib.ops import selective_scan
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

    def _selective_scan(self, u: Tensor, delta: Tensor, B: Tensor, C: Tensor) -> Tensor:
        if u.is_meta:
            # Meta tensors carry shapes only (FLOP counting); the scan keeps u's shape.
            return torch.empty_like(u)
        return selective_scan(
            u, delta, -torch.exp(self.A_logs.float()), B, C, D=self.Ds.float(),
            delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True,
            backend=self.scan_backend)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        batch, height, width, _ = x.shape
        k, d, n, r = self.directions, self.d_inner, self.d_state, self.dt_rank
        length = height * width
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (B, H, W, d) each
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))  # (B, d, H, W)

        orders, inverse = self._scan_indices(height, width, x.device)
        # One gather builds all K sequences: xs[b, k, :, p] = x_flat[b, :, orders[k, p]].
        xs = torch.gather(x.reshape(batch, 1, d, length).expand(batch, k, d, length), 3,
                          orders.view(1, k, 1, length).expand(batch, k, d, length))  # (B, K, d, L)

        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)  # (B, K, r+2n, L)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)  # (B, K, d, L)
        ys = self._selective_scan(xs.reshape(batch, k * d, length), dts.reshape(batch, k * d, length),
                                  Bs.contiguous(), Cs.contiguous())  # (B, K*d, L)

        # One gather undoes every direction's permutation; the K outputs are summed.
        ys = torch.gather(ys.view(batch, k, d, length), 3,
                          inverse.view(1, k, 1, length).expand(batch, k, d, length))  # (B, K, d, L)
        y = ys.sum(dim=1).transpose(1, 2).reshape(batch, height, width, d)  # (B, H, W, d)
        y = self.out_norm(y) * F.silu(z)
        return self.out_proj(y)  # (B, H, W, C)

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
