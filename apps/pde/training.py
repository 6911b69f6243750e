"""The PDE training pieces on the shared training core: data windows, the LightningModule, the schedule.

FactFormer's trainer (``examples/turb_ns2d_fact_lm.py``), with progress measured in steps or in time:
``progress = max(step / steps, elapsed / max_time)``, so that a run stopped by ``--max-time`` still goes
through the whole schedule.

- Loss: relative L2 per sample over the predicted frames and the grid, averaged over the batch.
- Optimiser: AdamW; learning rate OneCycle (``torch.optim.lr_scheduler.OneCycleLR``'s cosine shape:
  warm-up over 20 % of the progress from ``lr / 1e4`` to ``lr``, then down to ``lr / 1e9``; the
  reference's ``div_factor`` 1e4, ``pct_start`` 0.2, ``final_div_factor`` 1e5), gradient-norm clipping.
- Latent-step curriculum (multi-step models): ``1 + floor((S - 1) * progress / curriculum)`` frames per
  encoding, reaching the model's ``S = max_latent_steps``.
- Push-forward (Brandstetter et al. 2022), after ``pushforward_after`` on every ``pushforward_every``-th
  step: the model predicts ``s`` frames twice without gradients, feeding its own output back, and is
  trained on the third ``s`` frames from there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from hybrids.apps.pde.rollout import relative_l2, rollout

__all__ = [
    "PDEDataModule",
    "SurrogateModule",
    "TrainWindows",
    "load_split",
    "one_cycle",
    "validation_windows",
]


def load_split(dataset: Any, interval: int, test_trajectories: int) -> tuple[Tensor, Tensor]:
    """``(train, test)`` trajectories ``(N, frames / interval, n, n)`` float32: the last
    ``test_trajectories`` of the dataset (other initial conditions) are the test split."""
    arrays = [np.asarray(dataset.trajectory(i)[::interval], dtype=np.float32) for i in range(len(dataset))]
    stacked = torch.from_numpy(np.stack(arrays))
    if not torch.isfinite(stacked).all():
        bad = next(i for i, a in enumerate(arrays) if not np.isfinite(a).all())
        from hybrids.apps.core.errors import InputError

        raise InputError(f"{dataset.files[bad]}: the trajectory contains NaN or infinite frames")
    return stacked[: len(arrays) - test_trajectories], stacked[len(arrays) - test_trajectories :]


class TrainWindows(IterableDataset):
    """Endless random windows ``(x (in_frames, n, n), y (future, n, n))`` of the training trajectories."""

    def __init__(self, trajectories: Tensor, in_frames: int, future: int, seed: int) -> None:
        self.data, self.in_frames, self.future, self.seed = trajectories, in_frames, future, seed
        self.starts = trajectories.shape[1] - in_frames - future + 1
        if self.starts < 1:
            raise ValueError(
                f"trajectories of {trajectories.shape[1]} frames hold no {in_frames + future}-frame window"
            )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        info = torch.utils.data.get_worker_info()
        generator = torch.Generator().manual_seed(self.seed + (info.id if info else 0))
        while True:
            i = int(torch.randint(self.data.shape[0], (1,), generator=generator))
            s = int(torch.randint(self.starts, (1,), generator=generator))
            window = self.data[i, s : s + self.in_frames + self.future]
            yield window[: self.in_frames], window[self.in_frames :]


def validation_windows(
    trajectories: Tensor, in_frames: int, steps: int, per_trajectory: int
) -> tuple[Tensor, Tensor]:
    """``per_trajectory`` evenly spaced start points in each trajectory: inputs ``(V, in_frames, n, n)``
    and the true next ``steps`` frames ``(V, steps, n, n)``."""
    last = trajectories.shape[1] - in_frames - steps
    if last < 0:
        raise ValueError(f"trajectories of {trajectories.shape[1]} frames hold no {in_frames}+{steps} window")
    starts = sorted({round(last * k / max(1, per_trajectory - 1)) for k in range(per_trajectory)})
    xs, ys = [], []
    for traj in trajectories:
        for s in starts:
            xs.append(traj[s : s + in_frames])
            ys.append(traj[s + in_frames : s + in_frames + steps])
    return torch.stack(xs), torch.stack(ys)


class PDEDataModule(L.LightningDataModule):
    def __init__(
        self, train: TrainWindows, val: tuple[Tensor, Tensor], batch_size: int, val_batch_size: int = 8
    ):
        super().__init__()
        self.train, self.val, self.batch_size, self.val_batch_size = train, val, batch_size, val_batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.val), batch_size=self.val_batch_size, shuffle=False)


def one_cycle(
    progress: float, lr: float, pct_start: float = 0.2, div: float = 1e4, final_div: float = 1e5
) -> float:
    """OneCycleLR's cosine learning rate at ``progress`` in [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    start, end = lr / div, lr / div / final_div
    if progress < pct_start:
        a, b, p = start, lr, progress / pct_start
    else:
        a, b, p = lr, end, (progress - pct_start) / (1 - pct_start)
    return b + (a - b) * (1 + math.cos(math.pi * p)) / 2


