"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth"), timm's ``DropPath``."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["DropPath", "drop_path", "drop_path_or_identity"]


def drop_path(
    x: Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True
) -> Tensor:
    """Zero whole samples of a residual branch with probability ``drop_prob``.

    ``x (b, ...) -> (b, ...)``; survivors are divided by ``1 - drop_prob`` when ``scale_by_keep`` (timm's
    ``drop_path``). Identity when not training or ``drop_prob == 0``.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    if scale_by_keep and keep > 0.0:
        mask = mask / keep
    return x * mask


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (timm's ``DropPath``): ``(b, ...) -> (b, ...)``."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath: drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_or_identity(drop_prob: float) -> nn.Module:
    """:class:`DropPath` for ``drop_prob > 0``, else ``nn.Identity`` (the residual blocks' usual choice)."""
    return DropPath(drop_prob) if drop_prob > 0.0 else nn.Identity()
