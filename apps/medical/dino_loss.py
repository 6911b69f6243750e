"""DINO's loss and schedules (Caron et al. 2021).

:class:`DINOLoss`: cross-entropy of every student crop against the teacher's other global crop, with
centering (EMA of the teacher outputs, momentum 0.9) and sharpening (student temperature 0.1, teacher
temperature warmed up linearly 0.04 -> 0.07 over the first 30 % of training).
:func:`cosine_schedule`: the half-cosine every other DINO schedule follows (learning rate after its
warm-up, weight decay 0.04 -> 0.4, teacher EMA momentum 0.996 -> 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["DINOLoss", "cosine_schedule"]


def cosine_schedule(start: float, end: float, progress: float) -> float:
    """Half-cosine from ``start`` (progress 0) to ``end`` (progress 1); progress is clipped to [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


class DINOLoss(nn.Module):
    """Cross-entropy of the student's crops against the centred, sharpened teacher's global crops.

    ``forward(student (ncrops * b, K), teacher (2 * b, K), progress) -> scalar``; also updates ``center``
    (``(1, K)`` buffer, EMA with ``center_momentum`` of the teacher's batch mean; all-reduced under DDP).
    """

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        *,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_fraction: float = 0.3,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if ncrops < 2:
            raise ValueError(f"DINOLoss: needs the 2 global crops at least, got ncrops={ncrops}")
        self.ncrops, self.student_temp, self.center_momentum = ncrops, student_temp, center_momentum
        self.teacher_temps = (warmup_teacher_temp, teacher_temp)
        self.warmup_fraction = warmup_fraction
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temp(self, progress: float) -> float:
        """Linear warm-up ``warmup_teacher_temp -> teacher_temp`` over ``warmup_fraction``, then constant."""
        start, end = self.teacher_temps
        if self.warmup_fraction <= 0 or progress >= self.warmup_fraction:
            return end
        return start + (end - start) * max(progress, 0.0) / self.warmup_fraction

    def forward(self, student_output: Tensor, teacher_output: Tensor, progress: float = 1.0) -> Tensor:
        student = F.log_softmax(student_output.float() / self.student_temp, dim=-1).chunk(self.ncrops)
        temp = self.teacher_temp(progress)
        teacher = F.softmax((teacher_output.float() - self.center) / temp, dim=-1).detach().chunk(2)
        total, terms = student_output.new_zeros((), dtype=torch.float32), 0
        for i, q in enumerate(teacher):
            for v, log_p in enumerate(student):
                if v == i:
                    continue  # the same view
                total = total + (-q * log_p).sum(dim=-1).mean()
                terms += 1
        self.update_center(teacher_output)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        batch_sum = teacher_output.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_output.shape[0]), device=teacher_output.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(count)
        m = self.center_momentum
        self.center.mul_(m).add_(batch_sum / count, alpha=1.0 - m)
