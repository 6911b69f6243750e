"""Training HSDT denoisers: ``train(TrainConfig(...))``, behind ``hybrids hsi train-denoiser``.

    hybrids hsi train-denoiser --data SalinasA_corrected.mat -m hsdt_s --max-time 40 -o runs/hsdt_s
    hybrids hsi denoise noisy.mat -o clean.mat -m runs/hsdt_s/best

**Data** (``data``: the SalinasA scene, AVIRIS 83 x 86 x 204, ``SalinasA_corrected.mat``): the 31
bands nearest 400, 410, ..., 700 nm (``hybrids.datasets.hsi.SALINAS_VISIBLE``), cut into spatially
disjoint blocks (``SALINAS_BLOCKS``): training patches come from the ``train`` block (63 x 48), the
best checkpoint is picked on the ``validation`` block (16 x 48), and the ``test`` block (83 x 32) is
never read here (``hybrids hsi report`` scores it). Every cube is scaled to [0, 1] by its own clean
minimum and maximum (the QRNN3D / HSDT protocol).

**Synthetic scenes** (``synthetic_scenes``, default 64, each 64 x 64): linear mixtures of spectra taken
from the training block only -- the mean spectrum of each ground-truth class present in it (from
``labels``, default ``SalinasA_gt.mat`` beside the cube, when present), the mean of its unlabelled
pixels and 8 of its pixels drawn at random -- with smooth abundance maps (softmax of Gaussian-smoothed
random fields; ``hybrids.datasets.hsi.mixing_scenes``), each scene then scaled to [0, 1]. A training
patch comes from a synthetic scene with probability ``synthetic_fraction`` (0.5), else from the
training block.

**Recipe** (the official one, ``hybrids.apps.hsi.training``): ``patch_size`` crops (32) under random
rotations and flips, batches of ``batch_size`` (4), MSE loss, Adam at ``lr`` 1e-3 with the paper's
step schedule, and the paper's noise schedule (sigma 50, then blind 10/30/50/70, then complex
noise) spread over the run: over ``steps`` optimiser steps or ``--max-time`` minutes, whichever
ends first. Validation every ``steps_per_epoch`` steps: mean band-wise PSNR on the validation block
with fixed Gaussian sigma 50 and mixture noise.

**Output** (``run.out``): ``best/`` (highest validation PSNR) and ``last/``, model folders
``hybrids hsi denoise -m`` reads (weights + ``config.json`` with the bands, wavelengths and the
training provenance), ``history.json``, ``resume.ckpt`` (``--resume``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import RunOptions, TrainResult, require_at_least_one

logger = logging.getLogger("hybrids.hsi.train")

VALIDATION_NOISE = ("gaussian50", "mixture")


@dataclass
class TrainConfig:
    """What ``hybrids hsi train-denoiser`` trains (``run``: how the run runs)."""

    data: Path
    labels: Path | None = None  # default: SalinasA_gt.mat beside ``data`` when it exists
    model: str = "hsdt_s"
    patch_size: int = 32
    batch_size: int = 4
    synthetic_scenes: int = 64
    synthetic_fraction: float = 0.5
    steps: int = 20000
    steps_per_epoch: int = 50
    lr: float = 1e-3
    num_workers: int = 0
    run: RunOptions = field(default_factory=lambda: RunOptions(out=Path("runs/hsi")))

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        if self.labels is not None:
            self.labels = Path(self.labels)

    def check(self) -> None:
        """Raise ``InputError`` (one line naming the flag) for values no run can use."""
        require_at_least_one(self, "patch_size", "batch_size", "steps", "steps_per_epoch")
        if self.synthetic_scenes < 0 or self.num_workers < 0:
            raise InputError("--synthetic-scenes and --num-workers must be >= 0")
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise InputError(f"--synthetic-fraction must be in [0, 1], got {self.synthetic_fraction}")
        if self.synthetic_fraction > 0 and self.synthetic_scenes == 0:
            raise InputError("--synthetic-fraction > 0 needs --synthetic-scenes > 0")
        if not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        self.run.check()


def load_salinas(data: Path, labels: Path | None) -> dict[str, Any]:
    """The SalinasA blocks of ``data`` (visible bands, raw values, ``(H, W, bands)``) and labels."""
    import numpy as np

    from hybrids.datasets.hsi import (
        SALINAS_VISIBLE,
        HSIFormatError,
        read_cube,
        salinas_split,
        salinas_visible_bands,
    )

    try:
        cube = read_cube(data)
        gt = None
        if labels is None and (data.parent / "SalinasA_gt.mat").is_file():
            labels = data.parent / "SalinasA_gt.mat"
        if labels is not None:
            import scipy.io

            variables = {k: v for k, v in scipy.io.loadmat(labels).items() if not k.startswith("__")}
            gt = next((np.asarray(v) for v in variables.values() if np.ndim(v) == 2), None)
            if gt is None or gt.shape != cube.shape[:2]:
                raise InputError(f"{labels}: no 2-D label map of the cube's size {cube.shape[:2]}")
    except HSIFormatError as exc:
        raise InputError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{labels}: cannot read labels ({exc})") from None
    if cube.shape[:2] != (83, 86) or cube.bands < max(SALINAS_VISIBLE) + 1:
        raise InputError(
            f"{data}: train-denoiser trains on the SalinasA scene (83 x 86 x 204), got {cube.shape}"
        )
    visible = cube.data[:, :, SALINAS_VISIBLE].astype(np.float64)
    blocks = salinas_split(visible, gt)
    blocks["wavelengths_nm"] = salinas_visible_bands()[1]
    return blocks


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says (module docstring); every process returns."""
    import numpy as np

    from hybrids.apps.core.registry import create_model
    from hybrids.apps.core.training import (
        RunCheckpoint,
        build_trainer,
        fit,
        save_model_folder,
        seed_run,
        validate,
    )
    from hybrids.apps.hsi.training import (
        STAGES,
        DenoiserModule,
        HSIDataModule,
        PatchDataset,
        validation_cubes,
    )
    from hybrids.datasets.hsi import (
        SALINAS_BLOCKS,
        SALINAS_VISIBLE,
        endmember_spectra,
        minmax_normalize,
        mixing_scenes,
    )

    config.check()
    run = config.run
    seed_run(run)
    blocks = load_salinas(config.data, config.labels)
    model = create_model(config.model if "/" in config.model else f"hsi/{config.model}")
    if getattr(model, "num_bands", None) != len(SALINAS_VISIBLE):
        raise InputError(f"-m {config.model}: a 31-band denoiser is needed (HSDT's presets are)")
    if config.patch_size % model.size_divisor:
        raise InputError(f"--patch-size must be a multiple of {model.size_divisor}, got {config.patch_size}")

    def bands_first(cube: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(minmax_normalize(cube), -1, 0))

    train_block = blocks["train"]
    spectra = endmember_spectra(train_block, blocks.get("train_labels"), extra=8, seed=run.seed)
    scenes = (
        mixing_scenes(spectra, config.synthetic_scenes, 64, seed=run.seed) if config.synthetic_scenes else []
    )
    train_set = PatchDataset(
        [bands_first(train_block)],
        [bands_first(s) for s in scenes],
        patch=config.patch_size,
        length=config.steps_per_epoch * config.batch_size,
        synthetic_fraction=config.synthetic_fraction,
        seed=run.seed,
    )
    valid = validation_cubes(
        bands_first(blocks["validation"]), VALIDATION_NOISE, run.seed + 1, model.size_divisor
    )
    module = DenoiserModule(
        model,
        valid=valid,
        lr=config.lr,
        max_steps=config.steps,
        max_seconds=run.max_time * 60 if run.max_time else None,
        seed=run.seed,
    )
    data = HSIDataModule(train_set, config.batch_size, config.num_workers)

    def rows_cols(name: str) -> list[list[int]]:
        rows, cols = SALINAS_BLOCKS[name]
        return [[rows.start, rows.stop], [cols.start, cols.stop]]

    extra = {
        "denoising": {
            "bands": len(SALINAS_VISIBLE),
            "wavelengths_nm": blocks["wavelengths_nm"],
            "normalization": "minmax",
            "noise": "Gaussian sigma 10-70 / 255 (blind) and complex noise (QRNN3D / HSDT protocol)",
        },
        "training": {
            "data": config.data.name,
            "scene": "SalinasA (AVIRIS), 31 visible bands 400-700 nm",
            "band_indices": list(SALINAS_VISIBLE),
            "train_block": rows_cols("train"),
            "validation_block": rows_cols("validation"),
            "test_block_never_seen": rows_cols("test"),
            "synthetic_scenes": config.synthetic_scenes,
            "synthetic_fraction": config.synthetic_fraction,
            "synthetic_spectra": int(len(spectra)),
            "patch_size": config.patch_size,
            "batch_size": config.batch_size,
            "steps": config.steps,
            "lr": config.lr,
            "optimizer": "adam",
            "loss": "mse",
            "noise_schedule": [list(s) for s in STAGES],
            "max_time_minutes": run.max_time,
            "threads": run.threads,
            "seed": run.seed,
            "command": run.command,
        },
    }
    steps_per_epoch = config.steps_per_epoch

    def record(trainer: Any, module: DenoiserModule) -> dict[str, Any] | None:
        scores = module.validation_scores()
        if scores is None:
            return None
        return {
            "epoch": max(0, -(-trainer.global_step // steps_per_epoch) - 1),
            "train_loss": module.epoch_loss(),
            **{k: round(v, 4) for k, v in scores.items()},
            "progress": round(module.progress(), 4),
            "seconds": round(module.elapsed(), 1),
        }

    def save(module: DenoiserModule, folder: Path, rec: dict[str, Any], extra: dict[str, Any]) -> None:
        provenance = {
            "step": rec["step"],
            "train_seconds": rec["seconds"],
            "progress": rec["progress"],
            "validation_psnr": {k: rec[k] for k in (*VALIDATION_NOISE, "val_psnr")},
        }
        save_model_folder(module, folder, provenance, extra)

    def describe(rec: dict[str, Any], improved: bool) -> str:
        scores = ", ".join(f"{k} {rec[k]:.2f}" for k in VALIDATION_NOISE)
        loss = rec["train_loss"]
        return (
            f"step {rec['step']}: loss {loss if loss is None else f'{loss:.5f}'}, val PSNR {scores} "
            f"(mean {rec['val_psnr']:.2f}{', best' if improved else ''}), {rec['seconds'] / 60:.1f} min"
        )

    checkpoint = RunCheckpoint(
        run.out, record=record, score=lambda rec: rec["val_psnr"], describe=describe, save=save, extra=extra
    )
    trainer = build_trainer(
        run,
        callbacks=[checkpoint],
        max_steps=config.steps,
        max_epochs=-(-config.steps // steps_per_epoch),
        limit_train_batches=steps_per_epoch,
        check_val_every_n_epoch=1,
        log_every_n_steps=min(50, steps_per_epoch),
    )
    logger.info(
        "training %s (%d parameters) on SalinasA's training block and %d synthetic scenes, patch %d, "
        "batch %d",
        model.model_name,
        sum(p.numel() for p in model.parameters()),
        len(scenes),
        config.patch_size,
        config.batch_size,
    )
    fit(trainer, module, run, datamodule=data)
    if not checkpoint.history or checkpoint.history[-1]["step"] != trainer.global_step:
        validate(trainer, module, datamodule=data)  # the stopping point
    return TrainResult(module, checkpoint.history, checkpoint.best, run.out, trainer.is_global_zero)
