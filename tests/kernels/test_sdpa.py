"""The attention dispatcher: fused SDPA path vs explicit reference vs an independent loop oracle."""

from __future__ import annotations

import math

import pytest
import torch

from hybrids.kernels.attention import attention as exported_attention
from hybrids.kernels.attention.sdpa import attention


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def naive_attention(q, k, v, *, attn_mask=None, key_padding_mask=None, is_causal=False, scale=None):
    """Loop-by-loop oracle in float64, written independently of the kernel's mask helpers.

    Query i of lq sits at absolute position lk - lq + i, so it may see key j iff j <= lk - lq + i.
    key_padding_mask True = padding. attn_mask bool True = attend, float = additive. Rows without any
    visible key give 0.
    """
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    group = h // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q, k, v = q.double(), k.double(), v.double()
    mask = None if attn_mask is None else attn_mask.expand(b, h, lq, lk)
    out = torch.zeros(b, h, lq, v.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            kv_head = hi // group
            for i in range(lq):
                logits, values = [], []
                for j in range(lk):
                    if is_causal and j > lk - lq + i:
                        continue
                    if key_padding_mask is not None and key_padding_mask[bi, j]:
                        continue
                    extra = 0.0
                    if mask is not None:
                        m = mask[bi, hi, i, j]
                        if m.dtype == torch.bool:
                            if not m:
                                continue
                        else:
                            extra = float(m)
                            if extra == float("-inf"):
                                continue
                    logits.append(float(q[bi, hi, i] @ k[bi, kv_head, j]) * scale + extra)
                    values.append(v[bi, kv_head, j])
                if not logits:
                    continue
                weights = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=0)
                out[bi, hi, i] = sum(w * val for w, val in zip(weights, values))
    return out


def make_qkv(b=2, h=4, hkv=4, lq=5, lk=5, d=8, dv=None, dtype=torch.float32, grad=False):
    dv = d if dv is None else dv
    q = torch.randn(b, h, lq, d, dtype=dtype, requires_grad=grad)
    k = torch.randn(b, hkv, lk, d, dtype=dtype, requires_grad=grad)
    v = torch.randn(b, hkv, lk, dv, dtype=dtype, requires_grad=grad)
    return q, k, v


def padding_mask(b, lk, lengths):
    """Bool (b, lk), True beyond each sample's length."""
    return torch.arange(lk)[None, :] >= torch.tensor(lengths)[:, None]


# (name, shape kwargs, mask builder) -- every case is checked forward and backward.
CASES = {
    "self": ({}, lambda s: {}),
    "cross": ({"lq": 3, "lk": 7, "dv": 6}, lambda s: {}),
    "causal_square": ({"lq": 6, "lk": 6}, lambda s: {"is_causal": True}),
    "causal_bottom_right": ({"lq": 3, "lk": 7}, lambda s: {"is_causal": True}),
    "causal_single_query": ({"lq": 1, "lk": 5}, lambda s: {"is_causal": True}),
    "gqa": ({"h": 6, "hkv": 2, "lq": 4, "lk": 5}, lambda s: {}),
    "mqa_causal": ({"h": 4, "hkv": 1, "lq": 5, "lk": 5}, lambda s: {"is_causal": True}),
    "key_padding": ({"lq": 4, "lk": 6}, lambda s: {"key_padding_mask": padding_mask(2, 6, [6, 3])}),
    "bool_mask": ({"lq": 4, "lk": 6}, lambda s: {"attn_mask": torch.rand(2, 1, 4, 6) > 0.3}),
    "float_mask": ({"lq": 4, "lk": 6}, lambda s: {"attn_mask": torch.randn(4, 6)}),
    "float_mask_with_inf": (
        {"lq": 4, "lk": 6},
        lambda s: {
            "attn_mask": torch.randn(2, 4, 4, 6).masked_fill(torch.rand(2, 4, 4, 6) > 0.7, float("-inf"))
        },
    ),
    "everything": (
        {"h": 4, "hkv": 2, "lq": 3, "lk": 6},
        lambda s: {
            "attn_mask": torch.randn(1, 4, 3, 6),
            "key_padding_mask": padding_mask(2, 6, [5, 4]),
            "is_causal": True,
        },
    ),
    "causal_plus_bool": (
        {"lq": 5, "lk": 5},
        lambda s: {"attn_mask": torch.rand(5, 5) > 0.2, "is_causal": True},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sdpa_matches_reference_forward_and_backward(case: str) -> None:
    shape, masks = CASES[case]
    kwargs = masks(shape)
    q, k, v = make_qkv(grad=True, **shape)
    out_ref = attention(q, k, v, impl="reference", **kwargs)
    out_fast = attention(q, k, v, impl="sdpa", **kwargs)
    assert out_fast.shape == (q.shape[0], q.shape[1], q.shape[2], v.shape[-1])
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, **kwargs), out_fast)  # impl="auto" is the fast path

    grad_out = torch.randn_like(out_ref)
    grads_ref = torch.autograd.grad(out_ref, (q, k, v), grad_out)
    grads_fast = torch.autograd.grad(out_fast, (q, k, v), grad_out)
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        assert torch.isfinite(g_fast).all()
        torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_matches_loop_oracle(case: str) -> None:
    shape, masks = CASES[case]
    kwargs = masks(shape)
    q, k, v = make_qkv(dtype=torch.float64, **shape)
    expected = naive_attention(q, k, v, **kwargs)
    torch.testing.assert_close(attention(q, k, v, impl="reference", **kwargs), expected)
    torch.testing.assert_close(attention(q, k, v, impl="sdpa", **kwargs), expected)


