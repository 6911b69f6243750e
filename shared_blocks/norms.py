"""Normalisation layers: RMSNorm, Mamba2's gated (grouped) RMSNorm, channels-first LayerNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ChannelLayerNorm", "GatedRMSNorm", "RMSNorm"]


def _rms_normalise(x: Tensor, eps: float, group_size: int | None = None) -> Tensor:
    """Divide ``x`` by the root mean square of its last dim (or of each group of ``group_size``)."""
    if group_size is None or group_size == x.shape[-1]:
        return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)
    grouped = x.unflatten(-1, (x.shape[-1] // group_size, group_size))
    grouped = grouped * torch.rsqrt(grouped.square().mean(dim=-1, keepdim=True) + eps)
    return grouped.flatten(-2)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): ``x / rms(x) * weight`` over the last dim.

    Input ``(..., dim)`` -> output of the same shape and dtype. The statistic is computed in
    float32 (float64 stays float64) and the result cast back to the input dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"RMSNorm: dim must be positive, got {dim}")
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm: expected last dim {self.dim}, got shape {tuple(x.shape)}")
        dtype = x.dtype
        compute = torch.promote_types(dtype, torch.float32)
        out = _rms_normalise(x.to(compute), self.eps)
        if self.weight is not None:
            out = out * self.weight.to(compute)
        return out.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class GatedRMSNorm(nn.Module):
    """Mamba2's gated RMSNorm (Dao & Gu 2024, "Transformers are SSMs", Sec. 7; ``RMSNormGated``).

    ``forward(x, z=None)`` with ``x, z: (..., dim)`` -> ``(..., dim)``:

    - ``norm_before_gate=False`` (Mamba2's default use): ``rmsnorm(x * silu(z)) * weight``;
    - ``norm_before_gate=True``: ``rmsnorm(x) * weight * silu(z)``;
    - without ``z`` it is a plain RMSNorm.

    The RMS statistic is taken over groups of ``group_size`` consecutive channels (``None`` = the
    whole dim; Mamba2 uses ``d_inner // ngroups`` so that tensor-parallel shards agree). Computed
    in float32 and cast back to the input dtype.
    """

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        group_size: int | None = None,
        norm_before_gate: bool = False,
    ) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"GatedRMSNorm: dim must be positive, got {dim}")
        if group_size is not None and (group_size <= 0 or dim % group_size != 0):
            raise ValueError(f"GatedRMSNorm: group_size {group_size} must be positive and divide dim {dim}")
        self.dim = dim
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"GatedRMSNorm: expected last dim {self.dim}, got shape {tuple(x.shape)}")
        if z is not None and z.shape != x.shape:
            raise ValueError(f"GatedRMSNorm: gate shape {tuple(z.shape)} != input shape {tuple(x.shape)}")
        dtype = x.dtype
        compute = torch.promote_types(dtype, torch.float32)
        x = x.to(compute)
        gate = F.silu(z.to(compute)) if z is not None else None
        if gate is not None and not self.norm_before_gate:
            x = x * gate
        out = _rms_normalise(x, self.eps, self.group_size) * self.weight.to(compute)
        if gate is not None and self.norm_before_gate:
            out = out * gate
        return out.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, eps={self.eps}, group_size={self.group_size}, "
            f"norm_before_gate={self.norm_before_gate}"
        )


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dim of channels-first conv features (as ConvNeXt's ``channels_first``).

    Input ``(b, c, *spatial)`` with any number of spatial dims (0 to 3 typically) -> same shape.
    Normalises each position over ``c`` with learnable per-channel ``weight``/``bias`` of shape ``(c,)``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, elementwise_affine: bool = True) -> None:
        super().__init__()
        if num_channels <= 0:
            raise ValueError(f"ChannelLayerNorm: num_channels must be positive, got {num_channels}")
        self.num_channels = num_channels
        self.eps = eps
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"ChannelLayerNorm: expected (b, {self.num_channels}, *spatial), got {tuple(x.shape)}"
            )
        # Move channels last, use the fused layer_norm, move them back.
        y = F.layer_norm(x.movedim(1, -1), (self.num_channels,), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, elementwise_affine={self.weight is not None}"
