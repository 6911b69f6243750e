"""Vision Transformer with DINO's layout (Dosovitskiy et al. 2021; Caron et al. 2021, "Emerging Properties
in Self-Supervised Vision Transformers").

Parameter names are those of the official DINO code (``vision_transformer.py``), so the official
checkpoints (``dino_deitsmall16_pretrain.pth``, ``dino_deitsmall8_pretrain.pth``, ...) load with
``strict=True``::

    cls_token (1, 1, D)   pos_embed (1, 1 + (img_size/p)^2, D)   patch_embed.proj (Conv2d in_chans->D, p, p)
    blocks.N.norm1  blocks.N.attn.qkv  blocks.N.attn.proj  blocks.N.norm2  blocks.N.mlp.fc1  blocks.N.mlp.fc2
    norm            head (Identity, no parameters)

Images of any height and width that are multiples of the patch size are accepted: the patch part of the
position embedding is resized bicubically to the ``(H/p, W/p)`` grid as DINO does it (the CLS entry is
kept), so features match the official code at every size. The blocks run on
``scaled_dot_product_attention``; only the last block's attention probabilities are materialised, and only
when they are asked for (:meth:`VisionTransformer.get_last_selfattention`,
:meth:`VisionTransformer.attention_maps`, DINO's ``visualize_attention``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hybrids.shared_blocks.attention import MultiHeadAttention
from hybrids.shared_blocks.drop_path import drop_path_or_identity
from hybrids.shared_blocks.mlp import Mlp

__all__ = [
    "VIT_CONFIGS",
    "PatchEmbed",
    "VisionTransformer",
    "ViTBlock",
    "resize_pos_embed",
    "vit_base",
    "vit_small",
    "vit_tiny",
]

# name -> (embed_dim, depth, num_heads); DINO's ``vit_tiny`` / ``vit_small`` / ``vit_base``
VIT_CONFIGS = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}


def resize_pos_embed(pos_embed: Tensor, rows: int, cols: int) -> Tensor:
    """A CLS-first position embedding ``(1, 1 + side^2, D)`` for a ``rows x cols`` patch grid:
    ``(1, 1 + rows * cols, D)``. The CLS entry is kept; the patch grid is resized bicubically with DINO's
    scale factor ``(n + 0.1) / side`` (the 0.1 guards the floor that sets the output size; the factor
    also sets the sampling grid), so features match the official code at every input size."""
    n = pos_embed.shape[1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"resize_pos_embed: {n} patch positions are not a square grid")
    if rows == cols == side:
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = ((rows + 0.1) / side, (cols + 0.1) / side)
    grid = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    patch_pos = grid.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat((cls_pos, patch_pos), dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: ``(b, C, H, W) -> (b, H/p * W/p, D)`` (row-major patch order)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViTBlock(nn.Module):
    """Pre-norm transformer block (timm's ``Block``, as DINO's ViT and HiFormer's DLF use it): ``(b, n, D)``,
    ``x + drop_path(attn(norm1(x)))`` then ``x + drop_path(mlp(norm2(x)))`` (GELU MLP).

    ``attn`` is a :class:`~hybrids.shared_blocks.attention.MultiHeadAttention` with the fused layout
    (``attn.qkv``, ``attn.proj``). ``eps``: LayerNorm epsilon (DINO 1e-6, timm's default 1e-5); ``drop``:
    dropout after the attention projection and in the MLP; ``attn_drop``: on the attention probabilities.
    ``forward(x, return_attention=True)`` returns ``(x, probs (b, heads, n, n))``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        eps: float = 1e-6,
        *,
        drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadAttention(
            dim, num_heads, qkv_bias=qkv_bias, dropout=attn_drop, proj_dropout=drop, layout="fused"
        )
        self.drop_path = drop_path_or_identity(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden_dim=int(dim * mlp_ratio), dropout=drop)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        attn = None
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)
        else:
            y = self.attn(self.norm1(x))
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if return_attention else x


class VisionTransformer(nn.Module):
    """ViT backbone with a CLS token; DINO's parameter names (see the module docstring).

    ``forward(x (b, in_chans, H, W)) -> (b, embed_dim)``: the normed CLS token. ``H`` and ``W`` must be
    multiples of ``patch_size``; ``img_size`` only sets the stored position-embedding grid
    (``img_size / patch_size`` squared, 14x14 for DINO's 224/16 files, 28x28 for 224/8).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if patch_size <= 0 or img_size % patch_size:
            raise ValueError(
                f"VisionTransformer: img_size {img_size} is not a multiple of patch {patch_size}"
            )
        if depth <= 0 or in_chans <= 0:
            raise ValueError(f"VisionTransformer: depth, in_chans must be positive, got {depth}, {in_chans}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # no tensor: meta-safe
        self.blocks = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=rate) for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, rows: int, cols: int) -> Tensor:
        """Position embedding for a ``rows x cols`` patch grid: ``(1, 1 + rows * cols, D)`` (bicubic)."""
        return resize_pos_embed(self.pos_embed, rows, cols)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """``(b, C, H, W) -> (b, 1 + H/p * W/p, D)``: patch tokens, CLS first, plus position embedding."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"VisionTransformer: expected (b, {self.in_chans}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"VisionTransformer: input {h}x{w} is not a multiple of the patch size {p}")
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(h // p, w // p)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """All normed output tokens ``(b, 1 + N, D)`` (CLS first)."""
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_tokens(x)[:, 0])

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Softmax attention of the last block ``(b, heads, 1 + N, 1 + N)`` (token 0 is CLS)."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        last = self.blocks[-1]
        _, attn = last.attn(last.norm1(x), return_attention=True)
        return attn

    def get_intermediate_layers(self, x: Tensor, n: int = 1) -> list[Tensor]:
        """Normed tokens ``(b, 1 + N, D)`` of the last ``n`` blocks (DINO's linear-probe features)."""
        x = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x))
        return out

    def attention_maps(self, x: Tensor, upsample: bool = True) -> Tensor:
        """CLS-token attention of the last block over the patches, one map per head.

        ``(b, C, H, W) -> (b, heads, H, W)`` (each patch's value repeated over its ``p x p`` pixels, i.e.
        nearest upsampling by ``p`` as in DINO's ``visualize_attention``), or ``(b, heads, H/p, W/p)``
        when ``upsample=False``. Each head's map sums to 1 over the patch grid.
        """
        h, w = x.shape[-2:]
        p = self.patch_size
        attn = self.get_last_selfattention(x)[:, :, 0, 1:]
        maps = attn.reshape(attn.shape[0], attn.shape[1], h // p, w // p)
        if upsample:
            maps = maps.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
        return maps


def _vit(name: str, patch_size: int, **kwargs) -> VisionTransformer:
    dim, depth, heads = VIT_CONFIGS[name]
    kwargs.setdefault("embed_dim", dim)
    kwargs.setdefault("depth", depth)
    kwargs.setdefault("num_heads", heads)
    return VisionTransformer(patch_size=patch_size, **kwargs)


def vit_tiny(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-Ti/p: 192 dims, 12 blocks, 3 heads (5.5 M parameters)."""
    return _vit("vit_tiny", patch_size, **kwargs)


def vit_small(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-S/p: 384 dims, 12 blocks, 6 heads (21.7 M parameters); DINO's ``dino_deitsmall{16,8}``."""
    return _vit("vit_small", patch_size, **kwargs)


def vit_base(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-B/p: 768 dims, 12 blocks, 12 heads (85.8 M parameters)."""
    return _vit("vit_base", patch_size, **kwargs)
