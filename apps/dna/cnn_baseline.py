"""A small CNN sequence classifier: the baseline HybriDNA's fine-tuning is compared with on GUE tasks.

    tokens (b, l) -> embedding (b, l, embed_dim) -> stem conv (kernel 9) -> residual dilated conv
    blocks (BatchNorm, GELU, dropout) -> masked mean + max pooling over positions -> linear -> (b, classes)

Token ids are :class:`hybrids.datasets.dna.DNATokenizer`'s; ``<pad>`` (0) positions are masked out of
the pooling (and zeroed before every convolution), so right padding does not change a sequence's
logits. ``rc_average``: logits averaged over the sequence and its reverse complement. Trained by
``hybrids dna finetune --model cnn`` exactly as HybriDNA is (same data, optimiser, dev selection);
registered as ``dna/cnn_classifier``, so ``create_model("dna/cnn_classifier", weights=OUT/best)`` loads
a trained one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError
from hybrids.datasets.dna import PAD_ID

__all__ = ["CNNClassifier", "CNNConfig"]


@dataclass
class CNNConfig(ModelConfig):
    """Shape of the CNN baseline (~0.2 M parameters by default)."""

    vocab_size: int = 16
    num_classes: int = 2
    embed_dim: int = 32
    channels: int = 96
    kernel_size: int = 9
    dilations: tuple[int, ...] = (1, 2, 4)
    dropout: float = 0.2
    rc_average: bool = False

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"embed_dim": 8, "channels": 16, "dilations": (1,)},
    }

    def validate(self) -> None:
        for key in ("vocab_size", "num_classes", "embed_dim", "channels", "kernel_size"):
            if getattr(self, key) <= 0:
                raise InputError(f"CNNConfig: {key} must be positive, got {getattr(self, key)}")
        if self.num_classes < 2:
            raise InputError(f"CNNConfig: num_classes must be >= 2, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"CNNConfig: dropout must be in [0, 1), got {self.dropout}")


class _ResidualConv(nn.Module):
    """``x + dropout(gelu(bn(conv(x))))`` over ``(b, c, l)``, padded positions re-zeroed."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=pad, dilation=dilation)
        self.norm = nn.BatchNorm1d(channels)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return (x + self.drop(self.act(self.norm(self.conv(x))))) * mask


class CNNClassifier(nn.Module):
    """``forward(tokens (b, l) int64) -> logits (b, num_classes)``; ``<pad>`` positions ignored."""

    model_name = "dna/cnn_classifier"  # the registered name (hybrids.apps.dna.models)

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        config.validate()
        c = self.config = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=PAD_ID)
        self.stem = nn.Conv1d(c.embed_dim, c.channels, c.kernel_size, padding=(c.kernel_size - 1) // 2)
        self.stem_norm = nn.BatchNorm1d(c.channels)
        self.blocks = nn.ModuleList(
            _ResidualConv(c.channels, c.kernel_size, d, c.dropout) for d in c.dilations
        )
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(2 * c.channels, c.num_classes)

    def _logits(self, tokens: Tensor) -> Tensor:
        mask = (tokens != PAD_ID).unsqueeze(1).float()  # (b, 1, l)
        x = self.embedding(tokens).transpose(1, 2) * mask  # (b, e, l)
        x = torch.nn.functional.gelu(self.stem_norm(self.stem(x))) * mask
        for block in self.blocks:
            x = block(x, mask)
        n = mask.sum(-1).clamp_min(1.0)  # (b, 1)
        mean = x.sum(-1) / n
        peak = x.masked_fill(mask == 0, float("-inf")).amax(-1)
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        return self.head(self.drop(torch.cat([mean, peak], dim=1)))

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise InputError(f"CNNClassifier: expected tokens (batch, length), got {tuple(tokens.shape)}")
        logits = self._logits(tokens)
        if self.config.rc_average:
            from hybrids.apps.dna.classifier import reverse_complement_padded

            logits = 0.5 * (logits + self._logits(reverse_complement_padded(tokens)))
        return logits
