"""Rotary position embedding (RoFormer, Su et al. 2021, Sec. 3.4) as functional kernels.

Layout: the "rotate_half" convention of GPT-NeoX / LLaMA in Hugging Face transformers. Channel ``i`` and
channel ``i + d/2`` form a rotated pair with frequency ``base ** (-2i / d)``; this is *not* the
interleaved (even, odd) pairing of the original RoFormer / Meta LLaMA code, whose weights need a
permutation of the q/k projection rows to be used here.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_rope", "rope_cos_sin", "rotate_half"]


def rope_cos_sin(
    positions: Tensor,
    head_dim: int,
    base: float = 10000.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Cos/sin tables for rotary embeddings.

    Args:
        positions: integer or float positions of any shape ``P`` (e.g. ``(seq,)`` or ``(b, seq)``).
        head_dim: even number of rotated channels ``d``.
        base: frequency base (10000 in RoFormer/LLaMA).
        dtype: dtype of the returned tables (computed in float32, float64 if requested).

    Returns:
        ``(cos, sin)``, each of shape ``(*P, d)``: ``angle[..., i] = pos * base ** (-2 (i mod d/2) / d)``.
    """
    if head_dim <= 0 or head_dim % 2 != 0:
        raise ValueError(f"rope_cos_sin: head_dim must be a positive even number, got {head_dim}")
    if base <= 0:
        raise ValueError(f"rope_cos_sin: base must be positive, got {base}")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = base ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=compute) / head_dim)
    angles = positions.to(compute)[..., None] * inv_freq  # (*P, d/2)
    angles = torch.cat((angles, angles), dim=-1)  # (*P, d)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """``(..., d) -> (..., d)``: ``[x1, x2] -> [-x2, x1]`` with ``x1, x2`` the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x (..., seq, head_dim)`` by the tables from :func:`rope_cos_sin`.

    ``cos``/``sin`` have last dim ``r <= head_dim`` and broadcast against ``x[..., :r]`` (e.g.
    ``(seq, r)`` for shared positions, ``(b, 1, seq, r)`` for per-sample positions with heads at dim 1).
    Only the first ``r`` channels are rotated (partial rotary as in GPT-NeoX's ``rotary_pct``); the rest
    pass through. Returns a tensor shaped and typed like ``x``: ``x * cos + rotate_half(x) * sin``.
    """
    if cos.shape != sin.shape:
        raise ValueError(f"apply_rope: cos {tuple(cos.shape)} and sin {tuple(sin.shape)} differ in shape")
    rot = cos.shape[-1]
    if rot % 2 != 0 or rot > x.shape[-1]:
        raise ValueError(f"apply_rope: rotary dim {rot} must be even and <= x's last dim {x.shape[-1]}")
    if rot < x.shape[-1]:
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        return torch.cat((apply_rope(x_rot, cos, sin), x_pass), dim=-1)
    return (x * cos + rotate_half(x) * sin).to(x.dtype)
