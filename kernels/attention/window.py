"""(Shifted) window attention for 2-D and 3-D grids (Swin Transformer, Liu et al. 2021, Sec. 3.2; Video
Swin Transformer, Liu et al. 2022, Sec. 3.2).

Layout conventions (identical to the official Swin / Video Swin code, so their weights and buffers apply):

- Feature maps are channels-last: ``(b, H, W, c)`` or ``(b, D, H, W, c)``.
- :func:`window_partition` orders windows batch-major, then row-major over the grid of windows; tokens
  inside a window are row-major (last spatial axis fastest). ``N = prod(window)`` tokens per window.
- :func:`relative_position_index` indexes a ``(prod(2 * w - 1), heads)`` bias table with
  ``sum_d (p_d - p'_d + w_d - 1) * prod_{e > d} (2 w_e - 1)`` for query ``p`` and key ``p'`` (query minus
  key, first axis slowest), which is the official ``relative_position_index`` buffer.
- The shifted-window scheme rolls the map by ``-shift`` (:func:`cyclic_shift`) before partitioning and by
  ``+shift`` afterwards (:func:`reverse_cyclic_shift`); :func:`shifted_window_mask` keeps tokens that were
  not neighbours before the roll from attending to each other.

Sizes that are not multiples of the window are padded at the end of each axis (:func:`pad_to_window`,
as the official detection/segmentation Swin and Video Swin do, with zeros that are *not* masked), and a
window larger than the feature map is clamped to it per axis with no shift on that axis
(:func:`effective_window`, Video Swin's ``get_window_size`` rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrids.kernels.attention.sdpa import attention

__all__ = [
    "SWIN_MASK_VALUE",
    "crop_to_shape",
    "cyclic_shift",
    "effective_window",
    "pad_to_window",
    "relative_position_bias",
    "relative_position_index",
    "reverse_cyclic_shift",
    "shifted_window_mask",
    "window_attention",
    "window_merge",
    "window_partition",
]

#: Additive mask value of the official Swin code for keys outside the query's shifted-window region.
SWIN_MASK_VALUE = -100.0


def _as_tuple(value: int | Sequence[int], n: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """``int`` or length-``n`` sequence -> ``n``-tuple of ints ``>= minimum`` (ValueError otherwise)."""
    if isinstance(value, int):
        values = (value,) * n
    else:
        values = tuple(int(v) for v in value)
        if len(values) != n:
            raise ValueError(f"{name} must be an int or have {n} entries, got {tuple(value)}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} entries must be >= {minimum}, got {values}")
    return values


def _spatial_dims_of(x: Tensor, name: str) -> int:
    n = x.dim() - 2
    if n not in (2, 3):
        raise ValueError(f"{name} must be (b, H, W, c) or (b, D, H, W, c), got shape {tuple(x.shape)}")
    return n


def window_partition(x: Tensor, window_size: int | Sequence[int]) -> Tensor:
    """Split a channels-last map into non-overlapping windows.

    Args:
        x: ``(b, H, W, c)`` or ``(b, D, H, W, c)``; every spatial size must be a multiple of the window
            (use :func:`pad_to_window` first otherwise).
        window_size: int or per-axis tuple.

    Returns:
        ``(b * num_windows, prod(window_size), c)``, windows ordered as in official Swin (batch, then the
        grid of windows row-major) and tokens row-major inside each window.
    """
    n = _spatial_dims_of(x, "window_partition: x")
    win = _as_tuple(window_size, n, "window_size")
    b, *spatial, c = x.shape
    if any(s % w for s, w in zip(spatial, win)):
        raise ValueError(f"window_partition: spatial shape {tuple(spatial)} is not a multiple of {win}")
    split = [b]
    for s, w in zip(spatial, win):
        split += [s // w, w]
    x = x.reshape(*split, c)
    # (b, n0, w0, n1, w1, [n2, w2], c) -> (b, n0, n1, [n2], w0, w1, [w2], c)
    order = [0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1]
    return x.permute(order).reshape(-1, math.prod(win), c)


def window_merge(windows: Tensor, window_size: int | Sequence[int], spatial_shape: Sequence[int]) -> Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: ``(b * num_windows, prod(window_size), c)``.
        window_size: int or per-axis tuple (2 or 3 axes, as many as ``spatial_shape``).
        spatial_shape: ``(H, W)`` or ``(D, H, W)``, multiples of the window.

    Returns:
        ``(b, *spatial_shape, c)``.
    """
    spatial = tuple(int(s) for s in spatial_shape)
    n = len(spatial)
    if n not in (2, 3):
        raise ValueError(f"window_merge: spatial_shape must have 2 or 3 entries, got {spatial}")
    win = _as_tuple(window_size, n, "window_size")
    if any(s % w for s, w in zip(spatial, win)):
        raise ValueError(f"window_merge: spatial shape {spatial} is not a multiple of {win}")
    if windows.dim() != 3 or windows.shape[1] != math.prod(win):
        raise ValueError(
            f"window_merge: windows must be (b * num_windows, {math.prod(win)}, c), "
            f"got {tuple(windows.shape)}"
        )
    counts = [s // w for s, w in zip(spatial, win)]
    num_windows = math.prod(counts)
    if windows.shape[0] % num_windows:
        raise ValueError(
            f"window_merge: {windows.shape[0]} windows is not a multiple of {num_windows} windows per map"
        )
    b, c = windows.shape[0] // num_windows, windows.shape[-1]
    x = windows.reshape(b, *counts, *win, c)
    # (b, n0, n1, [n2], w0, w1, [w2], c) -> (b, n0, w0, n1, w1, [n2, w2], c)
    order = [0]
    for d in range(n):
        order += [1 + d, 1 + n + d]
    order.append(2 * n + 1)
    return x.permute(order).reshape(b, *spatial, c)


def cyclic_shift(x: Tensor, shift: int | Sequence[int]) -> Tensor:
    """Swin's cyclic shift before shifted-window attention: ``torch.roll`` by ``-shift`` on the spatial axes.

    ``x (b, *spatial, c) -> (b, *spatial, c)``; ``out[p] = x[(p + shift) mod size]`` per axis.
    """
    n = _spatial_dims_of(x, "cyclic_shift: x")
    s = _as_tuple(shift, n, "shift", minimum=0)
    return torch.roll(x, shifts=tuple(-v for v in s), dims=tuple(range(1, n + 1)))


def reverse_cyclic_shift(x: Tensor, shift: int | Sequence[int]) -> Tensor:
    """Undo :func:`cyclic_shift`: ``torch.roll`` by ``+shift`` on the spatial axes of ``(b, *spatial, c)``."""
    n = _spatial_dims_of(x, "reverse_cyclic_shift: x")
    s = _as_tuple(shift, n, "shift", minimum=0)
    return torch.roll(x, shifts=s, dims=tuple(range(1, n + 1)))


def effective_window(
    spatial_shape: Sequence[int], window_size: int | Sequence[int], shift_size: int | Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and shift actually used on a map of ``spatial_shape`` (Video Swin's ``get_window_size``).

    Per axis: where the map is not larger than the window (``size <= window``), the window is clamped to
    the map size and that axis is not shifted; elsewhere ``window``/``shift`` are kept. (Official 2-D Swin
    v1 applies the same rule with ``min(H, W)`` to both axes at once; the two agree on square maps.)

    Returns ``(window, shift)`` as tuples with one entry per spatial axis.
    """
    spatial = tuple(int(s) for s in spatial_shape)
    n = len(spatial)
    win = _as_tuple(window_size, n, "window_size")
    shift = _as_tuple(shift_size, n, "shift_size", minimum=0)
    if any(s >= w for s, w in zip(shift, win)):
        raise ValueError(f"shift_size {shift} must be smaller than window_size {win} on every axis")
    if any(s < 1 for s in spatial):
        raise ValueError(f"spatial shape must be positive, got {spatial}")
    use_win = tuple(s if s <= w else w for s, w in zip(spatial, win))
    use_shift = tuple(0 if s <= w else sh for s, w, sh in zip(spatial, win, shift))
    return use_win, use_shift


def pad_to_window(x: Tensor, window_size: int | Sequence[int]) -> tuple[Tensor, tuple[int, ...]]:
    """Zero-pad the end of each spatial axis of ``x (b, *spatial, c)`` up to a multiple of the window.

    Returns ``(padded (b, *padded_spatial, c), original spatial shape)``; :func:`crop_to_shape` undoes it.
    As in official Swin (detection) and Video Swin, the padded tokens are zeros and are not masked: they
    take part in attention as keys like any other token.
    """
    n = _spatial_dims_of(x, "pad_to_window: x")
    win = _as_tuple(window_size, n, "window_size")
    spatial = tuple(x.shape[1:-1])
    pads = [(-s) % w for s, w in zip(spatial, win)]
    if any(pads):
        pad_arg: list[int] = [0, 0]  # channels
        for p in reversed(pads):  # F.pad lists the last axis first
            pad_arg += [0, p]
        x = F.pad(x, pad_arg)
    return x, spatial


def crop_to_shape(x: Tensor, spatial_shape: Sequence[int]) -> Tensor:
    """Keep the leading ``spatial_shape`` of each spatial axis of ``x (b, *spatial, c)`` (undo padding)."""
    n = _spatial_dims_of(x, "crop_to_shape: x")
    spatial = tuple(int(s) for s in spatial_shape)
    if len(spatial) != n or any(s > t for s, t in zip(spatial, x.shape[1:-1])):
        raise ValueError(f"crop_to_shape: cannot crop {tuple(x.shape[1:-1])} to {spatial}")
    if spatial == tuple(x.shape[1:-1]):
        return x
    return x[(slice(None), *(slice(0, s) for s in spatial))]


def shifted_window_mask(
    spatial_shape: Sequence[int],
    window_size: int | Sequence[int],
    shift_size: int | Sequence[int],
    device: torch.device | str | None = None,
    *,
    mask_value: float = SWIN_MASK_VALUE,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Additive attention mask of shifted-window attention (Swin Sec. 3.2, "efficient batch computation").

    After :func:`cyclic_shift`, each axis of the (padded) map splits into the regions ``[0, S - w)``,
    ``[S - w, S - shift)`` and ``[S - shift, S)`` (one region where the axis is not shifted); a query may
    attend to a key of its window only if both lie in the same region on every axis, i.e. they were
    neighbours before the roll.

    Args:
        spatial_shape: ``(H, W)`` or ``(D, H, W)`` of the padded map (multiples of the window).
        window_size, shift_size: int or per-axis tuples, ``0 <= shift < window``.
        device: device of the result.
        mask_value: value at forbidden pairs, 0 elsewhere. The default ``-100`` is the official Swin /
            Video Swin value (weight ``exp(-100)`` relative to allowed keys). ``float("-inf")`` is safe
            too: every query is in its own region, so no row is fully masked.
        dtype: floating dtype of the result.

    Returns:
        ``(num_windows, N, N)`` with ``N = prod(window_size)``, windows ordered as in
        :func:`window_partition`; add it to the scores of each map's windows (broadcast over batch/heads).
    """
    spatial = tuple(int(s) for s in spatial_shape)
    n = len(spatial)
    if n not in (2, 3):
        raise ValueError(f"shifted_window_mask: spatial_shape must have 2 or 3 entries, got {spatial}")
    win = _as_tuple(window_size, n, "window_size")
    shift = _as_tuple(shift_size, n, "shift_size", minimum=0)
    if any(s >= w for s, w in zip(shift, win)):
        raise ValueError(f"shift_size {shift} must be smaller than window_size {win} on every axis")
    if any(s % w for s, w in zip(spatial, win)):
        raise ValueError(f"shifted_window_mask: spatial shape {spatial} is not a multiple of {win}")
    region = torch.zeros(spatial, dtype=torch.long, device=device)
    for d, (size, w, s) in enumerate(zip(spatial, win, shift)):
        label = torch.zeros(size, dtype=torch.long, device=device)
        if s > 0:
            label[size - w :] = 1
            label[size - s :] = 2
        view = [1] * n
        view[d] = size
        region = region + label.view(view) * 3**d
    ids = window_partition(region[None, ..., None], win).squeeze(-1)  # (num_windows, N)
    different = ids[:, :, None] != ids[:, None, :]
    mask = torch.zeros(different.shape, dtype=dtype, device=device)
    return mask.masked_fill(different, mask_value)


def relative_position_index(
    window_size: int | Sequence[int],
    *,
    table_window_size: int | Sequence[int] | None = None,
    spatial_dims: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Index of every (query, key) pair of a window into the relative-position bias table.

    Args:
        window_size: ``(Wh, Ww)`` or ``(Wd, Wh, Ww)``; an int is a square window (official Swin's
            ``to_2tuple``), or a cube with ``spatial_dims=3``.
        table_window_size: window the table was built for (default ``window_size``); when the window is
            clamped to a small map, the offsets of the smaller window index the full table correctly.
        spatial_dims: 2 or 3; only needed (default 2) when ``window_size`` is an int.
        device: device of the result.

    Returns:
        long ``(N, N)``, ``N = prod(window_size)``: for query ``p`` and key ``p'`` (row-major in-window
        coordinates) ``sum_d (p_d - p'_d + T_d - 1) * prod_{e > d} (2 T_e - 1)`` with ``T`` the table window,
        an index into a ``(prod(2 T - 1), heads)`` table — the official Swin (2-D) and Video Swin (3-D)
        ``relative_position_index`` buffer when ``T == window_size``.
    """
    n = (2 if spatial_dims is None else spatial_dims) if isinstance(window_size, int) else len(window_size)
    if spatial_dims is not None and spatial_dims != n:
        raise ValueError(f"relative_position_index: window {window_size} does not have {spatial_dims} axes")
    if n not in (2, 3):
        raise ValueError(f"relative_position_index: window_size must have 2 or 3 entries, got {window_size}")
    win = _as_tuple(window_size, n, "window_size")
    table = win if table_window_size is None else _as_tuple(table_window_size, n, "table_window_size")
    if any(w > t for w, t in zip(win, table)):
        raise ValueError(f"window {win} is larger than the bias table's window {table}")
    axes = [torch.arange(w, device=device) for w in win]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (n, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (n, N, N): query minus key
    index = torch.zeros(rel.shape[1:], dtype=torch.long, device=device)
    for d in range(n):
        stride = math.prod(2 * t - 1 for t in table[d + 1 :])
        index += (rel[d] + table[d] - 1) * stride
    return index


def relative_position_bias(table: Tensor, index: Tensor) -> Tensor:
    """Gather the bias ``(heads, N, N)`` from a ``(num_offsets, heads)`` table and an ``(N, N)`` index."""
    if table.dim() != 2 or index.dim() != 2:
        raise ValueError(
            f"relative_position_bias: table must be (offsets, heads) and index (N, N), "
            f"got {tuple(table.shape)} and {tuple(index.shape)}"
        )
    n = index.shape[0]
    return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    rel_bias: Tensor | None = None,
    mask: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    impl: str = "auto",
) -> Tensor:
    """Softmax attention inside windows with relative-position bias and the shifted-window mask.

    ``softmax(q kᵀ · scale + rel_bias + mask) v`` per window and head, via
    :func:`hybrids.kernels.attention.sdpa.attention` with ``rel_bias + mask`` as one additive float mask.

    Args:
        q, k: ``(b * num_windows, heads, N, d)`` (windows of each map consecutive, as from
            :func:`window_partition`).
        v: ``(b * num_windows, heads, N, dv)``.
        rel_bias: ``(heads, N, N)`` (or ``(1, N, N)``) additive bias, e.g. :func:`relative_position_bias`.
        mask: ``(num_windows, N, N)`` additive float mask (:func:`shifted_window_mask`) or bool
            (True = attend), shared by every map of the batch.
        scale: score scale, default ``1 / sqrt(d)``.
        dropout_p: dropout on the attention probabilities (pass 0 in eval mode).
        impl: ``"auto" | "sdpa" | "reference"``, forwarded to the dispatcher.

    Returns:
        ``(b * num_windows, heads, N, dv)`` in ``q``'s dtype.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("window_attention: q, k, v must be (b * num_windows, heads, N, d)")
    bw, heads, n_tok, _ = q.shape
    if k.shape[:3] != q.shape[:3] or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"window_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must share "
            "(windows, heads, N)"
        )
    bias = None
    if rel_bias is not None:
        if rel_bias.dim() != 3 or rel_bias.shape[0] not in (1, heads) or rel_bias.shape[1:] != (n_tok, n_tok):
            raise ValueError(
                f"window_attention: rel_bias must be ({heads}, {n_tok}, {n_tok}), got {tuple(rel_bias.shape)}"
            )
        bias = rel_bias.to(q.dtype)
    if mask is None:
        attn_mask = None if bias is None else bias.unsqueeze(0)  # (1, heads, N, N)
        return attention(q, k, v, attn_mask=attn_mask, scale=scale, dropout_p=dropout_p, impl=impl)
    if mask.dim() != 3 or mask.shape[1:] != (n_tok, n_tok):
        raise ValueError(
            f"window_attention: mask must be (num_windows, {n_tok}, {n_tok}), got {tuple(mask.shape)}"
        )
    num_windows = mask.shape[0]
    if bw % num_windows:
        raise ValueError(
            f"window_attention: {bw} windows is not a multiple of the mask's {num_windows} windows per map"
        )
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    combined = mask.to(q.dtype).unsqueeze(1)  # (nW, 1, N, N)
    if bias is not None:
        combined = combined + bias.unsqueeze(0)  # (nW, heads, N, N)
    combined = combined.expand(num_windows, heads, n_tok, n_tok).reshape(1, num_windows * heads, n_tok, n_tok)
    # Fold the windows of one map into the head axis so the mask broadcasts over the batch without a copy.
    b = bw // num_windows
    fold = (b, num_windows * heads, n_tok)
    out = attention(
        q.reshape(*fold, q.shape[-1]),
        k.reshape(*fold, k.shape[-1]),
        v.reshape(*fold, v.shape[-1]),
        attn_mask=combined,
        scale=scale,
        dropout_p=dropout_p,
        impl=impl,
    )
    return out.reshape(bw, heads, n_tok, v.shape[-1])
