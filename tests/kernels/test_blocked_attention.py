"""hybrids.kernels.attention.blocked_attention: oneDNN blocks against the explicit reference."""

from __future__ import annotations

import math

import pytest
import torch

from hybrids.kernels.attention import blocked_attention
from hybrids.kernels.attention.sdpa import attention
from hybrids.kernels.linear import onednn_available

TOL = 1e-5
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="oneDNN is not available")


def _qkv(b, h, hkv, lq, lk, d, dv, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=gen) * 2
    k = torch.randn(b, hkv, lk, d, generator=gen)
    v = torch.randn(b, hkv, lk, dv, generator=gen)
    return q, k, v


@needs_onednn
@pytest.mark.parametrize(
    ("lq", "lk", "block"), [(300, 300, 256), (37, 300, 16), (300, 5, 64), (1, 1, 256), (64, 64, 64)]
)
def test_onednn_equals_reference(lq, lk, block):
    q, k, v = _qkv(2, 3, 3, lq, lk, 16, 8, seed=lq + lk)
    expected = attention(q, k, v, impl="reference")
    assert torch.equal(blocked_attention(q, k, v, impl="reference"), expected)
    with torch.no_grad():
        got = blocked_attention(q, k, v, block=block, impl="onednn")
        auto = blocked_attention(q, k, v, block=block)
    assert got.shape == (2, 3, lq, 8)
    torch.testing.assert_close(got, expected, rtol=TOL, atol=TOL)
    assert torch.equal(auto, got)
    # the (b, h, lq, dv) result is a view of (b, lq, h, dv) memory: merging heads is free
    assert got.transpose(1, 2).is_contiguous()


@needs_onednn
def test_grouped_heads_scale_and_strided_values():
    q, k, v = _qkv(1, 4, 2, 50, 70, 8, 8, seed=1)
    vt = v.transpose(-2, -1).contiguous()  # the layout a caller can project values into directly
    expected = attention(q, k, v, scale=0.3, impl="reference")
    with torch.no_grad():
        got = blocked_attention(q, k, vt.transpose(-2, -1), scale=0.3, block=32)
        folded = blocked_attention(q * (1 / math.sqrt(8)), k, v, scale=1.0)
    torch.testing.assert_close(got, expected, rtol=TOL, atol=TOL)
    torch.testing.assert_close(folded, attention(q, k, v, impl="reference"), rtol=TOL, atol=TOL)


@pytest.mark.skipif(not onednn_available(torch.bfloat16), reason="oneDNN bfloat16 is not available")
def test_bfloat16():
    q, k, v = _qkv(2, 2, 2, 130, 90, 16, 16, seed=2)
    expected = attention(q, k, v, impl="reference")
    with torch.no_grad():
        half = blocked_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), block=64)
    assert half.dtype == torch.bfloat16
    assert float((half.float() - expected).norm() / expected.norm()) < 3e-2


def test_autograd_takes_the_reference():
    q, k, v = _qkv(1, 2, 2, 20, 30, 8, 8, seed=3)
    q.requires_grad_(True)
    out = blocked_attention(q, k, v)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with pytest.raises(RuntimeError, match="impl='onednn'"):
        blocked_attention(q, k, v, impl="onednn")


def test_bad_arguments():
    q, k, v = _qkv(1, 3, 3, 5, 6, 8, 4, seed=4)
    with pytest.raises(ValueError, match="unknown impl"):
        blocked_attention(q, k, v, impl="flash")
    with pytest.raises(ValueError, match="block must be"):
        blocked_attention(q, k, v, block=0)
    with pytest.raises(ValueError, match="4-D"):
        blocked_attention(q[0], k, v)
    with pytest.raises(ValueError, match="head dim"):
        blocked_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        blocked_attention(q, k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match="do not match"):
        blocked_attention(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match="floating dtype"):
        blocked_attention(q, k.double(), v)


@pytest.mark.skipif(not onednn_available(torch.bfloat16), reason="oneDNN bfloat16 is not available")
def test_bfloat16_onednn_softmax_matches_torch_softmax(monkeypatch):
    import hybrids.kernels.attention.blocked as blocked

    q, k, v = _qkv(2, 4, 2, 300, 170, 16, 8, seed=5)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    if not blocked._onednn_tensor_ops(torch.bfloat16):
        pytest.skip("oneDNN tensor softmax is not available")
    assert not blocked._onednn_tensor_ops(torch.float32)  # float32 keeps torch's softmax
    with torch.no_grad():
        fast = blocked_attention(q, k, v, block=64)
        monkeypatch.setitem(blocked._ONEDNN_TENSOR_OPS, torch.bfloat16, False)
        plain = blocked_attention(q, k, v, block=64)
    assert fast.dtype == torch.bfloat16 and fast.shape == (2, 4, 300, 8)
    # both accumulate in float32 and round the probabilities once: at most one bfloat16 ulp apart
    assert float((fast.float() - plain.float()).abs().max()) <= 2 ** -7 * float(plain.float().abs().max())
    assert not torch.equal(fast, torch.zeros_like(fast))
