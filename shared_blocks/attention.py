"""Multi-head attention block: self/cross attention, grouped-query heads, RoPE and a simple KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hybrids.kernels.attention.sdpa import attention
from hybrids.shared_blocks.positional import RotaryEmbedding

__all__ = ["KVCache", "MultiHeadAttention"]


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


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, Sec. 3.2.2) with GQA (Ainslie et al. 2023) and RoPE.

    ``forward(x (b, lq, dim), context=None (b, lk, kv_dim), *, key_padding_mask=None (b, lk) bool True =
    padding, attn_mask=None (bool True = attend, or additive float; broadcastable to (b, h, lq, lk)),
    positions=None (lq,) or (b, lq), kv_cache=None) -> (b, lq, dim)``.

    Separate ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``; heads are consecutive ``head_dim`` slices of
    the projections (as in ``nn.MultiheadAttention``); ``k_proj``/``v_proj`` produce ``num_kv_heads *
    head_dim`` features and query head ``i`` uses kv head ``i // (num_heads // num_kv_heads)``.
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
        rope: bool = False,
        rope_base: float = 10000.0,
        causal: bool = False,
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
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiHeadAttention: dropout must be in [0, 1), got {dropout}")
        kv_dim = dim if kv_dim is None else kv_dim
        self.dim, self.kv_dim = dim, kv_dim
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.dropout = dropout
        self.causal = causal
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(kv_dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(kv_dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(num_heads * head_dim, dim, bias=out_bias)
        self.rotary = RotaryEmbedding(head_dim, rope_base) if rope else None

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"MultiHeadAttention: expected x (b, lq, {self.dim}), got {tuple(x.shape)}")
        if context is None:
            if self.kv_dim != self.dim:
                raise ValueError(
                    f"MultiHeadAttention: kv_dim ({self.kv_dim}) != dim ({self.dim}) needs a context tensor"
                )
            source = x
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
            source = context
        if positions is not None and self.rotary is None:
            raise ValueError("MultiHeadAttention: positions are only used with rope=True")

        b, lq, _ = x.shape
        lk = source.shape[1]
        q = self.q_proj(x).view(b, lq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(source).view(b, lk, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(source).view(b, lk, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.rotary is not None:
            offset = 0 if kv_cache is None else kv_cache.length
            q = self.rotary(q, positions, offset)
            k = self.rotary(k, positions, offset)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        out = attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=self.causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (b, h, lq, head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, self.num_heads * self.head_dim))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, kv_dim={self.kv_dim}, causal={self.causal}"
        )
