"""The Lightning side of the DNA commands: causal-LM pretraining on genome windows and sequence
classification on GUE-style CSVs (HybriDNA echo embeddings or the CNN baseline).

``hybrids.apps.dna.pretrain`` and ``hybrids.apps.dna.finetune`` (the commands) import this module
inside their handlers, so building the command line imports neither torch nor Lightning.

Pretraining (``CausalLMModule`` + ``GenomeDataModule``): random windows of the training part of
each record, reverse-complemented with probability 1/2, ``<bos>`` first; next-token cross-entropy
over the bases; AdamW with linear warm-up and cosine decay. Length warm-up: the training context
runs through ``schedule`` (e.g. 1024, 4096, 16384), each length for an equal share of the steps,
with the number of windows per batch scaled so that a batch keeps the same number of tokens.
Validation: bits per base (``-log2 p`` averaged over the A/C/G/T targets) on deterministic
non-overlapping tiles of the held-out tail of each record.

Classification (``ClassificationModule``): cross-entropy on ``(tokens, label)`` batches, metrics on
the dev set after each validation (MCC, macro F1, AUROC) and on the test set.

The run itself (Trainer, seed, threads, ``OUT/best``/``OUT/last``/``history.json``/``resume.ckpt``)
is ``hybrids.apps.core.training``; the commands give its ``RunCheckpoint`` what to record
(``CausalLMModule.valid_bpb``, ``ClassificationModule.last_metrics``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hybrids.apps.core.errors import InputError
from hybrids.datasets.dna import ACGT_IDS, BOS_ID, PAD_ID, GenomeWindows

logger = logging.getLogger("hybrids.dna.train")

LN2 = math.log(2.0)


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, cosine down to ``floor`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(module: nn.Module, lr: float, weight_decay: float, warmup: int, total: int) -> dict[str, Any]:
    decay = [p for n, p in module.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in module.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# -- pretraining -------------------------------------------------------------------------------------


def lm_token_losses(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens (b, 1 + l)`` -> per-target losses ``(b, l)`` (nats) and the A/C/G/T mask ``(b, l)``."""
    logits = model(tokens[:, :-1])
    targets = tokens[:, 1:]
    loss = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    mask = torch.zeros_like(targets, dtype=torch.bool)
    for i in ACGT_IDS:
        mask |= targets == i
    return loss, mask


