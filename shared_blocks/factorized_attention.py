"""FactFormer's factorised attention block for 2-D / 3-D grids (Li, Shu & Barati Farimani, "Scalable
Transformer for PDE Surrogate Modeling", NeurIPS 2023, Sec. 3, Fig. 2: ``FABlock2D/3D`` of
github.com/BaratiLab/FactFormer) and the parallel variant of IFactFormer-m (Yang, Wang & Wang 2024,
``FABlock2D_m/3D_m`` of github.com/EntropyXi/IFactFormer-m).

Per axis ``a``, a learnable projection reduces the field to a 1-D sub-function (FactFormer's
``PoolingReducer``: mean over the other axes, then LayerNorm and a GEGLU MLP), from which per-head
queries/keys give the softmax-free axis kernel ``K_a = scale · q_a k_aᵀ``; the values are integrated with
:func:`hybrids.kernels.attention.factorized.factorized_attention` ("chained" or "parallel"), then an
instance norm over the grid and an output MLP follow. The block has no residual connection (FactFormer
adds it in the surrounding model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hybrids.kernels.attention.factorized import COMBINES, MODES, axis_mean_pool, factorized_attention
from hybrids.kernels.rope import apply_rope, rope_cos_sin
from hybrids.shared_blocks.factories import check_spatial_dims

__all__ = ["OUT_NORMS", "AxisReducer", "FactorizedAttention"]


class AxisReducer(nn.Module):
    """Projection of a field to the 1-D sub-function of one axis (FactFormer's ``PoolingReducer``).

    ``(b, N_1, ..., N_n, in_dim) -> (b, N_axis, out_dim)``:
    ``fc2(geglu(fc1(norm(to_in(mean_{other axes} x)))))`` with ``to_in`` linear without bias, ``norm`` a
    LayerNorm over ``hidden_dim`` and ``geglu(z) = gelu(z_1) * z_2`` on the two halves of ``fc1``'s
    ``2 hidden_dim`` outputs. FactFormer applies ``to_in`` before pooling; a linear map commutes with the
    mean, so pooling first gives the same result on ``N_axis`` instead of all grid points.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, axis: int) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) <= 0:
            raise ValueError(f"AxisReducer: dims must be positive, got {in_dim}, {hidden_dim}, {out_dim}")
        self.axis = axis
        self.to_in = nn.Linear(in_dim, hidden_dim, bias=False)
        self.norm = nn.LayerNorm(hidden_dim)
        self.fc1 = nn.Linear(hidden_dim, 2 * hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: Tensor, positions: Sequence[Tensor] | None = None) -> Tensor:
        z = self.fc1(self.norm(self.to_in(axis_mean_pool(x, self.axis))))
        gate, value = z.chunk(2, dim=-1)
        return self.fc2(F.gelu(gate) * value)


