"""Convolution blocks for 1-, 2- and 3-D inputs (MONAI-style ``spatial_dims`` factories).

Inputs are channels-first ``(b, c, *spatial)`` with ``len(spatial) == spatial_dims``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hybrids.shared_blocks.norms import ChannelLayerNorm

__all__ = [
    "ACTS",
    "NORMS",
    "BottleneckBlock",
    "ConvNormAct",
    "ResidualBlock",
    "conv_nd",
    "make_act",
    "make_norm",
]

NORMS = ("batch", "instance", "group", "layer")
ACTS = ("relu", "leakyrelu", "gelu", "silu")

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCH = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``1 | 2 | 3 -> nn.Conv1d | nn.Conv2d | nn.Conv3d`` (the class, not an instance)."""
    _check_spatial_dims(spatial_dims)
    return _CONV[spatial_dims]


def make_norm(norm: str | None, num_channels: int, spatial_dims: int, num_groups: int = 8) -> nn.Module:
    """Channels-first norm for ``(b, num_channels, *spatial)``.

    ``"batch"``: BatchNormNd; ``"instance"``: InstanceNormNd with affine parameters; ``"group"``:
    GroupNorm(``num_groups``) (Wu & He 2018; ``num_groups`` must divide the channels); ``"layer"``:
    LayerNorm over channels at each position (:class:`ChannelLayerNorm`); ``None``: identity.
    """
    _check_spatial_dims(spatial_dims)
    if norm is None:
        return nn.Identity()
    if norm == "batch":
        return _BATCH[spatial_dims](num_channels)
    if norm == "instance":
        return _INSTANCE[spatial_dims](num_channels, affine=True)
    if norm == "group":
        if num_groups <= 0 or num_channels % num_groups != 0:
            raise ValueError(f"group norm: num_groups ({num_groups}) must divide channels ({num_channels})")
        return nn.GroupNorm(num_groups, num_channels)
    if norm == "layer":
        return ChannelLayerNorm(num_channels)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS} or None")


def make_act(act: str | None) -> nn.Module:
    """``"relu" | "leakyrelu" (slope 0.01) | "gelu" | "silu" | None`` -> activation module."""
    if act is None:
        return nn.Identity()
    if act == "relu":
        return nn.ReLU()
    if act == "leakyrelu":
        return nn.LeakyReLU(0.01)
    if act == "gelu":
        return nn.GELU()
    if act == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown act {act!r}; expected one of {ACTS} or None")


def _tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != n:
        raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    return out


class ConvNormAct(nn.Sequential):
    """Conv -> norm -> activation -> dropout for ``(b, in_ch, *spatial) -> (b, out_ch, *spatial')``.

    Submodules ``conv``, ``norm``, ``act``, ``drop``. ``padding=None`` means ``dilation * (k - 1) // 2``
    per dim ("same" size for odd kernels at stride 1). ``bias=None`` puts a bias on the conv only when
    no norm follows. See :func:`make_norm` and :func:`make_act` for the choices.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        spatial_dims: int = 2,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | None = None,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        norm: str | None = "batch",
        act: str | None = "relu",
        bias: bool | None = None,
        dropout: float = 0.0,
        num_groups: int = 8,
    ) -> None:
        _check_spatial_dims(spatial_dims)
        if in_ch <= 0 or out_ch <= 0:
            raise ValueError(f"ConvNormAct: channels must be positive, got in_ch={in_ch}, out_ch={out_ch}")
        if groups <= 0 or in_ch % groups or out_ch % groups:
            raise ValueError(f"ConvNormAct: groups ({groups}) must divide in_ch ({in_ch}), out_ch ({out_ch})")
        kernel = _tuple(kernel_size, spatial_dims, "kernel_size")
        dil = _tuple(dilation, spatial_dims, "dilation")
        if padding is None:
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dil))
        pad = _tuple(padding, spatial_dims, "padding")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ConvNormAct: dropout must be in [0, 1), got {dropout}")
        norm_layer = make_norm(norm, out_ch, spatial_dims, num_groups)
        act_layer = make_act(act)
        super().__init__()
        self.conv = conv_nd(spatial_dims)(
            in_ch,
            out_ch,
            kernel,
            stride=_tuple(stride, spatial_dims, "stride"),
            padding=pad,
            dilation=dil,
            groups=groups,
            bias=(norm is None) if bias is None else bias,
        )
        self.norm = norm_layer
        self.act = act_layer
        self.drop = nn.Dropout(dropout)


class ResidualBlock(nn.Module):
    """ResNet basic block (He et al. 2016, Sec. 3.3 / Fig. 2) for 1/2/3-D.

    ``(b, in_ch, *s) -> (b, out_ch, *s / stride)``: ``act(norm(conv3(act(norm(conv3_s(x))))) + shortcut(x))``;
    the shortcut is a strided 1x1 conv + norm when the shape changes, identity otherwise.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        spatial_dims: int = 2,
        stride: int = 1,
        norm: str | None = "batch",
        act: str | None = "relu",
        num_groups: int = 8,
    ) -> None:
        super().__init__()
        common = {"spatial_dims": spatial_dims, "norm": norm, "num_groups": num_groups}
        self.conv1 = ConvNormAct(in_ch, out_ch, 3, stride=stride, act=act, **common)
        self.conv2 = ConvNormAct(out_ch, out_ch, 3, act=None, **common)
        self.shortcut = (
            ConvNormAct(in_ch, out_ch, 1, stride=stride, act=None, **common)
            if stride != 1 or in_ch != out_ch
            else nn.Identity()
        )
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """ResNet bottleneck block (He et al. 2016, Sec. 4.1; stride on the 3x3 conv as in ResNet v1.5).

    ``(b, in_ch, *s) -> (b, mid_ch * expansion, *s / stride)``: 1x1 reduce -> 3x3 (strided) -> 1x1
    expand, each with a norm, activations after the first two and after the residual sum; projection
    shortcut (strided 1x1 conv + norm) when the shape changes.
    """

    def __init__(
        self,
        in_ch: int,
        mid_ch: int,
        *,
        expansion: int = 4,
        spatial_dims: int = 2,
        stride: int = 1,
        norm: str | None = "batch",
        act: str | None = "relu",
        num_groups: int = 8,
    ) -> None:
        super().__init__()
        if expansion <= 0:
            raise ValueError(f"BottleneckBlock: expansion must be positive, got {expansion}")
        out_ch = mid_ch * expansion
        common = {"spatial_dims": spatial_dims, "norm": norm, "num_groups": num_groups}
        self.out_ch = out_ch
        self.conv1 = ConvNormAct(in_ch, mid_ch, 1, act=act, **common)
        self.conv2 = ConvNormAct(mid_ch, mid_ch, 3, stride=stride, act=act, **common)
        self.conv3 = ConvNormAct(mid_ch, out_ch, 1, act=None, **common)
        self.shortcut = (
            ConvNormAct(in_ch, out_ch, 1, stride=stride, act=None, **common)
            if stride != 1 or in_ch != out_ch
            else nn.Identity()
        )
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))
