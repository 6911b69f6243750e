"""HiFormer (Heidari et al., WACV 2023, "HiFormer: Hierarchical Multi-scale Representations Using
Transformers for Medical Image Segmentation"), 2-D, slice-wise.

Structure (paper Sec. 3, Fig. 2; official code ``amirhossein-kz/HiFormer``, ``models/``):

- **CNN-Transformer encoder** (``All2Cross.pyramid``): a ResNet stem + ``layer1``-``layer3`` (ResNet-34 for
  HiFormer-S/L, ResNet-50 for HiFormer-B) beside Swin-T stages 1-3 (dims 96/192/384, depths 2/2/6, heads
  3/6/12, window 7). Level ``l``: the CNN map goes through a 1x1 conv (``p{l}_ch``) to the Swin width and
  is added to the Swin output; Swin's patch merging (``p1_pm``, ``p2_pm``) links the levels. Levels 1 (H/4)
  and 3 (H/16) are returned as token sequences, each with a CLS token = global average of its
  LayerNorm'd tokens (``norm_1``, ``norm_2``).
- **Double-Level Fusion (DLF)** (``All2Cross.blocks``, one ``MultiScaleBlock``): per level ViT
  self-attention blocks (timm ``Block``), then CrossViT-style cross-attention (Chen et al. 2021): each
  level's CLS token is projected to the other level's width (``projs``), attends as the only query to
  the other level's patch tokens (``fusion``), is projected back (``revert_projs``) and replaces the
  level's CLS token. Learned position embeddings (``pos_embed``) are added first; final LayerNorms.
- **Decoder**: level-3 tokens -> 2x (3x3 conv, GroupNorm(32), ReLU, 2x bilinear up) (``ConvUp_s``), level-1
  tokens -> 3x3 conv, GroupNorm, ReLU (``ConvUp_l``); their sum -> 1x1 conv to 16, ReLU, 4x bilinear up
  (``conv_pred``) -> 3x3 conv to the classes (``segmentation_head``).

``forward(x (b, in_channels, H, W)) -> logits (b, num_classes, H, W)`` for any ``H, W`` that are multiples
of ``size_divisor = 16``.

**DLF order** (``HiFormerConfig.dlf_order``). The paper (Sec. 3.2, Fig. 2) and the official code until
October 2022 apply the self-attention blocks first and fuse their outputs (``"paper"``, default). The
official commit ``b961abf`` (2022-10-19, ``utils.py``) moved them after the fusion and discards their
result, so the fusion acts on the encoder tokens directly and the self-attention weights receive no
gradient (``"official_2022"``; here the discarded blocks are not run, which changes nothing in the
output). The parameters are the same either way.

A property of the official architecture kept here: with one DLF block and a decoder that reads the
patch tokens only (official ``HiFormer.forward`` drops the CLS tokens), the fused CLS tokens never reach
the output, so ``projs``/``fusion``/``revert_projs`` get no gradient in either order (in ``"paper"``
order the encoder's CLS tokens still act through the self-attention blocks; in ``"official_2022"``
order the DLF reduces to position embeddings + LayerNorm and ``norm_1``/``norm_2`` are unused too). With
DDP, train with ``find_unused_parameters=True`` (Lightning: ``strategy="ddp_find_unused_parameters_true"``).

Differences from the official code, none of which changes the parameters or (at 224x224) the outputs:
any ``H, W`` multiple of 16 (the official code fixes 224x224): Swin windows are zero-padded (shared
:class:`~hybrids.shared_blocks.window_attention.SwinTransformerBlock`) and the position embeddings,
learned on the ``pos_embed_size`` grid, are resized bicubically to the input's grid (as DINO's
``interpolate_pos_encoding``) for other sizes; the shifted-window masks (official ``attn_mask`` buffers, fixed
to 224x224) are computed from the input and are not in the state dict (official ones are ignored on
load); any number of input channels (first conv adapted when ImageNet weights are loaded, see
``hybrids.apps.medical.weights``). ViT attention uses fused scaled-dot-product attention, so the
4097 x 4097 attention of the level-1 branch at 256x256 is never materialised.

Parameter names equal the official state-dict keys, aliases included (``All2Cross.pyramid.p2``/``p3`` are
``resnet_layers.5``/``6``; ``ConvUp_*.convs_level`` is ``conv_tower``), so an official HiFormer checkpoint
loads with ``model.load_state_dict(..., strict=True)`` (read it safely with
``hybrids.apps.medical.weights.load_official_hiformer``). On identical weights the logits match the
official code's at 224x224 in both DLF orders (tests/apps/medical, golden file). Parameter counts equal
the official ones: HiFormer-S 23,254,355, HiFormer-B 25,512,115, HiFormer-L 29,519,219 (9 classes, 3
input channels; the paper reports 23.25 M / 25.51 M / 29.52 M).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError
from hybrids.shared_blocks.attention import MultiHeadAttention
from hybrids.shared_blocks.drop_path import drop_path_or_identity
from hybrids.shared_blocks.resnet import ResNet
from hybrids.shared_blocks.vit import ViTBlock
from hybrids.shared_blocks.window_attention import PatchMerging, SwinTransformerBlock

__all__ = [
    "DLF_ORDERS",
    "All2Cross",
    "ConvUpsample",
    "CrossAttentionBlock",
    "HiFormer",
    "HiFormerConfig",
    "MultiScaleBlock",
    "PyramidFeatures",
    "SwinStage",
    "ViTBlock",
]

DLF_ORDERS = ("paper", "official_2022")
SIZE_DIVISOR = 16


@dataclass
class HiFormerConfig(ModelConfig):
    """HiFormer hyper-parameters; the defaults are HiFormer-B as the official code configures it
    (``configs/HiFormer_configs.py``).

    ``dlf_depth`` is the official ``config.depth[0]``: (self-attention blocks on level 1, on level 3,
    cross-attention blocks; 0 = one cross-attention block, the official "backward capability" layout).
    ``dlf_heads``/``dlf_mlp_ratio`` are per level (the third MLP ratio is the official cross-attention
    one, unused as its blocks have no MLP). ``pos_embed_size``: the image size the DLF position
    embeddings are laid out for (official ``image_size``).
    """

    in_channels: int = 3
    num_classes: int = 9
    cnn_block: str = "bottleneck"  # "basic" (ResNet-34) | "bottleneck" (ResNet-50)
    cnn_layers: tuple[int, int, int] = (3, 4, 6)
    cnn_base_width: int = 64  # ResNet stage widths base * (1, 2, 4) (* 4 for bottleneck blocks)
    embed_dim: int = 96  # Swin widths embed_dim * (1, 2, 4)
    swin_depths: tuple[int, int, int] = (2, 2, 6)
    swin_heads: tuple[int, int, int] = (3, 6, 12)
    window_size: int = 7
    swin_mlp_ratio: float = 4.0
    swin_drop_path_rate: float = 0.1  # official SwinTransformer default, linear over its 10 blocks
    dlf_depth: tuple[int, int, int] = (1, 2, 0)
    dlf_heads: tuple[int, int] = (6, 12)
    dlf_mlp_ratio: tuple[float, float, float] = (2.0, 2.0, 1.0)
    dlf_order: str = "paper"
    cross_pos_embed: bool = True
    pos_embed_size: int = 224
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    decoder_channels: int = 128
    head_channels: int = 16

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "hiformer_s": {
            "cnn_block": "basic",
            "dlf_depth": (1, 1, 0),
            "dlf_heads": (3, 3),
            "dlf_mlp_ratio": (1.0, 1.0, 1.0),
        },
        "hiformer_b": {},
        "hiformer_l": {
            "cnn_block": "basic",
            "dlf_depth": (1, 4, 0),
            "dlf_heads": (6, 6),
            "dlf_mlp_ratio": (4.0, 4.0, 1.0),
        },
        "tiny": {
            "cnn_block": "basic",
            "cnn_layers": (1, 1, 1),
            "cnn_base_width": 16,
            "embed_dim": 16,
            "swin_depths": (2, 2, 2),
            "swin_heads": (1, 2, 4),
            "dlf_depth": (1, 1, 0),
            "dlf_heads": (2, 2),
            "dlf_mlp_ratio": (1.0, 1.0, 1.0),
            "pos_embed_size": 64,
            "decoder_channels": 32,
            "head_channels": 8,
        },
    }

    def validate(self) -> None:
        name = type(self).__name__
        if self.in_channels < 1 or self.num_classes < 1:
            raise InputError(f"{name}: in_channels and num_classes must be >= 1")
        if self.cnn_block not in ("basic", "bottleneck"):
            raise InputError(f"{name}: cnn_block must be 'basic' or 'bottleneck', got {self.cnn_block!r}")
        if self.dlf_order not in DLF_ORDERS:
            raise InputError(
                f"{name}: dlf_order must be one of {', '.join(DLF_ORDERS)}, got {self.dlf_order!r}"
            )
        if len(self.cnn_layers) != 3 or min(self.cnn_layers) < 1 or self.cnn_base_width < 1:
            raise InputError(f"{name}: cnn_layers must be 3 positive ints and cnn_base_width >= 1")
        if len(self.swin_depths) != 3 or min(self.swin_depths) < 1 or len(self.swin_heads) != 3:
            raise InputError(f"{name}: swin_depths and swin_heads must be 3 positive ints")
        for level, heads in enumerate(self.swin_heads):
            if heads < 1 or (self.embed_dim << level) % heads:
                raise InputError(
                    f"{name}: Swin stage {level + 1} width {self.embed_dim << level} is not a "
                    f"multiple of its {heads} heads"
                )
        dims = (self.embed_dim, 4 * self.embed_dim)
        if len(self.dlf_depth) != 3 or min(self.dlf_depth) < 0 or len(self.dlf_heads) != 2:
            raise InputError(f"{name}: dlf_depth must be 3 ints >= 0 and dlf_heads 2 ints")
        if min(self.dlf_depth[:2]) < 1:
            raise InputError(
                f"{name}: each DLF level needs at least one self-attention block, got {self.dlf_depth}"
            )
        for dim, heads in zip(dims, self.dlf_heads):
            if heads < 1 or dim % heads:
                raise InputError(f"{name}: DLF width {dim} is not a multiple of {heads} heads")
        if len(self.dlf_mlp_ratio) != 3 or min(self.dlf_mlp_ratio) <= 0:
            raise InputError(f"{name}: dlf_mlp_ratio must be 3 positive numbers")
        if self.window_size < 1 or self.pos_embed_size < SIZE_DIVISOR or self.pos_embed_size % SIZE_DIVISOR:
            raise InputError(f"{name}: window_size must be >= 1 and pos_embed_size a positive multiple of 16")
        if self.decoder_channels < 32 or self.decoder_channels % 32 or self.head_channels < 1:
            raise InputError(f"{name}: decoder_channels must be a positive multiple of 32 (GroupNorm(32))")
        for field in ("drop_rate", "attn_drop_rate", "drop_path_rate", "swin_drop_path_rate"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise InputError(f"{name}: {field} must be in [0, 1)")


# -- DLF blocks --------------------------------------------------------------------------------------
class CrossAttentionBlock(nn.Module):
    """``(b, n, dim) -> (b, 1, dim)``: ``x[:, :1] + attn(norm1(x)[:, :1], norm1(x))`` (no MLP, as every
    official preset). ``attn`` is CrossViT's cross-attention (Chen et al. 2021, Sec. 3.3): the first token
    is the only query; the shared attention with the ``crossvit`` layout (official names ``wq``, ``wk``,
    ``wv``, ``proj``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(
            dim, num_heads, qkv_bias=qkv_bias, dropout=attn_drop, proj_dropout=drop, layout="crossvit"
        )
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        return x[:, :1] + self.drop_path(self.attn(h[:, :1], h))


def _projection(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim_in), nn.GELU(), nn.Linear(dim_in, dim_out))


