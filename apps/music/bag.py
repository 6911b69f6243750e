"""A bag of HT Demucs models mixed per source (demucs ``BagOfModels``), e.g. ``htdemucs_ft``.

``htdemucs_ft`` (Rouard et al. 2023, results section, "per source fine-tuning") is four HT Demucs models,
each fine-tuned for one source; the bag's weight matrix is the identity, so source ``s`` of the
output comes from model ``s`` alone. In general, with weights ``w[k][s]``::

    out[:, s] = sum_k w[k][s] * model_k(mix)[:, s] / sum_k w[k][s]

Parameter names are demucs's (``models.<k>.<HTDemucs parameter>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from hybrids.apps.core.errors import InputError
from hybrids.apps.music.htdemucs import HTDemucs, HTDemucsConfig

__all__ = ["BagOfModels", "HTDemucsBagConfig", "identity_weights"]


def identity_weights(n: int) -> tuple[tuple[float, ...], ...]:
    """``n x n`` identity: model ``k`` is the only contributor to source ``k``."""
    return tuple(tuple(1.0 if i == k else 0.0 for i in range(n)) for k in range(n))


@dataclass
class HTDemucsBagConfig(HTDemucsConfig):
    """The config of each member model plus the bag: ``num_models`` and ``bag_weights``
    (``num_models`` rows of one weight per source; ``None`` = all ones, an average).

    Defaults are ``htdemucs_ft``: four released-size HT Demucs with identity weights.
    """

    num_models: int = 4
    bag_weights: tuple[tuple[float, ...], ...] | None = identity_weights(4)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "htdemucs_ft": {},
        "tiny": {**HTDemucsConfig.PRESETS["tiny"], "num_models": 2, "bag_weights": None},
    }

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if self.num_models < 1:
            raise InputError(f"{name}: num_models must be >= 1, got {self.num_models}")
        if self.bag_weights is not None:
            rows = self.bag_weights
            if len(rows) != self.num_models or any(len(row) != len(self.sources) for row in rows):
                raise InputError(
                    f"{name}: bag_weights must be {self.num_models} rows of {len(self.sources)} weights"
                )
            if any(sum(column) == 0 for column in zip(*rows)):
                raise InputError(f"{name}: every source needs a non-zero total weight in bag_weights")

    def member_config(self) -> HTDemucsConfig:
        """The config of one member model."""
        data = self.to_dict()
        del data["num_models"], data["bag_weights"]
        return HTDemucsConfig.from_dict(data)


class BagOfModels(nn.Module):
    """Per-source weighted average of HT Demucs models: ``(b, c, t) -> (b, sources, c, t)``."""

    def __init__(self, config: HTDemucsBagConfig) -> None:
        super().__init__()
        self.config = config
        member = config.member_config()
        self.models = nn.ModuleList(HTDemucs(member) for _ in range(config.num_models))
        n_sources = len(member.sources)
        weights = config.bag_weights or tuple((1.0,) * n_sources for _ in range(config.num_models))
        self.weights = [list(row) for row in weights]
        self.totals = [sum(column) for column in zip(*weights)]
        self.sources = list(member.sources)
        self.samplerate = member.samplerate
        self.audio_channels = member.audio_channels
        # No bag-level ``segment`` (as in demucs, where setting one overrides the members').

    @property
    def max_allowed_segment(self) -> float:
        """The longest segment (seconds) every member accepts."""
        return float(min(model.segment for model in self.models))

    def forward(self, mix: Tensor) -> Tensor:
        total: Tensor | None = None
        for model, row in zip(self.models, self.weights):
            out = model(mix)
            out = out * out.new_tensor(row)[None, :, None, None]
            total = out if total is None else total + out
        assert total is not None
        return total / total.new_tensor(self.totals)[None, :, None, None]
