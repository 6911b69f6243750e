"""HSDT: Hybrid Spectral Denoising Transformer (Lai, Yan and Fu, ICCV 2023), written from the paper and
the official code (github.com/Zeqiang-Lai/HSDT, MIT); state-dict keys match the official ones.

A 3-D U-Net on ``(B, 1, bands, H, W)`` cubes in [0, 1]:

    head      PlainConv(1 -> ch)                       S3Conv + BN + TransformerBlock
    encoder   num_half_layer blocks; at the indices in sample_idx a DownConv (3x3x3 conv,
              stride (1, 2, 2)) doubles the channels, elsewhere a PlainConv keeps them
    decoder   the mirror: UpConv (trilinear x(1, 2, 2) + 3x3x3 conv) halves the channels,
              every block's input is the previous block's output plus the matching encoder
              output (additive skips)
    tail      3x3x3 conv (ch -> 1) on decoder output + head output, plus the input (global residual)

Every block is ``conv -> BatchNorm3d -> TransformerBlock``; a TransformerBlock is GSSA (guided
spectral self-attention, with its residual) followed by SM-FFN (no second residual, as in the
official code).

- **S3Conv** (spectral-spatial separable conv): a spatial branch (two (1, 3, 3) convs, each followed
  by LeakyReLU) plus a spectral branch (one (3, 1, 1) conv), summed.
- **GSSA**: band x band attention computed on spatially mean-pooled features, so its cost is linear
  in H*W. The attention logits are a learnable query ``Linear(C -> num_bands)`` of the pooled
  features; during training each call uses the pooled self-attention ``f f^T`` instead with
  probability ``swap_prob`` (0.5). ``flex=True`` uses the self-attention at inference, which takes
  any band count; the learnable query needs exactly ``num_bands`` bands.
- **SM-FFN**: ``W2 GELU(W1 x) + a * sigmoid(g)`` with ``[a, g] = W3 x``.

Presets (the official builders): ``hsdt_s`` = ``hsdt_8`` (134,350 parameters), ``hsdt_m`` = ``hsdt``
(521,158), ``hsdt_l`` = ``hsdt_deep`` (2,094,786); ``tiny`` for tests. Initialisation is the
official ``init_params(net, "xn")``: convolutions xavier-normal, linear layers N(0, 1e-3), biases
zero, BatchNorm weight one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError

__all__ = ["GSSA", "HSDT", "SMFFN", "HSDTConfig", "S3Conv", "TransformerBlock", "init_hsdt_"]


@dataclass
class HSDTConfig(ModelConfig):
    """HSDT's shape; the field defaults are HSDT-M (the official ``hsdt``)."""

    in_channels: int = 1
    channels: int = 16
    num_half_layer: int = 5
    sample_idx: tuple[int, ...] = (1, 3)
    num_bands: int = 31  # bands the learnable query is built for
    flex: bool = False  # self-attention at inference: any band count
    swap_prob: float = 0.5  # training: chance that a GSSA call uses pooled self-attention

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "hsdt_s": {"channels": 8},
        "hsdt_m": {},
        "hsdt_l": {"num_half_layer": 7, "sample_idx": (1, 3, 5)},
        "tiny": {"channels": 4, "num_half_layer": 3, "sample_idx": (1,)},
    }

    def validate(self) -> None:
        if self.in_channels < 1 or self.channels < 1 or self.num_bands < 1:
            raise InputError("HSDTConfig: in_channels, channels and num_bands must be >= 1")
        if self.num_half_layer < 2:
            raise InputError(f"HSDTConfig: num_half_layer must be >= 2, got {self.num_half_layer}")
        bad = [i for i in self.sample_idx if not 0 <= i < self.num_half_layer]
        if bad or len(set(self.sample_idx)) != len(self.sample_idx):
            raise InputError(
                f"HSDTConfig: sample_idx must be distinct layer indices in 0..{self.num_half_layer - 1}, "
                f"got {list(self.sample_idx)}"
            )
        if not 0.0 <= self.swap_prob <= 1.0:
            raise InputError(f"HSDTConfig: swap_prob must be in [0, 1], got {self.swap_prob}")

    @property
    def size_divisor(self) -> int:
        """H and W of an input must be multiples of this (one halving per down-sampling layer)."""
        return 2 ** len(self.sample_idx)