class MultiScaleBlock(nn.Module):
    """One DLF block over two levels ``xs = [(b, 1 + n0, d0), (b, 1 + n1, d1)]`` (CLS token first).

    ``blocks[i]``: ``depth[i]`` :class:`ViTBlock` on level ``i``; ``projs[i]``: level ``i``'s CLS to the
    other width; ``fusion[i]`` (width of the other level, its head count): that CLS attends to the other
    level's patch tokens; ``revert_projs[i]``: back to level ``i``'s width. ``order`` see the module doc.
    """

    def __init__(
        self,
        dims: tuple[int, int],
        depth: tuple[int, int, int],
        num_heads: tuple[int, int],
        mlp_ratio: tuple[float, ...],
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: list[float],
        order: str = "paper",
    ) -> None:
        super().__init__()
        if order not in DLF_ORDERS:
            raise ValueError(f"MultiScaleBlock: order must be one of {DLF_ORDERS}, got {order!r}")
        self.order = order
        self.blocks = nn.ModuleList(
            nn.Sequential(
                *(
                    ViTBlock(  # timm's Block: LayerNorm eps 1e-5 (DINO's ViT uses 1e-6)
                        dims[d],
                        num_heads[d],
                        mlp_ratio[d],
                        qkv_bias,
                        drop_path=drop_path[i],
                        eps=1e-5,
                        drop=drop,
                        attn_drop=attn_drop,
                    )
                    for i in range(depth[d])
                )
            )
            for d in range(2)
        )
        self.projs = nn.ModuleList(_projection(dims[d], dims[1 - d]) for d in range(2))

        def cross(d: int) -> CrossAttentionBlock:
            other = 1 - d
            return CrossAttentionBlock(
                dims[other], num_heads[other], qkv_bias, drop, attn_drop, drop_path[-1]
            )

        if depth[2] == 0:
            self.fusion = nn.ModuleList(cross(d) for d in range(2))
        else:
            self.fusion = nn.ModuleList(nn.Sequential(*(cross(d) for _ in range(depth[2]))) for d in range(2))
        self.revert_projs = nn.ModuleList(_projection(dims[1 - d], dims[d]) for d in range(2))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        if self.order == "paper":
            xs = [block(x) for x, block in zip(xs, self.blocks)]
        outs = []
        for i in range(2):
            other = xs[1 - i]
            cls = self.projs[i](xs[i][:, :1])
            cls = self.fusion[i](torch.cat((cls, other[:, 1:]), dim=1))
            outs.append(torch.cat((self.revert_projs[i](cls[:, :1]), xs[i][:, 1:]), dim=1))
        return outs


