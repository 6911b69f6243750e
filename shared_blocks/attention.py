"""Multi-head attention, written once for every transformer in the project.

:class:`MultiHeadAttention` covers self- and cross-attention, grouped-query heads, rotary position
embeddings, a KV cache for incremental decoding and (on request) the attention probabilities. Its
projection parameters follow one of :data:`LAYOUTS`, so published checkpoints keep their key names:

=============  =========================================  ===============================================
layout         parameters                                 used by
=============  =========================================  ===============================================
``separate``   ``q_proj``, ``k_proj``, ``v_proj``,        ``nn.MultiheadAttention``-style layers, LLaMA,
               ``out_proj``                               HybriDNA, :mod:`~hybrids.shared_blocks.transformer`
``fused``      ``qkv`` (rows ``[q; k; v]``), ``proj``     timm ``Attention``: DINO's ViT, HiFormer's DLF
``crossvit``   ``wq``, ``wk``, ``wv``, ``proj``           CrossViT's cross-attention (HiFormer's fusion)
=============  =========================================  ===============================================

The forward pass is the same for every layout; it runs on
:func:`hybrids.kernels.attention.sdpa.attention` (torch's fused ``scaled_dot_product_attention``) unless
the probabilities are asked for, in which case they are computed explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrids.kernels.attention.sdpa import attention, build_attention_mask
from hybrids.shared_blocks.positional import RotaryEmbedding

__all__ = ["LAYOUTS", "KVCache", "MultiHeadAttention", "attention_probabilities"]

LAYOUTS: dict[str, tuple[str, ...]] = {
    "separate": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "fused": ("qkv", "proj"),
    "crossvit": ("wq", "wk", "wv", "proj"),
}


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, for autoregressive decoding.

    ``k``, ``v``: ``(b, num_kv_heads, length, head_dim)`` (keys stored after RoPE) or ``None`` when empty.
    :meth:`MultiHeadAttention.forward` appends to it in place when given one.
    """

    k: Tensor | None = None
    v: Tensor | None = None

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Concatenate new ``k, v (b, hkv, l_new, d)`` along the sequence; return all keys and values."""
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            if k.shape[:2] != self.k.shape[:2] or k.shape[-1] != self.k.shape[-1]:
                raise ValueError(
                    f"KVCache: new keys {tuple(k.shape)} do not match cached keys {tuple(self.k.shape)}"
                )
            self.k = torch.cat((self.k, k), dim=-2)
            self.v = torch.cat((self.v, v), dim=-2)
        return self.k, self.v

    def reset(self) -> None:
        """Forget every cached position."""
        self.k = self.v = None


def attention_probabilities(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Explicit attention that also returns its probabilities: ``(out (b, h, lq, dv), probs (b, h, lq, lk))``.

    ``probs = softmax(q kᵀ · scale + mask)`` (computed in float32 at least), ``out = dropout(probs) · v``;
    shapes and mask conventions as :func:`hybrids.kernels.attention.sdpa.attention` (GQA: query head ``i``
    reads kv head ``i // (h // hkv)``; rows with every key masked give zeros). ``probs`` is returned
    before dropout, in ``q``'s dtype.
    """
    b, h, lq, _ = q.shape
    lk = k.shape[-2]
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (b, lk):
        raise ValueError(
            f"attention: key_padding_mask must have shape (b, lk) = {(b, lk)}, "
            f"got {tuple(key_padding_mask.shape)}"
        )
    if h % k.shape[1] != 0:
        raise ValueError(f"attention: query heads ({h}) must be a multiple of key/value heads ({k.shape[1]})")
    mask = build_attention_mask(
        lq, lk, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal, device=q.device
    )
    groups = h // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    compute = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) * scale
    empty = None
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
        scores = scores.masked_fill(empty, 0.0)  # softmax of an all -inf row is NaN
    probs = scores.softmax(dim=-1)
    if empty is not None:
        probs = probs.masked_fill(empty, 0.0)
    weights = F.dropout(probs, p=dropout_p, training=True) if dropout_p > 0.0 else probs
    return (weights @ v.to(compute)).to(q.dtype), probs.to(q.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, Sec. 3.2.2) with GQA (Ainslie et al. 2023) and RoPE.

    ``forward(x (b, lq, dim), context=None (b, lk, kv_dim), *, key_padding_mask=None (b, lk) bool True =
    padding, attn_mask=None (bool True = attend, or additive float; broadcastable to (b, h, lq, lk)),
    positions=None (lq,) or (b, lq), kv_cache=None, return_attention=False) -> (b, lq, dim)``, or
    ``(out, probs (b, num_heads, lq, lk))`` with ``return_attention=True`` (softmax probabilities before
    dropout, computed explicitly; otherwise fused SDPA runs and no ``lq x lk`` matrix is kept).

    Heads are consecutive ``head_dim`` slices of the projections (as in ``nn.MultiheadAttention``); keys
    and values have ``num_kv_heads`` heads and query head ``i`` uses kv head ``i // (num_heads //
    num_kv_heads)``. ``layout`` names the projection parameters (:data:`LAYOUTS`); ``fused`` holds
    ``[q; k; v]`` in one ``qkv`` linear (``kv_dim`` must equal ``dim``; with a ``context`` its rows are
    applied separately). ``scale`` defaults to ``head_dim ** -0.5``. ``dropout`` acts on the attention
    probabilities, ``proj_dropout`` after the output projection (timm's ``attn_drop`` / ``proj_drop``).
    ``causal`` masks future keys (bottom-right aligned, so it also holds while decoding with a cache).
    ``rope`` rotates q and k (self-attention only) at ``positions`` (default ``cache length + arange(lq)``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        kv_dim: int | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
        proj_dropout: float = 0.0,
        scale: float | None = None,
        rope: bool = False,
        rope_base: float = 10000.0,
        causal: bool = False,
        layout: str = "separate",
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim <= 0 or num_heads <= 0 or num_kv_heads <= 0:
            raise ValueError(
                f"MultiHeadAttention: dim ({dim}), num_heads ({num_heads}) and num_kv_heads "
                f"({num_kv_heads}) must be positive"
            )
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"MultiHeadAttention: num_heads ({num_heads}) must be a multiple of "
                f"num_kv_heads ({num_kv_heads})"
            )
        if head_dim is None:
            if dim % num_heads != 0:
                raise ValueError(
                    f"MultiHeadAttention: dim ({dim}) must be divisible by num_heads ({num_heads}) "
                    "unless head_dim is given"
                )
            head_dim = dim // num_heads
        if head_dim <= 0:
            raise ValueError(f"MultiHeadAttention: head_dim must be positive, got {head_dim}")
        if rope and head_dim % 2 != 0:
            raise ValueError(f"MultiHeadAttention: RoPE needs an even head_dim, got {head_dim}")
        for name, p in (("dropout", dropout), ("proj_dropout", proj_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"MultiHeadAttention: {name} must be in [0, 1), got {p}")
        if layout not in LAYOUTS:
            raise ValueError(
                f"MultiHeadAttention: unknown layout {layout!r}; expected one of {list(LAYOUTS)}"
            )
        kv_dim = dim if kv_dim is None else kv_dim
        if layout == "fused" and kv_dim != dim:
            raise ValueError(f"MultiHeadAttention: the fused layout needs kv_dim == dim, got {kv_dim}, {dim}")
        self.dim, self.kv_dim = dim, kv_dim
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5 if scale is None else float(scale)
        self.dropout = dropout
        self.causal = causal
        self.layout = layout
        q_out, kv_out = num_heads * head_dim, num_kv_heads * head_dim
        self._names = LAYOUTS[layout]
        if layout == "fused":
            self.qkv = nn.Linear(dim, q_out + 2 * kv_out, bias=qkv_bias)
        else:
            q_name, k_name, v_name = self._names[:3]
            self.add_module(q_name, nn.Linear(dim, q_out, bias=qkv_bias))
            self.add_module(k_name, nn.Linear(kv_dim, kv_out, bias=qkv_bias))
            self.add_module(v_name, nn.Linear(kv_dim, kv_out, bias=qkv_bias))
        self.add_module(self._names[-1], nn.Linear(q_out, dim, bias=out_bias))
        self.proj_drop = nn.Dropout(proj_dropout) if proj_dropout > 0.0 else nn.Identity()
        self.rotary = RotaryEmbedding(head_dim, rope_base) if rope else None

    @property
    def out_projection(self) -> nn.Linear:
        """The output linear layer (``out_proj`` or ``proj``, depending on the layout)."""
        return getattr(self, self._names[-1])

    def project(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries from ``x``, keys and values from ``context`` (default ``x``), before RoPE:
        ``q (b, num_heads, lq, head_dim)``, ``k, v (b, num_kv_heads, lk, head_dim)``."""
        b, lq, _ = x.shape
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self.layout == "fused":
            if context is None:
                q, k, v = self.qkv(x).split((q_out, kv_out, kv_out), dim=-1)
            else:
                weight, bias = self.qkv.weight, self.qkv.bias
                q = F.linear(x, weight[:q_out], None if bias is None else bias[:q_out])
                kv = F.linear(context, weight[q_out:], None if bias is None else bias[q_out:])
                k, v = kv.split((kv_out, kv_out), dim=-1)
        else:
            source = x if context is None else context
            q_proj, k_proj, v_proj = (getattr(self, name) for name in self._names[:3])
            q, k, v = q_proj(x), k_proj(source), v_proj(source)
        lk = k.shape[1]
        q = q.reshape(b, lq, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, lk, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, lk, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_attention: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"MultiHeadAttention: expected x (b, lq, {self.dim}), got {tuple(x.shape)}")
        if context is None:
            if self.kv_dim != self.dim:
                raise ValueError(
                    f"MultiHeadAttention: kv_dim ({self.kv_dim}) != dim ({self.dim}) needs a context tensor"
                )
        else:
            if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.kv_dim:
                raise ValueError(
                    f"MultiHeadAttention: expected context ({x.shape[0]}, lk, {self.kv_dim}), "
                    f"got {tuple(context.shape)}"
                )
            if kv_cache is not None:
                raise ValueError("MultiHeadAttention: kv_cache is for self-attention; got a context")
            if self.rotary is not None:
                raise ValueError("MultiHeadAttention: RoPE is applied in self-attention only; got a context")
        if positions is not None and self.rotary is None:
            raise ValueError("MultiHeadAttention: positions are only used with rope=True")

        b, lq, _ = x.shape
        q, k, v = self.project(x, context)
        if self.rotary is not None:
            offset = 0 if kv_cache is None else kv_cache.length
            q = self.rotary(q, positions, offset)
            k = self.rotary(k, positions, offset)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        masks = {"attn_mask": attn_mask, "key_padding_mask": key_padding_mask, "is_causal": self.causal}
        dropout_p = self.dropout if self.training else 0.0
        if return_attention:
            out, probs = attention_probabilities(q, k, v, scale=self.scale, dropout_p=dropout_p, **masks)
        else:
            out = attention(q, k, v, scale=self.scale, dropout_p=dropout_p, **masks)  # (b, h, lq, head_dim)
        out = out.transpose(1, 2).reshape(b, lq, self.num_heads * self.head_dim)
        out = self.proj_drop(self.out_projection(out))
        return (out, probs) if return_attention else out

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, kv_dim={self.kv_dim}, causal={self.causal}, layout={self.layout!r}"
        )
