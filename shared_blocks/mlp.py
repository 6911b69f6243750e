"""Feed-forward blocks: the two-layer MLP of transformers and the SwiGLU gated variant."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from hybrids.shared_blocks.factories import act_layer

__all__ = ["Mlp", "SwiGLU"]


class Mlp(nn.Module):
    """Position-wise feed-forward network (Vaswani et al. 2017, Sec. 3.3), timm's ``fc1``/``fc2`` naming.

    ``(..., dim) -> (..., out_dim)``: ``drop(fc2(drop(act(fc1(x)))))``; ``hidden_dim`` defaults to
    ``4 * dim`` and ``out_dim`` to ``dim``; ``activation`` is a name of
    :func:`~hybrids.shared_blocks.factories.act_layer` (exact GELU by default).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        out_dim: int | None = None,
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        hidden_dim = 4 * dim if hidden_dim is None else hidden_dim
        out_dim = dim if out_dim is None else out_dim
        if min(dim, hidden_dim, out_dim) <= 0:
            raise ValueError(f"Mlp: dims must be positive, got dim={dim}, hidden={hidden_dim}, out={out_dim}")
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = act_layer(activation)
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer"; LLaMA's naming).

    ``(..., dim) -> (..., dim)``: ``w2(silu(w1 x) * w3 x)`` with ``w1, w3: dim -> hidden_dim`` and
    ``w2: hidden_dim -> dim``.
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"SwiGLU: dims must be positive, got dim={dim}, hidden_dim={hidden_dim}")
        self.w1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.w2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.w3 = nn.Linear(dim, hidden_dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))
