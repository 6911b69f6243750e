"""MultiHeadAttention: parity with nn.MultiheadAttention, a hand-written GQA+RoPE computation, KV cache,
projection layouts (separate / fused / crossvit) and attention maps equal to softmax(QKᵀ) by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hybrids.shared_blocks.attention import KVCache, MultiHeadAttention


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def copy_from_torch(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    dim = ref.embed_dim
    with torch.no_grad():
        if ref.in_proj_weight is not None:
            wq, wk, wv = ref.in_proj_weight.split(dim)
        else:
            wq, wk, wv = ref.q_proj_weight, ref.k_proj_weight, ref.v_proj_weight
        bq, bk, bv = ref.in_proj_bias.split(dim)
        for proj, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)


def randomise_biases(module: nn.Module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)


def test_matches_torch_multihead_attention_self() -> None:
    ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    randomise_biases(ref)
    ours = MultiHeadAttention(16, 4).eval()
    copy_from_torch(ours, ref)
    x = torch.randn(2, 6, 16)
    kpm = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])  # True = padding in both APIs
    allowed = torch.rand(6, 6) > 0.3
    allowed[:, 0] = True  # every query keeps one unpadded key (torch would give NaN rows otherwise)
    expected, _ = ref(x, x, x, key_padding_mask=kpm, attn_mask=~allowed, need_weights=False)  # True = blocked
    out = ours(x, key_padding_mask=kpm, attn_mask=allowed)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    expected_plain, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected_plain, atol=1e-5, rtol=1e-5)


def test_matches_torch_multihead_attention_cross() -> None:
    ref = nn.MultiheadAttention(16, 2, kdim=10, vdim=10, batch_first=True).eval()
    randomise_biases(ref)
    ours = MultiHeadAttention(16, 2, kv_dim=10).eval()
    copy_from_torch(ours, ref)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 7, 10)
    kpm = torch.tensor([[False] * 7, [False] * 2 + [True] * 5])
    expected, _ = ref(x, ctx, ctx, key_padding_mask=kpm, need_weights=False)
    torch.testing.assert_close(ours(x, ctx, key_padding_mask=kpm), expected, atol=1e-5, rtol=1e-5)


def hand_gqa_rope(mha: MultiHeadAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Explicit projections, rotate_half RoPE, head grouping, masked softmax and output projection."""
    b, l, _ = x.shape
    h, hkv, d = mha.num_heads, mha.num_kv_heads, mha.head_dim
    q = (x @ mha.q_proj.weight.T + mha.q_proj.bias).reshape(b, l, h, d)
    k = (x @ mha.k_proj.weight.T + mha.k_proj.bias).reshape(b, l, hkv, d)
    v = (x @ mha.v_proj.weight.T + mha.v_proj.bias).reshape(b, l, hkv, d)

    def rotate(t: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(t)
        half = d // 2
        for pos in range(l):
            for i in range(half):
                theta = pos * 10000.0 ** (-2 * i / d)
                a, c = t[:, pos, :, i], t[:, pos, :, i + half]
                out[:, pos, :, i] = a * math.cos(theta) - c * math.sin(theta)
                out[:, pos, :, i + half] = c * math.cos(theta) + a * math.sin(theta)
        return out

    q, k = rotate(q), rotate(k)
    out = torch.zeros(b, l, h, d, dtype=x.dtype)
    for head in range(h):
        kv = head // (h // hkv)
        scores = torch.einsum("bid,bjd->bij", q[:, :, head], k[:, :, kv]) / math.sqrt(d)
        if causal:
            scores = scores.masked_fill(torch.ones(l, l, dtype=torch.bool).triu(1), float("-inf"))
        out[:, :, head] = torch.einsum("bij,bjd->bid", scores.softmax(-1), v[:, :, kv])
    return out.reshape(b, l, h * d) @ mha.out_proj.weight.T + mha.out_proj.bias


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_rope_matches_hand_computation(causal: bool) -> None:
    mha = MultiHeadAttention(24, 6, num_kv_heads=2, head_dim=6, rope=True, causal=causal).double()
    randomise_biases(mha)
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    torch.testing.assert_close(mha(x), hand_gqa_rope(mha, x, causal))


def test_projection_shapes() -> None:
    mha = MultiHeadAttention(32, 8, num_kv_heads=2, head_dim=8, kv_dim=12)
    assert mha.q_proj.weight.shape == (64, 32)
    assert mha.k_proj.weight.shape == (16, 12)
    assert mha.v_proj.weight.shape == (16, 12)
    assert mha.out_proj.weight.shape == (32, 64)
    assert mha(torch.randn(3, 5, 32), torch.randn(3, 9, 12)).shape == (3, 5, 32)


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_decoding_equals_full_causal_forward(num_kv_heads: int, rope: bool) -> None:
    mha = MultiHeadAttention(16, 4, num_kv_heads=num_kv_heads, rope=rope, causal=True).eval()
    x = torch.randn(2, 7, 16)
    full = mha(x)
    cache = KVCache()
    steps = [mha(x[:, :3], kv_cache=cache)]  # prefill three tokens, then one at a time
    steps += [mha(x[:, t : t + 1], kv_cache=cache) for t in range(3, 7)]
    assert cache.length == 7 and cache.k.shape == (2, num_kv_heads, 7, 4)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_without_causal_mask_sees_the_future() -> None:
    """Sanity check that the decoding test can fail: a non-causal block differs from step-by-step."""
    mha = MultiHeadAttention(16, 4, causal=False).eval()
    x = torch.randn(1, 5, 16)
    cache = KVCache()
    steps = torch.cat([mha(x[:, t : t + 1], kv_cache=cache) for t in range(5)], dim=1)
    assert not torch.allclose(steps, mha(x), atol=1e-4)
    cache.reset()
    assert cache.length == 0


def test_causal_outputs_ignore_future_tokens() -> None:
    mha = MultiHeadAttention(16, 4, causal=True, rope=True)
    x = torch.randn(2, 6, 16)
    y = x.clone()
    y[:, 4:] = torch.randn(2, 2, 16)
    torch.testing.assert_close(mha(x)[:, :4], mha(y)[:, :4])
    assert not torch.allclose(mha(x)[:, 4:], mha(y)[:, 4:])


def test_explicit_positions() -> None:
    mha = MultiHeadAttention(16, 2, rope=True)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(mha(x, positions=torch.arange(5)), mha(x))
    # shifting every position by the same amount leaves attention unchanged (relative encoding)
    torch.testing.assert_close(mha(x, positions=torch.arange(5) + 40), mha(x), atol=1e-5, rtol=1e-4)
    per_batch = torch.stack([torch.arange(5), torch.tensor([0, 2, 4, 6, 8])])
    out = mha(x, positions=per_batch)
    torch.testing.assert_close(out[0], mha(x[:1])[0])
    assert not torch.allclose(out[1], mha(x[1:])[0], atol=1e-4)


def test_dropout_only_in_training() -> None:
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 8, 16)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    assert not torch.allclose(mha(x), mha(x))