def _instance_norm_grid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Normalise each channel of ``x (b, *grid, c)`` over the grid (``nn.InstanceNormNd``, no affine)."""
    dims = tuple(range(1, x.dim() - 1))
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps)


def _head_norm_grid(x: Tensor, heads: int, eps: float = 1e-8) -> Tensor:
    """Normalise each head's channels of ``x (b, *grid, heads * c)`` jointly over the grid and the head's
    ``c`` channels (FactFormer's ``GroupNorm(heads, ..., domain_wise=True, affine=False)``: unbiased
    variance, ``eps`` added to it)."""
    shape = x.shape
    g = x.reshape(shape[0], -1, heads, shape[-1] // heads)
    var, mean = torch.var_mean(g, dim=(1, 3), keepdim=True, correction=1)
    return ((g - mean) / torch.sqrt(var + eps)).reshape(shape)


OUT_NORMS = ("instance", "head")


class FactorizedAttention(nn.Module):
    """Factorised kernel attention over a 2-D / 3-D grid (FactFormer ``FABlock``; IFactFormer-m parallel).

    ``forward(x (b, N_1, ..., N_n, dim)) -> (b, N_1, ..., N_n, dim_out)`` with ``n = spatial_dims``:

    1. ``u = in_norm(x)`` (LayerNorm); values ``v = to_v(u)`` with ``heads`` heads of ``dim_head``;
       ``u = to_in(u)`` (linear, no bias).
    2. Per axis ``a``: ``s_a = reducers[a](u)`` ``(b, N_a, latent_dim)`` (:class:`AxisReducer`);
       ``q_a = to_q[a](s_a)``, ``k_a = to_k[a](s_a)`` with ``heads`` heads of
       ``dim_head * kernel_multiplier`` (linear, no bias, Xavier-uniform with gain 0.02 as FactFormer);
       optional RoPE on ``q_a, k_a`` at grid indices ``0..N_a-1``.
    3. ``factorized_attention(q, k, v, mode, combine, scale, quadrature)``; heads concatenated.
    4. ``out_norm``: ``"instance"`` (default; each channel over the grid, as IFactFormer-m's
       ``InstanceNorm3d``) or ``"head"`` (each head's channels jointly over the grid, FactFormer's
       domain-wise ``GroupNorm``); then ``to_out``: linear (no bias) -> GELU -> linear (no bias). In
       ``mode="parallel"`` with ``combine="concat"`` (IFactFormer-m) the first linear takes
       ``n · heads · dim_head`` features.

    ``forward(x, positions)``: ``positions`` (one 1-D tensor of length ``N_a`` per axis) are the RoPE
    positions, multiplied by ``rope_scale``; default ``0 .. N_a - 1``. FactFormer rotates at physical
    coordinates ``linspace(0, 2 pi, N_a)`` times ``1 / min_freq = 64`` with base 10000 and the same
    rotate-half layout: ``positions=[linspace(0, 2 pi, N)] * n, rope_scale=64`` reproduces it.

    ``scale=None`` follows FactFormer: ``1 / sqrt(dim_head * kernel_multiplier)`` if ``kernel_multiplier
    > 4`` else 1. ``quadrature=True`` divides ``K_a`` by ``N_a`` (not done by FactFormer).

    Differences from the reference code: the output instance norm normalises each channel over the grid
    (FactFormer applies ``nn.InstanceNorm2d/3d`` to a channels-last tensor, which normalises over the wrong
    axes; IFactFormer-m rearranges first, as done here); pooling precedes the linear maps (identical
    result); RoPE is optional, off by default, and uses this project's rotate-half RoPE at integer grid
    positions (FactFormer rotates with its own frequencies at physical coordinates, on by default).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        *,
        latent_dim: int | None = None,
        dim_out: int | None = None,
        spatial_dims: int = 2,
        mode: str = "chained",
        combine: str = "concat",
        kernel_multiplier: int = 3,
        scale: float | None = None,
        quadrature: bool = False,
        rope: bool = False,
        rope_base: float = 10000.0,
        rope_scale: float = 1.0,
        out_norm: str = "instance",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, (2, 3))
        if mode not in MODES:
            raise ValueError(f"FactorizedAttention: unknown mode {mode!r}; expected one of {MODES}")
        if combine not in COMBINES:
            raise ValueError(f"FactorizedAttention: unknown combine {combine!r}; expected one of {COMBINES}")
        if out_norm not in OUT_NORMS:
            raise ValueError(
                f"FactorizedAttention: unknown out_norm {out_norm!r}; expected one of {OUT_NORMS}"
            )
        latent_dim = dim if latent_dim is None else latent_dim
        dim_out = dim if dim_out is None else dim_out
        if min(dim, heads, dim_head, latent_dim, dim_out, kernel_multiplier) <= 0:
            raise ValueError(
                "FactorizedAttention: dim, heads, dim_head, latent_dim, dim_out and kernel_multiplier must "
                f"be positive, got {dim}, {heads}, {dim_head}, {latent_dim}, {dim_out}, {kernel_multiplier}"
            )
        qk_dim = dim_head * kernel_multiplier
        if rope and qk_dim % 2:
            raise ValueError(
                f"FactorizedAttention: RoPE needs an even dim_head * kernel_multiplier, got {qk_dim}"
            )
        self.dim = dim
        self.heads = heads
        self.dim_head = dim_head
        self.qk_dim = qk_dim
        self.spatial_dims = spatial_dims
        self.mode = mode
        self.combine = combine
        self.scale = (1.0 / math.sqrt(qk_dim) if kernel_multiplier > 4 else 1.0) if scale is None else scale
        self.quadrature = quadrature
        self.rope = rope
        self.rope_base = rope_base
        self.rope_scale = rope_scale
        self.out_norm = out_norm

        self.in_norm = nn.LayerNorm(dim)
        self.to_v = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_in = nn.Linear(dim, dim, bias=False)
        self.reducers = nn.ModuleList(AxisReducer(dim, dim, latent_dim, axis=a) for a in range(spatial_dims))
        self.to_q = nn.ModuleList(
            nn.Linear(latent_dim, heads * qk_dim, bias=False) for _ in range(spatial_dims)
        )
        self.to_k = nn.ModuleList(
            nn.Linear(latent_dim, heads * qk_dim, bias=False) for _ in range(spatial_dims)
        )
        for layer in (*self.to_q, *self.to_k):
            nn.init.xavier_uniform_(layer.weight, gain=0.02)
        parts = spatial_dims if (mode == "parallel" and combine == "concat") else 1
        self.to_out = nn.Sequential(
            nn.Linear(parts * heads * dim_head, dim_out, bias=False),
            nn.GELU(),
            nn.Linear(dim_out, dim_out, bias=False),
        )

    def _heads(self, t: Tensor) -> Tensor:
        """``(b, N, heads * d) -> (b, heads, N, d)``."""
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)

    def axis_queries_keys(
        self, u: Tensor, positions: Sequence[Tensor] | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per-axis ``q_a, k_a (b, heads, N_a, dim_head * kernel_multiplier)`` from ``to_in(in_norm(x))``."""
        qs, ks = [], []
        for a in range(self.spatial_dims):
            s = self.reducers[a](u)
            q, k = self._heads(self.to_q[a](s)), self._heads(self.to_k[a](s))
            if self.rope:
                pos = torch.arange(s.shape[1], device=s.device) if positions is None else positions[a]
                if pos.shape != (s.shape[1],):
                    raise ValueError(
                        f"FactorizedAttention: positions of axis {a} must be ({s.shape[1]},), "
                        f"got {tuple(pos.shape)}"
                    )
                pos = pos.to(s.device) * self.rope_scale
                cos, sin = rope_cos_sin(pos, self.qk_dim, base=self.rope_base, dtype=q.dtype)
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            qs.append(q)
            ks.append(k)
        return qs, ks

    def forward(self, x: Tensor, positions: Sequence[Tensor] | None = None) -> Tensor:
        if x.dim() != self.spatial_dims + 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"FactorizedAttention: x must be (b, *grid ({self.spatial_dims} axes), {self.dim}), "
                f"got {tuple(x.shape)}"
            )
        u = self.in_norm(x)
        v = self.to_v(u)  # (b, *grid, heads * dim_head)
        v = v.reshape(*v.shape[:-1], self.heads, self.dim_head).movedim(-2, 1)  # (b, heads, *grid, dh)
        qs, ks = self.axis_queries_keys(self.to_in(u), positions)
        out = factorized_attention(
            qs, ks, v, mode=self.mode, combine=self.combine, scale=self.scale, quadrature=self.quadrature
        )
        out = out.movedim(1, -2).flatten(-2)  # (b, *grid, heads * c)
        out = _head_norm_grid(out, self.heads) if self.out_norm == "head" else _instance_norm_grid(out)
        return self.to_out(out)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, "
            f"spatial_dims={self.spatial_dims}, mode={self.mode!r}, combine={self.combine!r}, "
            f"scale={self.scale:g}, quadrature={self.quadrature}, out_norm={self.out_norm!r}"
        )
