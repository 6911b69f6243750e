"""IFactFormer-m: the implicit factorised transformer with parallel factorisation (Yang, Wang & Wang,
"Implicit factorized transformer approach to fast prediction of turbulent channel flows", 2024;
github.com/huiyu-2002/IFactFormer-m), written from the paper and the reference code.

One factorised block with shared weights is iterated ``iterations`` times as an implicit (fixed-point
like) update, ``u <- u + F(u) / iterations``; its axis kernels act in parallel on the same values,
``[K_x V | K_y V (| K_z V)]`` concatenated per head, then an instance norm and an MLP
(:class:`hybrids.shared_blocks.factorized_attention.FactorizedAttention`, ``mode="parallel"``)::

    frames (b, T, [fields,] *grid) --normalise--> conv stem (per-field 1x1 conv, GELU, conv over T)
    depth x [ u += Linear(FourierFeatures(coords));  iterations x  u = u + FABlock_m(u) / iterations ]
    1x1 conv -> GELU -> 1x1 conv                                   next frame (b, 1, [fields,] *grid)

The reference configuration (``configs/IFactFormer.yml``: dim 96, 5 heads, dim_head 96, kernel multiplier
3, depth 1, 10 iterations, 3 velocity fields, one input frame, 3-D channel flow) is the ``channel3d``
preset. Its notebook prints 1,181,763 parameters: that run's block still had a second output MLP
(``to_out_1``, 2 x 96 x 96 = 18,432 weights) that the repository's code removed afterwards (commit
003b490); the current code, and ``channel3d`` here, have 1,163,331 (the notebook's count includes the
144 fixed Fourier-feature weights, which are a buffer here: 1,163,187 parameters). The default config is
the same block for 2-D Kolmogorov flow (1 field, 10 input frames). The reference's block fails under
einops 0.8 (a ``Rearrange`` given an axis length its pattern does not name); this one runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError
from hybrids.apps.pde.factformer import ConvStem, FourierFeatures, grid_coordinates
from hybrids.shared_blocks.factorized_attention import FactorizedAttention

__all__ = ["IFactFormer", "IFactFormerConfig"]


@dataclass
class IFactFormerConfig(ModelConfig):
    """IFactFormer-m; defaults: the reference block on 2-D Kolmogorov flow (10 frames -> the next)."""

    spatial_dims: int = 2
    in_frames: int = 10
    fields: int = 1
    dim: int = 96
    depth: int = 1
    heads: int = 5
    dim_head: int = 96
    kernel_multiplier: int = 3
    iterations: int = 10  # n_layer: applications of the shared block
    fourier_scale: float = 8.0
    rope: bool = True
    rope_scale: float = 64.0
    length: float = 2 * math.pi
    grid: int = 128
    norm_mean: float = 0.0
    norm_std: float = 1.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "km2d": {},
        # parameter-matched to factformer 'small' (133,753 vs 136,529), 10 iterations kept
        "small": {"dim": 48, "heads": 3, "dim_head": 44, "grid": 64},
        "tiny": {"dim": 16, "heads": 2, "dim_head": 8, "iterations": 3, "grid": 16},
        "channel3d": {"spatial_dims": 3, "fields": 3, "in_frames": 1, "grid": 32},
        "tiny3d": {"spatial_dims": 3, "dim": 16, "heads": 2, "dim_head": 8, "iterations": 2, "grid": 8},
    }

    def validate(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise InputError(f"IFactFormerConfig: spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if (
            min(self.in_frames, self.fields, self.dim, self.depth, self.heads, self.dim_head, self.iterations)
            < 1
        ):
            raise InputError("IFactFormerConfig: sizes and iterations must be >= 1")
        if not self.norm_std > 0 or self.dim % 2:
            raise InputError("IFactFormerConfig: norm_std must be > 0 and dim even")


class IFactFormer(nn.Module):
    """IFactFormer-m (module docstring). ``forward(frames (b, in_frames, [fields,] *grid), steps=1)`` ->
    ``(b, 1, [fields,] *grid)``: one frame per call (``max_steps = 1``)."""

    def __init__(self, config: IFactFormerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.spatial_dims = c.spatial_dims
        self.in_frames = c.in_frames
        self.max_steps = 1
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
                mode="parallel",
                combine="concat",
                kernel_multiplier=c.kernel_multiplier,
                rope=c.rope,
                rope_scale=c.rope_scale,
                out_norm="instance",
            )
            for _ in range(c.depth)
        )
        self.to_out = nn.Sequential(
            nn.Linear(c.dim, c.dim // 2, bias=False), nn.GELU(), nn.Linear(c.dim // 2, c.fields)
        )

    def forward(self, frames: Tensor, steps: int = 1) -> Tensor:
        c = self.config
        if steps != 1:
            raise ValueError(f"IFactFormer: predicts one frame per call, got steps={steps}")
        x = (frames - c.norm_mean) / c.norm_std
        if c.fields == 1 and x.dim() == self.spatial_dims + 2:
            x = x.unsqueeze(2)
        if x.dim() != self.spatial_dims + 3 or x.shape[1] != c.in_frames or x.shape[2] != c.fields:
            raise ValueError(
                f"IFactFormer: frames must be (b, {c.in_frames}, [{c.fields},] *grid ({self.spatial_dims} "
                f"axes)), got {tuple(frames.shape)}"
            )
        b, t, f, *grid = x.shape
        x = x.permute(0, *range(3, 3 + self.spatial_dims), 1, 2).reshape(b, *grid, t * f)
        u = self.to_in(x)
        coords = grid_coordinates(tuple(grid), c.length, device=x.device)
        mesh = torch.stack(torch.meshgrid(*coords, indexing="ij"), dim=-1)
        for pos_enc, block in zip(self.pos_enc, self.blocks):
            u = u + pos_enc(mesh.to(u.dtype))
            for _ in range(c.iterations):
                u = u + block(u, coords) / c.iterations
        y = self.to_out(u)  # (b, *grid, fields)
        y = y.movedim(-1, 1).unsqueeze(1) * c.norm_std + c.norm_mean  # (b, 1, fields, *grid)
        return y[:, :, 0] if c.fields == 1 else y