class SurrogateModule(L.LightningModule):
    """Trains ``model`` (module docstring) and validates it by autoregressive rollout (relative L2 per
    step, averaged over the validation windows)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        total_steps: int,
        max_seconds: float | None,
        loss: str = "rel_l2",
        curriculum: float = 0.3,
        pushforward_after: float | None = 0.4,
        pushforward_every: int = 3,
        val_steps: int = 16,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.loss_name = lr, weight_decay, loss
        self.total_steps, self.max_seconds = total_steps, max_seconds
        self.curriculum, self.pushforward_after, self.pushforward_every = (
            curriculum,
            pushforward_after,
            pushforward_every,
        )
        self.val_steps = val_steps
        self.max_latent = int(getattr(model, "max_steps", 1))
        self._seconds_before = 0.0
        self._start: float | None = None
        self._losses: list[float] = []
        self._val_errors: list[Tensor] = []
        self._val_result: dict[str, Any] | None = None

    # -- schedule ---------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._seconds_before + (time.monotonic() - self._start if self._start is not None else 0.0)

    def progress(self) -> float:
        by_steps = self.global_step / max(1, self.total_steps)
        by_time = self.elapsed() / self.max_seconds if self.max_seconds else 0.0
        return min(1.0, max(by_steps, by_time))

    def latent_steps(self, progress: float) -> int:
        if self.max_latent == 1 or self.curriculum <= 0:
            return self.max_latent
        return min(self.max_latent, 1 + int((self.max_latent - 1) * progress / self.curriculum))

    def pushforward_now(self, progress: float) -> bool:
        return (
            self.pushforward_after is not None
            and progress >= self.pushforward_after
            and self.global_step % self.pushforward_every == 0
        )

    def on_train_start(self) -> None:
        self._start = time.monotonic()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pde_seconds"] = self.elapsed()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._seconds_before = float(checkpoint.get("pde_seconds", 0.0))

    # -- training ---------------------------------------------------------------------------------------
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.loss_name == "mse":
            return (pred - target).square().mean()
        return relative_l2(pred, target, dims=tuple(range(1, pred.dim()))).mean()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        progress = self.progress()
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = one_cycle(progress, self.lr)
        steps = self.latent_steps(progress)
        target = y[:, :steps]
        if self.pushforward_now(progress):
            with torch.no_grad():
                for _ in range(2):
                    x = torch.cat([x, self.model(x, steps=steps)], dim=1)[:, -x.shape[1] :]
            target = y[:, 2 * steps : 3 * steps]
        loss = self.loss(self.model(x.detach(), steps=steps), target)
        self._losses.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True)
        self.log("latent_steps", float(steps))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr / 1e4, weight_decay=self.weight_decay)

    def epoch_loss(self) -> float | None:
        """Mean training loss since the last call."""
        if not self._losses:
            return None
        value = float(np.mean(self._losses))
        self._losses = []
        return value

    # -- validation -------------------------------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        pred = rollout(self.model, x, y.shape[1])
        self._val_errors.append(relative_l2(pred, y).detach().cpu())  # (b, steps)

    def on_validation_epoch_end(self) -> None:
        if not self._val_errors:
            return
        errors = torch.cat(self._val_errors)
        self._val_errors = []
        per_step = errors.mean(0)
        self._val_result = {
            "rollout_rel_l2": float(per_step.mean()),
            "rel_l2_per_step": [round(float(v), 5) for v in per_step],
            "val_steps": int(per_step.numel()),
            "val_windows": int(errors.shape[0]),
        }
        self.log("val_rollout_rel_l2", self._val_result["rollout_rel_l2"])

    def validation_result(self) -> dict[str, Any] | None:
        result, self._val_result = self._val_result, None
        return result
