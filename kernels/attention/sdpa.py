"""Scaled dot-product attention dispatcher: an explicit reference beside torch's fused SDPA.

``attention(q, k, v, ...)`` is the single entry point used by every attention block in the project.
It accepts grouped-query attention (Ainslie et al. 2023, "GQA"), cross attention (``lq != lk``),
boolean or additive masks, a key-padding mask in ``nn.MultiheadAttention``'s convention and a causal
mask aligned to the bottom-right (query ``i`` sits at absolute position ``lk - lq + i``, as needed for
KV-cache decoding). Rows whose every key is masked return zeros (not NaN) in both implementations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IMPLS", "attention", "attention_reference", "build_attention_mask"]

IMPLS = ("auto", "sdpa", "reference")


def _check_broadcastable(name: str, shape: torch.Size, target: tuple[int, ...]) -> None:
    """Raise ValueError unless ``shape`` broadcasts to ``target`` without changing ``target``."""
    if len(shape) > len(target) or any(
        s not in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False)
    ):
        raise ValueError(
            f"attention: {name} of shape {tuple(shape)} is not broadcastable to (b, h, lq, lk) = {target}"
        )


def _validate(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    dropout_p: float,
    impl: str,
) -> None:
    if impl not in IMPLS:
        raise ValueError(f"attention: unknown impl {impl!r}; expected one of {IMPLS}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (b, heads, seq, dim), got {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if not q.is_floating_point():
        raise ValueError(f"attention: q, k, v must be floating point, got {q.dtype}")
    b, h, lq, d = q.shape
    bk, hkv, lk, dk = k.shape
    bv, hv, lv, _ = v.shape
    if not (b == bk == bv):
        raise ValueError(f"attention: batch sizes differ: q {b}, k {bk}, v {bv}")
    if hkv != hv:
        raise ValueError(f"attention: k has {hkv} heads but v has {hv}")
    if hkv == 0 or h % hkv != 0:
        raise ValueError(f"attention: query heads ({h}) must be a multiple of key/value heads ({hkv})")
    if d != dk:
        raise ValueError(f"attention: q head dim {d} != k head dim {dk}")
    if lk != lv:
        raise ValueError(f"attention: k has {lk} positions but v has {lv}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise ValueError(f"attention: attn_mask must be bool or floating point, got {attn_mask.dtype}")
        _check_broadcastable("attn_mask", attn_mask.shape, (b, h, lq, lk))
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(
                f"attention: key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}"
            )
        if tuple(key_padding_mask.shape) != (b, lk):
            raise ValueError(
                f"attention: key_padding_mask must have shape (b, lk) = {(b, lk)}, "
                f"got {tuple(key_padding_mask.shape)}"
            )


def _causal_keep(lq: int, lk: int, device: torch.device) -> Tensor:
    """Bool ``(lq, lk)``: True where query ``i`` (absolute position ``lk - lq + i``) may see key ``j``."""
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(diagonal=lk - lq)


def build_attention_mask(
    lq: int,
    lk: int,
    *,
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    device: torch.device | None = None,
) -> Tensor | None:
    """Combine the three mask kinds into one mask broadcastable to ``(b, h, lq, lk)``.

    Returns ``None`` when there is nothing to mask, a bool mask (True = attend) when every input is
    boolean, otherwise an additive float mask (``attn_mask``'s dtype) with ``-inf`` at masked keys.
    ``key_padding_mask`` is bool ``(b, lk)`` with True = padding; the causal part is bottom-right aligned.
    """
    if device is None:
        for given in (key_padding_mask, attn_mask):
            if given is not None:
                device = given.device
                break
    keep: Tensor | None = None
    if key_padding_mask is not None:
        keep = ~key_padding_mask[:, None, None, :]
    if is_causal:
        causal = _causal_keep(lq, lk, device)
        keep = causal if keep is None else keep & causal
    if attn_mask is None:
        return keep
    if attn_mask.dtype == torch.bool:
        return attn_mask if keep is None else attn_mask & keep
    if keep is None:
        return attn_mask
    return attn_mask.masked_fill(~keep, float("-inf"))


def _fully_masked_rows(mask: Tensor) -> Tensor:
    """Bool, broadcastable to ``(b, h, lq, 1)``: rows in which no key may be attended."""
    if mask.dtype == torch.bool:
        return ~mask.any(dim=-1, keepdim=True)
    return torch.isneginf(mask).all(dim=-1, keepdim=True)


def attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    dropout_p: float,
    scale: float,
) -> Tensor:
    """Explicit ``softmax(q kᵀ · scale + mask) · v`` in float32 (float64 for float64 inputs).

    ``q (b, h, lq, d)``, ``k (b, hkv, lk, d)``, ``v (b, hkv, lk, dv)``; ``mask`` as returned by
    :func:`build_attention_mask`. Returns ``(b, h, lq, dv)`` in ``q``'s dtype; fully-masked rows are 0.
    """
    out_dtype = q.dtype
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # query head i reads kv head i // groups (LLaMA's repeat_kv layout)
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (b, h, lq, lk)
    empty = None
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(compute)
        empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
        scores = scores.masked_fill(empty, 0.0)  # avoid softmax of an all -inf row (NaN)
    probs = torch.softmax(scores, dim=-1)
    if empty is not None:
        probs = probs.masked_fill(empty, 0.0)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v).to(out_dtype)


def _attention_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    sdpa_causal: bool,
    dropout_p: float,
    scale: float,
) -> Tensor:
    """torch's fused ``scaled_dot_product_attention`` with the same semantics as the reference."""
    empty = None
    if mask is not None:
        empty = _fully_masked_rows(mask)
        # Let fully-masked rows attend everywhere (finite values and gradients), then zero them.
        if mask.dtype == torch.bool:
            mask = mask | empty
        else:
            mask = mask.masked_fill(empty, 0.0).to(q.dtype)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=dropout_p,
        is_causal=sdpa_causal,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, Sec. 3.2) with GQA and masks.

    Args:
        q: ``(b, h, lq, d)`` queries.
        k: ``(b, hkv, lk, d)`` keys; ``hkv`` must divide ``h`` (query head ``i`` uses kv head
            ``i // (h // hkv)``, the grouped-query layout of LLaMA/GQA).
        v: ``(b, hkv, lk, dv)`` values.
        attn_mask: bool (True = attend) or additive float mask broadcastable to ``(b, h, lq, lk)``.
        key_padding_mask: bool ``(b, lk)``, True = padding key to ignore (``nn.MultiheadAttention``).
        is_causal: causal mask aligned bottom-right: query ``i`` sees keys ``j <= lk - lq + i``.
        dropout_p: dropout on the attention probabilities (pass 0 in eval mode).
        scale: score scale, default ``1 / sqrt(d)``.
        impl: ``"auto"`` (= ``"sdpa"``), ``"sdpa"`` (torch fused kernel) or ``"reference"``.

    Returns:
        ``(b, h, lq, dv)`` in ``q``'s dtype. Rows where every key is masked are 0.
    """
    _validate(q, k, v, attn_mask, key_padding_mask, dropout_p, impl)
    lq, lk = q.shape[2], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if impl == "reference":
        mask = build_attention_mask(
            lq,
            lk,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            device=q.device,
        )
        return attention_reference(q, k, v, mask, dropout_p, scale)
    # Fast path: torch's is_causal is top-left aligned, which equals bottom-right only when lq == lk,
    # and it cannot be combined with an explicit mask; otherwise build one explicit mask.
    sdpa_causal = is_causal and lq == lk and attn_mask is None and key_padding_mask is None
    mask = build_attention_mask(
        lq,
        lk,
        attn_mask=attn_mask,
        key_padding_mask=key_padding_mask,
        is_causal=is_causal and not sdpa_causal,
        device=q.device,
    )
    return _attention_sdpa(q, k, v, mask, sdpa_causal, dropout_p, scale)
