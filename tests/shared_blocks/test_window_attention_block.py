"""Swin blocks: naive full-attention equivalence, official names, shapes over spatial_dims, gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from hybrids.shared_blocks.window_attention import PatchMerging, SwinTransformerBlock, WindowAttention


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _naive_block(block: SwinTransformerBlock, x: torch.Tensor, win, shift) -> torch.Tensor:
    """The block written as full attention over the whole rolled map with an explicit mask (no windows).

    Token p may attend to p' iff they share a window in the rolled frame and were less than a window apart
    before the roll; the bias is looked up by the coordinate difference in the (table-sized) bias table.
    Only valid for maps whose sizes are multiples of ``win`` (no padding).
    """
    attn = block.attn
    b, *spatial, c = x.shape
    n = len(spatial)
    heads, hd = attn.num_heads, attn.head_dim
    dims = tuple(range(1, 1 + n))
    h = torch.roll(block.norm1(x), tuple(-s for s in shift), dims).reshape(b, -1, c)
    q, k, v = attn.qkv(h).reshape(b, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
    r = torch.tensor(list(itertools.product(*(range(s) for s in spatial))))
    orig = (r + torch.tensor(shift)) % torch.tensor(spatial)
    w = torch.tensor(win)
    allowed = ((r[:, None] // w) == (r[None] // w)).all(-1) & ((orig[:, None] - orig[None]).abs() < w).all(-1)
    table_win = attn.window_size
    table = attn.relative_position_bias_table.reshape(*(2 * t - 1 for t in table_win), heads)
    diff = r[:, None] - r[None]
    bias = table[tuple((diff[..., d] + table_win[d] - 1).clamp(0, 2 * table_win[d] - 2) for d in range(n))]
    scores = q @ k.transpose(-1, -2) * hd**-0.5 + bias.permute(2, 0, 1)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = attn.proj((probs @ v).transpose(1, 2).reshape(b, -1, c)).reshape(b, *spatial, c)
    x = x + torch.roll(out, tuple(shift), dims)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize(
    "spatial, win, shift",
    [
        ((8, 12), (4, 3), (2, 1)),
        ((8, 8), 4, 0),
        ((4, 6, 4), (2, 3, 2), (1, 1, 1)),
        ((4, 4, 6), (2, 2, 3), (1, 0, 1)),
    ],
)
def test_block_equals_naive_masked_full_attention(spatial, win, shift):
    n = len(spatial)
    block = SwinTransformerBlock(12, 3, window_size=win, shift_size=shift, spatial_dims=n).double().eval()
    x = torch.randn(2, *spatial, 12, dtype=torch.float64)
    win_t = (win,) * n if isinstance(win, int) else win
    shift_t = (shift,) * n if isinstance(shift, int) else shift
    torch.testing.assert_close(block(x), _naive_block(block, x, win_t, shift_t), rtol=0, atol=1e-5)


@pytest.mark.parametrize("spatial_dims, spatial", [(2, (5, 5)), (3, (3, 5, 4))])
def test_window_larger_than_map_is_clamped_with_bias_from_full_table(spatial_dims, spatial):
    block = SwinTransformerBlock(8, 2, window_size=7, shift_size=3, spatial_dims=spatial_dims).double().eval()
    x = torch.randn(2, *spatial, 8, dtype=torch.float64)
    # every axis <= 7: one window covering the whole map, no shift
    torch.testing.assert_close(
        block(x), _naive_block(block, x, spatial, (0,) * spatial_dims), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize(
    "spatial_dims, spatial, win, shift",
    [
        (2, (9, 13), 4, 2),
        (2, (7, 30), 7, 3),
        (2, (1, 1), 7, 3),
        (3, (3, 9, 10), (2, 4, 4), (1, 2, 2)),
        (3, (5, 5, 5), 2, 1),
    ],
)
def test_block_shapes_with_padding_and_clamping(spatial_dims, spatial, win, shift):
    block = SwinTransformerBlock(16, 4, window_size=win, shift_size=shift, spatial_dims=spatial_dims)
    x = torch.randn(2, *spatial, 16)
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_padding_matches_official_zero_padding_after_norm1():
    """A non-multiple map equals the attention of the zero-padded norm1 output, cropped."""
    block = SwinTransformerBlock(8, 2, window_size=4, shift_size=2).double().eval()
    x = torch.randn(1, 6, 7, 8, dtype=torch.float64)
    # make norm1 map the padded zeros like the block does: pad the *normalised* map, then attend
    h = nn.functional.pad(block.norm1(x), (0, 0, 0, 1, 0, 2))
    ident = SwinTransformerBlock(8, 2, window_size=4, shift_size=2).double().eval()
    ident.load_state_dict(block.state_dict())
    ident.norm1 = nn.Identity()
    ident.mlp = _Zero()
    ident.norm2 = nn.Identity()
    attended = ident(h) - h  # attention branch only
    out = x + attended[:, :6, :7]
    out = out + block.mlp(block.norm2(out))
    torch.testing.assert_close(block(x), out, rtol=0, atol=1e-10)


class _Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


OFFICIAL_BLOCK_KEYS = {
    "norm1.weight",
    "norm1.bias",
    "attn.relative_position_bias_table",
    "attn.relative_position_index",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
}


def test_official_state_dict_names_and_attn_mask_ignored_on_load():
    block = SwinTransformerBlock(32, 4, window_size=7, shift_size=3)
    state = block.state_dict()
    assert set(state) == OFFICIAL_BLOCK_KEYS
    assert state["attn.relative_position_bias_table"].shape == (169, 4)
    wh = ww = 7
    coords = list(itertools.product(range(wh), range(ww)))
    official = torch.tensor(
        [[(a[0] - b[0] + wh - 1) * (2 * ww - 1) + (a[1] - b[1] + ww - 1) for b in coords] for a in coords]
    )
    assert torch.equal(state["attn.relative_position_index"], official)
    foreign = {
        k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v for k, v in state.items()
    }
    foreign["attn_mask"] = torch.zeros(64, 49, 49)  # official shifted blocks store their mask
    other = SwinTransformerBlock(32, 4, window_size=7, shift_size=3)
    other.load_state_dict(foreign, strict=True)
    torch.testing.assert_close(other.attn.qkv.weight, foreign["attn.qkv.weight"])
    merge = PatchMerging(32)
    assert set(merge.state_dict()) == {"reduction.weight", "norm.weight", "norm.bias"}
    assert merge.reduction.weight.shape == (64, 128) and merge.reduction.bias is None
    assert WindowAttention(24, (2, 3, 3), 3, spatial_dims=3).relative_position_bias_table.shape == (
        3 * 5 * 5,
        3,
    )


@pytest.mark.parametrize("spatial_dims, spatial", [(2, (8, 8)), (3, (4, 4, 4))])
def test_gradient_reaches_every_parameter(spatial_dims, spatial):
    block = SwinTransformerBlock(
        16, 2, window_size=4 if spatial_dims == 2 else 2, shift_size=1, spatial_dims=spatial_dims
    )
    merge = PatchMerging(16, spatial_dims=spatial_dims)
    x = torch.randn(2, *spatial, 16)
    merge(block(x)).square().mean().backward()
    for module in (block, merge):
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_window_attention_module_matches_kernel_on_clamped_window():
    attn = WindowAttention(8, 4, 2).double()
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    out = attn(x, window_size=(2, 3))
    assert out.shape == (3, 6, 8)
    with pytest.raises(ValueError):
        attn(x, window_size=(5, 1))
    with pytest.raises(ValueError):
        attn(x)  # 6 tokens != 16


def test_patch_merging_order_and_padding():
    merge = PatchMerging(3)
    merge.norm, merge.reduction = nn.Identity(), nn.Identity()
    x = torch.randn(2, 4, 6, 3)
    want = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    assert torch.equal(merge(x), want)
    odd = torch.randn(2, 5, 3, 3)
    padded = nn.functional.pad(odd, (0, 0, 0, 1, 0, 1))
    assert torch.equal(merge(odd), merge(padded))
    assert merge(odd).shape == (2, 3, 2, 12)
    merge3 = PatchMerging(2, spatial_dims=3)
    merge3.norm, merge3.reduction = nn.Identity(), nn.Identity()
    y = torch.randn(1, 4, 2, 6, 2)
    offsets = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    want3 = torch.cat([y[:, a::2, b::2, c::2] for a, b, c in offsets], -1)
    assert torch.equal(merge3(y), want3)
    assert PatchMerging(4, spatial_dims=3)(torch.randn(1, 3, 5, 4, 4)).shape == (1, 2, 3, 2, 8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: WindowAttention(30, 7, 4),
        lambda: WindowAttention(32, 7, 4, spatial_dims=1),
        lambda: WindowAttention(32, (7, 7, 7), 4),
        lambda: SwinTransformerBlock(32, 4, window_size=7, shift_size=7),
        lambda: SwinTransformerBlock(32, 4, window_size=(2, 4, 4), shift_size=(1, 2, -1), spatial_dims=3),
        lambda: SwinTransformerBlock(32, 4, spatial_dims=4),
        lambda: SwinTransformerBlock(32, 4, mlp_ratio=0),
        lambda: PatchMerging(32, spatial_dims=1),
    ],
)
def test_bad_constructor_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_bad_inputs_raise_value_error():
    block = SwinTransformerBlock(16, 2, window_size=4)
    with pytest.raises(ValueError):
        block(torch.randn(2, 64, 16))  # (b, L, c) is not accepted: pass (b, H, W, c)
    with pytest.raises(ValueError):
        block(torch.randn(2, 8, 8, 15))
    with pytest.raises(ValueError):
        PatchMerging(16, spatial_dims=3)(torch.randn(2, 8, 8, 16))


@pytest.mark.slow
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_parity_with_monai_swin_port(spatial_dims):
    """Same weights as MONAI's port of the official Swin / Video Swin block (needs monai; slow import)."""
    swin = pytest.importorskip("monai.networks.nets.swin_unetr")
    win = (4,) * spatial_dims
    shift = (2,) * spatial_dims
    spatial = (8, 12) if spatial_dims == 2 else (4, 8, 12)  # D = 4: clamped, not shifted
    ref = swin.SwinTransformerBlock(24, 3, window_size=win, shift_size=shift).double().eval()
    ours = (
        SwinTransformerBlock(24, 3, window_size=win, shift_size=shift, spatial_dims=spatial_dims)
        .double()
        .eval()
    )
    state = {
        k.replace("mlp.linear1", "mlp.fc1").replace("mlp.linear2", "mlp.fc2"): v
        for k, v in ref.state_dict().items()
    }
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, *spatial, 24, dtype=torch.float64)
    use_win, use_shift = swin.get_window_size(spatial, win, shift)
    mask = swin.compute_mask(list(spatial), use_win, use_shift, x.device).double()
    torch.testing.assert_close(ours._shift_mask(spatial, use_win, use_shift, x), mask, rtol=0, atol=0)
    torch.testing.assert_close(ours(x), ref(x, mask), rtol=0, atol=1e-10)
    ref_attn = swin.WindowAttention(24, 3, win, qkv_bias=True).double().eval()
    our_attn = WindowAttention(24, win, 3, spatial_dims=spatial_dims).double().eval()
    our_attn.load_state_dict(ref_attn.state_dict(), strict=True)
    tokens = torch.randn(6, math.prod(win), 24, dtype=torch.float64)
    torch.testing.assert_close(our_attn(tokens), ref_attn(tokens, None), rtol=0, atol=1e-10)
