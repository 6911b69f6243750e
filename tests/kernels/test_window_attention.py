"""Window-attention kernels against independent naive constructions (explicit coordinates, full attention)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hybrids.kernels.attention import window_attention as exported_window_attention
from hybrids.kernels.attention.window import (
    crop_to_shape,
    cyclic_shift,
    effective_window,
    pad_to_window,
    relative_position_bias,
    relative_position_index,
    reverse_cyclic_shift,
    shifted_window_mask,
    window_attention,
    window_merge,
    window_partition,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


CASES = [
    # spatial shape, window, shift
    ((8, 12), (4, 3), (2, 1)),
    ((6, 6), (3, 3), (1, 1)),
    ((4, 6, 4), (2, 3, 2), (1, 1, 1)),
    ((4, 6, 6), (2, 3, 3), (0, 1, 2)),
]


def _windows_explicit(x, win):
    """Windows by explicit slicing: batch outer, window grid row-major, tokens row-major."""
    b, *spatial, c = x.shape
    counts = [s // w for s, w in zip(spatial, win)]
    out = []
    for bi in range(b):
        for idx in itertools.product(*(range(n) for n in counts)):
            sl = tuple(slice(i * w, (i + 1) * w) for i, w in zip(idx, win))
            out.append(x[(bi, *sl)].reshape(-1, c))
    return torch.stack(out)


@pytest.mark.parametrize("spatial, win, shift", CASES)
def test_partition_matches_explicit_slicing_and_merge_inverts(spatial, win, shift):
    x = torch.randn(2, *spatial, 5)
    windows = window_partition(x, win)
    assert windows.shape == (2 * math.prod(s // w for s, w in zip(spatial, win)), math.prod(win), 5)
    torch.testing.assert_close(windows, _windows_explicit(x, win), rtol=0, atol=0)
    torch.testing.assert_close(window_merge(windows, win, spatial), x, rtol=0, atol=0)


def test_partition_accepts_int_window():
    x = torch.randn(1, 4, 4, 4, 3)
    torch.testing.assert_close(window_partition(x, 2), window_partition(x, (2, 2, 2)))
    torch.testing.assert_close(window_merge(window_partition(x, 2), 2, (4, 4, 4)), x)


def test_cyclic_shift_is_negative_roll_and_reverse_inverts():
    x = torch.randn(2, 5, 7, 3)
    shifted = cyclic_shift(x, (2, 3))
    # out[p] = x[(p + shift) mod size]
    assert torch.equal(shifted[0, 0, 0], x[0, 2, 3])
    assert torch.equal(shifted[0, 4, 6], x[0, (4 + 2) % 5, (6 + 3) % 7])
    assert torch.equal(reverse_cyclic_shift(shifted, (2, 3)), x)
    y = torch.randn(1, 4, 5, 6, 2)
    assert torch.equal(reverse_cyclic_shift(cyclic_shift(y, 1), 1), y)


def _explicit_index(win, table=None):
    table = win if table is None else table
    coords = list(itertools.product(*(range(w) for w in win)))
    n = len(coords)
    out = torch.empty(n, n, dtype=torch.long)
    for i, p in enumerate(coords):
        for j, pp in enumerate(coords):
            flat = 0
            for d in range(len(win)):
                flat = flat * (2 * table[d] - 1) + (p[d] - pp[d] + table[d] - 1)
            out[i, j] = flat
    return out


@pytest.mark.parametrize("win", [(3, 4), (7, 7), (2, 3, 2), (2, 2, 2)])
def test_relative_position_index_matches_coordinate_differences(win):
    index = relative_position_index(win)
    assert index.dtype == torch.long and index.shape == (math.prod(win),) * 2
    assert torch.equal(index, _explicit_index(win))
    assert index.min() == 0 and index.max() == math.prod(2 * w - 1 for w in win) - 1
    assert len(torch.unique(index)) == math.prod(2 * w - 1 for w in win)


def test_relative_position_index_official_2d_formula():
    wh, ww = 4, 5
    coords = list(itertools.product(range(wh), range(ww)))
    expected = torch.tensor(
        [[(a[0] - b[0] + wh - 1) * (2 * ww - 1) + (a[1] - b[1] + ww - 1) for b in coords] for a in coords]
    )
    assert torch.equal(relative_position_index((wh, ww)), expected)


def test_relative_position_index_of_clamped_window_indexes_the_full_table():
    assert torch.equal(
        relative_position_index((2, 3), table_window_size=(4, 5)), _explicit_index((2, 3), (4, 5))
    )
    assert torch.equal(
        relative_position_index((1, 2, 3), table_window_size=(2, 3, 3)), _explicit_index((1, 2, 3), (2, 3, 3))
    )
    with pytest.raises(ValueError):
        relative_position_index((5, 3), table_window_size=(4, 5))
    with pytest.raises(ValueError):
        relative_position_index((7, 7), spatial_dims=3)
    with pytest.raises(ValueError):
        relative_position_index((7,))


def test_relative_position_index_int_window():
    assert torch.equal(relative_position_index(7), relative_position_index((7, 7)))
    assert torch.equal(relative_position_index(2, spatial_dims=3), relative_position_index((2, 2, 2)))


def _token_coords(spatial):
    return torch.tensor(list(itertools.product(*(range(s) for s in spatial))))  # (L, n) row-major


def _allowed_pairs(spatial, win, shift):
    """Rolled frame: same window, and the tokens were less than a window apart before the roll."""
    r = _token_coords(spatial)
    size = torch.tensor(spatial)
    orig = (r + torch.tensor(shift)) % size
    w = torch.tensor(win)
    same_window = ((r[:, None] // w) == (r[None] // w)).all(-1)
    neighbours = ((orig[:, None] - orig[None]).abs() < w).all(-1)
    return same_window & neighbours


@pytest.mark.parametrize("spatial, win, shift", CASES)
def test_shifted_window_mask_matches_explicit_neighbourhoods(spatial, win, shift):
    mask = shifted_window_mask(spatial, win, shift)
    n = math.prod(win)
    assert mask.shape == (math.prod(s // w for s, w in zip(spatial, win)), n, n)
    assert set(torch.unique(mask).tolist()) <= {0.0, -100.0}
    allowed = _allowed_pairs(spatial, win, shift)
    # gather the full-map pair table into windows via the token ids
    ids = torch.arange(math.prod(spatial)).reshape(1, *spatial, 1)
    wid = window_partition(ids, win).squeeze(-1)  # (nW, N)
    expected = allowed[wid[:, :, None], wid[:, None, :]]
    assert torch.equal(mask == 0, expected)
    inf_mask = shifted_window_mask(spatial, win, shift, mask_value=float("-inf"), dtype=torch.float64)
    assert inf_mask.dtype == torch.float64 and torch.equal(inf_mask == 0, expected)
    assert not torch.isneginf(inf_mask).all(-1).any()  # no fully masked row


def _naive_shifted_attention(q, k, v, table, spatial, win, shift, scale):
    """Full softmax attention over the whole rolled map with an explicit mask and bias by coordinates.

    q, k, v: (b, heads, *spatial, d) token features before the roll. Returns (b, heads, *spatial, d).
    """
    n = len(spatial)
    dims = tuple(range(2, 2 + n))
    neg = tuple(-s for s in shift)
    qr, kr, vr = (torch.roll(t, neg, dims).flatten(2, 1 + n) for t in (q, k, v))  # (b, h, L, d)
    r = _token_coords(spatial)
    diff = r[:, None] - r[None]  # (L, L, n)
    table_nd = table.reshape(*(2 * w - 1 for w in win), -1)  # offsets row-major, heads last
    bias = table_nd[tuple((diff[..., d] + win[d] - 1).clamp(0, 2 * win[d] - 2) for d in range(n))]
    bias = bias.permute(2, 0, 1)  # (heads, L, L); only used where allowed (|diff| < win there)
    allowed = _allowed_pairs(spatial, win, shift)
    scores = torch.einsum("bhid,bhjd->bhij", qr, kr) * scale + bias
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("bhij,bhjd->bhid", scores.softmax(-1), vr)
    out = out.unflatten(2, spatial)
    return torch.roll(out, shift, dims)


def _kernel_shifted_attention(q, k, v, table, spatial, win, shift, scale, impl):
    b, h = q.shape[:2]
    n_tok = math.prod(win)

    def to_windows(t):
        t = t.movedim(1, -2).flatten(-2)  # (b, *spatial, h*d)
        t = window_partition(cyclic_shift(t, shift), win)  # (b*nW, N, h*d)
        return t.reshape(t.shape[0], n_tok, h, -1).transpose(1, 2)

    bias = relative_position_bias(table, relative_position_index(win))
    mask = shifted_window_mask(spatial, win, shift, dtype=q.dtype) if any(shift) else None
    out = window_attention(
        to_windows(q), to_windows(k), to_windows(v), rel_bias=bias, mask=mask, scale=scale, impl=impl
    )
    out = out.transpose(1, 2).flatten(2)  # (b*nW, N, h*d)
    out = reverse_cyclic_shift(window_merge(out, win, spatial), shift)
    return out.unflatten(-1, (h, -1)).movedim(-2, 1)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
@pytest.mark.parametrize("spatial, win, shift", [*CASES, ((6, 8), (3, 4), (0, 0))])
def test_shifted_window_attention_equals_masked_full_attention(spatial, win, shift, impl):
    b, h, d = 2, 3, 4
    q, k, v = (torch.randn(b, h, *spatial, d, dtype=torch.float64) for _ in range(3))
    table = torch.randn(math.prod(2 * w - 1 for w in win), h, dtype=torch.float64)
    scale = d**-0.5
    got = _kernel_shifted_attention(q, k, v, table, spatial, win, shift, scale, impl)
    want = _naive_shifted_attention(q, k, v, table, spatial, win, shift, scale)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_window_attention_float32_sdpa_matches_reference_and_gradients():
    q, k, v = (torch.randn(8, 2, 12, 16, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 12, 12, requires_grad=True)
    mask = shifted_window_mask((6, 8), (3, 4), (1, 2))  # 4 windows per map, 2 maps
    outs, grads = [], []
    for impl in ("sdpa", "reference"):
        out = window_attention(q, k, v, rel_bias=bias, mask=mask, impl=impl)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v, bias)))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


def test_window_attention_bool_mask_and_no_bias():
    q, k, v = (torch.randn(4, 2, 6, 8, dtype=torch.float64) for _ in range(3))
    float_mask = shifted_window_mask((4, 6), (2, 3), (1, 1), mask_value=float("-inf"), dtype=torch.float64)
    got = window_attention(q, k, v, mask=float_mask == 0)
    want = window_attention(q, k, v, mask=float_mask)
    torch.testing.assert_close(got, want)
    plain = window_attention(q, k, v)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    torch.testing.assert_close(plain, scores.softmax(-1) @ v)
    assert exported_window_attention is window_attention


def test_window_attention_bad_arguments():
    q = torch.randn(6, 2, 4, 8)
    with pytest.raises(ValueError):
        window_attention(q, q, q, mask=torch.zeros(4, 4, 4))  # 6 windows not a multiple of 4
    with pytest.raises(ValueError):
        window_attention(q, q, q, mask=torch.zeros(3, 5, 5))
    with pytest.raises(ValueError):
        window_attention(q, q, q, rel_bias=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError):
        window_attention(q, q[:, :, :3], q)
    with pytest.raises(ValueError):
        window_attention(q[0], q[0], q[0])


def test_pad_and_crop_round_trip():
    x = torch.randn(2, 5, 7, 3)
    padded, spatial = pad_to_window(x, (4, 3))
    assert padded.shape == (2, 8, 9, 3) and spatial == (5, 7)
    assert torch.equal(padded[:, :5, :7], x)
    assert padded[:, 5:].abs().sum() == 0 and padded[:, :, 7:].abs().sum() == 0
    assert torch.equal(crop_to_shape(padded, spatial), x)
    y = torch.randn(1, 3, 4, 5, 2)
    padded3, spatial3 = pad_to_window(y, 2)
    assert padded3.shape == (1, 4, 4, 6, 2) and torch.equal(crop_to_shape(padded3, spatial3), y)
    same, _ = pad_to_window(x, 1)
    assert same is x


def test_effective_window_clamps_per_axis():
    assert effective_window((56, 56), 7, 3) == ((7, 7), (3, 3))
    assert effective_window((7, 7), 7, 3) == ((7, 7), (0, 0))  # official: min(res) <= window -> no shift
    assert effective_window((5, 20), (7, 7), (3, 3)) == ((5, 7), (0, 3))
    assert effective_window((2, 14, 14), (4, 7, 7), (2, 3, 3)) == ((2, 7, 7), (0, 3, 3))


@pytest.mark.parametrize(
    "call",
    [
        lambda: window_partition(torch.randn(1, 5, 6, 2), 2),
        lambda: window_partition(torch.randn(1, 6, 2), 2),
        lambda: window_partition(torch.randn(1, 4, 4, 2), (2, 2, 2)),
        lambda: window_partition(torch.randn(1, 4, 4, 2), 0),
        lambda: window_merge(torch.randn(3, 4, 2), 2, (4, 4)),
        lambda: window_merge(torch.randn(4, 5, 2), 2, (4, 4)),
        lambda: shifted_window_mask((8, 8), 4, 4),
        lambda: shifted_window_mask((9, 8), 4, 2),
        lambda: shifted_window_mask((8,), 4, 2),
        lambda: effective_window((8, 8), 4, (1, 5)),
        lambda: cyclic_shift(torch.randn(1, 4, 4, 2), (1, -1)),
        lambda: crop_to_shape(torch.randn(1, 4, 4, 2), (5, 4)),
        lambda: relative_position_bias(torch.randn(9), torch.zeros(4, 4, dtype=torch.long)),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
