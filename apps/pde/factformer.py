"""FactFormer (Li, Shu & Barati Farimani, "Scalable Transformer for PDE Surrogate Modeling", NeurIPS
2023; github.com/BaratiLab/FactFormer, MIT), written from the paper and the reference code.

The 2-D Kolmogorov-flow model (``FactFormer2D`` of ``examples/turb_ns2d_fact_lm.py`` with
``configs/ns2d_fact_lm.yml``, here the default config, 3,463,489 parameters)::

    frames (b, T_in, nx, ny) --normalise--> (b, nx, ny, T_in) --Linear--> (b, nx, ny, dim)
    depth x [ u += Linear(FourierFeatures(x, y));  u = FABlock(u) + u ]
    u = expand_latent(u)                                   (latent_dim = dim * latent_multiplier)
    for step in 1..S:  u = u + time_emb[step];  u = MLP(LN(u)) + u;  out[step] = head(u)
    head: GroupNorm -> grouped 1x1 conv -> GELU -> 1x1 conv -> GELU -> 1x1 conv      (b, S, nx, ny)

``FABlock`` is :class:`hybrids.shared_blocks.factorized_attention.FactorizedAttention` in ``"chained"``
mode: per axis a pooled 1-D sub-function gives queries and keys of a softmax-free kernel ``K_a = q_a
k_a^T`` (RoPE at the physical coordinates ``linspace(0, 2 pi, N)`` times 64), applied to the values axis
after axis; FactFormer's head-wise domain norm; output MLP. Position features are FactFormer's random
Gaussian Fourier features (``B ~ N(0, 8^2)``, fixed: a buffer, so not counted as a parameter, as the
reference's ``requires_grad=False`` matrix is not counted by its trainer).

The 3-D variant (``spatial_dims=3``, FABlock3D; ``examples/turb_ns3d_fact_lm.py``) has the convolutional
stem of the reference's 3-D model (``stem="conv"``: a per-field 1x1 conv, GELU, a conv over the time
window) and the same latent propagator.

Differences from the reference code, which crashes as published (its ``FABlock2D`` takes the coordinates
as a second argument that its own ``FactorizedTransformer`` passes, but its einops patterns break under
einops 0.8): this model normalises its input and output itself (``norm_mean``/``norm_std``, the
training set's statistics, stored with the config), so it maps vorticity to vorticity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError
from hybrids.shared_blocks.factorized_attention import FactorizedAttention

__all__ = ["FactFormer", "FactFormerConfig", "FourierFeatures", "grid_coordinates"]


def grid_coordinates(grid: tuple[int, ...], length: float, device: Any = None) -> list[Tensor]:
    """FactFormer's per-axis coordinates ``linspace(0, length, N_a)`` (end point included, as there)."""
    return [torch.linspace(0.0, length, n, device=device) for n in grid]