@pytest.mark.parametrize("cross", [False, True])
def test_gradient_reaches_every_parameter(cross: bool) -> None:
    mha = MultiHeadAttention(16, 4, num_kv_heads=2, kv_dim=12 if cross else None, rope=not cross)
    x = torch.randn(2, 5, 16)
    out = mha(x, torch.randn(2, 7, 12)) if cross else mha(x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in mha.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="multiple"):
        MultiHeadAttention(16, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="even"):
        MultiHeadAttention(12, 4, rope=True)
    mha = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match="expected x"):
        mha(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="kv_cache"):
        mha(torch.randn(2, 5, 16), torch.randn(2, 3, 16), kv_cache=KVCache())
    with pytest.raises(ValueError, match="rope"):
        mha(torch.randn(2, 5, 16), positions=torch.arange(5))
    with pytest.raises(ValueError, match="context"):
        MultiHeadAttention(16, 4, kv_dim=8)(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="context"):
        MultiHeadAttention(16, 4, kv_dim=8)(torch.randn(2, 5, 16), torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="key_padding_mask"):
        mha(torch.randn(2, 5, 16), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))


# -- projection layouts, attention maps ---------------------------------------------------------------


def _copy_into_fused(fused: MultiHeadAttention, separate: MultiHeadAttention) -> None:
    """Same weights: ``qkv`` rows are ``[q; k; v]``, ``proj`` is ``out_proj``."""
    with torch.no_grad():
        fused.qkv.weight.copy_(
            torch.cat([separate.q_proj.weight, separate.k_proj.weight, separate.v_proj.weight])
        )
        fused.qkv.bias.copy_(torch.cat([separate.q_proj.bias, separate.k_proj.bias, separate.v_proj.bias]))
        fused.proj.weight.copy_(separate.out_proj.weight)
        fused.proj.bias.copy_(separate.out_proj.bias)


