"""Positional encodings: demucs-layout sinusoidal 1-D/2-D tables and a cached rotary embedding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hybrids.kernels.rope import apply_rope, rope_cos_sin

__all__ = ["RotaryEmbedding", "sinusoidal_embedding_1d", "sinusoidal_embedding_2d"]


def sinusoidal_embedding_1d(
    length: int,
    dim: int,
    *,
    shift: int = 0,
    max_period: float = 10000.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sinusoidal 1-D table ``(length, dim)`` in the layout of demucs's ``create_sin_embedding``.

    With ``half = dim // 2``, ``pos = shift + t`` and ``phase[t, i] = pos / max_period ** (i / (half - 1))``
    for ``i < half``, the table is ``[cos(phase), sin(phase)]`` (cosines in the first half of channels).
    Used by HT Demucs (Rouard et al. 2023) on its cross-domain transformer input. ``dim`` must be even
    and >= 4 (with ``half = 1`` the exponent is 0/0).
    """
    if length < 0:
        raise ValueError(f"sinusoidal_embedding_1d: length must be >= 0, got {length}")
    if dim < 4 or dim % 2 != 0:
        raise ValueError(f"sinusoidal_embedding_1d: dim must be even and >= 4, got {dim}")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    half = dim // 2
    pos = shift + torch.arange(length, device=device, dtype=compute)[:, None]
    exponent = torch.arange(half, device=device, dtype=compute) / (half - 1)
    phase = pos / (max_period**exponent)
    return torch.cat((phase.cos(), phase.sin()), dim=-1).to(dtype)


def sinusoidal_embedding_2d(
    dim: int,
    height: int,
    width: int,
    max_period: float = 10000.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sinusoidal 2-D table ``(dim, height, width)`` in the layout of demucs's ``create_2d_sin_embedding``.

    With ``q = dim // 2`` and ``div[j] = exp(-2j * log(max_period) / q)`` for ``j < q / 2``:
    channels ``[0, q)`` encode the width position ``w`` (``2j: sin(w div[j])``, ``2j+1: cos(w div[j])``),
    channels ``[q, dim)`` encode the height position ``h`` the same way. ``dim`` must be divisible by 4.
    Used by HT Demucs on the spectrogram branch of its cross-domain transformer.
    """
    if dim <= 0 or dim % 4 != 0:
        raise ValueError(f"sinusoidal_embedding_2d: dim must be a positive multiple of 4, got {dim}")
    if height < 0 or width < 0:
        raise ValueError(f"sinusoidal_embedding_2d: height and width must be >= 0, got {height}, {width}")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    quarter_pairs = dim // 2
    div_term = torch.exp(
        torch.arange(0, quarter_pairs, 2, device=device, dtype=compute)
        * -(math.log(max_period) / quarter_pairs)
    )  # (dim // 4,)

    def axis_table(n: int) -> Tensor:
        """``(dim // 2, n)``: interleaved sin (even rows) / cos (odd rows) of ``pos * div_term``."""
        angle = div_term[:, None] * torch.arange(n, device=device, dtype=compute)  # (dim // 4, n)
        return torch.stack((angle.sin(), angle.cos()), dim=1).reshape(quarter_pairs, n)

    pe_w = axis_table(width)[:, None, :].expand(quarter_pairs, height, width)
    pe_h = axis_table(height)[:, :, None].expand(quarter_pairs, height, width)
    return torch.cat((pe_w, pe_h), dim=0).to(dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding module (RoFormer, Su et al. 2021) over :mod:`hybrids.kernels.rope`.

    ``forward(x, positions=None, offset=0)`` rotates ``x (b, h, seq, head_dim)`` (any leading dims).
    ``positions``: ``(seq,)`` or ``(b, seq)``; by default ``offset + arange(seq)``, whose cos/sin
    tables are cached and grown on demand (non-persistent buffers: nothing lands in state dicts).
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim <= 0 or head_dim % 2 != 0:
            raise ValueError(f"RotaryEmbedding: head_dim must be a positive even number, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self.register_buffer("_cos", torch.empty(0, head_dim), persistent=False)
        self.register_buffer("_sin", torch.empty(0, head_dim), persistent=False)

    def cos_sin(
        self,
        seq_len: int,
        *,
        positions: Tensor | None = None,
        offset: int = 0,
        device: torch.device | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Float32 tables ``(seq_len, head_dim)`` (or ``(*positions.shape, head_dim)``)."""
        if positions is not None:
            if positions.shape[-1] != seq_len:
                raise ValueError(
                    f"RotaryEmbedding: positions {tuple(positions.shape)} do not match seq_len {seq_len}"
                )
            return rope_cos_sin(positions, self.head_dim, self.base)
        device = self._cos.device if device is None else device
        end = offset + seq_len
        if self._cos.shape[0] < end or self._cos.device != device:
            size = max(end, 2 * self._cos.shape[0], 16)
            cos, sin = rope_cos_sin(torch.arange(size, device=device), self.head_dim, self.base)
            self._cos, self._sin = cos, sin
        return self._cos[offset:end], self._sin[offset:end]

    def forward(self, x: Tensor, positions: Tensor | None = None, offset: int = 0) -> Tensor:
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"RotaryEmbedding: expected last dim {self.head_dim}, got {tuple(x.shape)}")
        cos, sin = self.cos_sin(x.shape[-2], positions=positions, offset=offset, device=x.device)
        if positions is not None and positions.dim() == 2 and x.dim() == 4:
            cos, sin = cos[:, None], sin[:, None]  # (b, seq, d) -> (b, 1, seq, d) to broadcast over heads
        return apply_rope(x, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"
