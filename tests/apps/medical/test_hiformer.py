"""HiFormer: shapes, gradients, DLF order, official parameter counts and state-dict keys, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybrids.apps.core.errors import InputError
from hybrids.apps.medical.hiformer import HiFormer, HiFormerConfig

OFFICIAL = Path(__file__).parent / "data" / "hiformer_official_state_dict.json"
# Official parameter counts (amirhossein-kz/HiFormer, 9 classes, 3 input channels); the paper reports
# 23.25 M / 25.51 M / 29.52 M.
OFFICIAL_COUNTS = {"hiformer_s": 23_254_355, "hiformer_b": 25_512_115, "hiformer_l": 29_519_219}


def tiny(**overrides) -> HiFormer:
    torch.manual_seed(0)
    return HiFormer(HiFormerConfig.from_preset("tiny", **overrides))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def official() -> dict:
    return json.loads(OFFICIAL.read_text())


@pytest.mark.parametrize(("in_channels", "size"), [(1, (64, 64)), (3, (48, 80)), (4, (32, 32))])
def test_shapes(in_channels, size):
    model = tiny(in_channels=in_channels, num_classes=5).eval()
    x = torch.randn(2, in_channels, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 5, *size)
    assert torch.isfinite(y).all()
    assert model.spatial_dims == 2 and model.size_divisor == 16
    assert model.in_channels == in_channels and model.num_classes == 5


def test_batch_items_are_independent():
    model = tiny().eval()
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        full = model(x)
        one = model(x[1:2])
    torch.testing.assert_close(full[1:2], one, rtol=1e-4, atol=1e-5)


# With one DLF block the fused CLS tokens are never read: the decoder takes the patch tokens only (as
# the official HiFormer.forward does), so the cross-attention branch gets no gradient in either order.
CROSS_BRANCH = ("All2Cross.blocks.0.projs.", "All2Cross.blocks.0.fusion.", "All2Cross.blocks.0.revert_projs.")


def _without_grad(model: HiFormer) -> set[str]:
    return {name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}


def test_gradients_reach_every_parameter():
    model = tiny(in_channels=1, num_classes=3).train()
    y = model(torch.randn(2, 1, 48, 64))
    (y * torch.randn_like(y)).sum().backward()
    names = {name for name, _ in model.named_parameters()}
    assert _without_grad(model) == {name for name in names if name.startswith(CROSS_BRANCH)}


def test_official_2022_order_discards_self_attention():
    model = tiny(dlf_order="official_2022").train()
    y = model(torch.randn(2, 3, 32, 32))
    (y * torch.randn_like(y)).sum().backward()
    # self-attention output discarded; the CLS tokens (norm_1/norm_2) then reach nothing either
    dead = (
        *CROSS_BRANCH,
        "All2Cross.blocks.0.blocks.",
        "All2Cross.pyramid.norm_1.",
        "All2Cross.pyramid.norm_2.",
    )
    assert _without_grad(model) == {name for name, _ in model.named_parameters() if name.startswith(dead)}


def test_dlf_blocks_are_the_shared_blocks():
    """The DLF's ViT blocks are shared_blocks' ViTBlock (timm's LayerNorm eps 1e-5, fused qkv/proj) and
    its fusion the shared attention with CrossViT's wq/wk/wv/proj layout."""
    from hybrids.shared_blocks.attention import MultiHeadAttention
    from hybrids.shared_blocks.vit import ViTBlock

    block = tiny().All2Cross.blocks[0]
    vit = block.blocks[0][0]
    assert isinstance(vit, ViTBlock) and vit.norm1.eps == 1e-5 and vit.attn.layout == "fused"
    fusion = block.fusion[0].attn
    assert isinstance(fusion, MultiHeadAttention) and fusion.layout == "crossvit"
    x = torch.randn(2, 5, fusion.dim)
    with torch.no_grad():  # CrossViT: the first token is the only query
        assert block.fusion[0](x).shape == (2, 1, fusion.dim)


def test_dlf_order_changes_outputs():
    paper, late = tiny(dlf_order="paper").eval(), tiny(dlf_order="official_2022").eval()
    late.load_state_dict(paper.state_dict())
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert not torch.allclose(paper(x), late(x), atol=1e-4)
        # the 2022 order does not depend on the self-attention weights at all
        before = late(x)
        for p in late.All2Cross.blocks[0].blocks.parameters():
            p.add_(1.0)
        torch.testing.assert_close(late(x), before)


def test_position_embeddings_resize_to_the_input_grid():
    model = tiny()
    a2c = model.All2Cross
    assert a2c._pos_embed(0, (16, 16)) is a2c.pos_embed[0]  # the 64x64 grid of the tiny preset
    resized = a2c._pos_embed(1, (3, 5))
    assert resized.shape == (1, 1 + 15, 64)
    torch.testing.assert_close(resized[:, :1], a2c.pos_embed[1][:, :1])


@pytest.mark.parametrize("preset", sorted(OFFICIAL_COUNTS))
def test_parameter_counts_equal_official(preset, official):
    with torch.device("meta"):
        model = HiFormer(HiFormerConfig.from_preset(preset))
    assert n_params(model) == official[preset]["num_parameters"] == OFFICIAL_COUNTS[preset]


@pytest.mark.parametrize("preset", sorted(OFFICIAL_COUNTS))
def test_state_dict_keys_and_shapes_equal_official(preset, official):
    with torch.device("meta"):
        model = HiFormer(HiFormerConfig.from_preset(preset))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    # The official shifted-window masks are fixed to 224x224; ours are computed from the input.
    theirs = {k: v for k, v in official[preset]["state_dict"].items() if not k.endswith("attn_mask")}
    assert ours == theirs
    assert len(official[preset]["state_dict"]) - len(theirs) == 5  # shifted blocks: 1 + 1 + 3


def test_official_state_dict_loads_strictly(official):
    shapes = official["hiformer_s"]["state_dict"]
    model = HiFormer(HiFormerConfig.from_preset("hiformer_s"))
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith(("num_batches_tracked", "relative_position_index")):
            state[key] = model.state_dict()[key].clone()
        else:
            state[key] = torch.randn(shape, generator=generator)
    # aliases hold the same tensors in the official model
    for key in list(state):
        for alias, target in (
            ("pyramid.p2.", "pyramid.resnet_layers.5."),
            ("pyramid.p3.", "pyramid.resnet_layers.6."),
        ):
            if alias in key:
                state[key] = state[key.replace(alias, target)]
        if ".convs_level." in key:
            state[key] = state[key.replace(".convs_level.", ".conv_tower.")]
    model.load_state_dict(state, strict=True)
    loaded = model.state_dict()
    key = "All2Cross.blocks.0.fusion.0.attn.wq.weight"
    torch.testing.assert_close(loaded[key], state[key])


def test_config_round_trip_and_presets():
    for name in ("hiformer_s", "hiformer_b", "hiformer_l", "tiny"):
        cfg = HiFormerConfig.from_preset(name)
        assert HiFormerConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert HiFormerConfig.from_preset("hiformer_b") == HiFormerConfig()
    b = HiFormerConfig.from_preset("hiformer_b")
    assert (b.cnn_block, b.dlf_depth, b.dlf_heads, b.dlf_mlp_ratio) == (
        "bottleneck",
        (1, 2, 0),
        (6, 12),
        (2, 2, 1),
    )
    s, large = HiFormerConfig.from_preset("hiformer_s"), HiFormerConfig.from_preset("hiformer_l")
    assert s.cnn_block == large.cnn_block == "basic"
    assert (s.dlf_depth[1], b.dlf_depth[1], large.dlf_depth[1]) == (1, 2, 4)


@pytest.mark.parametrize(
    "overrides",
    [
        {"dlf_order": "late"},
        {"cnn_block": "resnext"},
        {"dlf_heads": (5, 12)},
        {"decoder_channels": 48},
        {"pos_embed_size": 100},
        {"dlf_depth": (0, 1, 0)},
        {"in_channels": 0},
    ],
)
def test_bad_configs_raise(overrides):
    with pytest.raises(InputError):
        HiFormerConfig.from_preset("tiny", **overrides)


@pytest.mark.parametrize(
    "x",
    [
        torch.randn(1, 1, 32, 32),  # wrong channel count
        torch.randn(1, 3, 40, 32),  # not a multiple of 16
        torch.randn(3, 32, 32),  # no batch axis
        torch.zeros(1, 3, 32, 32, dtype=torch.long),
    ],
)
def test_bad_inputs_raise(x):
    with pytest.raises(InputError):
        tiny()(x)



def test_registered_models():
    from hybrids.apps.core.registry import count_parameters, create_model, list_models

    assert {f"medical/{name}" for name in OFFICIAL_COUNTS} <= set(list_models("medical"))
    for name, count in OFFICIAL_COUNTS.items():
        assert count_parameters(f"medical/{name}") == count
    model = create_model("medical/hiformer_l", preset="tiny", in_channels=1, num_classes=2).eval()
    assert isinstance(model, HiFormer) and model.config.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["hiformer_s", "hiformer_b", "hiformer_l"])
