"""Sinusoidal tables in demucs's layouts (hand values and the formulas written out) and RotaryEmbedding."""

from __future__ import annotations

import math

import pytest
import torch

from hybrids.kernels.rope import apply_rope, rope_cos_sin
from hybrids.shared_blocks.positional import RotaryEmbedding, sinusoidal_embedding_1d, sinusoidal_embedding_2d


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_1d_hand_values() -> None:
    # dim 4 -> half 2, exponents i / (half - 1) = [0, 1]: phase[t] = [t, t / 10000]
    table = sinusoidal_embedding_1d(3, 4, dtype=torch.float64)
    expected = torch.tensor(
        [[math.cos(t), math.cos(t / 1e4), math.sin(t), math.sin(t / 1e4)] for t in (0, 1, 2)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(table, expected)
    torch.testing.assert_close(table[0], torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))


def test_1d_formula_with_shift_and_period() -> None:
    """emb[t, i] = cos((shift + t) / P ** (i / (half - 1))) for i < half, sin(...) of the same phase after."""
    length, dim, shift, period = 5, 10, 7, 500.0
    half = dim // 2
    table = sinusoidal_embedding_1d(length, dim, shift=shift, max_period=period, dtype=torch.float64)
    assert table.shape == (length, dim)
    for t in range(length):
        for i in range(half):
            phase = (shift + t) / period ** (i / (half - 1))
            assert table[t, i].item() == pytest.approx(math.cos(phase), abs=1e-12)
            assert table[t, half + i].item() == pytest.approx(math.sin(phase), abs=1e-12)


def test_1d_shift_is_a_translation_and_dtype() -> None:
    full = sinusoidal_embedding_1d(10, 8)
    torch.testing.assert_close(sinusoidal_embedding_1d(4, 8, shift=6), full[6:])
    assert sinusoidal_embedding_1d(4, 8, dtype=torch.float16).dtype == torch.float16


def test_2d_hand_values() -> None:
    # dim 8 -> 4 channels per axis, div_term = exp(arange(0, 4, 2) * -(log(1e4) / 4)) = [1, 1e-2]
    pe = sinusoidal_embedding_2d(8, 2, 3)
    assert pe.shape == (8, 2, 3)
    for h in range(2):
        for w in range(3):
            expected = [
                math.sin(w), math.cos(w), math.sin(w / 100), math.cos(w / 100),
                math.sin(h), math.cos(h), math.sin(h / 100), math.cos(h / 100),
            ]  # fmt: skip
            torch.testing.assert_close(pe[:, h, w], torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_2d_formula() -> None:
    """First half of channels encodes width, second half height; even channel sin, odd channel cos."""
    dim, height, width, period = 12, 3, 4, 1000.0
    q = dim // 2
    pe = sinusoidal_embedding_2d(dim, height, width, max_period=period, dtype=torch.float64)
    for j in range(q // 2):
        div = math.exp(2 * j * -(math.log(period) / q))
        for h in range(height):
            for w in range(width):
                assert pe[2 * j, h, w].item() == pytest.approx(math.sin(w * div), abs=1e-12)
                assert pe[2 * j + 1, h, w].item() == pytest.approx(math.cos(w * div), abs=1e-12)
                assert pe[q + 2 * j, h, w].item() == pytest.approx(math.sin(h * div), abs=1e-12)
                assert pe[q + 2 * j + 1, h, w].item() == pytest.approx(math.cos(h * div), abs=1e-12)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda: sinusoidal_embedding_1d(4, 7), "even"),
        (lambda: sinusoidal_embedding_1d(4, 2), ">= 4"),
        (lambda: sinusoidal_embedding_1d(-1, 8), "length"),
        (lambda: sinusoidal_embedding_2d(6, 2, 2), "multiple of 4"),
        (lambda: sinusoidal_embedding_2d(8, -1, 2), "height"),
        (lambda: RotaryEmbedding(7), "head_dim"),
    ],
)
def test_bad_arguments_raise(fn, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn()


def test_rotary_embedding_matches_kernel_and_caches() -> None:
    rotary = RotaryEmbedding(8, base=500.0)
    x = torch.randn(2, 3, 5, 8)
    cos, sin = rope_cos_sin(torch.arange(5), 8, base=500.0)
    torch.testing.assert_close(rotary(x), apply_rope(x, cos, sin))
    cached = rotary._cos.shape[0]
    assert cached >= 5
    # offset decoding: positions offset .. offset + seq
    cos, sin = rope_cos_sin(torch.arange(40, 45), 8, base=500.0)
    torch.testing.assert_close(rotary(x, offset=40), apply_rope(x, cos, sin))
    assert rotary._cos.shape[0] >= 45
    assert rotary.state_dict() == {}  # cache is not persistent


def test_rotary_embedding_positions() -> None:
    rotary = RotaryEmbedding(8)
    x = torch.randn(2, 3, 4, 8)
    torch.testing.assert_close(rotary(x, positions=torch.arange(4)), rotary(x))
    positions = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    out = rotary(x, positions=positions)
    torch.testing.assert_close(out[0], rotary(x[0]))
    torch.testing.assert_close(out[1], rotary(x[1], offset=5))
    with pytest.raises(ValueError, match="positions"):
        rotary(x, positions=torch.arange(3))
    with pytest.raises(ValueError, match="last dim"):
        rotary(torch.randn(2, 4, 6))
