"""Swin Transformer blocks for 2-D and 3-D grids (Liu et al. 2021, "Swin Transformer", Sec. 3; Liu et al.
2022, "Video Swin Transformer", Sec. 3).

Parameter and buffer names are those of the official code (``microsoft/Swin-Transformer``
``models/swin_transformer.py``; Video Swin for 3-D), so official state dicts load with ``strict=True``:
``norm1``, ``attn.relative_position_bias_table``, ``attn.relative_position_index`` (persistent buffer),
``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``; ``PatchMerging.norm`` /
``PatchMerging.reduction``. The official block's precomputed ``attn_mask`` buffer is ignored on load
(the mask is computed from the input size here and cached).

Differences from the official v1 code, all documented where they live: blocks take channels-last maps
``(b, H, W, c)`` / ``(b, D, H, W, c)`` instead of ``(b, L, c)`` plus a stored input resolution, so one block
handles any size; sizes that are not multiples of the window are zero-padded after ``norm1`` (as official
Swin detection/segmentation and Video Swin do); the window is clamped per axis (Video Swin's rule).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrids.kernels.attention.window import (
    crop_to_shape,
    cyclic_shift,
    effective_window,
    pad_to_window,
    relative_position_bias,
    relative_position_index,
    reverse_cyclic_shift,
    shifted_window_mask,
    window_attention,
    window_merge,
    window_partition,
)
from hybrids.shared_blocks.drop_path import drop_path_or_identity
from hybrids.shared_blocks.factories import as_tuple, check_spatial_dims
from hybrids.shared_blocks.mlp import Mlp

__all__ = ["PatchMerging", "SwinTransformerBlock", "WindowAttention"]


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias (W-MSA / SW-MSA, Swin Sec. 3.2).

    ``forward(x (b * num_windows, N, dim), mask=None (num_windows, N, N) additive, window_size=None)
    -> (b * num_windows, N, dim)`` with ``N = prod(window)``. ``window_size`` is the window actually used
    when it was clamped to a small map (default: the configured one); the bias of the smaller window is
    gathered from the same table with the right offsets.

    Parameters (official names): ``qkv`` (``dim -> 3 dim``), ``proj``, ``relative_position_bias_table``
    ``(prod(2 w - 1), num_heads)`` (truncated normal, std 0.02) and the buffer ``relative_position_index``.
    Scale ``head_dim ** -0.5``.
    """

    def __init__(
        self,
        dim: int,
        window_size: int | Sequence[int],
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, (2, 3))
        if dim <= 0 or num_heads <= 0 or dim % num_heads:
            raise ValueError(
                f"WindowAttention: dim ({dim}) must be a positive multiple of num_heads ({num_heads})"
            )
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"WindowAttention: attn_drop must be in [0, 1), got {attn_drop}")
        self.dim = dim
        self.spatial_dims = spatial_dims
        self.window_size = as_tuple(window_size, spatial_dims, "window_size", minimum=1)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = attn_drop
        num_offsets = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_offsets, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _index(self, window: tuple[int, ...]) -> Tensor:
        if window == self.window_size:
            return self.relative_position_index
        return relative_position_index(
            window, table_window_size=self.window_size, device=self.relative_position_index.device
        )

    def forward(
        self, x: Tensor, mask: Tensor | None = None, window_size: Sequence[int] | None = None
    ) -> Tensor:
        window = self.window_size if window_size is None else tuple(int(w) for w in window_size)
        if len(window) != self.spatial_dims or any(w > t for w, t in zip(window, self.window_size)):
            raise ValueError(f"WindowAttention: window {window} does not fit the table's {self.window_size}")
        if x.dim() != 3 or x.shape[1] != math.prod(window) or x.shape[2] != self.dim:
            raise ValueError(
                f"WindowAttention: x must be (b * num_windows, {math.prod(window)}, {self.dim}), "
                f"got {tuple(x.shape)}"
            )
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (bw, heads, N, head_dim)
        bias = relative_position_bias(self.relative_position_bias_table, self._index(window))
        out = window_attention(
            q,
            k,
            v,
            rel_bias=bias,
            mask=mask,
            scale=self.scale,
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Module):
    """Swin Transformer block (Swin Sec. 3.1-3.2; Video Swin Sec. 3.2 for 3-D), pre-norm:
    ``x + drop_path((S)W-MSA(norm1(x)))`` then ``x + drop_path(mlp(norm2(x)))``.

    ``forward(x) -> same shape`` for channels-last maps ``x (b, H, W, dim)`` (``spatial_dims=2``) or
    ``(b, D, H, W, dim)`` (``spatial_dims=3``) of any size: ``norm1`` output is zero-padded at the end of
    each axis to a multiple of the window (padding tokens are not masked, as in official Swin detection
    and Video Swin) and cropped after attention. Per axis, a window not smaller than the map is clamped
    to it and that axis is not shifted (:func:`~hybrids.kernels.attention.window.effective_window`).
    ``shift_size > 0`` gives the shifted-window block (roll by ``-shift``, masked attention, roll back).

    Submodule names follow the official code: ``norm1``, ``attn`` (:class:`WindowAttention`), ``norm2``,
    ``mlp.fc1``, ``mlp.fc2`` (GELU), ``drop_path``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | Sequence[int] = 7,
        shift_size: int | Sequence[int] = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, (2, 3))
        self.dim = dim
        self.spatial_dims = spatial_dims
        self.num_heads = num_heads
        self.window_size = as_tuple(window_size, spatial_dims, "window_size", minimum=1)
        self.shift_size = as_tuple(shift_size, spatial_dims, "shift_size", minimum=0)
        if any(s >= w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(
                f"shift_size {self.shift_size} must be smaller than window_size {self.window_size}"
            )
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        self.mlp_ratio = mlp_ratio
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim,
            self.window_size,
            num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            spatial_dims=spatial_dims,
        )
        self.drop_path = drop_path_or_identity(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=drop)
        self._mask_cache: dict[tuple[Any, ...], Tensor] = {}

    def _shift_mask(
        self, spatial: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], x: Tensor
    ):
        key = (spatial, window, shift, x.device, x.dtype)
        mask = self._mask_cache.get(key)
        if mask is None:
            if len(self._mask_cache) >= 8:
                self._mask_cache.clear()
            mask = shifted_window_mask(spatial, window, shift, x.device, dtype=x.dtype)
            self._mask_cache[key] = mask
        return mask

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.spatial_dims + 2 or x.shape[-1] != self.dim:
            layout = "(b, H, W, c)" if self.spatial_dims == 2 else "(b, D, H, W, c)"
            raise ValueError(
                f"SwinTransformerBlock: x must be {layout} with c = {self.dim}, got {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[1:-1])
        window, shift = effective_window(spatial, self.window_size, self.shift_size)
        shortcut = x
        h, _ = pad_to_window(self.norm1(x), window)
        padded = tuple(h.shape[1:-1])
        mask = None
        if any(shift):
            h = cyclic_shift(h, shift)
            mask = self._shift_mask(padded, window, shift, h)
        windows = self.attn(window_partition(h, window), mask=mask, window_size=window)
        h = window_merge(windows, window, padded)
        if any(shift):
            h = reverse_cyclic_shift(h, shift)
        h = crop_to_shape(h, spatial)
        x = shortcut + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs
    ):
        # Official checkpoints carry the shifted block's precomputed mask; it is recomputed here.
        state_dict.pop(prefix + "attn_mask", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
            f"shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}"
        )


class PatchMerging(nn.Module):
    """Patch merging (Swin Sec. 3.1): ``(b, *spatial, dim) -> (b, *ceil(spatial / 2), 2 dim)``.

    Concatenates the ``2 ** spatial_dims`` tokens of each 2x2 (2x2x2) neighbourhood, applies ``norm``
    (LayerNorm over ``2 ** n · dim``) then ``reduction`` (linear, no bias) to ``2 dim`` — the official v1
    order and names. Odd sizes are zero-padded at the end first (as official Swin detection does).
    Concatenation order: the first spatial axis offset varies fastest, i.e. official 2-D
    ``[x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]]``; in 3-D ``(d, h, w)`` offsets
    ``(0,0,0), (1,0,0), (0,1,0), (1,1,0), (0,0,1), ...``. 3-D merges all three axes (8 dim -> 2 dim, like
    SwinUNETR; Video Swin instead merges H and W only). MONAI's 3-D merging layers use other orders, so
    their ``reduction``/``norm`` weights need their input features permuted.
    """

    def __init__(self, dim: int, spatial_dims: int = 2) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims, (2, 3))
        if dim <= 0:
            raise ValueError(f"PatchMerging: dim must be positive, got {dim}")
        self.dim = dim
        self.spatial_dims = spatial_dims
        parts = 2**spatial_dims
        self.reduction = nn.Linear(parts * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(parts * dim)
        self._offsets = [tuple(reversed(p)) for p in itertools.product((0, 1), repeat=spatial_dims)]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.spatial_dims + 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"PatchMerging: x must be (b, *spatial ({self.spatial_dims} axes), {self.dim}), "
                f"got {tuple(x.shape)}"
            )
        pads = [s % 2 for s in x.shape[1:-1]]
        if any(pads):
            pad_arg = [0, 0]
            for p in reversed(pads):
                pad_arg += [0, p]
            x = F.pad(x, pad_arg)
        parts = [x[(slice(None), *(slice(o, None, 2) for o in offset))] for offset in self._offsets]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))