def _linspace(end: float, n: int) -> list[float]:
    """``torch.linspace(0, end, n).tolist()`` in Python (works while building on the meta device)."""
    return [end * i / (n - 1) for i in range(n)] if n > 1 else [0.0] * n


# -- encoder -------------------------------------------------------------------------------------------
class SwinStage(nn.Module):
    """Swin blocks of one stage, no patch merging: ``(b, H, W, dim) -> (b, H, W, dim)`` (official
    ``BasicLayer`` with ``downsample=None``; attribute ``blocks``)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: list[float],
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size,
                0 if i % 2 == 0 else window_size // 2,
                mlp_ratio,
                qkv_bias,
                drop,
                attn_drop,
                drop_path[i],
            )
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class SwinStages(nn.Module):
    """Container matching the official ``swin_transformer`` attribute (``layers.0``-``layers.2``)."""

    def __init__(self, cfg: HiFormerConfig) -> None:
        super().__init__()
        dpr = _linspace(cfg.swin_drop_path_rate, sum(cfg.swin_depths))
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.swin_depths):
            start = sum(cfg.swin_depths[:i])
            self.layers.append(
                SwinStage(
                    cfg.embed_dim << i,
                    depth,
                    cfg.swin_heads[i],
                    cfg.window_size,
                    cfg.swin_mlp_ratio,
                    cfg.qkv_bias,
                    cfg.drop_rate,
                    cfg.attn_drop_rate,
                    dpr[start : start + depth],
                )
            )


class PyramidFeatures(nn.Module):
    """The CNN-Transformer encoder: ``(b, c, H, W) -> [(b, 1 + H/4 W/4, d), (b, 1 + H/16 W/16, 4 d)]``.

    ``resnet_layers`` holds the ResNet's ``conv1, bn1, relu, maxpool, layer1, layer2, layer3`` (official
    ``list(resnet.children())[:7]``); ``p2``/``p3`` are ``layer2``/``layer3`` again (official aliases).
    """

    def __init__(self, cfg: HiFormerConfig) -> None:
        super().__init__()
        resnet = ResNet(
            cfg.cnn_block,
            cfg.cnn_layers,
            in_channels=cfg.in_channels,
            spatial_dims=2,
            base_width=cfg.cnn_base_width,
            num_stages=3,
        )
        self.swin_transformer = SwinStages(cfg)
        self.resnet_layers = nn.ModuleList(
            [
                resnet.conv1,
                resnet.bn1,
                resnet.relu,
                resnet.maxpool,
                resnet.layer1,
                resnet.layer2,
                resnet.layer3,
            ]
        )
        cnn = resnet.feature_channels[1:]  # layer1..3 widths
        d = cfg.embed_dim
        self.p1_ch = nn.Conv2d(cnn[0], d, kernel_size=1)
        self.p1_pm = PatchMerging(d)
        self.norm_1 = nn.LayerNorm(d)
        self.p2 = resnet.layer2
        self.p2_ch = nn.Conv2d(cnn[1], 2 * d, kernel_size=1)
        self.p2_pm = PatchMerging(2 * d)
        self.p3 = resnet.layer3
        self.p3_ch = nn.Conv2d(cnn[2], 4 * d, kernel_size=1)
        self.norm_2 = nn.LayerNorm(4 * d)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[tuple[int, int]]]:
        for layer in self.resnet_layers[:5]:
            x = layer(x)
        fm1 = x
        t1 = self.p1_ch(fm1).permute(0, 2, 3, 1)  # (b, H/4, W/4, d), channels-last
        sw1 = t1 + self.swin_transformer.layers[0](t1)
        cls1 = self.norm_1(sw1).mean(dim=(1, 2))
        sw2 = self.swin_transformer.layers[1](self.p1_pm(sw1))
        fm2 = self.p2(fm1)
        sw2 = self.p2_pm(self.p2_ch(fm2).permute(0, 2, 3, 1) + sw2)
        sw3 = self.swin_transformer.layers[2](sw2)
        t3 = self.p3_ch(self.p3(fm2)).permute(0, 2, 3, 1) + sw3
        cls3 = self.norm_2(t3).mean(dim=(1, 2))
        grids = [tuple(sw1.shape[1:3]), tuple(t3.shape[1:3])]
        tokens = [
            torch.cat((cls1[:, None], sw1.flatten(1, 2)), dim=1),
            torch.cat((cls3[:, None], t3.flatten(1, 2)), dim=1),
        ]
        return tokens, grids


class All2Cross(nn.Module):
    """Encoder + DLF (official ``All2Cross``): ``(b, c, H, W) -> ([two token sequences], their grids)``."""

    def __init__(self, cfg: HiFormerConfig) -> None:
        super().__init__()
        self.cross_pos_embed = cfg.cross_pos_embed
        self.pyramid = PyramidFeatures(cfg)
        dims = (cfg.embed_dim, 4 * cfg.embed_dim)
        self.pos_grids = ((cfg.pos_embed_size // 4,) * 2, (cfg.pos_embed_size // 16,) * 2)
        self.pos_embed = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1 + math.prod(g), dim)) for g, dim in zip(self.pos_grids, dims)
        )
        total = cfg.dlf_depth[1] + cfg.dlf_depth[2]
        dpr = _linspace(cfg.drop_path_rate, total) if total else [0.0]
        curr = max(cfg.dlf_depth[:2]) + cfg.dlf_depth[2]
        dpr = (dpr + [dpr[-1]] * curr)[:curr]  # the official slice, padded as it never runs short there
        self.blocks = nn.ModuleList(
            [
                MultiScaleBlock(
                    dims,
                    cfg.dlf_depth,
                    cfg.dlf_heads,
                    cfg.dlf_mlp_ratio,
                    cfg.qkv_bias,
                    cfg.drop_rate,
                    cfg.attn_drop_rate,
                    dpr,
                    cfg.dlf_order,
                )
            ]
        )
        self.norm = nn.ModuleList(nn.LayerNorm(dim) for dim in dims)
        for p in self.pos_embed:
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():  # official All2Cross._init_weights (ResNet convs keep their own init)
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _pos_embed(self, i: int, grid: tuple[int, int]) -> Tensor:
        """Position embedding ``i`` for a ``grid`` of tokens (bicubic resize of the patch part, as DINO)."""
        pos = self.pos_embed[i]
        if grid == self.pos_grids[i]:
            return pos
        cls, patches = pos[:, :1], pos[:, 1:]
        patches = patches.reshape(1, *self.pos_grids[i], -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat((cls, patches.flatten(2).transpose(1, 2)), dim=1)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[tuple[int, int]]]:
        xs, grids = self.pyramid(x)
        if self.cross_pos_embed:
            xs = [t + self._pos_embed(i, g) for i, (t, g) in enumerate(zip(xs, grids))]
        for block in self.blocks:
            xs = block(xs)
        return [norm(t) for norm, t in zip(self.norm, xs)], grids


# -- decoder ------------------------------------------------------------------------------------------
class ConvUpsample(nn.Module):
    """Per ``out_chans``: 3x3 conv (no bias), GroupNorm(32), ReLU, optional 2x bilinear upsampling.
    ``conv_tower`` (ModuleList) and ``convs_level`` (Sequential) hold the same layers (official aliases)."""

    def __init__(self, in_chans: int, out_chans: list[int], upsample: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for out_ch in out_chans:
            layers += [
                nn.Conv2d(in_chans, out_ch, 3, padding=1, bias=False),
                nn.GroupNorm(32, out_ch),
                nn.ReLU(),
            ]
            if upsample:
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            in_chans = out_ch
        self.conv_tower = nn.ModuleList(layers)
        self.convs_level = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.convs_level(x)


class HiFormer(nn.Module):
    """HiFormer: ``forward(x (b, in_channels, H, W)) -> logits (b, num_classes, H, W)``, ``H, W``
    multiples of ``size_divisor`` (16). See the module docstring."""

    spatial_dims = 2
    size_divisor = SIZE_DIVISOR

    def __init__(self, config: HiFormerConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else HiFormerConfig()
        cfg.validate()
        self.config = cfg
        self.in_channels = cfg.in_channels
        self.num_classes = cfg.num_classes
        d, c = cfg.embed_dim, cfg.decoder_channels
        self.All2Cross = All2Cross(cfg)
        self.ConvUp_s = ConvUpsample(4 * d, [c, c], upsample=True)
        self.ConvUp_l = ConvUpsample(d, [c], upsample=False)
        self.segmentation_head = nn.Sequential(nn.Conv2d(cfg.head_channels, cfg.num_classes, 3, padding=1))
        self.conv_pred = nn.Sequential(
            nn.Conv2d(c, cfg.head_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False),
        )

    def check_input(self, x: Tensor) -> None:
        """Raise ``InputError`` unless ``x`` is ``(b, in_channels, H, W)`` with ``H, W`` multiples of 16."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"HiFormer: input must be (b, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h < SIZE_DIVISOR or w < SIZE_DIVISOR or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
            raise InputError(f"HiFormer: H and W must be positive multiples of {SIZE_DIVISOR}, got {h}x{w}")
        if not x.is_floating_point():
            raise InputError(f"HiFormer: input must be a floating-point tensor, got {x.dtype}")

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        (small, large), (g_small, g_large) = self.All2Cross(x)
        small = small[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *g_small)
        large = large[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *g_large)
        y = self.conv_pred(self.ConvUp_l(small) + self.ConvUp_s(large))
        return self.segmentation_head(y)
