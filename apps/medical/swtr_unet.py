"""SWTR-Unet (Hille et al., "Joint Liver and Hepatic Lesion Segmentation in MRI using a Hybrid CNN with
Transformer Layers", 2023): a ResNet encoder, transformer layers on its deepest feature map, a U-Net
decoder with skip connections from the encoder (paper Sec. 2, Fig. 1); 2-D slice-wise as in the paper,
plus a 3-D variant.

    x (b, C, *S) -> ResNet: stem (S/s0), layer1 .. layerN (deepest: S/16 with the paper's ResNet-50)
      -> 1x1 projection to ``transformer_dim``, flatten to tokens (b, L, d) + sinusoidal positions
      -> ``transformer_depth`` pre-norm transformer encoder layers (SDPA) -> back to (b, d, *S/16)
      -> decoder: per skip (deepest first) upsample x2, concatenate the encoder feature, two
         conv-norm-ReLU; a last x2 upsample when the stem is strided -> 1x1 head: logits (b, K, *S)

The paper publishes the layout (ResNet-50 pretrained on ImageNet, transformer blocks on the 1/16
features, U-Net decoder with skips) but not every size. Choices made here, all configurable:

- encoder: ResNet-50's stem + layer1-3 (the 1/16 level is layer3, 1024 channels), torchvision names,
  so ImageNet weights load (``hybrids.apps.medical.weights``); the first conv is adapted to
  ``in_channels``;
- transformer: ViT-B-like width 768, 12 layers, 12 heads, MLP ratio 4 (TransUNet's R50-ViT-B, the
  closest published hybrid of this layout); fixed sinusoidal position encodings (one sin/cos group per
  spatial axis), so any input size that is a multiple of ``size_divisor`` works without interpolating
  a learned table;
- decoder: channels (256, 128, 64, 16) from deep to shallow (TransUNet's cascaded upsampler), batch norm.

The ``hippocampus_2d`` / ``hippocampus_3d`` presets are slim versions for small volumes trained on a
CPU (basic blocks, 3x3 stem without stride, transformer on the 1/8 features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError
from hybrids.shared_blocks.conv import ConvNormAct
from hybrids.shared_blocks.factories import conv_layer
from hybrids.shared_blocks.resnet import ResNet
from hybrids.shared_blocks.transformer import TransformerEncoderLayer

__all__ = ["SWTRUnet", "SWTRUnetConfig", "sincos_position_embedding"]


@dataclass
class SWTRUnetConfig(ModelConfig):
    """SWTR-Unet configuration; field defaults are the 2-D paper-like model (see the module docstring)."""

    spatial_dims: int = 2
    in_channels: int = 1
    num_classes: int = 3  # background, liver, lesion (the paper's task)
    encoder_block: str = "bottleneck"
    encoder_layers: tuple[int, ...] = (3, 4, 6)
    encoder_width: int = 64
    stem_stride: int = 2
    stem_kernel: int = 7
    transformer_dim: int = 768
    transformer_depth: int = 12
    transformer_heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    decoder_channels: tuple[int, ...] = (256, 128, 64, 16)
    norm: str = "batch"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "3d": {"spatial_dims": 3, "transformer_depth": 4, "decoder_channels": (256, 128, 64, 16)},
        "hippocampus_2d": {
            "num_classes": 3,
            "encoder_block": "basic",
            "encoder_layers": (2, 2, 2),
            "encoder_width": 16,
            "stem_stride": 1,
            "stem_kernel": 3,
            "transformer_dim": 128,
            "transformer_depth": 4,
            "transformer_heads": 4,
            "decoder_channels": (64, 32, 16),
        },
        "hippocampus_3d": {
            "spatial_dims": 3,
            "num_classes": 3,
            "encoder_block": "basic",
            "encoder_layers": (1, 2, 2),
            "encoder_width": 16,
            "stem_stride": 1,
            "stem_kernel": 3,
            "transformer_dim": 96,
            "transformer_depth": 4,
            "transformer_heads": 4,
            "decoder_channels": (64, 32, 16),
            "norm": "instance",
        },
        "tiny": {
            "encoder_block": "basic",
            "encoder_layers": (1, 1),
            "encoder_width": 8,
            "transformer_dim": 16,
            "transformer_depth": 1,
            "transformer_heads": 2,
            "decoder_channels": (16, 8, 8),
        },
    }

    def validate(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise InputError(f"SWTRUnetConfig: spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.encoder_block not in ("basic", "bottleneck"):
            raise InputError(
                f"SWTRUnetConfig: encoder_block must be basic or bottleneck, got {self.encoder_block!r}"
            )
        if not self.encoder_layers or any(n < 1 for n in self.encoder_layers):
            raise InputError(f"SWTRUnetConfig: encoder_layers must be positive, got {self.encoder_layers}")
        skips = len(self.encoder_layers)  # stem + every stage but the deepest
        expected = skips + (1 if self.stem_stride == 2 else 0)
        if len(self.decoder_channels) != expected:
            raise InputError(
                f"SWTRUnetConfig: decoder_channels needs {expected} entries (one per skip"
                f"{' plus the final upsampling' if self.stem_stride == 2 else ''}), "
                f"got {len(self.decoder_channels)}"
            )
        if self.transformer_dim % self.transformer_heads != 0:
            raise InputError("SWTRUnetConfig: transformer_dim must be divisible by transformer_heads")
        if self.transformer_dim % (2 * self.spatial_dims) != 0:
            raise InputError(f"SWTRUnetConfig: transformer_dim must be divisible by {2 * self.spatial_dims}")
        if self.stem_stride not in (1, 2) or self.in_channels < 1 or self.num_classes < 2:
            raise InputError("SWTRUnetConfig: stem_stride 1 or 2, in_channels >= 1, num_classes >= 2")


def sincos_position_embedding(dim: int, grid: tuple[int, ...], device=None) -> Tensor:
    """Fixed sinusoidal positions for a token grid: ``(prod(grid), dim)``, channels split into one
    equal sin/cos group per axis (as MAE's 2-D table, generalised to N-D). Row order is the grid's
    row-major flattening, as ``x.flatten(2).transpose(1, 2)`` produces."""
    axes = len(grid)
    per_axis = dim // axes
    half = per_axis // 2
    omega = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float64, device=device) / max(half, 1)))
    coords = torch.meshgrid(
        *[torch.arange(n, dtype=torch.float64, device=device) for n in grid], indexing="ij"
    )
    parts = []
    for c in coords:
        angle = c.reshape(-1, 1) * omega
        parts += [angle.sin(), angle.cos()]
    table = torch.cat(parts, dim=1)
    if table.shape[1] < dim:
        table = F.pad(table, (0, dim - table.shape[1]))
    return table.float()


class _DecoderBlock(nn.Module):
    """Upsample x2 (linear), concatenate a skip (if any), two conv-norm-ReLU.
    ``(b, cin, *s), (b, cskip, *2s) -> (b, cout, *2s)``."""

    def __init__(self, spatial_dims: int, cin: int, cskip: int, cout: int, norm: str) -> None:
        super().__init__()
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.conv1 = ConvNormAct(cin + cskip, cout, 3, spatial_dims=spatial_dims, norm=norm, act="relu")
        self.conv2 = ConvNormAct(cout, cout, 3, spatial_dims=spatial_dims, norm=norm, act="relu")

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        size = skip.shape[2:] if skip is not None else [2 * n for n in x.shape[2:]]
        x = F.interpolate(x, size=size, mode=self.mode, align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class SWTRUnet(nn.Module):
    """``forward(x (b, in_channels, *S)) -> logits (b, num_classes, *S)``; every spatial size must be a
    multiple of ``size_divisor`` (the encoder's deepest stride)."""

    def __init__(self, config: SWTRUnetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.spatial_dims = config.spatial_dims
        self.in_channels = config.in_channels
        self.num_classes = config.num_classes
        self.encoder = ResNet(
            config.encoder_block,
            config.encoder_layers,
            in_channels=config.in_channels,
            spatial_dims=config.spatial_dims,
            base_width=config.encoder_width,
            num_stages=len(config.encoder_layers),
            stem_stride=config.stem_stride,
            stem_kernel=config.stem_kernel,
            norm=config.norm,
        )
        self.size_divisor = self.encoder.feature_strides[-1]
        conv = conv_layer(config.spatial_dims)
        deep = self.encoder.feature_channels[-1]
        dim = config.transformer_dim
        self.project = conv(deep, dim, 1)
        self.transformer = nn.ModuleList(
            TransformerEncoderLayer(
                dim, config.transformer_heads, mlp_ratio=config.mlp_ratio, dropout=config.dropout
            )
            for _ in range(config.transformer_depth)
        )
        self.transformer_norm = nn.LayerNorm(dim)
        skips = self.encoder.feature_channels[:-1][::-1]  # deepest skip first
        blocks, cin = [], dim
        for i, cout in enumerate(config.decoder_channels):
            cskip = skips[i] if i < len(skips) else 0
            blocks.append(_DecoderBlock(config.spatial_dims, cin, cskip, cout, config.norm))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = conv(cin, config.num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        spatial = tuple(x.shape[2:])
        if len(spatial) != self.spatial_dims or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SWTRUnet: expected (b, {self.in_channels}, {self.spatial_dims} spatial dims), "
                f"got {tuple(x.shape)}"
            )
        if any(n % self.size_divisor for n in spatial):
            raise ValueError(f"SWTRUnet: spatial size {spatial} must be a multiple of {self.size_divisor}")
        feats = self.encoder.forward_features(x)
        deep = self.project(feats[-1])
        grid = tuple(deep.shape[2:])
        tokens = deep.flatten(2).transpose(1, 2)
        tokens = tokens + sincos_position_embedding(tokens.shape[-1], grid, tokens.device).to(tokens.dtype)
        for layer in self.transformer:
            tokens = layer(tokens)
        y = self.transformer_norm(tokens).transpose(1, 2).reshape(deep.shape)
        skips = feats[:-1][::-1]
        for i, block in enumerate(self.decoder):
            y = block(y, skips[i] if i < len(skips) else None)
        return self.head(y)
