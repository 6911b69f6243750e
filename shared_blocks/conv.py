"""Convolution blocks for 1-, 2- and 3-D inputs, built with :mod:`hybrids.shared_blocks.factories`.

Inputs are channels-first ``(b, c, *spatial)`` with ``len(spatial) == spatial_dims``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hybrids.shared_blocks.factories import act_layer, as_tuple, check_spatial_dims, conv_layer, norm_layer

__all__ = ["BottleneckBlock", "ConvNormAct", "ResidualBlock"]


class ConvNormAct(nn.Sequential):
    """Conv -> norm -> activation -> dropout for ``(b, in_ch, *spatial) -> (b, out_ch, *spatial')``.

    Submodules ``conv``, ``norm``, ``act``, ``drop``. ``padding=None`` means ``dilation * (k - 1) // 2``
    per dim ("same" size for odd kernels at stride 1). ``bias=None`` puts a bias on the conv only when
    no norm follows. ``norm`` and ``act`` are names of :func:`~hybrids.shared_blocks.factories.norm_layer`
    (channels-first: ``"batch"``, ``"instance"``, ``"group"``, ``"layer"``) and
    :func:`~hybrids.shared_blocks.factories.act_layer` (``"relu"``, ``"leakyrelu"``, ``"gelu"``, ``"silu"``).
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
        check_spatial_dims(spatial_dims)
        if in_ch <= 0 or out_ch <= 0:
            raise ValueError(f"ConvNormAct: channels must be positive, got in_ch={in_ch}, out_ch={out_ch}")
        if groups <= 0 or in_ch % groups or out_ch % groups:
            raise ValueError(f"ConvNormAct: groups ({groups}) must divide in_ch ({in_ch}), out_ch ({out_ch})")
        kernel = as_tuple(kernel_size, spatial_dims, "kernel_size")
        dil = as_tuple(dilation, spatial_dims, "dilation")
        if padding is None:
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dil))
        pad = as_tuple(padding, spatial_dims, "padding")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ConvNormAct: dropout must be in [0, 1), got {dropout}")
        norm_module = norm_layer(norm, out_ch, spatial_dims, num_groups=num_groups)
        act_module = act_layer(act)
        super().__init__()
        self.conv = conv_layer(spatial_dims)(
            in_ch,
            out_ch,
            kernel,
            stride=as_tuple(stride, spatial_dims, "stride"),
            padding=pad,
            dilation=dil,
            groups=groups,
            bias=(norm is None) if bias is None else bias,
        )
        self.norm = norm_module
        self.act = act_module
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
        self.act = act_layer(act)

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
        self.act = act_layer(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))
