"""Transformer layers: pre/post-norm self-attention encoder layer and a cross-attention layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybrids.shared_blocks.attention import MultiHeadAttention
from hybrids.shared_blocks.factories import ACTIVATIONS, norm_layer
from hybrids.shared_blocks.mlp import Mlp, SwiGLU

__all__ = ["LayerScale", "TransformerCrossLayer", "TransformerEncoderLayer"]

MLPS = (*ACTIVATIONS, "swiglu")


class LayerScale(nn.Module):
    """Per-channel residual-branch scale (Touvron et al. 2021, CaiT Sec. 2.1): ``x * scale``.

    ``(..., dim) -> (..., dim)``; ``scale`` is a ``(dim,)`` parameter initialised to ``init``.
    """

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _make_mlp(kind: str, dim: int, mlp_ratio: float, dropout: float) -> nn.Module:
    hidden = int(dim * mlp_ratio)
    if hidden <= 0:
        raise ValueError(f"mlp_ratio {mlp_ratio} gives an empty hidden layer for dim {dim}")
    if kind == "swiglu":
        return SwiGLU(dim, hidden, dropout=dropout)
    if kind in ACTIVATIONS:
        return Mlp(dim, hidden, activation=kind, dropout=dropout)
    raise ValueError(f"unknown mlp {kind!r}; expected one of {MLPS}")


class _ResidualLayerBase(nn.Module):
    """Shared pieces: norm choice, MLP branch, optional LayerScale and residual dropout."""

    def _build_common(
        self,
        dim: int,
        mlp: str,
        mlp_ratio: float,
        norm: str,
        norm_eps: float,
        norm_first: bool,
        layer_scale: float | None,
        dropout: float,
    ) -> None:
        self.norm_first = norm_first
        self.norm1 = norm_layer(norm, dim, eps=norm_eps)
        self.norm2 = norm_layer(norm, dim, eps=norm_eps)
        self.mlp = _make_mlp(mlp, dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)
        self.ls1: nn.Module = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls2: nn.Module = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def _mlp_residual(self, x: Tensor) -> Tensor:
        if self.norm_first:
            return x + self.ls2(self.mlp(self.norm2(x)))
        return self.norm2(x + self.ls2(self.mlp(x)))


class TransformerEncoderLayer(_ResidualLayerBase):
    """Transformer encoder layer (Vaswani et al. 2017; pre-norm as in Xiong et al. 2020).

    ``forward(x (b, l, dim), *, key_padding_mask=None (b, l) True = padding, attn_mask=None,
    positions=None) -> (b, l, dim)``.

    - ``norm_first=True``: ``x + ls1(drop(attn(norm1(x))))``, then ``x + ls2(mlp(norm2(x)))``;
    - ``norm_first=False`` (post-norm): ``norm1(x + ls1(drop(attn(x))))``, then ``norm2(x + ls2(mlp(x)))``.

    With ``mlp="relu"|"gelu"``, ``norm="layernorm"`` and no layer scale this matches
    ``nn.TransformerEncoderLayer(batch_first=True)`` given the same weights. ``mlp="swiglu"`` uses
    ``int(dim * mlp_ratio)`` hidden units (LLaMA uses ``mlp_ratio = 8/3``). ``layer_scale`` (float) turns
    on :class:`LayerScale` with that initial value.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        mlp: str = "gelu",
        norm: str = "layernorm",
        norm_first: bool = True,
        layer_scale: float | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        qkv_bias: bool = True,
        num_kv_heads: int | None = None,
        rope: bool = False,
        causal: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(
            dim,
            num_heads,
            num_kv_heads=num_kv_heads,
            qkv_bias=qkv_bias,
            dropout=attn_dropout,
            rope=rope,
            causal=causal,
        )
        self._build_common(dim, mlp, mlp_ratio, norm, norm_eps, norm_first, layer_scale, dropout)

    def forward(
        self,
        x: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        def attend(h: Tensor) -> Tensor:
            out = self.attn(h, key_padding_mask=key_padding_mask, attn_mask=attn_mask, positions=positions)
            return self.ls1(self.drop(out))

        if self.norm_first:
            x = x + attend(self.norm1(x))
        else:
            x = self.norm1(x + attend(x))
        return self._mlp_residual(x)


class TransformerCrossLayer(_ResidualLayerBase):
    """Cross-attention transformer layer: queries from ``x``, keys/values from ``context``.

    As the cross-domain layers of HT Demucs (Rouard et al. 2023, Sec. 3; ``CrossTransformerEncoderLayer``):

    - ``norm_first=True``: ``x + ls1(drop(attn(norm1(x), norm_context(context))))``, then
      ``x + ls2(mlp(norm2(x)))``;
    - ``norm_first=False``: ``norm1(x + ls1(drop(attn(x, context))))``, then ``norm2(x + ls2(mlp(x)))``
      (``norm_context`` is unused).

    ``forward(x (b, lq, dim), context (b, lk, kv_dim), *, key_padding_mask=None (b, lk) True = padding,
    attn_mask=None) -> (b, lq, dim)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        kv_dim: int | None = None,
        mlp_ratio: float = 4.0,
        mlp: str = "gelu",
        norm: str = "layernorm",
        norm_first: bool = True,
        layer_scale: float | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        qkv_bias: bool = True,
        num_kv_heads: int | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        kv_dim = dim if kv_dim is None else kv_dim
        self.attn = MultiHeadAttention(
            dim,
            num_heads,
            num_kv_heads=num_kv_heads,
            kv_dim=kv_dim,
            qkv_bias=qkv_bias,
            dropout=attn_dropout,
        )
        self._build_common(dim, mlp, mlp_ratio, norm, norm_eps, norm_first, layer_scale, dropout)
        self.norm_context = norm_layer(norm, kv_dim, eps=norm_eps) if norm_first else nn.Identity()

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        def attend(h: Tensor) -> Tensor:
            out = self.attn(
                h, self.norm_context(context), key_padding_mask=key_padding_mask, attn_mask=attn_mask
            )
            return self.ls1(self.drop(out))

        if self.norm_first:
            x = x + attend(self.norm1(x))
        else:
            x = self.norm1(x + attend(x))
        return self._mlp_residual(x)
