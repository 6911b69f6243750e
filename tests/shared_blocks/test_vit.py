"""ViT with DINO's parameter names: shapes, official keys, attention maps, position embedding."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from hybrids.shared_blocks.vit import VisionTransformer, vit_small, vit_tiny


def _tiny(**kw) -> VisionTransformer:
    kw.setdefault("embed_dim", 32)
    kw.setdefault("depth", 2)
    kw.setdefault("num_heads", 4)
    kw.setdefault("img_size", 32)
    kw.setdefault("patch_size", 8)
    return VisionTransformer(**kw)


def _official_keys(depth: int) -> set[str]:
    """Key names of DINO's ``vision_transformer.VisionTransformer.state_dict()`` (written out by hand)."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    keys |= {"norm.weight", "norm.bias"}
    for i in range(depth):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
    return keys


def _official_state_dict(patch_size: int) -> dict[str, torch.Tensor]:
    """A ViT-S/p state dict built from random tensors with the official names and shapes (224 input)."""
    d, hidden, grid = 384, 1536, 224 // patch_size
    sd = {
        "cls_token": torch.randn(1, 1, d),
        "pos_embed": torch.randn(1, 1 + grid * grid, d),
        "patch_embed.proj.weight": torch.randn(d, 3, patch_size, patch_size),
        "patch_embed.proj.bias": torch.randn(d),
        "norm.weight": torch.randn(d),
        "norm.bias": torch.randn(d),
    }
    for i in range(12):
        shapes = {
            "norm1": (d,),
            "attn.qkv": (3 * d, d),
            "attn.proj": (d, d),
            "norm2": (d,),
            "mlp.fc1": (hidden, d),
            "mlp.fc2": (d, hidden),
        }
        for name, shape in shapes.items():
            sd[f"blocks.{i}.{name}.weight"] = torch.randn(shape)
            sd[f"blocks.{i}.{name}.bias"] = torch.randn(shape[0])
    return sd


def test_state_dict_keys_are_dinos():
    model = _tiny(depth=3)
    assert set(model.state_dict()) == _official_keys(3)


@pytest.mark.parametrize("patch_size", [16, 8])
def test_official_vit_small_state_dict_loads_strict(patch_size):
    model = vit_small(patch_size=patch_size)
    sd = _official_state_dict(patch_size)
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.blocks[11].attn.qkv.weight, sd["blocks.11.attn.qkv.weight"])
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in sd.values())
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        maps = model.attention_maps(x)
        coarse = model.attention_maps(x, upsample=False)
    heads = 6
    assert coarse.shape == (1, heads, 64 // patch_size, 48 // patch_size)
    assert maps.shape == (1, heads, 64, 48)
    # nearest upsampling by p, as DINO's visualize_attention
    assert torch.equal(maps, F.interpolate(coarse, scale_factor=patch_size, mode="nearest"))


def test_shapes_any_size_and_channels():
    model = _tiny(in_chans=1).eval()
    for h, w in [(32, 32), (16, 48), (64, 24)]:
        x = torch.randn(2, 1, h, w)
        assert model(x).shape == (2, 32)
        assert model.forward_tokens(x).shape == (2, 1 + (h // 8) * (w // 8), 32)
        att = model.get_last_selfattention(x)
        assert att.shape == (2, 4, 1 + (h // 8) * (w // 8), 1 + (h // 8) * (w // 8))
        torch.testing.assert_close(att.sum(-1), torch.ones(2, 4, att.shape[-1]))
        cls_maps = model.attention_maps(x, upsample=False)
        assert cls_maps.shape == (2, 4, h // 8, w // 8)
        torch.testing.assert_close(cls_maps.sum((-2, -1)), 1 - att[:, :, 0, 0])
        assert model.attention_maps(x).shape == (2, 4, h, w)


def test_sdpa_path_matches_explicit_attention():
    model = _tiny().eval()
    x = torch.randn(2, 3, 32, 40)
    tokens = model.prepare_tokens(x)
    blk = model.blocks[0]
    fast = blk(tokens)
    slow, attn = blk(tokens, return_attention=True)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    # the map method agrees with the explicit last-block attention
    att = model.get_last_selfattention(x)
    torch.testing.assert_close(model.attention_maps(x, upsample=False).flatten(2), att[:, :, 0, 1:])


def test_position_embedding_interpolation():
    model = _tiny(img_size=32, patch_size=8)  # stored grid 4x4
    assert model.interpolate_pos_encoding(4, 4) is model.pos_embed
    pe = model.interpolate_pos_encoding(6, 3)
    assert pe.shape == (1, 1 + 18, 32)
    torch.testing.assert_close(pe[:, 0], model.pos_embed[:, 0])
    # DINO's rule: bicubic with scale factor (n + 0.1) / side
    grid = model.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    want = F.interpolate(grid, scale_factor=(6.1 / 4, 3.1 / 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pe[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 18, 32))
    # a constant embedding stays constant (interpolation, not extrapolation garbage)
    with torch.no_grad():
        model.pos_embed[:, 1:] = 0.5
    torch.testing.assert_close(model.interpolate_pos_encoding(8, 2)[:, 1:], torch.full((1, 16, 32), 0.5))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = _tiny()  # no stochastic depth: a dropped branch would leave its block without gradient
    model.train()
    model(torch.randn(2, 3, 24, 32)).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_stochastic_depth_only_in_training():
    model = _tiny(drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    assert not torch.allclose(model(x), model(x))


def test_factories():
    tiny = vit_tiny(patch_size=8, in_chans=1, img_size=64)
    assert (tiny.embed_dim, len(tiny.blocks), tiny.num_heads, tiny.patch_size) == (192, 12, 3, 8)
    assert tiny.pos_embed.shape == (1, 65, 192)
    small = vit_small()
    assert sum(p.numel() for p in small.parameters()) == 21_665_664  # DINO ViT-S/16
    assert math.isclose(small.blocks[0].attn.scale, 64**-0.5)
    assert isinstance(small.head, torch.nn.Identity)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple"):
        _tiny(img_size=30)
    with pytest.raises(ValueError, match="divisible"):
        _tiny(embed_dim=30, num_heads=4)
    model = _tiny()
    with pytest.raises(ValueError, match="patch size"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(1, 1, 32, 32))
