"""A bag of HT Demucs models mixed per source (demucs ``BagOfModels``), e.g. ``htdemucs_ft``.

``htdemucs_ft`` (Rouard et al. 2023, results section, "per source fine-tuning") is four HT Demucs models,
each fine-tuned for one source; the bag's weight matrix is the identity, so source ``s`` of the
output comes from model ``s`` alone. In general, with weights ``w[k][s]``::

    out[:, s] = sum_k w[k][s] * model_k(mix)[:, s] / sum_k w[k][s]

Parameter names are demucs's (``models.<k>.<HTDemucs parameter>``).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """Per-source weighted average of models: ``(b, c, t) -> (b, sources, c, t)`` (demucs's
    ``BagOfModels``; the one bag class here).

    ``BagOfModels(config)`` is the registry's bag of HT Demucs models (``music/htdemucs_ft``), built
    from an :class:`HTDemucsBagConfig` and loaded from a state dict. ``BagOfModels.from_models(models,
    weights, segment)`` bags any separation models (demucs's ``BagOfModels(models, weights, segment)``),
    e.g. models loaded elsewhere. ``apply_model`` runs a bag member by member (each chunked at its own
    segment, or at the bag's ``segment`` when set); calling the bag runs each member on the whole input.
    """

    segment: float | None = None  # overrides each member's segment in apply_model when set

    @classmethod
    def from_models(
        cls,
        models: Sequence[nn.Module],
        weights: Sequence[Sequence[float]] | None = None,
        segment: float | None = None,
    ) -> BagOfModels:
        """A bag of any separation models sharing ``sources``, ``samplerate`` and ``audio_channels``;
        ``weights[m][k]`` weighs model ``m``'s estimate of source ``k`` (default: all ones)."""
        from hybrids.apps.music.engine import model_info

        if not models:
            raise ValueError("a bag needs at least one model")
        first = model_info(models[0])
        for other in models[1:]:
            info = model_info(other)
            if (info.sources, info.samplerate, info.audio_channels) != (
                first.sources,
                first.samplerate,
                first.audio_channels,
            ):
                raise ValueError("all models of a bag must share sources, samplerate and audio_channels")
        rows = [[1.0] * len(first.sources) for _ in models] if weights is None else weights
        rows = [list(map(float, row)) for row in rows]
        if len(rows) != len(models) or any(len(row) != len(first.sources) for row in rows):
            raise ValueError(f"weights must be {len(models)} lists of {len(first.sources)} numbers")
        bag = cls.__new__(cls)
        nn.Module.__init__(bag)
        bag.config = None
        bag.models = nn.ModuleList(models)
        bag._set_weights(rows, first.sources, first.samplerate, first.audio_channels)
        bag.segment = segment
        return bag

    def _set_weights(
        self, rows: Sequence[Sequence[float]], sources: Sequence[str], samplerate: int, audio_channels: int
    ) -> None:
        self.weights = [list(row) for row in rows]
        self.totals = [sum(column) for column in zip(*self.weights)]
        self.sources = list(sources)
        self.samplerate = samplerate
        self.audio_channels = audio_channels

    def __init__(self, config: HTDemucsBagConfig) -> None:
        super().__init__()
        self.config = config
        member = config.member_config()
        self.models = nn.ModuleList(HTDemucs(member) for _ in range(config.num_models))
        n_sources = len(member.sources)
        weights = config.bag_weights or tuple((1.0,) * n_sources for _ in range(config.num_models))
        self._set_weights(weights, member.sources, member.samplerate, member.audio_channels)
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