class FourierFeatures(nn.Module):
    """Random Fourier features ``[sin(2 pi x B), cos(2 pi x B)]`` of coordinates ``x (..., d)`` with a fixed
    Gaussian ``B (d, m)`` of standard deviation ``scale`` (Tancik et al. 2020; FactFormer's
    ``GaussianFourierFeatureTransform``), giving ``2 m`` features."""

    def __init__(self, in_dims: int, mapping: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("B", torch.randn(in_dims, mapping) * scale)

    def forward(self, coords: Tensor) -> Tensor:
        x = 2 * math.pi * (coords @ self.B.to(coords.dtype))
        return torch.cat([torch.sin(x), torch.cos(x)], dim=-1)


class ConvStem(nn.Module):
    """The 3-D models' (and IFactFormer-m's) stem: ``(b, *grid, fields * T)`` -> ``(b, *grid, dim)`` by a
    per-field 1x1 conv to ``dim / 2`` channels, GELU, and a conv over the ``T`` frames (no bias)."""

    def __init__(self, fields: int, frames: int, dim: int) -> None:
        super().__init__()
        self.fields, self.frames = fields, frames
        self.pointwise = nn.Conv2d(fields, dim // 2, kernel_size=1, groups=fields)
        self.act = nn.GELU()
        self.temporal = nn.Conv2d(dim // 2, dim, kernel_size=(frames, 1), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, *grid, _ = x.shape
        u = x.reshape(b, -1, self.frames, self.fields).permute(0, 3, 2, 1)  # (b, fields, T, N)
        u = self.temporal(self.act(self.pointwise(u)))  # (b, dim, 1, N)
        return u[:, :, 0].transpose(1, 2).reshape(b, *grid, -1)


@dataclass
class FactFormerConfig(ModelConfig):
    """FactFormer; the defaults are the 2-D Kolmogorov-flow config (``ns2d_fact_lm.yml``)."""

    spatial_dims: int = 2
    in_frames: int = 10  # in_time_window
    fields: int = 1  # in_dim = out_dim
    dim: int = 128
    depth: int = 4
    heads: int = 8
    dim_head: int = 64
    kernel_multiplier: int = 2
    latent_multiplier: float = 2.0
    max_latent_steps: int = 4
    stem: str = "linear"  # "linear" (2-D reference) or "conv" (3-D reference)
    head_groups: int | None = None  # GroupNorm groups of the head; default 8 * latent_multiplier (2-D)
    fourier_scale: float = 8.0
    rope: bool = True
    rope_scale: float = 64.0  # 1 / min_freq of the reference's rotary embedding
    length: float = 2 * math.pi  # domain length of every axis (coordinates for RoPE and features)
    grid: int = 128  # the resolution the model was trained at (checked by rollout)
    norm_mean: float = 0.0
    norm_std: float = 1.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "km2d": {},
        # what a 2-core CPU trains in minutes at 64^2: the reference's shape, a quarter of its width
        "small": {"dim": 32, "heads": 4, "dim_head": 16, "grid": 64},
        "tiny": {"dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "grid": 16, "max_latent_steps": 2},
        # the 3-D turbulence model (ns3d_fact_lm.yml): 4 fields, 6 heads, kernel multiplier 3
        "ns3d": {
            "spatial_dims": 3,
            "fields": 4,
            "heads": 6,
            "kernel_multiplier": 3,
            "latent_multiplier": 1.5,
            "max_latent_steps": 2,
            "stem": "conv",
            "head_groups": 8,
            "grid": 64,
        },
        "tiny3d": {
            "spatial_dims": 3,
            "dim": 16,
            "depth": 1,
            "heads": 2,
            "dim_head": 8,
            "stem": "conv",
            "head_groups": 4,
            "grid": 8,
            "max_latent_steps": 2,
        },
    }

    def validate(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise InputError(f"FactFormerConfig: spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.stem not in ("linear", "conv"):
            raise InputError(f"FactFormerConfig: stem must be 'linear' or 'conv', got {self.stem!r}")
        if min(self.in_frames, self.fields, self.dim, self.depth, self.heads, self.dim_head) < 1:
            raise InputError("FactFormerConfig: in_frames, fields, dim, depth, heads, dim_head must be >= 1")
        if self.max_latent_steps < 1 or not self.norm_std > 0 or self.dim % 8:
            raise InputError("FactFormerConfig: max_latent_steps >= 1, norm_std > 0, dim a multiple of 8")

    @property
    def latent_dim(self) -> int:
        return int(self.dim * self.latent_multiplier)


class FactFormer(nn.Module):
    """FactFormer for ``spatial_dims``-D fields (module docstring).

    ``forward(frames (b, in_frames, *grid) [or (b, in_frames, fields, *grid)], steps=1) -> (b, steps,
    *grid)`` (with ``fields`` after ``steps`` when ``fields > 1``): the next ``steps <= max_latent_steps``
    frames from one encoding, vorticity in, vorticity out.
    """

    def __init__(self, config: FactFormerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.spatial_dims = c.spatial_dims
        self.in_frames = c.in_frames
        self.max_steps = c.max_latent_steps
        if c.stem == "linear":
            self.to_in: nn.Module = nn.Linear(c.in_frames * c.fields, c.dim)
        else:
            self.to_in = ConvStem(c.fields, c.in_frames, c.dim)
        self.pos_enc = nn.ModuleList(
            nn.Sequential(
                FourierFeatures(c.spatial_dims, c.dim // 2, c.fourier_scale), nn.Linear(c.dim, c.dim)
            )
            for _ in range(c.depth)
        )
        self.blocks = nn.ModuleList(
            FactorizedAttention(
                c.dim,
                heads=c.heads,
                dim_head=c.dim_head,
                spatial_dims=c.spatial_dims,
                mode="chained",
                kernel_multiplier=c.kernel_multiplier,
                rope=c.rope,
                rope_scale=c.rope_scale,
                out_norm="head",
            )
            for _ in range(c.depth)
        )
        latent = c.latent_dim
        self.expand_latent = nn.Linear(c.dim, latent, bias=False)
        self.latent_time_emb = nn.Parameter(torch.randn(c.max_latent_steps, latent) * 0.02)
        self.propagator = nn.Sequential(
            nn.LayerNorm(latent), nn.Linear(latent, c.dim), nn.GELU(), nn.Linear(c.dim, latent)
        )
        groups = c.head_groups or int(8 * c.latent_multiplier)
        self.head = nn.Sequential(
            nn.GroupNorm(groups, latent),
            nn.Conv1d(latent, c.dim, kernel_size=1, groups=8, bias=False),
            nn.GELU(),
            nn.Conv1d(c.dim, c.dim // 2, kernel_size=1, bias=False),
            nn.GELU(),
            nn.Conv1d(c.dim // 2, c.fields, kernel_size=1),
        )

    def encode(self, frames: Tensor) -> Tensor:
        """``(b, T, [fields,] *grid)`` -> latent ``(b, *grid, dim)``."""
        c = self.config
        x = (frames - c.norm_mean) / c.norm_std
        if c.fields == 1 and x.dim() == self.spatial_dims + 2:
            x = x.unsqueeze(2)
        if x.dim() != self.spatial_dims + 3 or x.shape[1] != c.in_frames or x.shape[2] != c.fields:
            raise ValueError(
                f"FactFormer: frames must be (b, {c.in_frames}, [{c.fields},] *grid "
                f"({self.spatial_dims} axes)), "
                f"got {tuple(frames.shape)}"
            )
        b, t, f, *grid = x.shape
        x = x.permute(0, *range(3, 3 + self.spatial_dims), 1, 2).reshape(b, *grid, t * f)  # time-major
        u = self.to_in(x)
        coords = grid_coordinates(tuple(grid), c.length, device=x.device)
        mesh = torch.stack(torch.meshgrid(*coords, indexing="ij"), dim=-1)  # (*grid, dims)
        for pos_enc, block in zip(self.pos_enc, self.blocks):
            u = u + pos_enc(mesh.to(u.dtype))
            u = block(u, coords) + u
        return u

    def forward(self, frames: Tensor, steps: int = 1) -> Tensor:
        c = self.config
        if not 1 <= steps <= c.max_latent_steps:
            raise ValueError(f"FactFormer: steps must be in 1..{c.max_latent_steps}, got {steps}")
        u = self.expand_latent(self.encode(frames))
        b, *grid, latent = u.shape
        outs = []
        for s in range(steps):
            u = u + self.latent_time_emb[s]
            u = self.propagator(u) + u
            outs.append(u)
        z = torch.cat(outs, dim=0).reshape(steps * b, -1, latent).transpose(1, 2)  # (s b, latent, N)
        y = self.head(z).reshape(steps, b, c.fields, *grid).transpose(0, 1)  # (b, s, fields, *grid)
        y = y * c.norm_std + c.norm_mean
        return y[:, :, 0] if c.fields == 1 else y
