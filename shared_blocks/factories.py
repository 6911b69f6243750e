"""Layer factories by ``spatial_dims`` and the argument helpers the blocks share.

As MONAI's ``Conv[Conv.CONV, n]`` / ``Norm[...]`` / ``Act[...]`` and timm's ``create_act_layer`` /
``get_norm_layer``, one place maps a name and a dimensionality to a layer:

- :func:`conv_layer` / :func:`pool_layer`: the ``nn`` class for 1-, 2- or 3-D channels-first inputs;
- :func:`norm_layer`: a norm instance, channels-first ``(b, c, *spatial)`` when ``spatial_dims`` is given
  (batch, instance, group, layer), channels-last tokens ``(..., c)`` when it is ``None`` (layer, rms);
- :func:`act_layer`: an activation instance;
- :func:`check_spatial_dims` and :func:`as_tuple`: the argument checks every block uses.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from hybrids.shared_blocks.norms import ChannelLayerNorm, RMSNorm

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "POOLS",
    "SPATIAL_DIMS",
    "act_layer",
    "as_tuple",
    "check_spatial_dims",
    "conv_layer",
    "norm_layer",
    "pool_layer",
]

SPATIAL_DIMS = (1, 2, 3)
ACTIVATIONS = ("relu", "leakyrelu", "gelu", "silu")
NORMS = ("batch", "instance", "group", "layer", "rms")
POOLS = ("max", "avg", "adaptive_max", "adaptive_avg")
# Spellings used by the transformer layers' ``norm=`` argument.
_NORM_ALIASES = {"layernorm": "layer", "rmsnorm": "rms"}

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_POOL = {
    "max": {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d},
    "avg": {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d},
    "adaptive_max": {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d},
    "adaptive_avg": {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d},
}
_BATCH = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def check_spatial_dims(spatial_dims: int, allowed: Sequence[int] = SPATIAL_DIMS) -> int:
    """Return ``spatial_dims`` if it is one of ``allowed`` (default 1, 2, 3); raise ValueError otherwise."""
    if isinstance(spatial_dims, bool) or spatial_dims not in allowed:
        names = [str(n) for n in allowed]
        choices = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise ValueError(f"spatial_dims must be {choices}, got {spatial_dims!r}")
    return spatial_dims


def as_tuple(value: int | Sequence[int], n: int, name: str, *, minimum: int | None = None) -> tuple[int, ...]:
    """An int repeated ``n`` times, or a sequence of ``n`` ints, as a tuple (kernel sizes, strides,
    windows...); every entry must be ``>= minimum`` when it is given. Raises ValueError naming ``name``."""
    values = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != n or (minimum is not None and any(v < minimum for v in values)):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an int or a sequence of {n} ints{bound}, got {value!r}")
    return values


def conv_layer(spatial_dims: int, *, transposed: bool = False) -> type[nn.Module]:
    """``1 | 2 | 3 -> nn.Conv1d | nn.Conv2d | nn.Conv3d``, the class (``nn.ConvTranspose{n}d`` if
    ``transposed``)."""
    check_spatial_dims(spatial_dims)
    return (_CONV_TRANSPOSE if transposed else _CONV)[spatial_dims]


def pool_layer(name: str, spatial_dims: int) -> type[nn.Module]:
    """``"max" | "avg" | "adaptive_max" | "adaptive_avg"`` and ``1 | 2 | 3`` -> the pooling class."""
    check_spatial_dims(spatial_dims)
    if name not in _POOL:
        raise ValueError(f"unknown pool {name!r}; expected one of {POOLS}")
    return _POOL[name][spatial_dims]


def act_layer(name: str | None) -> nn.Module:
    """A fresh activation: ``"relu" | "leakyrelu"`` (slope 0.01) ``| "gelu"`` (exact, erf-based)
    ``| "silu"``; ``None`` -> identity."""
    if name is None:
        return nn.Identity()
    if name == "relu":
        return nn.ReLU()
    if name == "leakyrelu":
        return nn.LeakyReLU(0.01)
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS} or None")


def norm_layer(
    name: str | None,
    channels: int,
    spatial_dims: int | None = None,
    *,
    eps: float | None = None,
    num_groups: int = 8,
) -> nn.Module:
    """A norm over ``channels`` features; ``None`` -> identity. ``eps=None`` keeps each layer's default.

    Channels-first ``(b, channels, *spatial)`` with ``spatial_dims`` 1, 2 or 3:

    - ``"batch"``: ``BatchNorm{n}d``; ``"instance"``: ``InstanceNorm{n}d`` with affine parameters;
    - ``"group"``: ``GroupNorm(num_groups)`` (Wu & He 2018; ``num_groups`` must divide ``channels``);
    - ``"layer"``: LayerNorm over the channels at each position (:class:`ChannelLayerNorm`).

    Channels-last tokens ``(..., channels)`` with ``spatial_dims=None``:

    - ``"layer"`` (alias ``"layernorm"``): ``nn.LayerNorm``;
    - ``"rms"`` (alias ``"rmsnorm"``): :class:`~hybrids.shared_blocks.norms.RMSNorm`.
    """
    if name is None:
        return nn.Identity()
    kind = _NORM_ALIASES.get(name, name)
    if kind not in NORMS:
        raise ValueError(f"unknown norm {name!r}; expected one of {NORMS} or None")
    if channels <= 0:
        raise ValueError(f"norm {name!r}: channels must be positive, got {channels}")
    kw = {} if eps is None else {"eps": eps}
    if spatial_dims is None:
        if kind == "layer":
            return nn.LayerNorm(channels, **kw)
        if kind == "rms":
            return RMSNorm(channels, **kw)
        raise ValueError(f"norm {name!r} needs channels-first features: give spatial_dims (1, 2 or 3)")
    check_spatial_dims(spatial_dims)
    if kind == "batch":
        return _BATCH[spatial_dims](channels, **kw)
    if kind == "instance":
        return _INSTANCE[spatial_dims](channels, affine=True, **kw)
    if kind == "group":
        if num_groups <= 0 or channels % num_groups != 0:
            raise ValueError(f"group norm: num_groups ({num_groups}) must divide channels ({channels})")
        return nn.GroupNorm(num_groups, channels, **kw)
    if kind == "layer":
        return ChannelLayerNorm(channels, **kw)
    raise ValueError(f"norm {name!r} is for channels-last tokens (spatial_dims=None), not channels-first")