class S3Conv(nn.Module):
    """Spectral-spatial separable 3-D conv: ``spatial(x) + spectral(x)``.

    ``dw_conv`` (the spatial branch): (1, k, k) conv with the block's spatial stride, LeakyReLU,
    (1, k, k) conv, LeakyReLU. ``pw_conv`` (the spectral branch): one (k, 1, 1) conv. No biases.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        k, s, p = kernel, stride, padding
        self.dw_conv = nn.Sequential(
            nn.Conv3d(in_ch, out_ch, (1, k, k), (1, s, s), (0, p, p), bias=False),
            nn.LeakyReLU(),
            nn.Conv3d(out_ch, out_ch, (1, k, k), 1, (0, p, p), bias=False),
            nn.LeakyReLU(),
        )
        self.pw_conv = nn.Conv3d(in_ch, out_ch, (k, 1, 1), (s, 1, 1), (p, 0, 0), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw_conv(x) + self.pw_conv(x)


class GSSA(nn.Module):
    """Guided spectral self-attention over bands, on spatially mean-pooled features.

    ``x (B, C, D, H, W)``: pooled ``f = mean_{H,W} x`` is ``(B, D, C)``; the logits are
    ``attn_proj(f)`` (learnable query, ``(B, D, num_bands)``, needs ``D == num_bands``) or
    ``f f^T`` (self-attention, any D); ``softmax`` over the last axis mixes the bands of
    ``value_proj(x)``, then ``fc`` and the residual.
    """

    def __init__(
        self, channels: int, num_bands: int = 31, flex: bool = False, swap_prob: float = 0.5
    ) -> None:
        super().__init__()
        self.channels, self.num_bands, self.flex, self.swap_prob = channels, num_bands, flex, swap_prob
        self.attn_proj = nn.Linear(channels, num_bands)  # the learnable query
        self.value_proj = nn.Linear(channels, channels, bias=False)
        self.fc = nn.Linear(channels, channels, bias=False)

    def uses_self_attention(self) -> bool:
        if self.training:
            return bool(torch.rand(()) < self.swap_prob)
        return self.flex

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        pooled = x.mean(dim=(3, 4)).transpose(1, 2)  # (B, D, C)
        if self.uses_self_attention():
            logits = pooled @ pooled.transpose(1, 2)  # (B, D, D)
        else:
            if d != self.num_bands:
                raise InputError(
                    f"HSDT's learnable spectral query takes {self.num_bands} bands, got {d} "
                    "(use flex=True, i.e. --flex, for self-attention over any band count)"
                )
            logits = self.attn_proj(pooled)
        attn = F.softmax(logits, dim=-1)  # (B, D, D)
        # fc(attn @ value_proj(x)): the band mixing and the two channel maps commute, so mix the bands
        # of x channels-first, then apply fc.weight @ value_proj.weight once (no transposes).
        mixed = attn[:, None] @ x.reshape(b, c, d, h * w)  # (B, C, D, H*W)
        channels = self.fc.weight @ self.value_proj.weight  # (C, C)
        return (channels @ mixed.reshape(b, c, -1)).reshape(b, c, d, h, w) + x


class SMFFN(nn.Module):
    """Self-modulated feed-forward network over the channels of ``(B, C, ...)`` input (channels first):
    ``w_2(GELU(w_1 x)) + a * sigmoid(g)`` with ``[a, g] = w_3 x`` (``w_3`` maps to ``hidden`` features,
    halved). The ``w_*`` are ``nn.Linear`` layers, as in the official code."""

    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        if hidden % 2 or hidden // 2 != dim:
            raise ValueError(
                f"SMFFN: hidden must be 2 * dim (the modulated branch returns dim), got {hidden}"
            )
        self.w_1 = nn.Linear(dim, hidden, bias=bias)
        self.w_2 = nn.Linear(hidden, dim, bias=bias)
        self.w_3 = nn.Linear(dim, hidden, bias=bias)

    @staticmethod
    def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        y = layer.weight @ x
        return y if layer.bias is None else y + layer.bias[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(shape[0], shape[1], -1)  # (B, C, N)
        a, g = self._linear(self.w_3, flat).chunk(2, dim=1)
        out = self._linear(self.w_2, F.gelu(self._linear(self.w_1, flat))) + a * torch.sigmoid(g)
        return out.reshape(shape)


class TransformerBlock(nn.Module):
    """GSSA then SM-FFN (hidden ``2 C``), on ``(B, C, D, H, W)``."""

    def __init__(
        self, channels: int, num_bands: int = 31, flex: bool = False, swap_prob: float = 0.5
    ) -> None:
        super().__init__()
        self.attn = GSSA(channels, num_bands, flex=flex, swap_prob=swap_prob)
        self.ffn = SMFFN(channels, 2 * channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attn(x))


def _block(conv: nn.Module, out_ch: int, config: HSDTConfig, up: bool = False) -> nn.Sequential:
    """``[up ->] conv -> bn -> attn`` with the official child names."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if up:
        layers["up"] = nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear", align_corners=True)
    layers["conv"] = conv
    layers["bn"] = nn.BatchNorm3d(out_ch)
    layers["attn"] = TransformerBlock(out_ch, config.num_bands, config.flex, config.swap_prob)
    return nn.Sequential(layers)