def test_causal_is_bottom_right_not_top_left() -> None:
    """With lq < lk the last query must see every key (KV-cache decoding), unlike torch's top-left mask."""
    q, k, v = make_qkv(lq=2, lk=5)
    out = attention(q, k, v, is_causal=True)
    unmasked = attention(q[:, :, -1:], k, v)
    torch.testing.assert_close(out[:, :, -1:], unmasked)
    top_left = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(out, top_left, atol=1e-3)


def test_decoding_one_query_at_a_time_matches_full_causal() -> None:
    q, k, v = make_qkv(h=4, hkv=2, lq=6, lk=6)
    full = attention(q, k, v, is_causal=True)
    for t in range(6):
        step = attention(q[:, :, t : t + 1], k[:, :, : t + 1], v[:, :, : t + 1], is_causal=True)
        torch.testing.assert_close(step, full[:, :, t : t + 1], atol=1e-6, rtol=1e-5)


def test_gqa_uses_consecutive_query_heads_per_kv_head() -> None:
    q, k, v = make_qkv(h=4, hkv=2)
    out = attention(q, k, v)
    for kv_head in range(2):
        heads = slice(2 * kv_head, 2 * kv_head + 2)
        expected = attention(q[:, heads], k[:, kv_head : kv_head + 1], v[:, kv_head : kv_head + 1])
        torch.testing.assert_close(out[:, heads], expected)
    # interleaved grouping (head i -> kv head i % hkv) would send query head 1 to kv head 1
    interleaved = attention(q[:, 1:2], k[:, 1:2], v[:, 1:2])
    assert not torch.allclose(out[:, 1:2], interleaved, atol=1e-3)


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_fully_masked_rows_are_zero_with_finite_gradients(impl: str) -> None:
    q, k, v = make_qkv(lq=4, lk=3, grad=True)
    kpm = padding_mask(2, 3, [3, 0])  # the second sample has no valid key
    float_mask = torch.zeros(4, 3)
    float_mask[1] = float("-inf")
    out = attention(q, k, v, key_padding_mask=kpm, attn_mask=float_mask, is_causal=True, impl=impl)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all()  # padded sample
    assert (out[0, :, :2] == 0).all()  # query 0 (before every key, bottom-right) and query 1 (masked row)
    assert (out[0, :, 2:].abs() > 0).all()
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[1] == 0).all()


def test_scale_argument_is_used() -> None:
    q, k, v = make_qkv(dtype=torch.float64)
    for impl in ("reference", "sdpa"):
        expected = attention(q * 0.3 * 8**0.5, k, v)  # default scale is 1 / sqrt(8)
        torch.testing.assert_close(attention(q, k, v, scale=0.3, impl=impl), expected)


def test_output_dtypes_and_reduced_precision() -> None:
    q, k, v = make_qkv(dtype=torch.float64)
    assert attention(q, k, v, impl="reference").dtype == torch.float64
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    for impl in ("reference", "sdpa"):
        out = attention(qb, kb, vb, impl=impl, is_causal=True)
        assert out.dtype == torch.bfloat16
        expected = naive_attention(qb.double(), kb.double(), vb.double(), is_causal=True)
        torch.testing.assert_close(out.double(), expected, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_dropout_drops_and_rescales(impl: str) -> None:
    q = torch.randn(2, 2, 64, 8)
    k = torch.randn(2, 2, 64, 8)
    v = torch.ones(2, 2, 64, 4)
    out = attention(q, k, v, dropout_p=0.5, impl=impl)
    assert not torch.allclose(out, torch.ones_like(out))  # some probabilities were dropped
    assert abs(out.mean().item() - 1.0) < 0.1  # inverted dropout keeps the expectation


def test_exported_from_package() -> None:
    assert exported_attention is attention


SAME = ((2, 4, 5, 8), (2, 4, 5, 8), (2, 4, 5, 8))


@pytest.mark.parametrize(
    ("shapes", "kwargs", "match"),
    [
        (((2, 4, 5, 8), (2, 3, 5, 8), (2, 3, 5, 8)), {}, "multiple"),
        (((2, 4, 5, 8), (2, 2, 5, 6), (2, 2, 5, 8)), {}, "head dim"),
        (((2, 4, 5, 8), (2, 2, 5, 8), (2, 2, 6, 8)), {}, "positions"),
        (((2, 4, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8)), {}, "batch"),
        (((2, 4, 5, 8), (2, 2, 5, 8), (2, 1, 5, 8)), {}, "heads"),
        (((2, 5, 8), (2, 5, 8), (2, 5, 8)), {}, "4-D"),
        (None, {"impl": "flash3"}, "unknown impl"),
        (None, {"attn_mask": torch.ones(5, 4, dtype=torch.bool)}, "mask"),
        (None, {"attn_mask": torch.ones(3, 1, 5, 5)}, "broadcastable"),
        (None, {"attn_mask": torch.ones(5, 5, dtype=torch.long)}, "bool"),
        (
            ((2, 4, 5, 8), (2, 4, 6, 8), (2, 4, 6, 8)),
            {"key_padding_mask": torch.zeros(2, 5, dtype=torch.bool)},
            "key_padding_mask",
        ),
        (None, {"key_padding_mask": torch.zeros(2, 5)}, "bool"),
        (None, {"dropout_p": 1.0}, "dropout_p"),
    ],
)
def test_bad_arguments_raise(shapes, kwargs, match) -> None:
    shapes = SAME if shapes is None else shapes
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, **kwargs)


def test_dtype_mismatch_raises() -> None:
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match="dtypes"):
        attention(q, k.double(), v)