def test_layouts_name_the_parameters() -> None:
    keys = {
        "separate": ["q_proj", "k_proj", "v_proj", "out_proj"],
        "fused": ["qkv", "proj"],
        "crossvit": ["wq", "wk", "wv", "proj"],
    }
    for layout, names in keys.items():
        mha = MultiHeadAttention(16, 4, num_kv_heads=2, layout=layout)
        assert list(mha.state_dict()) == [f"{n}.{p}" for n in names for p in ("weight", "bias")]
        assert mha.out_projection is getattr(mha, names[-1])
        assert f"layout='{layout}'" in repr(mha)
    fused = MultiHeadAttention(16, 4, num_kv_heads=2, layout="fused")
    assert fused.qkv.weight.shape == (16 + 2 * 8, 16)  # [q (4 heads); k (2); v (2)] x head_dim 4
    # no bias anywhere (HybriDNA) and the timm/DINO scale
    bare = MultiHeadAttention(16, 4, qkv_bias=False, out_bias=False, layout="fused")
    assert list(bare.state_dict()) == ["qkv.weight", "proj.weight"]
    assert math.isclose(bare.scale, 4**-0.5)


@pytest.mark.parametrize(
    ("num_kv_heads", "rope", "causal"), [(4, False, False), (2, True, True), (1, True, False)]
)
def test_fused_layout_equals_separate_layout(num_kv_heads: int, rope: bool, causal: bool) -> None:
    kw = {"num_kv_heads": num_kv_heads, "rope": rope, "causal": causal}
    separate = MultiHeadAttention(16, 4, **kw).eval()
    randomise_biases(separate)
    fused = MultiHeadAttention(16, 4, layout="fused", **kw).eval()
    _copy_into_fused(fused, separate)
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(fused(x), separate(x), atol=1e-6, rtol=1e-5)
    if causal:  # the fused layout decodes with a KV cache too
        cache = KVCache()
        steps = [
            fused(x[:, :4], kv_cache=cache),
            fused(x[:, 4:5], kv_cache=cache),
            fused(x[:, 5:], kv_cache=cache),
        ]
        torch.testing.assert_close(torch.cat(steps, dim=1), separate(x), atol=1e-5, rtol=1e-5)


def test_fused_layout_cross_attention_splits_the_qkv_rows() -> None:
    separate = MultiHeadAttention(16, 4, num_kv_heads=2).eval()
    randomise_biases(separate)
    fused = MultiHeadAttention(16, 4, num_kv_heads=2, layout="fused").eval()
    _copy_into_fused(fused, separate)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    torch.testing.assert_close(fused(x, ctx), separate(x, ctx), atol=1e-6, rtol=1e-5)


def test_crossvit_layout_matches_hand_computation() -> None:
    """CrossViT / HiFormer fusion: the first token is the only query, keys and values are every token."""
    mha = MultiHeadAttention(12, 3, layout="crossvit").double().eval()
    randomise_biases(mha)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    b, n, d = 2, 5, 4
    q = mha.wq(x[:, :1]).reshape(b, 1, 3, d).transpose(1, 2)
    k = mha.wk(x).reshape(b, n, 3, d).transpose(1, 2)
    v = mha.wv(x).reshape(b, n, 3, d).transpose(1, 2)
    attn = (q @ k.transpose(-2, -1) * d**-0.5).softmax(-1)
    expected = mha.proj((attn @ v).transpose(1, 2).reshape(b, 1, 12))
    torch.testing.assert_close(mha(x[:, :1], x), expected)


