"""SWTR-Unet: shapes in 2-D and 3-D, size divisor, gradients, presets, parameter count, bad configs."""

from __future__ import annotations

import pytest
import torch

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.registry import create_model
from hybrids.apps.medical.swtr_unet import SWTRUnet, SWTRUnetConfig, sincos_position_embedding


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (64, 24)])
def test_tiny_2d_shapes(size):
    model = create_model("medical/swtr_unet", preset="tiny", in_channels=2, num_classes=4)
    assert model.spatial_dims == 2 and model.size_divisor == 8
    out = model(torch.randn(3, 2, *size))
    assert out.shape == (3, 4, *size)


def test_3d_shapes_and_stride_one_stem():
    model = SWTRUnet(
        SWTRUnetConfig.from_preset(
            "tiny", spatial_dims=3, stem_stride=1, stem_kernel=3, decoder_channels=(8, 8), transformer_dim=24
        )
    )
    assert model.size_divisor == 4
    out = model(torch.randn(1, 1, 8, 12, 16))
    assert out.shape == (1, 3, 8, 12, 16)


def test_gradients_reach_every_parameter():
    model = create_model("medical/swtr_unet", preset="tiny")
    model(torch.randn(2, 1, 32, 32)).logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_wrong_size_or_channels_raise():
    model = create_model("medical/swtr_unet", preset="tiny")
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(1, 3, 32, 32))


def test_positions_differ_per_token_and_follow_the_grid():
    table = sincos_position_embedding(16, (3, 4))
    assert table.shape == (12, 16)
    assert torch.unique(table, dim=0).shape[0] == 12
    # the first half encodes the row, the second the column
    torch.testing.assert_close(table[0, :8], table[3, :8])
    torch.testing.assert_close(table[0, 8:], table[4, 8:])


@pytest.mark.parametrize(
    ("name", "preset", "count"),
    [
        ("medical/swtr_unet", "default", 98_817_331),
        ("medical/swtr_unet_3d", "3d", 59_482_291),
        ("medical/swtr_unet", "hippocampus_2d", 1_146_979),
        ("medical/swtr_unet_3d", "hippocampus_3d", None),
    ],
)
def test_presets_build_on_meta(name, preset, count):
    with torch.device("meta"):
        model = create_model(name, preset=preset)
    n = sum(p.numel() for p in model.parameters())
    if count is not None:
        assert n == count
    # the paper's encoder is ResNet-50's stem + layer1-3 with torchvision names
    if preset == "default":
        keys = model.state_dict()
        assert "encoder.layer3.5.conv3.weight" in keys and not any(
            k.startswith("encoder.layer4") for k in keys
        )


@pytest.mark.parametrize(
    "fields",
    [
        {"spatial_dims": 1},
        {"encoder_block": "dense"},
        {"decoder_channels": (8, 8)},
        {"transformer_dim": 18},
        {"num_classes": 1},
    ],
)
def test_bad_configs_raise(fields):
    with pytest.raises(InputError, match="SWTRUnetConfig"):
        SWTRUnetConfig.from_preset("tiny", **fields)
