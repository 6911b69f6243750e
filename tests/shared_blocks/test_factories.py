"""Layer factories by spatial_dims: classes per dimensionality, norm layouts, activations, argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybrids.shared_blocks.factories import (
    ACTIVATIONS,
    NORMS,
    act_layer,
    as_tuple,
    check_spatial_dims,
    conv_layer,
    norm_layer,
    pool_layer,
)
from hybrids.shared_blocks.norms import ChannelLayerNorm, RMSNorm

SPATIAL = [1, 2, 3]


def test_conv_and_pool_classes() -> None:
    assert [conv_layer(n) for n in SPATIAL] == [nn.Conv1d, nn.Conv2d, nn.Conv3d]
    assert [conv_layer(n, transposed=True) for n in SPATIAL] == [
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
    ]
    assert [pool_layer("max", n) for n in SPATIAL] == [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d]
    assert pool_layer("avg", 2) is nn.AvgPool2d
    assert pool_layer("adaptive_avg", 3) is nn.AdaptiveAvgPool3d
    assert pool_layer("adaptive_max", 1) is nn.AdaptiveMaxPool1d


@pytest.mark.parametrize("spatial_dims", SPATIAL)
@pytest.mark.parametrize("name", ["batch", "instance", "group", "layer", None])
def test_channels_first_norms_keep_the_shape(spatial_dims, name) -> None:
    norm = norm_layer(name, 8, spatial_dims, num_groups=4)
    x = torch.randn(2, 8, *([5] * spatial_dims))
    y = norm(x)
    assert y.shape == x.shape
    if name is not None:
        (y * torch.randn_like(y)).sum().backward()
        for pname, p in norm.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_norm_classes_and_options() -> None:
    assert type(norm_layer("batch", 4, 2)) is nn.BatchNorm2d
    assert type(norm_layer("instance", 4, 3)) is nn.InstanceNorm3d and norm_layer("instance", 4, 3).affine
    group = norm_layer("group", 6, 1, num_groups=3)
    assert type(group) is nn.GroupNorm and group.num_groups == 3
    assert type(norm_layer("layer", 4, 2)) is ChannelLayerNorm
    assert isinstance(norm_layer(None, 4, 2), nn.Identity)
    assert norm_layer("batch", 4, 1, eps=1e-3).eps == 1e-3
    # channels-last tokens (spatial_dims=None); the transformer spellings are aliases
    for name in ("layer", "layernorm"):
        ln = norm_layer(name, 16, eps=1e-6)
        assert type(ln) is nn.LayerNorm and ln.eps == 1e-6
    for name in ("rms", "rmsnorm"):
        assert type(norm_layer(name, 16)) is RMSNorm
    assert norm_layer("layer", 16).eps == 1e-5  # eps=None keeps the layer's default
    x = torch.randn(2, 6, 5, 7)
    # the channels-first layer norm equals nn.LayerNorm over the channels moved last
    torch.testing.assert_close(norm_layer("layer", 6, 2)(x), nn.LayerNorm(6)(x.movedim(1, -1)).movedim(-1, 1))
    assert set(NORMS) == {"batch", "instance", "group", "layer", "rms"}


@pytest.mark.parametrize("name", [*ACTIVATIONS, None])
def test_activations(name) -> None:
    x = torch.linspace(-3, 3, 13)
    expected = {
        "relu": torch.relu(x),
        "leakyrelu": torch.nn.functional.leaky_relu(x, 0.01),
        "gelu": torch.nn.functional.gelu(x),
        "silu": torch.nn.functional.silu(x),
        None: x,
    }[name]
    act = act_layer(name)
    torch.testing.assert_close(act(x), expected)
    assert act is not act_layer(name)  # a fresh module each call


def test_as_tuple_and_check_spatial_dims() -> None:
    assert as_tuple(3, 2, "kernel_size") == (3, 3)
    assert as_tuple([1, 2, 3], 3, "stride") == (1, 2, 3)
    assert as_tuple((0, 2), 2, "shift", minimum=0) == (0, 2)
    assert check_spatial_dims(3) == 3
    assert check_spatial_dims(2, (2, 3)) == 2


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda: conv_layer(4), "spatial_dims must be 1, 2 or 3"),
        (lambda: conv_layer(0), "spatial_dims"),
        (lambda: conv_layer(True), "spatial_dims"),
        (lambda: pool_layer("max", 1.5), "spatial_dims"),
        (lambda: pool_layer("median", 2), "unknown pool"),
        (lambda: check_spatial_dims(1, (2, 3)), "spatial_dims must be 2 or 3"),
        (lambda: norm_layer("weird", 4, 2), "unknown norm"),
        (lambda: norm_layer("batch", 4, 4), "spatial_dims"),
        (lambda: norm_layer("batch", 0, 2), "positive"),
        (lambda: norm_layer("group", 12, 2), "num_groups"),
        (lambda: norm_layer("group", 8, 2, num_groups=0), "num_groups"),
        (lambda: norm_layer("batch", 4), "channels-first"),
        (lambda: norm_layer("rms", 4, 2), "channels-last"),
        (lambda: act_layer("tanh"), "unknown activation"),
        (lambda: as_tuple((3, 3, 3), 2, "kernel_size"), "kernel_size"),
        (lambda: as_tuple(0, 2, "window_size", minimum=1), "window_size .* >= 1"),
    ],
)
def test_bad_arguments_raise(fn, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn()
