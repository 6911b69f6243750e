"""The attention figure of a DINO run: the teacher's last-block CLS attention on held-out slices.

:func:`attention_figure` draws, for each slice, the image, each head's map and their mean: the last
block's CLS-token attention ``[:, :, 0, 1:]``, one map per head, reshaped to ``S/p x S/p`` and upsampled
by ``p`` (nearest), as DINO's ``visualize_attention.py``, which also shows models trained at 224 on
480x480 inputs: ``pretrain-dino`` feeds the figure's slices at ``figure_size`` (default twice the
training size; position embeddings interpolated), whose twice-as-fine patch grid resolves the anatomy
an 8x8 grid of a 64x64 slice cannot. :func:`held_out_slices` picks those slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hybrids.shared_blocks.vit import VisionTransformer

__all__ = ["attention_figure", "figure_slices", "held_out_slices"]


@torch.no_grad()
def attention_figure(
    backbone: VisionTransformer, slices: Tensor, path: Path, *, title: str = "", names: Sequence[str] = ()
) -> Path:
    """A PNG: one row per slice ``(n, C, S, S)``: the image, then each head's CLS attention map (last
    block, nearest-upsampled by the patch size), then the mean over heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbone = backbone.eval()
    maps = backbone.attention_maps(slices.float()).cpu().numpy()  # (n, heads, S, S)
    n, heads = maps.shape[:2]
    fig, axes = plt.subplots(n, heads + 2, figsize=(1.6 * (heads + 2), 1.6 * n + 0.4), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(slices[i, 0].cpu().numpy(), cmap="gray")
        axes[i, 0].set_ylabel(names[i] if i < len(names) else f"slice {i}", fontsize=7)
        for h in range(heads):
            axes[i, 1 + h].imshow(maps[i, h], cmap="inferno")
            if i == 0:
                axes[i, 1 + h].set_title(f"head {h}", fontsize=8)
        axes[i, heads + 1].imshow(maps[i].mean(axis=0), cmap="inferno")
        if i == 0:
            axes[i, 0].set_title("slice", fontsize=8)
            axes[i, heads + 1].set_title("mean", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from hybrids.datasets.atomic import atomic_write_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def figure_slices(counts: Sequence[int], per_case: int = 2, limit: int = 4) -> list[int]:
    """Indices of a few slices for the figure: ``per_case`` evenly spread over the middle half of each
    case's slices, at most ``limit`` in all."""
    out, start = [], 0
    for n in counts:
        if n:
            picks = np.linspace(start + n // 4, start + (3 * n) // 4, per_case + 2)[1:-1]
            out += sorted({int(round(i)) for i in picks})
        start += n
    return out[:limit]


def held_out_slices(
    cases: Sequence[tuple[str, tuple[Path, ...]]], prep: Any, *, slice_axis: int, size: int, mode: str
) -> tuple[Tensor, list[str]]:
    """A few slices of ``cases`` (:func:`figure_slices`) fitted to ``size``, and their names
    (``"<case> #<slice>"``); empty without cases."""
    from hybrids.apps.medical.dino_data import load_slices

    if not cases:
        return torch.zeros(0), []
    slices, counts = load_slices(cases, prep, slice_axis=slice_axis, size=size, mode=mode)
    picks = figure_slices(counts)
    owner = np.repeat(np.arange(len(counts)), counts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    names = [f"{cases[owner[i]][0]} #{i - offsets[owner[i]]}" for i in picks]
    return slices[picks], names