class CausalLMModule(L.LightningModule):
    """Next-token training of a causal DNA LM (``model(tokens (b, l)) -> logits (b, l, vocab)``)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 100,
        total_steps: int = 1000,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.valid_bpb: float | None = None  # the last validation's bits per base
        self._nll = 0.0
        self._count = 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss, mask = lm_token_losses(self.model, batch)
        weights = mask.float()
        mean = (loss * weights).sum() / weights.sum().clamp_min(1.0)
        self.log("train_bpb", mean.detach() / LN2, prog_bar=True, batch_size=batch.shape[0])
        self.log("context", float(batch.shape[1] - 1), batch_size=batch.shape[0])
        return mean

    def on_validation_epoch_start(self) -> None:
        self._nll, self._count = 0.0, 0
        self.valid_bpb = None

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss, mask = lm_token_losses(self.model, batch)
        self._nll += float((loss * mask).sum())
        self._count += int(mask.sum())

    def on_validation_epoch_end(self) -> None:
        nll = torch.tensor([self._nll, float(self._count)], dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            nll = self.trainer.strategy.reduce(nll, reduce_op="sum")
        if nll[1] == 0:  # nothing was scored: never report a perfect 0 bits per base
            raise InputError("validation scored no A, C, G or T: the validation tiles hold only N")
        bpb = self.valid_bpb = float(nll[0] / nll[1] / LN2)
        self.log("valid_bpb", bpb, prog_bar=True, batch_size=1, rank_zero_only=True)

    def configure_optimizers(self) -> dict[str, Any]:
        return _optimizer(self.model, self.lr, self.weight_decay, self.warmup_steps, self.total_steps)


class GenomeDataModule(L.LightningDataModule):
    """Random RC-augmented training windows following the length ``schedule`` and deterministic
    validation tiles.

    ``train_parts``/``valid_parts``: token arrays (uint8). Epoch ``e`` trains at
    ``schedule[min(e, len(schedule) - 1)]`` bases with ``batch_size * schedule[-1] // length`` windows
    per batch (same tokens per batch); an epoch is ``epoch_steps`` steps.
    """

    def __init__(
        self,
        train_parts: Sequence[np.ndarray],
        valid_parts: Sequence[np.ndarray],
        *,
        schedule: Sequence[int],
        batch_size: int,
        epoch_steps: int,
        valid_context: int,
        valid_max_tiles: int | None = None,
        rc_prob: float = 0.5,
        seed: int = 0,
        workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_parts, self.valid_parts = list(train_parts), list(valid_parts)
        self.schedule = [int(v) for v in schedule]
        self.batch_size, self.epoch_steps = int(batch_size), int(epoch_steps)
        self.valid_context, self.valid_max_tiles = int(valid_context), valid_max_tiles
        self.rc_prob, self.seed, self.workers = rc_prob, seed, workers

    def context_at(self, epoch: int) -> int:
        return self.schedule[min(epoch, len(self.schedule) - 1)]

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        length = self.context_at(epoch)
        batch = max(1, self.batch_size * self.schedule[-1] // length)
        dataset = GenomeWindows(
            self.train_parts,
            length,
            mode="random",
            num_windows=batch * world * self.epoch_steps,
            rc_prob=self.rc_prob,
            prefix=(BOS_ID,),
            seed=self.seed,
        )
        dataset.set_epoch(epoch)
        logger.info("epoch %d: context %d bases, %d windows per batch", epoch, length, batch)
        return DataLoader(dataset, batch_size=batch, shuffle=False, drop_last=True, num_workers=self.workers)

    def valid_dataset(self) -> Dataset:
        return ValidationTiles(self.valid_parts, self.valid_context, self.valid_max_tiles)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.valid_dataset(), batch_size=max(1, self.batch_size), num_workers=self.workers)


class ValidationTiles(Dataset):
    """Deterministic non-overlapping tiles (``<bos>`` + ``length`` bases) of the held-out parts;
    ``max_tiles`` keeps an evenly spaced subset (always the same)."""

    def __init__(self, parts: Sequence[np.ndarray], length: int, max_tiles: int | None = None) -> None:
        longest = max(len(p) for p in parts)
        self.length = min(int(length), longest)
        self.tiles = GenomeWindows(parts, self.length, mode="tile", prefix=(BOS_ID,))
        index = np.arange(len(self.tiles))
        if max_tiles is not None and len(index) > max_tiles:
            index = np.linspace(0, len(index) - 1, max_tiles).round().astype(np.int64)
        self.index = index

    @property
    def n_scored(self) -> int:
        return len(self.index) * self.length

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tiles[int(self.index[i])]


# -- classification ----------------------------------------------------------------------------------


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MCC, macro F1, accuracy and AUROC (binary: of class 1; else macro one-vs-rest) of
    ``probs (n, classes)`` against ``labels (n,)``."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

    pred = probs.argmax(1)
    out = {
        "mcc": float(matthews_corrcoef(labels, pred)),
        "f1": float(f1_score(labels, pred, average="macro")),
        "accuracy": float(accuracy_score(labels, pred)),
    }
    try:
        if probs.shape[1] == 2:
            out["auroc"] = float(roc_auc_score(labels, probs[:, 1]))
        else:
            out["auroc"] = float(
                roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(probs.shape[1])))
            )
    except ValueError:  # a single class present
        out["auroc"] = float("nan")
    return out


class ClassificationModule(L.LightningModule):
    """Cross-entropy training of ``model(tokens (b, l)) -> logits (b, classes)``; metrics on the
    validation (dev) and test loaders at the end of each epoch."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
        total_steps: int = 1000,
        rc_augment: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.rc_augment = rc_augment
        self._outputs: list[tuple[np.ndarray, np.ndarray]] = []
        self.last_metrics: dict[str, float] = {}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        tokens, labels = batch
        if self.rc_augment:
            from hybrids.apps.dna.classifier import reverse_complement_padded

            flip = torch.rand(tokens.shape[0], device=tokens.device) < 0.5
            tokens = torch.where(flip[:, None], reverse_complement_padded(tokens), tokens)
        loss = F.cross_entropy(self.model(tokens), labels)
        self.log("train_loss", loss, prog_bar=True, batch_size=tokens.shape[0])
        return loss

    def _collect(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        tokens, labels = batch
        probs = torch.softmax(self.model(tokens).float(), dim=-1)
        self._outputs.append((probs.cpu().numpy(), labels.cpu().numpy()))

    def _finish(self, prefix: str) -> None:
        probs = np.concatenate([p for p, _ in self._outputs])
        labels = np.concatenate([y for _, y in self._outputs])
        self._outputs = []
        metrics = classification_metrics(probs, labels)
        eps = 1e-7
        metrics["loss"] = float(-np.log(probs[np.arange(len(labels)), labels] + eps).mean())
        self.last_metrics = metrics
        for k, v in metrics.items():
            self.log(f"{prefix}_{k}", v, batch_size=1, prog_bar=k == "mcc")

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish("dev")

    def on_test_epoch_start(self) -> None:
        self._outputs = []

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def configure_optimizers(self) -> dict[str, Any]:
        return _optimizer(self.model, self.lr, self.weight_decay, self.warmup_steps, self.total_steps)


class ListDataset(Dataset):
    """``(tokens (l,) int64, label)`` pairs held in memory."""

    def __init__(self, items: Sequence[tuple[torch.Tensor, int]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.items[i]


def pad_collate(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads with ``<pad>``: ``(tokens (b, l_max), labels (b,))``."""
    tokens = nn.utils.rnn.pad_sequence([t for t, _ in batch], batch_first=True, padding_value=PAD_ID)
    return tokens, torch.tensor([int(y) for _, y in batch], dtype=torch.int64)
