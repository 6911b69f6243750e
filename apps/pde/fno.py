"""FNO and TFNO from ``neuraloperator`` (Li et al. 2021; Kossaifi et al., the Tucker-factorised TFNO) as
the peer of FactFormer: the library's own ``neuralop.models.FNO`` inside a thin wrapper that gives it this
app's interface (vorticity frames in, the next frame out, normalisation stored with the config).

``neuraloperator`` is a development dependency (it pulls in wandb and friends): install it with
``pip install neuraloperator`` to build these models; nothing else in the app needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError

__all__ = ["FNOConfig", "FNOSurrogate"]


@dataclass
class FNOConfig(ModelConfig):
    """``neuralop.models.FNO(n_modes=(modes,) * spatial_dims, in_channels=in_frames * fields,
    out_channels=fields, hidden_channels=width, n_layers=layers, factorization=..., rank=...)`` with the
    library's defaults otherwise (grid positional embedding, lifting/projection ratio 2, channel MLPs,
    linear skips). ``factorization="tucker"`` with ``rank`` is TFNO."""

    spatial_dims: int = 2
    in_frames: int = 10
    fields: int = 1
    modes: int = 16
    width: int = 64
    layers: int = 4
    factorization: str | None = None
    rank: float = 1.0
    grid: int = 64
    norm_mean: float = 0.0
    norm_std: float = 1.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # parameter-matched to factformer 'small' (136,529): FNO 140,101, TFNO 136,449
        "small": {"modes": 12, "width": 20},
        "tiny": {"modes": 4, "width": 8, "layers": 2, "grid": 16},
        "tfno_small": {"modes": 16, "width": 32, "factorization": "tucker", "rank": 0.2},
        "tfno_tiny": {
            "modes": 4,
            "width": 8,
            "layers": 2,
            "grid": 16,
            "factorization": "tucker",
            "rank": 0.5,
        },
        "fno3d_small": {"spatial_dims": 3, "modes": 8, "width": 32, "grid": 32},
    }

    def validate(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise InputError(f"FNOConfig: spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if min(self.in_frames, self.fields, self.modes, self.width, self.layers) < 1 or not self.norm_std > 0:
            raise InputError("FNOConfig: sizes must be >= 1 and norm_std > 0")
        if self.factorization not in (None, "tucker", "cp", "tt", "dense"):
            raise InputError(f"FNOConfig: unknown factorization {self.factorization!r}")


class FNOSurrogate(nn.Module):
    """``forward(frames (b, in_frames, [fields,] *grid), steps=1) -> (b, 1, [fields,] *grid)``."""

    def __init__(self, config: FNOConfig) -> None:
        super().__init__()
        try:
            from neuralop.models import FNO
        except ImportError:
            raise InputError("FNO/TFNO need the neuraloperator package: pip install neuraloperator") from None
        self.config = config
        self.spatial_dims = config.spatial_dims
        self.in_frames = config.in_frames
        self.max_steps = 1
        self.fno = FNO(
            n_modes=(config.modes,) * config.spatial_dims,
            in_channels=config.in_frames * config.fields,
            out_channels=config.fields,
            hidden_channels=config.width,
            n_layers=config.layers,
            factorization=config.factorization,
            rank=config.rank,
        )

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Tensors only: neuraloperator's models add their constructor arguments as ``_metadata`` (a
        dict) to every state dict; the config here already records them."""
        state = super().state_dict(*args, **kwargs)
        state.pop("_metadata", None)
        return state

    def forward(self, frames: Tensor, steps: int = 1) -> Tensor:
        c = self.config
        if steps != 1:
            raise ValueError(f"FNOSurrogate: predicts one frame per call, got steps={steps}")
        x = (frames - c.norm_mean) / c.norm_std
        if c.fields == 1 and x.dim() == self.spatial_dims + 2:
            x = x.unsqueeze(2)
        if x.dim() != self.spatial_dims + 3 or x.shape[1] != c.in_frames or x.shape[2] != c.fields:
            raise ValueError(
                f"FNOSurrogate: frames must be (b, {c.in_frames}, [{c.fields},] *grid), "
                f"got {tuple(frames.shape)}"
            )
        b, t, f, *grid = x.shape
        y = self.fno(x.reshape(b, t * f, *grid))  # (b, fields, *grid)
        y = y.unsqueeze(1) * c.norm_std + c.norm_mean
        return y[:, :, 0] if c.fields == 1 else y