def plain_block(in_ch: int, out_ch: int, config: HSDTConfig) -> nn.Sequential:
    return _block(S3Conv(in_ch, out_ch), out_ch, config)


def down_block(in_ch: int, out_ch: int, config: HSDTConfig) -> nn.Sequential:
    return _block(nn.Conv3d(in_ch, out_ch, 3, (1, 2, 2), 1, bias=False), out_ch, config)


def up_block(in_ch: int, out_ch: int, config: HSDTConfig) -> nn.Sequential:
    return _block(nn.Conv3d(in_ch, out_ch, 3, 1, 1, bias=False), out_ch, config, up=True)


class Encoder(nn.Module):
    def __init__(self, config: HSDTConfig) -> None:
        super().__init__()
        ch = config.channels
        self.layers = nn.ModuleList()
        for i in range(config.num_half_layer):
            if i in config.sample_idx:
                self.layers.append(down_block(ch, 2 * ch, config))
                ch *= 2
            else:
                self.layers.append(plain_block(ch, ch, config))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = layer(x)
            skips.append(x)
        return self.layers[-1](x)


class Decoder(nn.Module):
    def __init__(self, config: HSDTConfig) -> None:
        super().__init__()
        ch = config.channels * 2 ** len(config.sample_idx)
        self.layers = nn.ModuleList()
        for i in reversed(range(config.num_half_layer)):
            if i in config.sample_idx:
                self.layers.append(up_block(ch, ch // 2, config))
                ch //= 2
            else:
                self.layers.append(plain_block(ch, ch, config))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = layer(x + skips.pop())
        return x


class HSDT(nn.Module):
    """HSDT denoiser: ``forward(x (B, in_channels, bands, H, W)) -> (B, 1, bands, H, W)``; H and W
    multiples of ``size_divisor`` (``denoise`` pads); the first input channel is the noisy cube."""

    def __init__(self, config: HSDTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.head = plain_block(config.in_channels, config.channels, config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.tail = nn.Conv3d(config.channels, 1, 3, 1, 1, bias=True)
        init_hsdt_(self)

    @property
    def size_divisor(self) -> int:
        return self.config.size_divisor

    @property
    def num_bands(self) -> int:
        return self.config.num_bands

    @property
    def flex(self) -> bool:
        return self.config.flex

    def set_flex(self, flex: bool) -> None:
        """Switch every GSSA between the learnable query (``False``) and self-attention at inference."""
        self.config = self.config.replace(flex=flex)
        for module in self.modules():
            if isinstance(module, GSSA):
                module.flex = flex

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise InputError(f"HSDT takes (batch, channels, bands, H, W), got shape {tuple(x.shape)}")
        divisor = self.size_divisor
        if x.shape[-1] % divisor or x.shape[-2] % divisor:
            raise InputError(f"HSDT: H and W must be multiples of {divisor}, got {tuple(x.shape[-2:])}")
        head = self.head(x)
        skips = [head]
        out = self.decoder(self.encoder(head, skips), skips)
        out = self.tail(out + skips.pop())
        return out + x[:, :1]


def init_hsdt_(model: nn.Module) -> None:
    """The official ``init_params(net, "xn")``: conv weights xavier-normal, conv biases 0,
    BatchNorm weight 1 and bias 0, linear weights N(0, 1e-3), linear biases 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d | nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1e-3)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
