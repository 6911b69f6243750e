"""Unmasked softmax attention in blocks of queries, with oneDNN matmuls on CPU.

``blocked_attention(q, k, v)`` is ``softmax(q kᵀ · scale) v`` for one head group at a time, without
mask or dropout (inference of encoder/cross attention). On CPU, torch's fused attention multiplies
with MKL (far below peak on AMD EPYC, and no gain from bfloat16 without AMX); here each block of
``block`` queries of one head takes two oneDNN products (``q kᵀ``, then ``probs v``) and the
``block x lk`` scores stay in cache for the softmax: measured ~1.6x faster than
``F.scaled_dot_product_attention`` in float32 and ~2.5x in bfloat16 on the project's Zen 5.
In bfloat16 the softmax is oneDNN's own, on oneDNN tensors (~2x torch's CPU softmax; torch's fused
``scaled_dot_product_attention`` measured ~2.7x slower than this kernel in bfloat16, 1.6x in float32).
``impl="reference"`` is :func:`hybrids.kernels.attention.sdpa.attention_reference`.

Where oneDNN has no AVX-512 kernels (AVX2-only x86 CPUs, and other architectures), its products run
no faster than MKL's and the blocks lose to torch's fused attention, whose softmax is fused into its
tiles: there ``preferred_impl()`` is ``"sdpa"``, which computes the same attention with
``F.scaled_dot_product_attention`` (equal to the reference within float rounding).

Layout: the result is a ``(b, h, lq, dv)`` view of a ``(b, lq, h, dv)`` buffer, so that
``out.transpose(1, 2).reshape(b, lq, h * dv)`` (the input of an output projection) is free. ``k`` is
read as ``(lk, d)`` rows and ``v`` as ``(dv, lk)`` rows per head: pass ``v`` as
``vt.transpose(-2, -1)`` of a contiguous ``vt (b, hkv, dv, lk)`` to skip its transposed copy.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrids.kernels.attention.sdpa import attention_reference
from hybrids.kernels.linear import onednn_available

__all__ = ["IMPLS", "blocked_attention", "preferred_impl"]

IMPLS = ("auto", "reference", "onednn", "sdpa")


@functools.cache
def preferred_impl() -> str:
    """The faster of the fast paths for CPU inference here: ``"auto"`` (the oneDNN blocks) where
    torch dispatches to AVX-512 kernels, else ``"sdpa"`` (torch's fused attention)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = ""
    return "auto" if capability.startswith("AVX512") else "sdpa"


def _validate(q: Tensor, k: Tensor, v: Tensor, block: int, impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"blocked_attention: unknown impl {impl!r}; expected one of {IMPLS}")
    if block < 1:
        raise ValueError(f"blocked_attention: block must be >= 1, got {block}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"blocked_attention: q, k, v must be 4-D (b, heads, seq, dim), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(
            f"blocked_attention: q, k, v need one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    b, h, _, d = q.shape
    if k.shape[0] != b or v.shape[0] != b or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"blocked_attention: k {tuple(k.shape)} and v {tuple(v.shape)} do not match q {tuple(q.shape)}"
        )
    if k.shape[-1] != d:
        raise ValueError(f"blocked_attention: q head dim {d} != k head dim {k.shape[-1]}")
    if k.shape[1] == 0 or h % k.shape[1] != 0:
        raise ValueError(
            f"blocked_attention: query heads ({h}) must be a multiple of kv heads ({k.shape[1]})"
        )


def _fast_path_applies(q: Tensor, k: Tensor, v: Tensor) -> bool:
    return (
        q.device.type == "cpu"
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        and onednn_available(q.dtype)
    )


def _onednn_tensor_ops(dtype: torch.dtype) -> bool:
    """Whether to take oneDNN's own softmax and linear on oneDNN ("mkldnn") tensors in ``dtype``
    (bfloat16 only; probed once against torch's softmax and a float64 product)."""
    if dtype != torch.bfloat16:  # float32: no gain (the conversions cost what the softmax saves)
        return False
    if dtype not in _ONEDNN_TENSOR_OPS:
        ok = False
        try:
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                q = torch.linspace(-1.0, 1.0, 12).view(3, 4).to(dtype)
                k = torch.linspace(-3.0, 3.0, 32).view(8, 4).to(dtype)
                vt = torch.linspace(-0.5, 0.5, 16).view(2, 8).to(dtype)
                scores = torch._C._nn.mkldnn_linear(q.to_mkldnn(), k, None)
                out = torch._C._nn.mkldnn_linear(torch.softmax(scores, -1), vt, None).to_dense()
                expected = torch.softmax(q.double() @ k.double().T, -1) @ vt.double().T
                ok = out.dtype == dtype and bool(torch.allclose(out.double(), expected, atol=2e-2))
        except (AttributeError, RuntimeError, TypeError):
            ok = False
        _ONEDNN_TENSOR_OPS[dtype] = ok
    return _ONEDNN_TENSOR_OPS[dtype]


_ONEDNN_TENSOR_OPS: dict[torch.dtype, bool] = {}


def _blocked_onednn(q: Tensor, k: Tensor, v: Tensor, scale: float, block: int) -> Tensor:
    b, h, lq, _ = q.shape
    hkv = k.shape[1]
    groups = h // hkv
    if scale != 1.0:
        q = q * scale
    k = k.contiguous()  # (lk, d) rows: the "weight" of q @ kᵀ
    vt = v.transpose(-2, -1).contiguous()  # (dv, lk) rows: the "weight" of probs @ v
    out = q.new_empty(b, lq, h, vt.shape[-2])
    linear = torch.ops.mkldnn._linear_pointwise
    # bfloat16: oneDNN's softmax (its own vectorised exp) beats torch's on CPU (`hybrids bench kernels`
    # measures it); it reads and writes oneDNN ("mkldnn") tensors, so the query block goes in as one,
    # the scores and probabilities stay in that format and only the small (block, dv) result comes back.
    onednn_softmax = _onednn_tensor_ops(q.dtype)
    linear_onednn = torch._C._nn.mkldnn_linear
    for i in range(b):
        for j in range(h):
            kh, vh = k[i, j // groups], vt[i, j // groups]
            for start in range(0, lq, block):
                rows = q[i, j, start : start + block]
                if onednn_softmax:  # float32 accumulation, one rounding at the end, as torch's
                    scores = linear_onednn(rows.contiguous().to_mkldnn(), kh, None)
                    probs = torch.softmax(scores, -1)
                    out[i, start : start + block, j] = linear_onednn(probs, vh, None).to_dense()
                else:  # torch's CPU softmax accumulates bfloat16 in float32 and rounds once at the end
                    probs = torch.softmax(linear(rows, kh, None, "none", [], ""), -1)
                    out[i, start : start + block, j] = linear(probs, vh, None, "none", [], "")
    return out.transpose(1, 2)


def blocked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    block: int = 256,
    impl: str = "auto",
) -> Tensor:
    """``softmax(q kᵀ · scale) v`` without mask or dropout.

    Args:
        q: ``(b, h, lq, d)``.
        k: ``(b, hkv, lk, d)``; ``hkv`` divides ``h`` (query head ``i`` reads kv head ``i // (h // hkv)``).
        v: ``(b, hkv, lk, dv)`` (any strides; see the module docstring for the cheapest layout).
        scale: score scale, default ``1 / sqrt(d)``; pass 1.0 when it is folded into ``q``.
        block: queries per block on the fast path (256 keeps a ``256 x lk`` score block in cache).
        impl: ``"auto"`` (oneDNN on CPU without autograd, else the reference), ``"reference"``,
            ``"onednn"`` (raises ``RuntimeError`` where it cannot run), or ``"sdpa"`` (torch's
            fused ``scaled_dot_product_attention``, any device; see :func:`preferred_impl`).

    Returns:
        ``(b, h, lq, dv)`` in ``q``'s dtype. Float32 equals the reference within ~1e-6; bfloat16
        rounds the scores and probabilities to bfloat16 (~0.5 % relative).
    """
    _validate(q, k, v, block, impl)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if impl == "sdpa":  # its CPU kernel is much slower on the transposed-v layout: unit-stride rows
        v = v if v.stride(-1) == 1 else v.contiguous()
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    fast = _fast_path_applies(q, k, v)
    if impl == "onednn" and not fast:
        raise RuntimeError(
            "blocked_attention: impl='onednn' needs CPU tensors without autograd and oneDNN "
            f"{q.dtype} support"
        )
    if impl == "reference" or not fast:
        return attention_reference(q, k, v, None, 0.0, scale)
    return _blocked_onednn(q, k, v, scale, block)
