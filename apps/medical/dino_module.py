"""DINO's training step as a Lightning module (Caron et al. 2021): student, EMA teacher, loss, schedules.

    slices (b, C, S, S) --multi-crop--> 2 global crops (S x S) + N local crops (L x L)
    teacher  = backbone + head (EMA of the student, global crops only)  -> softmax((t - center) / T_t)
    student  = backbone + head (all crops)                              -> log_softmax(s / 0.1)
    loss     = cross-entropy teacher(global i) -> student(crop v), every pair with v != i, averaged

AdamW with weight decay on weights only (cosine 0.04 -> 0.4), learning rate linear warm-up over 10 % of
training then cosine to ``min_lr``, per-parameter gradient clipping at 3.0, the last layer frozen for
the first 1 %, teacher EMA momentum cosine 0.996 -> 1. The schedules follow training *progress*: the
larger of steps done / total steps and time / ``max_seconds`` (``--max-time``). The pieces are
:mod:`~hybrids.apps.medical.dino_heads`, :mod:`~hybrids.apps.medical.dino_loss` and
:mod:`~hybrids.apps.medical.dino_crops`; the run around it is ``pretrain_dino``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from hybrids.apps.core.lightning_hooks import TrainingClock
from hybrids.apps.medical.dino_crops import MultiCrop, local_crop_size
from hybrids.apps.medical.dino_heads import DINOHead, MultiCropWrapper
from hybrids.apps.medical.dino_loss import DINOLoss, cosine_schedule
from hybrids.apps.medical.dino_vit import DINOViTConfig
from hybrids.shared_blocks.vit import VisionTransformer

__all__ = ["DINOModule"]


class DINOModule(TrainingClock, L.LightningModule):
    """Student, EMA teacher, DINO loss and schedules (see the module docstring).

    ``vit`` is the backbone's shape (``img_size``: the global crop size); the student adds stochastic
    depth (``drop_path_rate``), the teacher (``self.teacher.backbone``) is what ``pretrain-dino`` saves.
    """

    def __init__(
        self,
        vit: DINOViTConfig,
        *,
        out_dim: int = 4096,
        head_hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_bn: bool = False,
        local_crops: int = 6,
        local_size: int | None = None,
        lr: float = 5e-4,
        min_lr: float = 1e-6,
        weight_decay: tuple[float, float] = (0.04, 0.4),
        momentum: tuple[float, float] = (0.996, 1.0),
        teacher_temp: tuple[float, float] = (0.04, 0.07),
        warmup_teacher_temp_fraction: float = 0.3,
        warmup_fraction: float = 0.1,
        freeze_last_layer_fraction: float = 0.01,
        clip_grad: float = 3.0,
        drop_path_rate: float = 0.1,
        total_steps: int = 1000,
        max_seconds: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.vit_config = vit
        dim = vit.embed_dim
        student = VisionTransformer(**vit.to_dict(), drop_path_rate=drop_path_rate)
        teacher = VisionTransformer(**vit.to_dict())
        head = {"hidden_dim": head_hidden_dim, "bottleneck_dim": bottleneck_dim, "use_bn": head_bn}
        self.student = MultiCropWrapper(student, DINOHead(dim, out_dim, **head))
        self.teacher = MultiCropWrapper(teacher, DINOHead(dim, out_dim, **head))
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.loss = DINOLoss(
            out_dim,
            2 + local_crops,
            warmup_teacher_temp=teacher_temp[0],
            teacher_temp=teacher_temp[1],
            warmup_fraction=warmup_teacher_temp_fraction,
        )
        size = vit.img_size
        self.crops = MultiCrop(size, local_size or local_crop_size(size, vit.patch_size), local_crops)
        self.lr, self.min_lr, self.weight_decay, self.momentum = lr, min_lr, weight_decay, momentum
        self.warmup_fraction, self.freeze_last_layer_fraction = warmup_fraction, freeze_last_layer_fraction
        self.clip_grad, self.total_steps, self.max_seconds = clip_grad, total_steps, max_seconds
        self.seed = seed
        self.train_seconds = 0.0
        self._start: float | None = None
        self._losses: list[float] = []

    def progress(self) -> float:
        """Training progress in [0, 1]: the larger of steps / total steps and time / ``max_seconds``."""
        p = self.global_step / max(1, self.total_steps)
        if self.max_seconds:
            p = max(p, self.elapsed() / self.max_seconds)
        return min(p, 1.0)

    # schedules --------------------------------------------------------------------------------------------
    def lr_at(self, progress: float) -> float:
        if progress < self.warmup_fraction:
            return self.lr * progress / self.warmup_fraction
        rest = (progress - self.warmup_fraction) / max(1e-8, 1.0 - self.warmup_fraction)
        return cosine_schedule(self.lr, self.min_lr, rest)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        p = self.progress()
        self._progress = p
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = self.lr_at(p)
            if group.get("regularized", False):
                group["weight_decay"] = cosine_schedule(*self.weight_decay, p)

    # training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.global_rank, self.global_step]).generate_state(1)[0])
        )
        crops = self.crops(batch, g)
        with torch.no_grad():
            teacher_out = self.teacher(crops[:2])
        student_out = self.student(crops)
        loss = self.loss(student_out, teacher_out, getattr(self, "_progress", self.progress()))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DINO loss is {float(loss)} at step {self.global_step}")
        self._losses.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.clip_grad:
            for p in self.student.parameters():  # DINO clips each parameter's gradient on its own
                if p.grad is not None:
                    norm = p.grad.norm()
                    p.grad.mul_(torch.clamp(self.clip_grad / (norm + 1e-6), max=1.0))
        if getattr(self, "_progress", 0.0) < self.freeze_last_layer_fraction:
            for p in self.student.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        m = cosine_schedule(*self.momentum, getattr(self, "_progress", self.progress()))
        for ps, pt in zip(self.student.parameters(), self.teacher.parameters(), strict=True):
            pt.mul_(m).add_(ps.detach(), alpha=1.0 - m)

    def on_train_epoch_start(self) -> None:
        self._losses = []

    def epoch_loss(self) -> float:
        return float(np.mean(self._losses)) if self._losses else math.nan

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
        return torch.optim.AdamW(
            [
                {"params": decay, "regularized": True, "weight_decay": self.weight_decay[0]},
                {"params": no_decay, "regularized": False, "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
