"""ResNet trunk: torchvision's parameter counts and names, 2-D/3-D feature pyramids, gradients,
first-conv adaptation."""

from __future__ import annotations

import pytest
import torch

from hybrids.shared_blocks.resnet import ResNet, adapt_first_conv, resnet18, resnet34, resnet50


@pytest.mark.parametrize(
    ("factory", "count"), [(resnet18, 11_689_512), (resnet34, 21_797_672), (resnet50, 25_557_032)]
)
def test_torchvision_parameter_counts(factory, count):
    with torch.device("meta"):
        model = factory(num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == count


def test_torchvision_names():
    with torch.device("meta"):
        keys = set(resnet50(num_classes=1000).state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer3.5.conv3.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
    ):
        assert key in keys
    with torch.device("meta"):
        trunk = resnet34(num_stages=3)
    assert not any(k.startswith(("layer4", "fc")) for k in trunk.state_dict())
    assert "layer2.0.downsample.0.weight" in trunk.state_dict()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_feature_pyramid_shapes(spatial_dims):
    model = ResNet("basic", (1, 1, 1), in_channels=2, spatial_dims=spatial_dims, base_width=8, num_stages=3)
    size = (32, 48, 16)[:spatial_dims]
    feats = model.forward_features(torch.randn(2, 2, *size))
    assert [f.shape[1] for f in feats] == model.feature_channels == [8, 8, 16, 32]
    assert model.feature_strides == [2, 4, 8, 16]
    for feat, stride in zip(feats, model.feature_strides, strict=True):
        assert tuple(feat.shape[2:]) == tuple(s // stride for s in size)


def test_gradients_reach_every_parameter():
    model = resnet50(in_channels=1, base_width=4, num_classes=3)
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_no_maxpool_and_stem_stride():
    model = ResNet("basic", (1, 1), base_width=4, num_stages=2, maxpool=False, stem_stride=1)
    feats = model.forward_features(torch.randn(1, 3, 16, 16))
    assert model.feature_strides == [1, 1, 2]
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 16), (16, 16), (8, 8)]


def test_adapt_first_conv_keeps_constant_response():
    weight = torch.randn(8, 3, 7, 7)
    x = torch.ones(1, 3, 9, 9)
    ref = torch.nn.functional.conv2d(x, weight)
    for cin in (1, 6):
        adapted = adapt_first_conv(weight, cin)
        assert adapted.shape == (8, cin, 7, 7)
        out = torch.nn.functional.conv2d(torch.ones(1, cin, 9, 9), adapted)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(adapt_first_conv(weight, 3), weight)
    assert adapt_first_conv(weight, 2).shape == (8, 2, 7, 7)
    torch.testing.assert_close(adapt_first_conv(weight, 2), weight[:, :2] * 1.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"block": "wide", "layers": (1,)},
        {"block": "basic", "layers": (1, 1), "num_stages": 3},
        {"block": "basic", "layers": (1,), "spatial_dims": 1},
        {"block": "basic", "layers": (0,)},
        {"block": "basic", "layers": (1,), "stem_stride": 4},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ResNet(**kwargs)