def hand_probabilities(mha: MultiHeadAttention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ · scale) per query head, each query head reading its kv head, written out by hand."""
    q, k, _ = mha.project(x, context)
    groups = mha.num_heads // mha.num_kv_heads
    heads = []
    for head in range(mha.num_heads):
        scores = q[:, head] @ k[:, head // groups].transpose(-2, -1) * mha.scale
        heads.append(scores.exp() / scores.exp().sum(-1, keepdim=True))
    return torch.stack(heads, dim=1)


@pytest.mark.parametrize("layout", ["separate", "fused", "crossvit"])
@pytest.mark.parametrize("cross", [False, True])
def test_attention_maps_equal_softmax_qk_by_hand(layout: str, cross: bool) -> None:
    mha = MultiHeadAttention(24, 6, num_kv_heads=3 if layout != "crossvit" else None, layout=layout)
    mha = mha.double().eval()
    randomise_biases(mha)
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    context = torch.randn(2, 7, 24, dtype=torch.float64) if cross else None
    out, probs = mha(x, context, return_attention=True)
    lk = 7 if cross else 5
    assert probs.shape == (2, 6, 5, lk)
    torch.testing.assert_close(probs, hand_probabilities(mha, x, context))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 6, 5, dtype=torch.float64))
    torch.testing.assert_close(out, mha(x, context))  # same output as the fused SDPA path


def test_attention_maps_with_masks_rope_and_cache() -> None:
    mha = MultiHeadAttention(16, 4, num_kv_heads=2, rope=True, causal=True, layout="fused").eval()
    x = torch.randn(2, 6, 16)
    out, probs = mha(x, return_attention=True)
    torch.testing.assert_close(out, mha(x), atol=1e-6, rtol=1e-5)
    assert (probs.triu(1) == 0).all()  # causal: no weight on future keys
    # key padding: padded keys get no weight; a query with every key masked gives zeros, not NaN
    plain = MultiHeadAttention(16, 4).eval()
    kpm = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    out, probs = plain(x, key_padding_mask=kpm, return_attention=True)
    assert (probs[1, :, :, 3:] == 0).all()
    torch.testing.assert_close(out, plain(x, key_padding_mask=kpm), atol=1e-6, rtol=1e-5)
    blocked = torch.ones(6, 6, dtype=torch.bool)
    blocked[2] = False
    out, probs = plain(x, attn_mask=blocked, return_attention=True)
    assert torch.isfinite(out).all() and (probs[:, :, 2] == 0).all()
    torch.testing.assert_close(out, plain(x, attn_mask=blocked), atol=1e-6, rtol=1e-5)
    # one decoding step with a cache: the new token's weights over every cached position
    cache = KVCache()
    mha(x[:, :5], kv_cache=cache)
    step, probs = mha(x[:, 5:], kv_cache=cache, return_attention=True)
    assert probs.shape == (2, 4, 1, 6)
    torch.testing.assert_close(step, mha(x)[:, 5:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, mha(x, return_attention=True)[1][:, :, 5:], atol=1e-6, rtol=1e-5)


def test_attention_maps_keep_low_precision_dtype() -> None:
    mha = MultiHeadAttention(16, 4, layout="fused").to(torch.bfloat16).eval()
    out, probs = mha(torch.randn(1, 5, 16, dtype=torch.bfloat16), return_attention=True)
    assert out.dtype == probs.dtype == torch.bfloat16


def test_projection_dropout_only_in_training() -> None:
    mha = MultiHeadAttention(16, 4, proj_dropout=0.5, layout="fused")
    x = torch.randn(2, 8, 16)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    assert (mha(x) == 0).any()


@pytest.mark.parametrize("layout", ["fused", "crossvit"])
def test_gradient_reaches_every_parameter_of_each_layout(layout: str) -> None:
    mha = MultiHeadAttention(16, 4, layout=layout)
    x = torch.randn(2, 5, 16)
    out, probs = mha(x, return_attention=True)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in mha.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_layout_arguments_raise() -> None:
    with pytest.raises(ValueError, match="layout"):
        MultiHeadAttention(16, 4, layout="merged")
    with pytest.raises(ValueError, match="kv_dim"):
        MultiHeadAttention(16, 4, kv_dim=8, layout="fused")
    with pytest.raises(ValueError, match="proj_dropout"):
        MultiHeadAttention(16, 4, proj_dropout=1.0)
    with pytest.raises(ValueError, match="key_padding_mask"):
        MultiHeadAttention(16, 4)(
            torch.randn(2, 5, 16), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool), return_attention=True
        )
