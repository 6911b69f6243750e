"""Rotary position embedding kernels: hand values, the rotate_half layout, the relative property."""

from __future__ import annotations

import math

import pytest
import torch

from hybrids.kernels.rope import apply_rope, rope_cos_sin, rotate_half


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    cos, sin = rope_cos_sin(positions, x.shape[-1], base, dtype=x.dtype)
    return apply_rope(x, cos, sin)


def test_cos_sin_hand_values() -> None:
    # head_dim 4, base 100: frequencies 100 ** (-0/4) = 1 and 100 ** (-2/4) = 0.1, repeated per half.
    cos, sin = rope_cos_sin(torch.tensor([0, 1, 3]), 4, base=100.0, dtype=torch.float64)
    assert cos.shape == sin.shape == (3, 4)
    for row, p in enumerate((0, 1, 3)):
        angles = [p * 1.0, p * 0.1, p * 1.0, p * 0.1]
        torch.testing.assert_close(cos[row], torch.tensor([math.cos(a) for a in angles], dtype=torch.float64))
        torch.testing.assert_close(sin[row], torch.tensor([math.sin(a) for a in angles], dtype=torch.float64))


def test_cos_sin_shapes_and_dtype() -> None:
    cos, sin = rope_cos_sin(torch.arange(6).expand(2, 6), 8, dtype=torch.bfloat16)
    assert cos.shape == (2, 6, 8) and sin.dtype == torch.bfloat16


def test_apply_rope_rotates_half_pairs_explicitly() -> None:
    """Channel i pairs with channel i + d/2: (a, b) -> (a cos - b sin, b cos + a sin)."""
    d, base = 6, 10000.0
    x = torch.randn(2, 3, 5, d, dtype=torch.float64)
    out = rope(x, torch.arange(5), base)
    expected = torch.empty_like(x)
    half = d // 2
    for pos in range(5):
        for i in range(half):
            theta = pos * base ** (-2 * i / d)
            a, b = x[..., pos, i], x[..., pos, i + half]
            expected[..., pos, i] = a * math.cos(theta) - b * math.sin(theta)
            expected[..., pos, i + half] = b * math.cos(theta) + a * math.sin(theta)
    torch.testing.assert_close(out, expected)


def test_rotate_half() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(rotate_half(x), torch.tensor([-3.0, -4.0, 1.0, 2.0]))


def test_position_zero_is_identity_and_norm_is_preserved() -> None:
    x = torch.randn(4, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(rope(x, torch.zeros(7)), x)
    out = rope(x, torch.arange(7) * 13)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(out, x)


def test_relative_property() -> None:
    """<rope(q, m), rope(k, n)> depends only on m - n."""
    d = 16
    q = torch.randn(d, dtype=torch.float64)
    k = torch.randn(d, dtype=torch.float64)

    def score(m: float, n: float) -> float:
        qm = rope(q[None, :], torch.tensor([m]))[0]
        kn = rope(k[None, :], torch.tensor([n]))[0]
        return float(qm @ kn)

    for m, n in [(0, 0), (5, 2), (2, 5), (17, 3)]:
        for shift in (1, 7, 100, 12345):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-9)
    # ...and it does depend on m - n
    assert abs(score(5, 2) - score(2, 5)) > 1e-3
    assert abs(score(3, 0) - score(4, 0)) > 1e-3


def test_per_batch_positions_broadcast_over_heads() -> None:
    x = torch.randn(2, 3, 4, 8)
    positions = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13]])
    cos, sin = rope_cos_sin(positions, 8)
    out = apply_rope(x, cos[:, None], sin[:, None])
    for b in range(2):
        torch.testing.assert_close(out[b], rope(x[b], positions[b]))


def test_partial_rotary_leaves_the_tail_untouched() -> None:
    x = torch.randn(2, 5, 10)
    cos, sin = rope_cos_sin(torch.arange(5), 4)
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out[..., 4:], x[..., 4:])
    torch.testing.assert_close(out[..., :4], apply_rope(x[..., :4], cos, sin))


def test_dtype_preserved_and_gradient_flows() -> None:
    x = torch.randn(3, 8, dtype=torch.float16)
    cos, sin = rope_cos_sin(torch.arange(3), 8)
    assert apply_rope(x, cos, sin).dtype == torch.float16
    y = torch.randn(3, 8, requires_grad=True)
    apply_rope(y, cos, sin).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


@pytest.mark.parametrize("head_dim", [0, 5, -2])
def test_bad_head_dim_raises(head_dim: int) -> None:
    with pytest.raises(ValueError, match="head_dim"):
        rope_cos_sin(torch.arange(3), head_dim)


def test_apply_rope_bad_tables_raise() -> None:
    cos, sin = rope_cos_sin(torch.arange(3), 8)
    with pytest.raises(ValueError, match="rotary dim"):
        apply_rope(torch.randn(3, 6), cos, sin)
    with pytest.raises(ValueError, match="shape"):
        apply_rope(torch.randn(3, 8), cos, sin[:, :4])
