"""HSDT training pieces: the noise and learning-rate schedule, the patch data, the LightningModule.

``hybrids.apps.hsi.train`` assembles them on the shared training core (``hybrids.apps.core.training``).

**Schedule.** The official recipe runs 120 epochs on ICVL: epochs 0-30 Gaussian sigma = 50, 30-80
blind Gaussian (sigma cycling through 10, 30, 50, 70), 80-120 complex noise (non-i.i.d. Gaussian, then
in turn nothing, impulse, stripes, dead lines), with Adam and the learning-rate steps of its
``train.py`` / ``train_complex.py`` (``PAPER_LR``) and a one-epoch linear warm-up where the blind and the
complex stages start. Here a run's progress ``p`` in [0, 1] (the larger of steps done / ``max_steps``
and seconds spent / ``--max-time``) is mapped onto those 120 epochs: ``paper_epoch = 120 p``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from hybrids.apps.hsi.noise import BLIND_SIGMAS, add_noise, complex_training_noise

__all__ = [
    "PAPER_EPOCHS",
    "PAPER_LR",
    "STAGES",
    "DenoiserModule",
    "HSIDataModule",
    "PatchDataset",
    "paper_lr",
    "stage_at",
]

PAPER_EPOCHS = 120
# (first paper epoch, stage): the sigma schedule of train.py (0-80) and train_complex.py (80-120).
STAGES: tuple[tuple[int, str], ...] = ((0, "gaussian50"), (30, "blind"), (80, "complex"))
# (first paper epoch, learning-rate factor of the base 1e-3), from the same scripts.
PAPER_LR: tuple[tuple[int, float], ...] = (
    (0, 1.0), (20, 0.1), (30, 1.0), (45, 0.1), (55, 0.05), (60, 0.01), (65, 0.005), (75, 0.001),
    (80, 1.0), (90, 0.5), (95, 0.1), (100, 0.05), (105, 0.01),
)  # fmt: skip
WARMUP_AT = (30, 80)  # a linear warm-up over one paper epoch where these stages start


def stage_at(progress: float) -> str:
    epoch = min(max(progress, 0.0), 1.0) * PAPER_EPOCHS
    return [name for start, name in STAGES if epoch >= start][-1]


def paper_lr(progress: float, base: float = 1e-3) -> float:
    epoch = min(max(progress, 0.0), 1.0) * PAPER_EPOCHS
    factor = [f for start, f in PAPER_LR if epoch >= start][-1]
    for start in WARMUP_AT:
        if start <= epoch < start + 1:
            factor *= max(epoch - start, 0.05)
    return base * factor


def training_noise(clean: np.ndarray, stage: str, step: int, rng: np.random.Generator) -> np.ndarray:
    """One training input of ``stage`` (``clean`` ``(bands, H, W)``): sigma 50, blind sigma cycling
    through 10/30/50/70 by ``step`` (the official ``AddNoiseBlind``), or the complex transform."""
    if stage == "gaussian50":
        return add_noise(clean, "gaussian50", rng)
    if stage == "blind":
        return add_noise(clean, f"gaussian{BLIND_SIGMAS[step % len(BLIND_SIGMAS)]}", rng)
    return complex_training_noise(clean, step, rng)


class PatchDataset(Dataset):
    """Clean training patches ``(1, bands, p, p)``: a random crop of one source cube (a real block with
    probability ``1 - synthetic_fraction``, else a synthetic scene), under a random one of the 8
    rotations/flips. Item ``i`` of epoch ``e`` is drawn from ``default_rng([seed, e, i])``."""

    def __init__(
        self,
        real: Sequence[np.ndarray],
        synthetic: Sequence[np.ndarray],
        *,
        patch: int,
        length: int,
        synthetic_fraction: float,
        seed: int,
    ) -> None:
        self.real, self.synthetic = list(real), list(synthetic)
        self.patch, self.length, self.seed = patch, length, seed
        self.synthetic_fraction = synthetic_fraction if self.synthetic else 0.0
        self.epoch = 0
        for cube in [*self.real, *self.synthetic]:
            if min(cube.shape[1:]) < patch:
                raise ValueError(
                    f"a training cube of {cube.shape[1:]} pixels is smaller than the {patch} patch"
                )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        pool = self.synthetic if rng.random() < self.synthetic_fraction else self.real
        cube = pool[int(rng.integers(len(pool)))]
        _, h, w = cube.shape
        top, left = int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))
        crop = cube[:, top : top + self.patch, left : left + self.patch]
        crop = np.rot90(crop, int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None]


class HSIDataModule(L.LightningDataModule):
    """Training patches (``PatchDataset``) and the validation cubes (one batch each)."""

    def __init__(self, train_set: PatchDataset, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.train_set, self.batch_size, self.num_workers = train_set, batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(range(1), batch_size=1)  # the module holds its validation cubes


class DenoiserModule(L.LightningModule):
    """MSE training of a denoiser on (noisy, clean) pairs made in ``training_step``.

    ``valid``: ``{name: (clean, noisy)}``, each ``(bands, H, W)`` float32 with fixed noise; validation
    scores mean band-wise PSNR per name and their mean (``val_psnr``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        valid: dict[str, tuple[np.ndarray, np.ndarray]],
        lr: float = 1e-3,
        max_steps: int,
        max_seconds: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.valid = valid
        self.base_lr, self.max_steps, self.max_seconds, self.seed = lr, max_steps, max_seconds, seed
        self._seconds_before = 0.0
        self._start = time.monotonic()
        self._losses: list[float] = []
        self._scores: dict[str, float] | None = None

    # -- progress ---------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._seconds_before + time.monotonic() - self._start

    def progress(self) -> float:
        p = self.global_step / max(self.max_steps, 1)
        if self.max_seconds:
            p = max(p, self.elapsed() / self.max_seconds)
        return min(p, 1.0)

    def on_fit_start(self) -> None:
        self._start = time.monotonic()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hsi_seconds"] = self.elapsed()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._seconds_before = float(checkpoint.get("hsi_seconds", 0.0))

    # -- training -----------------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.base_lr)

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if isinstance(dataset, PatchDataset):
            dataset.epoch = self.current_epoch

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        p = self.progress()
        stage = stage_at(p)
        lr = paper_lr(p, self.base_lr)
        for group in self.optimizers().optimizer.param_groups:  # type: ignore[union-attr]
            group["lr"] = lr
        rng = np.random.default_rng([self.seed, 7, self.global_step])
        clean = batch[:, 0].cpu().numpy()
        noisy = np.stack([training_noise(c, stage, self.global_step, rng) for c in clean])
        noisy_t = torch.from_numpy(noisy)[:, None].to(batch.device)
        loss = F.mse_loss(self.model(noisy_t), batch)
        self._losses.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True)
        self.log("lr", lr)
        return loss

    def epoch_loss(self) -> float | None:
        losses, self._losses = self._losses, []
        return float(np.mean(losses)) if losses else None

    # -- validation ---------------------------------------------------------------------------------
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        from hybrids.evaluation.denoising import band_psnr

        scores = {}
        with torch.no_grad():
            for name, (clean, noisy) in self.valid.items():
                x = torch.from_numpy(noisy)[None, None].to(self.device)
                out = self.model(x)[0, 0].float().cpu().numpy()
                scores[name] = float(np.mean(band_psnr(clean, out)))
        scores["val_psnr"] = float(np.mean(list(scores.values())))
        self._scores = scores
        self.log("val_psnr", scores["val_psnr"])

    def validation_scores(self) -> dict[str, float] | None:
        scores, self._scores = self._scores, None
        return scores


def validation_cubes(
    clean: np.ndarray, settings: Sequence[str], seed: int, divisor: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{setting: (clean, noisy)}`` of a ``(bands, H, W)`` block cropped to multiples of ``divisor``,
    with noise drawn once from ``seed``."""
    _, h, w = clean.shape
    clean = np.ascontiguousarray(clean[:, : h - h % divisor, : w - w % divisor], dtype=np.float32)
    return {s: (clean, add_noise(clean, s, np.random.default_rng([seed, i]))) for i, s in enumerate(settings)}
