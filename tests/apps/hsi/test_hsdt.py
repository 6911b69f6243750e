"""HSDT: parameter counts and state-dict names of the official presets, shapes, gradients, GSSA modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.registry import count_parameters, create_model
from hybrids.apps.hsi.hsdt import GSSA, HSDT, SMFFN, HSDTConfig, S3Conv, TransformerBlock

OFFICIAL = json.loads((Path(__file__).parent / "data" / "hsdt_official_state_dicts.json").read_text())


@pytest.mark.parametrize(
    "name, expected", [("hsi/hsdt_s", 134_350), ("hsi/hsdt_m", 521_158), ("hsi/hsdt_l", 2_094_786)]
)
def test_parameter_counts_are_the_papers(name, expected):
    assert count_parameters(name) == expected
    assert OFFICIAL[name.split("/")[1]]["parameters"] == expected


@pytest.mark.parametrize("preset", ["hsdt_s", "hsdt_m", "hsdt_l"])
def test_state_dict_has_the_official_names_and_shapes(preset):
    model = create_model(f"hsi/{preset}", device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == OFFICIAL[preset]["state_dict"]


def test_an_official_names_state_dict_loads_strictly():
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in OFFICIAL["hsdt_s"]["state_dict"].items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(3)
        else:
            state[key] = torch.randn(shape, generator=generator)
    model = create_model("hsi/hsdt_s")
    assert not model.load_state_dict(state, strict=True).missing_keys
    assert torch.equal(
        model.state_dict()["decoder.layers.4.attn.ffn.w_3.weight"],
        state["decoder.layers.4.attn.ffn.w_3.weight"],
    )


def test_tiny_forward_shape_and_global_residual():
    model = HSDT(HSDTConfig.from_preset("tiny", num_bands=8)).eval()
    x = torch.rand(2, 1, 8, 12, 16)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    # The tail conv starts from xavier weights on BN'd features: output = input + a finite correction.
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("self_attention", [False, True])
def test_gradient_reaches_every_parameter(self_attention):
    model = HSDT(
        HSDTConfig.from_preset("tiny", num_bands=6, swap_prob=1.0 if self_attention else 0.0)
    ).train()
    x = torch.rand(2, 1, 6, 8, 8)
    model(x).square().mean().backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not p.grad.abs().sum() > 0
        if not (self_attention and "attn_proj" in n)  # the learnable query is unused on that path
    ]
    assert missing == []


def test_learnable_query_needs_its_band_count_and_flex_takes_any():
    model = HSDT(HSDTConfig.from_preset("tiny", num_bands=8)).eval()
    with pytest.raises(InputError, match="takes 8 bands, got 5.*flex"):
        model(torch.rand(1, 1, 5, 8, 8))
    model.set_flex(True)
    assert model.flex and model.config.flex
    assert model(torch.rand(1, 1, 5, 8, 8)).shape == (1, 1, 5, 8, 8)


def test_size_divisor_is_checked():
    model = HSDT(HSDTConfig.from_preset("tiny", num_bands=4)).eval()
    assert model.size_divisor == 2
    with pytest.raises(InputError, match="multiples of 2"):
        model(torch.rand(1, 1, 4, 7, 8))


def test_gssa_is_the_papers_formula():
    torch.manual_seed(0)
    gssa = GSSA(4, num_bands=5).eval()
    x = torch.randn(2, 4, 5, 3, 3)
    pooled = x.mean((3, 4)).transpose(1, 2)
    attn = torch.softmax(gssa.attn_proj(pooled), -1)
    v = gssa.value_proj(x.permute(0, 3, 4, 2, 1))  # (B, H, W, D, C), as the official code
    expected = gssa.fc(attn[:, None, None] @ v).permute(0, 4, 3, 1, 2) + x
    torch.testing.assert_close(gssa(x), expected)
    gssa.flex = True
    attn = torch.softmax(pooled @ pooled.transpose(1, 2), -1)
    expected = gssa.fc(attn[:, None, None] @ v).permute(0, 4, 3, 1, 2) + x
    torch.testing.assert_close(gssa(x), expected)


def test_training_swaps_query_and_self_attention_at_random():
    gssa = GSSA(3, num_bands=4, swap_prob=0.5).train()
    torch.manual_seed(1)
    picks = {gssa.uses_self_attention() for _ in range(50)}
    assert picks == {True, False}
    assert not GSSA(3, 4, swap_prob=0.5).eval().uses_self_attention()


def test_smffn_and_s3conv_formulas():
    torch.manual_seed(0)
    ffn = SMFFN(4, 8)
    x = torch.randn(2, 4, 3, 5)
    last = x.movedim(1, -1)
    a, g = ffn.w_3(last).chunk(2, -1)
    expected = ffn.w_2(torch.nn.functional.gelu(ffn.w_1(last))) + a * torch.sigmoid(g)
    torch.testing.assert_close(ffn(x), expected.movedim(-1, 1))
    conv = S3Conv(2, 3)
    y = torch.randn(1, 2, 5, 6, 6)
    torch.testing.assert_close(conv(y), conv.dw_conv(y) + conv.pw_conv(y))
    assert conv.dw_conv[0].kernel_size == (1, 3, 3) and conv.pw_conv.kernel_size == (3, 1, 1)
    assert isinstance(TransformerBlock(4).ffn, SMFFN)


def test_initialisation_is_the_official_xn_scheme():
    model = create_model("hsi/hsdt_m")
    linear = model.encoder.layers[0].attn.ffn.w_1
    assert linear.weight.std().item() == pytest.approx(1e-3, rel=0.2)
    assert torch.count_nonzero(linear.bias) == 0
    conv = model.encoder.layers[1].conv  # 16 -> 32, 3x3x3: xavier normal std = sqrt(2 / (fan_in + fan_out))
    expected = (2 / (16 * 27 + 32 * 27)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)


def test_bad_configs_raise():
    with pytest.raises(InputError, match="sample_idx"):
        HSDTConfig.from_dict({"num_half_layer": 3, "sample_idx": [3]})
    with pytest.raises(InputError, match="swap_prob"):
        HSDTConfig.from_dict({"swap_prob": 2.0})
