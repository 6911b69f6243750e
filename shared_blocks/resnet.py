"""ResNet encoders for 2-D and 3-D inputs (He et al. 2016, "Deep Residual Learning", Sec. 3-4, Table 1).

Parameter and buffer names are torchvision's (``conv1``, ``bn1``, ``relu``, ``maxpool``,
``layer1..layer4`` of blocks with ``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample.0/.1``, ``fc``),
so torchvision's ImageNet state dicts load with ``strict=True`` into the 2-D models (the unused
``fc.*`` entries dropped when ``num_classes is None``). Bottleneck blocks put the stride on the 3x3
convolution (torchvision's "ResNet v1.5"). The 3-D variant inflates every kernel to 3-D (7x7x7
stem, 3x3x3 convolutions), as in MONAI's and Med3D's 3-D ResNets.

    encoder = resnet50(in_channels=1, num_stages=3)  # stem + layer1..3, as SWTR-Unet / HiFormer use
    feats = encoder.forward_features(x)  # [stem 1/2, layer1 1/4, layer2 1/8, layer3 1/16]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hybrids.shared_blocks.factories import check_spatial_dims, conv_layer, norm_layer, pool_layer

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "adapt_first_conv", "resnet18", "resnet34", "resnet50"]


def _conv(spatial_dims: int, cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Module:
    return conv_layer(spatial_dims)(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (ResNet-18/34). ``(b, cin, *s) -> (b, planes, *s / stride)``."""

    expansion = 1

    def __init__(
        self, cin: int, planes: int, stride: int = 1, *, spatial_dims: int = 2, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.conv1 = _conv(spatial_dims, cin, planes, 3, stride)
        self.bn1 = norm_layer(norm, planes, spatial_dims)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(spatial_dims, planes, planes, 3)
        self.bn2 = norm_layer(norm, planes, spatial_dims)
        self.downsample = _downsample(spatial_dims, cin, planes, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion (ResNet-50).
    ``(b, cin, *s) -> (b, 4 planes, *s / stride)``."""

    expansion = 4

    def __init__(
        self, cin: int, planes: int, stride: int = 1, *, spatial_dims: int = 2, norm: str = "batch"
    ) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv(spatial_dims, cin, planes, 1)
        self.bn1 = norm_layer(norm, planes, spatial_dims)
        self.conv2 = _conv(spatial_dims, planes, planes, 3, stride)
        self.bn2 = norm_layer(norm, planes, spatial_dims)
        self.conv3 = _conv(spatial_dims, planes, cout, 1)
        self.bn3 = norm_layer(norm, cout, spatial_dims)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(spatial_dims, cin, cout, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _downsample(spatial_dims: int, cin: int, cout: int, stride: int, norm: str) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(spatial_dims, cin, cout, 1, stride), norm_layer(norm, cout, spatial_dims))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """A ResNet trunk: stem (``stem_kernel`` conv, 7 in the paper, stride ``stem_stride``, norm, ReLU,
    optional 3x3 max-pool) and ``num_stages`` stages of ``layers[i]`` blocks with ``base_width * 2**i``
    planes (stride 1 for the first stage, 2 after).

    ``forward_features(x)`` returns ``[stem, layer1, ..., layer{num_stages}]`` for ``x`` ``(b, in_channels,
    *spatial)``; ``feature_channels`` / ``feature_strides`` describe them (stride 2, 4, 8, 16, 32 with
    the default stem). ``forward`` returns the last feature, or logits ``(b, num_classes)`` when
    ``num_classes`` is set (global average pool + ``fc``).
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        *,
        in_channels: int = 3,
        spatial_dims: int = 2,
        base_width: int = 64,
        num_stages: int = 4,
        stem_stride: int = 2,
        stem_kernel: int = 7,
        maxpool: bool = True,
        norm: str = "batch",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {', '.join(_BLOCKS)}, got {block!r}")
        check_spatial_dims(spatial_dims, (2, 3))
        if not 1 <= num_stages <= len(layers) or any(int(n) < 1 for n in layers):
            raise ValueError(
                f"need 1 <= num_stages <= len(layers) and layers >= 1, got {num_stages}, {layers}"
            )
        if in_channels < 1 or base_width < 1 or stem_stride not in (1, 2) or stem_kernel % 2 == 0:
            raise ValueError("in_channels and base_width must be >= 1, stem_stride 1 or 2, stem_kernel odd")
        block_cls = _BLOCKS[block]
        self.spatial_dims = spatial_dims
        self.conv1 = conv_layer(spatial_dims)(
            in_channels, base_width, stem_kernel, stride=stem_stride, padding=stem_kernel // 2, bias=False
        )
        self.bn1 = norm_layer(norm, base_width, spatial_dims)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = pool_layer("max", spatial_dims)(3, stride=2, padding=1) if maxpool else nn.Identity()
        channels, stride = base_width, stem_stride
        self.feature_channels = [base_width]
        self.feature_strides = [stem_stride]
        for i in range(num_stages):
            planes = base_width * 2**i
            first_stride = 1 if i == 0 else 2
            stage = [block_cls(channels, planes, first_stride, spatial_dims=spatial_dims, norm=norm)]
            channels = planes * block_cls.expansion
            stage += [
                block_cls(channels, planes, spatial_dims=spatial_dims, norm=norm)
                for _ in range(layers[i] - 1)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            stride *= (2 if maxpool else 1) if i == 0 else 2
            self.feature_channels.append(channels)
            self.feature_strides.append(stride)
        self.num_stages = num_stages
        self.out_channels = channels
        if num_classes is not None:
            self.avgpool = pool_layer("adaptive_avg", spatial_dims)(1)
            self.fc = nn.Linear(channels, num_classes)
        self.num_classes = num_classes
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation: Kaiming-normal (fan-out) convolutions, unit norms."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm3d | nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stem(self, x: Tensor) -> Tensor:
        """``(b, in_channels, *s) -> (b, base_width, *s / stem_stride)`` (before the max-pool)."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: Tensor) -> list[Tensor]:
        feats = [self.stem(x)]
        x = self.maxpool(feats[0])
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)[-1]
        if self.num_classes is None:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(**kwargs) -> ResNet:
    return ResNet("basic", (2, 2, 2, 2), **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet("basic", (3, 4, 6, 3), **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet("bottleneck", (3, 4, 6, 3), **kwargs)


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """An ImageNet first-conv weight ``(o, 3, *k)`` for ``in_channels`` inputs (timm's rule): summed
    over RGB for one channel (a grey image gives the RGB model's response); otherwise RGB repeated
    cyclically and scaled by ``3 / in_channels`` (exact for a grey image when ``in_channels`` is a
    multiple of 3)."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    cin = weight.shape[1]
    if in_channels == cin:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // cin)
    tiled = weight.repeat(1, repeats, *([1] * (weight.dim() - 2)))[:, :in_channels]
    return tiled * (cin / in_channels)
