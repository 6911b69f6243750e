"""The HybriDNA sequence classifier (echo embeddings + a linear head) and its token helpers.

    tokens (b, l) -> <bos> x x -> HybriDNA hidden states of the second copy of x -> pooled over the
    valid positions (mean, max or both) -> dropout -> linear -> logits (b, num_classes)

Registered as ``dna/hybridna_classifier`` (``hybrids.apps.dna.models``) with a
:class:`HybriDNAClassifierConfig`: the backbone's :class:`HybriDNAConfig`, the number of classes, the
pooling and ``rc_average``. ``hybrids dna finetune`` trains it (its ``OUT/best`` loads with
``create_model("dna/hybridna_classifier", weights=OUT/best)`` or ``load_checkpoint(OUT/best)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError
from hybrids.apps.dna.hybridna import HybriDNA, HybriDNAConfig
from hybrids.datasets.dna import BOS_ID, PAD_ID, reverse_complement

__all__ = [
    "POOLINGS",
    "HybriDNAClassifier",
    "HybriDNAClassifierConfig",
    "echo_embeddings",
    "echo_inputs",
    "reverse_complement_padded",
]

POOLINGS = ("mean", "max", "mean+max")


def reverse_complement_padded(tokens: Tensor) -> Tensor:
    """Reverse complement of each row's non-``<pad>`` prefix; ``(b, l) -> (b, l)``, padding stays right."""
    lengths = (tokens != PAD_ID).sum(1, keepdim=True)  # (b, 1)
    pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    src = (lengths - 1 - pos).clamp_min(0)
    flipped = tokens.gather(1, src)
    rc = reverse_complement(flipped).flip(-1)  # complement only: reverse_complement flips, undo it
    return torch.where(pos < lengths, rc, torch.full_like(tokens, PAD_ID))


def echo_inputs(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``tokens (b, l)`` right-padded -> ``(inputs, second)``: ``inputs (b, 1 + 2 l)`` is ``<bos> x x``
    per row, right-padded; ``second (b, l)`` indexes the second copy, ``second[i, j] = 1 + n_i + j``
    (``n_i``: row ``i``'s length; 0 where ``j >= n_i``)."""
    b, l = tokens.shape
    lengths = (tokens != PAD_ID).sum(1, keepdim=True)
    pos = torch.arange(l, device=tokens.device).expand(b, l)
    valid = pos < lengths
    out = torch.full((b, 1 + 2 * l), PAD_ID, dtype=tokens.dtype, device=tokens.device)
    out[:, 0] = BOS_ID
    first = torch.where(valid, 1 + pos, torch.zeros_like(pos))
    second = torch.where(valid, 1 + lengths + pos, torch.zeros_like(pos))
    out.scatter_(1, first, torch.where(valid, tokens, torch.full_like(tokens, BOS_ID)))
    out.scatter_(1, second, torch.where(valid, tokens, torch.full_like(tokens, BOS_ID)))
    out[:, 0] = BOS_ID
    return out, second


def echo_embeddings(backbone: nn.Module, tokens: Tensor) -> Tensor:
    """Per-token echo embeddings ``(b, l, d_model)`` of right-padded ``tokens (b, l)`` (padded rows
    positions hold garbage: mask them with ``tokens != <pad>``)."""
    inputs, second = echo_inputs(tokens)
    hidden = backbone.hidden_states(inputs)  # (b, 1 + 2l, d)
    return hidden.gather(1, second.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


@dataclass
class HybriDNAClassifierConfig(ModelConfig):
    """Shape of the echo-embedding classifier: the backbone's config and the head's.

    ``backbone`` accepts a :class:`HybriDNAConfig` or its ``to_dict()`` (as stored in ``config.json``);
    presets ``tiny`` and ``small`` take the HybriDNA presets of those names for the backbone.
    """

    backbone: HybriDNAConfig = field(default_factory=HybriDNAConfig)
    num_classes: int = 2
    pooling: str = "mean"
    rc_average: bool = False
    dropout: float = 0.1

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"backbone": dict(HybriDNAConfig.PRESETS["tiny"])},
        "small": {"backbone": dict(HybriDNAConfig.PRESETS["small"])},
    }

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = HybriDNAConfig.from_dict(self.backbone)

    def validate(self) -> None:
        name = type(self).__name__
        if not isinstance(self.backbone, HybriDNAConfig):
            raise InputError(f"{name}: backbone must be a HybriDNAConfig, got {type(self.backbone).__name__}")
        self.backbone.validate()
        if self.num_classes < 2:
            raise InputError(f"{name}: num_classes must be >= 2, got {self.num_classes}")
        if self.pooling not in POOLINGS:
            raise InputError(f"{name}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"{name}: dropout must be in [0, 1), got {self.dropout}")


class HybriDNAClassifier(nn.Module):
    """Echo-embedding classifier: ``forward(tokens (b, l)) -> logits (b, num_classes)``.

    ``tokens``: bases only (no ``<bos>``), right-padded with ``<pad>``. ``pooling`` over the second copy's
    valid positions: ``"mean"`` (the echo-embedding paper's and the default), ``"max"`` (per channel) or
    ``"mean+max"`` (both, concatenated: the head reads ``2 d_model`` features, as the CNN baseline).
    ``backbone`` is a :class:`HybriDNA` (e.g. a pretrained one, ``load_checkpoint(OUT/best)`` of
    ``hybrids dna pretrain``); ``HybriDNAClassifier.from_config`` builds a random one.
    """

    model_name = "dna/hybridna_classifier"  # the registered name (hybrids.apps.dna.models)

    def __init__(
        self,
        backbone: HybriDNA,
        num_classes: int,
        *,
        rc_average: bool = False,
        dropout: float = 0.1,
        pooling: str = "mean",
    ):
        super().__init__()
        self.config = HybriDNAClassifierConfig(
            backbone=backbone.config,
            num_classes=int(num_classes),
            pooling=pooling,
            rc_average=bool(rc_average),
            dropout=float(dropout),
        )
        self.config.validate()
        self.backbone = backbone
        self.num_classes = self.config.num_classes
        self.rc_average = self.config.rc_average
        self.pooling = pooling
        self.drop = nn.Dropout(dropout)
        width = backbone.config.d_model * (2 if pooling == "mean+max" else 1)
        self.head = nn.Linear(width, self.num_classes)

    @classmethod
    def from_config(cls, config: HybriDNAClassifierConfig) -> HybriDNAClassifier:
        """A randomly initialised classifier of that shape."""
        config.validate()
        return cls(
            HybriDNA(config.backbone),
            config.num_classes,
            rc_average=config.rc_average,
            dropout=config.dropout,
            pooling=config.pooling,
        )

    def pooled(self, tokens: Tensor) -> Tensor:
        """The second copy's hidden states pooled over the valid positions: ``(b, d_model)`` (mean or
        max) or ``(b, 2 d_model)`` (mean+max)."""
        h = echo_embeddings(self.backbone, tokens)
        valid = (tokens != PAD_ID).unsqueeze(-1)
        parts = []
        if self.pooling in ("mean", "mean+max"):
            mask = valid.to(h.dtype)
            parts.append((h * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        if self.pooling in ("max", "mean+max"):
            parts.append(h.masked_fill(~valid, float("-inf")).amax(1).clamp_min(torch.finfo(h.dtype).min))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def forward(self, tokens: Tensor) -> Tensor:
        logits = self.head(self.drop(self.pooled(tokens)))
        if self.rc_average:
            logits = 0.5 * (logits + self.head(self.drop(self.pooled(reverse_complement_padded(tokens)))))
        return logits
