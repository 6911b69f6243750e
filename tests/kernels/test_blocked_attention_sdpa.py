"""``blocked_attention(impl="sdpa")`` (torch's fused attention, the fast path where oneDNN has no
AVX-512 kernels) against the explicit reference, and the choice ``preferred_impl`` makes."""

from __future__ import annotations

import pytest
import torch

import hybrids.kernels.attention.blocked as blocked
from hybrids.kernels.attention import blocked_attention
from hybrids.kernels.attention.sdpa import attention

TOL = 1e-5


def _qkv(b, h, hkv, lq, lk, d, dv, seed):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, h, lq, d, generator=gen) * 2,
        torch.randn(b, hkv, lk, d, generator=gen),
        torch.randn(b, hkv, lk, dv, generator=gen),
    )


@pytest.mark.parametrize(("h", "hkv", "lq", "lk"), [(3, 3, 300, 300), (4, 2, 37, 300), (2, 1, 300, 5)])
def test_sdpa_equals_reference_with_strided_values_and_scale(h, hkv, lq, lk):
    q, k, v = _qkv(2, h, hkv, lq, lk, 16, 8, seed=lq + lk + h)
    vt = v.transpose(-2, -1).contiguous()  # the layout HT Demucs projects values into
    expected = attention(q, k, v, scale=0.3, impl="reference")
    with torch.no_grad():
        got = blocked_attention(q, k, vt.transpose(-2, -1), scale=0.3, impl="sdpa")
        plain = blocked_attention(q, k, v, scale=0.3, impl="sdpa")
    assert got.shape == (2, h, lq, 8)
    torch.testing.assert_close(got, expected, rtol=TOL, atol=TOL)
    torch.testing.assert_close(plain, expected, rtol=TOL, atol=TOL)


def test_sdpa_keeps_autograd():
    q, k, v = _qkv(1, 2, 2, 20, 30, 8, 8, seed=3)
    q.requires_grad_(True)
    blocked_attention(q, k, v, impl="sdpa").sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("capability", "expected"), [("AVX512", "auto"), ("AVX2", "sdpa"), ("DEFAULT", "sdpa")]
)
def test_preferred_impl_follows_the_cpu_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    blocked.preferred_impl.cache_clear()
    try:
        assert blocked.preferred_impl() == expected
    finally:
        blocked.preferred_impl.cache_clear()
