"""Conv blocks over spatial_dims 1/2/3: shapes, structure, gradients, argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybrids.shared_blocks.conv import BottleneckBlock, ConvNormAct, ResidualBlock
from hybrids.shared_blocks.factories import conv_layer

SPATIAL = [1, 2, 3]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("spatial_dims", SPATIAL)
@pytest.mark.parametrize("norm", ["batch", "instance", "group", "layer", None])
@pytest.mark.parametrize("act", ["relu", "leakyrelu", "gelu", "silu", None])
def test_conv_norm_act_shapes(spatial_dims, norm, act) -> None:
    block = ConvNormAct(4, 8, spatial_dims=spatial_dims, norm=norm, act=act)
    x = torch.randn(2, 4, *([6] * spatial_dims))
    assert block(x).shape == (2, 8, *([6] * spatial_dims))
    assert (block.conv.bias is None) == (norm is not None)
    assert isinstance(block.conv, conv_layer(spatial_dims))


@pytest.mark.parametrize("spatial_dims", SPATIAL)
def test_conv_norm_act_stride_padding_dilation(spatial_dims) -> None:
    x = torch.randn(1, 2, *([9] * spatial_dims))
    assert ConvNormAct(2, 3, 5, spatial_dims=spatial_dims, stride=2)(x).shape[2:] == (5,) * spatial_dims
    assert ConvNormAct(2, 3, 3, spatial_dims=spatial_dims, dilation=2)(x).shape[2:] == (9,) * spatial_dims
    assert ConvNormAct(2, 3, 3, spatial_dims=spatial_dims, padding=0)(x).shape[2:] == (7,) * spatial_dims
    assert ConvNormAct(2, 3, 2, spatial_dims=spatial_dims, stride=2)(x).shape[2:] == (4,) * spatial_dims


def test_conv_norm_act_is_conv_then_norm_then_act() -> None:
    block = ConvNormAct(3, 4, spatial_dims=2, norm="group", num_groups=2, act="relu", bias=True).eval()
    x = torch.randn(2, 3, 5, 5)
    y = torch.nn.functional.conv2d(x, block.conv.weight, block.conv.bias, padding=1)
    y = torch.nn.functional.group_norm(y, 2, block.norm.weight, block.norm.bias)
    torch.testing.assert_close(block(x), y.relu())


@pytest.mark.parametrize("spatial_dims", SPATIAL)
@pytest.mark.parametrize(("in_ch", "out_ch", "stride"), [(8, 8, 1), (8, 16, 1), (8, 16, 2)])
def test_residual_block_shapes_and_shortcut(spatial_dims, in_ch, out_ch, stride) -> None:
    block = ResidualBlock(in_ch, out_ch, spatial_dims=spatial_dims, stride=stride, norm="group")
    x = torch.randn(2, in_ch, *([6] * spatial_dims))
    out = block(x)
    assert out.shape == (2, out_ch, *([6 // stride] * spatial_dims))
    projected = stride != 1 or in_ch != out_ch
    assert isinstance(block.shortcut, nn.Identity) != projected
    torch.testing.assert_close(out, torch.relu(block.conv2(block.conv1(x)) + block.shortcut(x)))
    assert (out >= 0).all()


def test_residual_block_identity_shortcut_adds_the_input() -> None:
    block = ResidualBlock(4, 4, spatial_dims=1, norm=None, act=None)
    with torch.no_grad():
        for p in block.conv2.parameters():
            p.zero_()
    x = torch.randn(2, 4, 7)
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("spatial_dims", SPATIAL)
@pytest.mark.parametrize("stride", [1, 2])
def test_bottleneck_block_shapes(spatial_dims, stride) -> None:
    block = BottleneckBlock(8, 4, spatial_dims=spatial_dims, stride=stride, norm="instance")
    x = torch.randn(2, 8, *([6] * spatial_dims))
    assert block.out_ch == 16
    assert block(x).shape == (2, 16, *([6 // stride] * spatial_dims))
    assert block.conv2.conv.stride == (stride,) * spatial_dims  # stride on the 3x3 conv (ResNet v1.5)
    assert block.conv1.conv.kernel_size == (1,) * spatial_dims
    assert BottleneckBlock(16, 4, spatial_dims=spatial_dims).shortcut.__class__ is nn.Identity


@pytest.mark.parametrize("spatial_dims", SPATIAL)
@pytest.mark.parametrize("kind", ["conv", "residual", "bottleneck"])
def test_gradient_reaches_every_parameter(spatial_dims, kind) -> None:
    if kind == "conv":
        block = ConvNormAct(4, 8, spatial_dims=spatial_dims, norm="layer", act="gelu", bias=True)
    elif kind == "residual":
        block = ResidualBlock(4, 8, spatial_dims=spatial_dims, stride=2, norm="batch", act="leakyrelu")
    else:
        block = BottleneckBlock(
            4, 2, spatial_dims=spatial_dims, stride=2, norm="group", num_groups=2, act="silu"
        )
    x = torch.randn(2, 4, *([6] * spatial_dims))
    out = block(x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda: ConvNormAct(4, 8, spatial_dims=4), "spatial_dims"),
        (lambda: ConvNormAct(4, 8, norm="weird"), "unknown norm"),
        (lambda: ConvNormAct(4, 8, act="tanh"), "unknown act"),
        (lambda: ConvNormAct(4, 12, norm="group"), "num_groups"),
        (lambda: ConvNormAct(4, 8, norm="group", num_groups=3), "num_groups"),
        (lambda: ConvNormAct(4, 6, groups=4), "groups"),
        (lambda: ConvNormAct(4, 8, (3, 3, 3), spatial_dims=2), "kernel_size"),
        (lambda: ResidualBlock(4, 8, spatial_dims=5), "spatial_dims"),
        (lambda: ResidualBlock(4, 12, norm="group"), "num_groups"),
        (lambda: BottleneckBlock(4, 2, expansion=0), "expansion"),
    ],
)
def test_bad_arguments_raise(fn, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn()
