"""Transformer layers: parity with nn.TransformerEncoderLayer, LayerScale, options, cross-attention layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybrids.shared_blocks.norms import RMSNorm
from hybrids.shared_blocks.transformer import LayerScale, TransformerCrossLayer, TransformerEncoderLayer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def copy_from_torch_layer(ours: TransformerEncoderLayer, ref: nn.TransformerEncoderLayer) -> None:
    dim = ref.self_attn.embed_dim
    with torch.no_grad():
        for proj, w, b in zip(
            (ours.attn.q_proj, ours.attn.k_proj, ours.attn.v_proj),
            ref.self_attn.in_proj_weight.split(dim),
            ref.self_attn.in_proj_bias.split(dim),
        ):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        pairs = [
            (ours.attn.out_proj, ref.self_attn.out_proj),
            (ours.mlp.fc1, ref.linear1),
            (ours.mlp.fc2, ref.linear2),
            (ours.norm1, ref.norm1),
            (ours.norm2, ref.norm2),
        ]
        for dst, src in pairs:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_matches_torch_encoder_layer(norm_first: bool, activation: str) -> None:
    ref = nn.TransformerEncoderLayer(
        16, 4, dim_feedforward=32, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    )
    with torch.no_grad():
        for p in ref.parameters():  # non-trivial norm weights and biases too
            p.add_(0.1 * torch.randn_like(p))
    ours = TransformerEncoderLayer(16, 4, mlp_ratio=2.0, mlp=activation, norm_first=norm_first)
    copy_from_torch_layer(ours, ref)
    x = torch.randn(2, 6, 16)
    kpm = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    ref.train()  # the training path of torch's layer (the eval fast path may return nested outputs)
    ours.train()
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    expected = ref(x, src_key_padding_mask=kpm)
    torch.testing.assert_close(ours(x, key_padding_mask=kpm), expected, atol=1e-5, rtol=1e-5)


def test_layer_scale_module() -> None:
    ls = LayerScale(4, 0.5)
    assert [n for n, _ in ls.named_parameters()] == ["scale"]
    torch.testing.assert_close(ls.scale, torch.full((4,), 0.5))
    x = torch.randn(3, 4)
    torch.testing.assert_close(ls(x), 0.5 * x)


def test_zero_layer_scale_makes_a_prenorm_layer_the_identity() -> None:
    x = torch.randn(2, 5, 16)
    layer = TransformerEncoderLayer(16, 4, layer_scale=0.0)
    torch.testing.assert_close(layer(x), x)
    assert isinstance(layer.ls1, LayerScale) and isinstance(layer.ls2, LayerScale)
    assert not torch.allclose(TransformerEncoderLayer(16, 4, layer_scale=1e-2)(x), x)


def test_prenorm_structure_explicit() -> None:
    layer = TransformerEncoderLayer(
        16, 4, mlp="swiglu", norm="rmsnorm", layer_scale=0.3, num_kv_heads=2, rope=True
    )
    assert isinstance(layer.norm1, RMSNorm)
    x = torch.randn(2, 5, 16)
    h = x + 0.3 * layer.attn(layer.norm1(x))
    expected = h + 0.3 * layer.mlp(layer.norm2(h))
    torch.testing.assert_close(layer(x), expected)


def test_causal_layer_with_rope_ignores_the_future() -> None:
    layer = TransformerEncoderLayer(16, 4, causal=True, rope=True, mlp="swiglu", mlp_ratio=8 / 3)
    x = torch.randn(2, 6, 16)
    y = x.clone()
    y[:, 5] = torch.randn(2, 16)
    torch.testing.assert_close(layer(x)[:, :5], layer(y)[:, :5])
    assert layer.mlp.w1.weight.shape == (int(16 * 8 / 3), 16)


def test_positions_and_masks_are_forwarded() -> None:
    layer = TransformerEncoderLayer(16, 4, rope=True)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(layer(x, positions=torch.arange(5)), layer(x))
    assert not torch.allclose(layer(x, positions=torch.arange(5) * 3), layer(x), atol=1e-4)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    causal = TransformerEncoderLayer(16, 4, rope=True, causal=True)
    causal.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x, attn_mask=allowed), causal(x))
    assert not torch.allclose(layer(x, attn_mask=allowed), layer(x), atol=1e-4)


@pytest.mark.parametrize("norm_first", [True, False])
def test_cross_layer_structure(norm_first: bool) -> None:
    layer = TransformerCrossLayer(16, 4, kv_dim=12, norm_first=norm_first, layer_scale=0.5)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    kpm = torch.tensor([[False] * 7, [False] * 3 + [True] * 4])
    out = layer(x, ctx, key_padding_mask=kpm)
    assert out.shape == (2, 5, 16)
    attn = layer.attn
    if norm_first:
        h = x + 0.5 * attn(layer.norm1(x), layer.norm_context(ctx), key_padding_mask=kpm)
        expected = h + 0.5 * layer.mlp(layer.norm2(h))
    else:
        h = layer.norm1(x + 0.5 * attn(x, ctx, key_padding_mask=kpm))
        expected = layer.norm2(h + 0.5 * layer.mlp(h))
    torch.testing.assert_close(out, expected)
    # padded context positions have no influence
    ctx2 = ctx.clone()
    ctx2[1, 3:] = torch.randn(4, 12)
    torch.testing.assert_close(layer(x, ctx2, key_padding_mask=kpm), out)
    assert not torch.allclose(layer(x, ctx2), layer(x, ctx), atol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: TransformerEncoderLayer(16, 4, layer_scale=0.1, norm="rmsnorm", mlp="swiglu", num_kv_heads=2),
        lambda: TransformerEncoderLayer(16, 4, norm_first=False, mlp="gelu"),
        lambda: TransformerCrossLayer(16, 4, kv_dim=8, layer_scale=0.1),
    ],
    ids=["encoder_prenorm", "encoder_postnorm", "cross"],
)
def test_gradient_reaches_every_parameter(make) -> None:
    layer = make()
    x = torch.randn(2, 5, 16)
    out = layer(x, torch.randn(2, 6, 8)) if isinstance(layer, TransformerCrossLayer) else layer(x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="norm"):
        TransformerEncoderLayer(16, 4, norm="batchnorm")
    with pytest.raises(ValueError, match="mlp"):
        TransformerEncoderLayer(16, 4, mlp="geglu")
    with pytest.raises(ValueError, match="num_heads"):
        TransformerEncoderLayer(16, 3)
    with pytest.raises(ValueError, match="hidden"):
        TransformerCrossLayer(16, 4, mlp_ratio=0.0)
