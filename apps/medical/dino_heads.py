"""DINO's networks (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"),
with the official code's names, so its full checkpoints map onto ours key for key.

- :class:`DINOHead`: 3-layer MLP (``mlp.0``, ``mlp.2``, ``mlp.4``; GELU) to a 256-d bottleneck, L2
  normalisation, then a weight-normalised linear layer ``last_layer`` stored as ``last_layer.weight_g``
  ``(K, 1)`` and ``last_layer.weight_v`` ``(K, 256)`` -- the names ``torch.nn.utils.weight_norm`` gives and
  the official checkpoints hold (torch's newer parametrization would name them
  ``last_layer.parametrizations.weight.original0/1``). ``weight_g`` is fixed to 1 (``norm_last_layer``).
  ``use_bn=True`` is DINO's ``--use_bn_in_head`` (BatchNorm after each hidden linear: ``mlp.0``, ``mlp.1``
  (BN), ``mlp.3``, ``mlp.4`` (BN), ``mlp.6``). ``hybrids medical pretrain-dino`` turns it on by default:
  on small data and short runs the BN-free ViT head collapses to a uniform teacher (the loss sits at
  ``log K``; the official code does the same in our tests), while BN spreads the teacher's outputs.
- :class:`MultiCropWrapper` (``backbone``, ``head``): runs the backbone once per crop resolution.

The backbone is :class:`hybrids.shared_blocks.vit.VisionTransformer` (registered as ``medical/dino_vit``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hybrids.shared_blocks.vit import VisionTransformer

__all__ = ["DINOHead", "MultiCropWrapper", "WeightNormLinear"]


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation (Salimans & Kingma 2016): ``W = g * v / ||v||``
    per output row. ``(..., in) -> (..., out)``; parameters ``weight_g (out, 1)``, ``weight_v (out, in)``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(self.weight_v.detach().norm(dim=1, keepdim=True))

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINO's projection head: ``(b, in_dim) -> (b, out_dim)`` logits (see the module docstring)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1 or out_dim < 1:
            raise ValueError(f"DINOHead: nlayers and out_dim must be >= 1, got {nlayers}, {out_dim}")
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:

            def hidden(n_in: int) -> list[nn.Module]:
                norm = [nn.BatchNorm1d(hidden_dim)] if use_bn else []
                return [nn.Linear(n_in, hidden_dim), *norm, nn.GELU()]

            layers: list[nn.Module] = hidden(in_dim)
            for _ in range(nlayers - 2):
                layers += hidden(hidden_dim)
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        with torch.no_grad():
            self.last_layer.weight_g.fill_(1.0)
        self.last_layer.weight_g.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class MultiCropWrapper(nn.Module):
    """``backbone`` + ``head`` over a list of crops: the backbone runs once per run of equal-size
    crops (``[(b, C, S, S)] * 2 + [(b, C, L, L)] * n -> (b * (2 + n), out_dim)``, crop-major)."""

    def __init__(self, backbone: VisionTransformer, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: Sequence[Tensor] | Tensor) -> Tensor:
        if isinstance(crops, Tensor):
            crops = [crops]
        features, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features.append(self.backbone(torch.cat(list(crops[start:end]))))
            start = end
        return self.head(torch.cat(features))