def test_full_size_forward(preset):
    torch.manual_seed(0)
    model = HiFormer(HiFormerConfig.from_preset(preset, in_channels=1, num_classes=14)).eval()
    with torch.inference_mode():
        for size in ((224, 224), (256, 256)):
            y = model(torch.randn(2, 1, *size))
            assert y.shape == (2, 14, *size) and torch.isfinite(y).all()


GOLDEN = Path(__file__).parent / "data" / "hiformer_b_official_golden.safetensors"


def _canonical(key: str) -> str:
    for alias, target in (
        ("pyramid.p2.", "pyramid.resnet_layers.5."),
        ("pyramid.p3.", "pyramid.resnet_layers.6."),
        (".convs_level.", ".conv_tower."),
    ):
        key = key.replace(alias, target)
    return key


@pytest.mark.slow
@pytest.mark.parametrize("order", ["paper", "official_2022"])
def test_matches_official_outputs_on_identical_weights(order):
    """Golden logits of the official code (see the file's metadata for how they were made): ``paper``
    from utils.py before the October 2022 change, ``official_2022`` from the current repository."""
    import zlib

    from safetensors import safe_open
    from safetensors.torch import load_file

    expected = load_file(GOLDEN)[order]
    with safe_open(str(GOLDEN), framework="pt") as handle:
        assert "crc32" in handle.metadata()["source"]
    model = HiFormer(HiFormerConfig.from_preset("hiformer_b", dlf_order=order)).eval()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                g = torch.Generator().manual_seed(zlib.crc32(_canonical(key).encode()))
                value = torch.randn(tensor.shape, generator=g) * 0.05
                tensor.copy_(value.abs() + 0.5 if key.endswith("running_var") else value)
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        y = model(x)[:, :, 3::14, 3::14]
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=2e-6)
