"""Feature-wise linear modulation (FiLM; Perez et al. 2018, "FiLM: Visual Reasoning with a General
Conditioning Layer", Sec. 2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FiLM"]


class FiLM(nn.Module):
    """``out = gamma(cond) * x + beta(cond)`` with ``gamma, beta`` from one linear layer ``proj``.

    ``forward(x, cond)``: ``x`` has ``num_channels`` at ``channel_dim`` (default 1, channels-first
    ``(b, c, *spatial)``; use ``-1`` for tokens ``(b, l, c)``), ``cond`` is ``(b, cond_dim)``. gamma and
    beta are broadcast over every other dim of ``x``. ``proj`` starts with zero weight and bias
    ``[1, ..., 1, 0, ..., 0]`` so that the layer is the identity at initialisation.
    """

    def __init__(self, cond_dim: int, num_channels: int, *, channel_dim: int = 1) -> None:
        super().__init__()
        if cond_dim <= 0 or num_channels <= 0:
            raise ValueError(f"FiLM: dims must be positive, got {cond_dim=}, {num_channels=}")
        if channel_dim == 0:
            raise ValueError("FiLM: channel_dim cannot be the batch dim 0")
        self.cond_dim = cond_dim
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.proj = nn.Linear(cond_dim, 2 * num_channels)
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.bias.copy_(torch.cat((torch.ones(num_channels), torch.zeros(num_channels))))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if cond.dim() != 2 or cond.shape != (x.shape[0], self.cond_dim):
            raise ValueError(f"FiLM: expected cond ({x.shape[0]}, {self.cond_dim}), got {tuple(cond.shape)}")
        channel_dim = self.channel_dim % x.dim() if -x.dim() <= self.channel_dim < x.dim() else None
        if channel_dim is None or channel_dim == 0 or x.shape[channel_dim] != self.num_channels:
            raise ValueError(
                f"FiLM: expected {self.num_channels} channels at dim {self.channel_dim} of x, "
                f"got shape {tuple(x.shape)}"
            )
        gamma, beta = self.proj(cond).chunk(2, dim=-1)  # (b, c) each
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        shape[channel_dim] = self.num_channels
        return gamma.reshape(shape) * x + beta.reshape(shape)

    def extra_repr(self) -> str:
        return f"cond_dim={self.cond_dim}, num_channels={self.num_channels}, channel_dim={self.channel_dim}"
