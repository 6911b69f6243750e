"""DINO self-supervised pretraining of a ViT on the 2-D slices of unlabeled volumes (Caron et al. 2021,
"Emerging Properties in Self-Supervised Vision Transformers"): ``pretrain_dino(DINOConfig(...))``,
behind ``hybrids medical pretrain-dino``; the teacher is DIAMANT's attention encoder.

    hybrids medical pretrain-dino --data ../shared/data/hippocampus -o runs/dino --max-time 15
    hybrids medical pretrain-dino --data scans/ --arch vit_small --patch-size 8 --image-size 96 -o runs/dino8
    hybrids medical pretrain-dino --data scans/ -o runs/dino --resume          # continue a stopped run
    hybrids medical train --data ../shared/data/hippocampus -m diamant \\
        --init-attention-encoder runs/dino/teacher

    from hybrids.apps.medical.pretrain_dino import DINOConfig, pretrain_dino
    result = pretrain_dino(DINOConfig(data=Path("scans"), epochs=10, run=RunOptions(out=Path("runs/dino"))))
    vit = create_model("medical/dino_vit", weights=result.teacher)

Data (``data``): an MSD / nnU-Net folder (every image of ``imagesTr``; labels are never read) or any
folder of NIfTI files. Each volume is re-oriented, resampled and z-scored (an MSD folder: the same
defaults as ``hybrids medical train``), cut into slices along ``slice_axis`` and each slice fitted to
the ViT's ``image_size`` square (``vit_input="resize"``: bilinear; ``"pad"``: centred zero padding;
:mod:`hybrids.apps.medical.dino_data`). The last ``val_cases`` cases (sorted names) are held out for
the attention-map figure; with ``fold`` only that fold's training cases are used (nnU-Net's split, as
``hybrids medical train --fold K``) and the figure shows its validation cases.

Model: ``arch`` (``vit_small``: 384 dims, 12 blocks, 6 heads; ``vit_tiny``; ``vit_base``) with
``patch_size`` 16 or 8; ``embed_dim``/``depth``/``heads`` override the shape (e.g. the 192x6x6 encoder of
DIAMANT's hippocampus preset). Recipe (:mod:`hybrids.apps.medical.dino_module`): DINO's (2 global crops
of ``image_size``, N local crops of 96/224 of it, ``out_dim`` prototypes, teacher temperature 0.04 ->
0.07, EMA momentum ``momentum_teacher`` (0.996) -> 1, AdamW with weight decay 0.04 -> 0.4, ``lr``
default DINO's 5e-4 x global batch / 256); the schedules end at the last step or at ``--max-time``
minutes, whichever comes first.

Cost on the project's CPU (1 thread, shared with other jobs; batch 32, 2 global crops of 64 + 6 local):
ViT-S/16 3.2 s per step, ViT-S/8 9.5 s, ViT-Ti/8 3.3 s, a 192-wide 6-block 6-head ViT/8 (DIAMANT's
hippocampus preset) 2.1 s -- a 15-minute run is 300-450 steps of the smaller models.

Output (``run.out``), after every epoch (the run itself -- Trainer, resume, threads -- is
:mod:`hybrids.apps.core.training`): ``teacher/``, a ``medical/dino_vit`` checkpoint folder
(``model.safetensors``: the teacher backbone with DINO's key names; ``config.json``: the ViT config,
``image_size``, ``vit_input``, ``slice_axis``, the preprocessing, the recipe;
``create_model("medical/dino_vit", weights=OUT/teacher)`` loads it); ``attention_maps.png`` (the image and
every head's map for a few held-out slices, :mod:`hybrids.apps.medical.dino_figure`); ``history.json``
(loss per epoch); ``resume.ckpt`` (Lightning's state, read back with ``weights_only=True``) for
``--resume``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import RunOptions, require_at_least_one
from hybrids.apps.medical.dino_vit import VIT_INPUTS, DINOViTConfig

__all__ = ["ARCHS", "DINOConfig", "DINOResult", "pretrain_dino"]

logger = logging.getLogger("hybrids.medical.dino")

ARCHS = ("vit_small", "vit_tiny", "vit_base")
TEACHER_FOLDER = "teacher"
FIGURE_NAME = "attention_maps.png"


@dataclass
class DINOConfig:
    """What ``hybrids medical pretrain-dino`` trains (``run``: how the run runs); the fields are the
    command's flags (module docstring). ``None``: the architecture's width/depth/heads, twice
    ``image_size`` for the figure, every case, DINO's learning rate for the global batch."""

    data: Path
    slice_axis: int = 2
    cases: int | None = None  # the first N cases only (quick runs)
    val_cases: int = 2  # held out for the attention figure
    fold: int | None = None  # pretrain on this fold's training cases only (nnU-Net's split)
    folds: int = 5
    figure_size: int | None = None  # ViT input side of the attention figure (default: 2 x image_size)
    arch: str = "vit_small"
    patch_size: int = 16
    image_size: int = 64  # ViT input / global crop side
    vit_input: str = "resize"
    embed_dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    out_dim: int = 4096
    head_hidden_dim: int = 2048
    head_bn: bool = True  # DINO's --use_bn_in_head: without it short runs on small data collapse
    local_crops: int = 6
    epochs: int = 100
    steps_per_epoch: int = 50
    batch_size: int = 32  # slices per step and device
    lr: float | None = None
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    momentum_teacher: float = 0.996
    drop_path: float = 0.1
    run: RunOptions = field(default_factory=lambda: RunOptions(out=Path("runs/dino")))

    def __post_init__(self) -> None:
        self.data = Path(self.data)

    def check(self) -> None:
        """Raise ``InputError`` (one line naming the flag) for values no run can use."""
        require_at_least_one(
            self, "epochs", "steps_per_epoch", "batch_size", "image_size", "out_dim", "head_hidden_dim"
        )
        for flag in ("cases", "embed_dim", "depth", "heads"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
        if self.arch not in ARCHS:
            raise InputError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.vit_input not in VIT_INPUTS:
            raise InputError(f"--vit-input must be one of {', '.join(VIT_INPUTS)}, got {self.vit_input!r}")
        if self.slice_axis not in (0, 1, 2):
            raise InputError(f"--slice-axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.patch_size < 1:
            raise InputError(f"--patch-size must be >= 1, got {self.patch_size}")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise InputError(f"--fold must be in 0..{self.folds - 1}, got {self.fold}")
        if self.val_cases < 0 or self.local_crops < 0:
            raise InputError("--val-cases and --local-crops must be >= 0")
        if self.figure_size is not None and (self.figure_size < 1 or self.figure_size % self.patch_size):
            raise InputError(f"--figure-size {self.figure_size} must be a positive multiple of --patch-size")
        if self.image_size % self.patch_size:
            raise InputError(
                f"--image-size {self.image_size} must be a multiple of --patch-size {self.patch_size}"
            )
        for flag in ("lr", "teacher_temp", "warmup_teacher_temp"):
            value = getattr(self, flag)
            if value is not None and not value > 0:
                raise InputError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
        if not 0 <= self.momentum_teacher <= 1:
            raise InputError(f"--momentum-teacher must be in [0, 1], got {self.momentum_teacher}")
        if not 0 <= self.drop_path < 1:
            raise InputError(f"--drop-path must be in [0, 1), got {self.drop_path}")
        self.vit_config(1)  # the shape itself (e.g. a width the heads do not divide)
        self.run.check()

    def vit_config(self, in_chans: int) -> DINOViTConfig:
        """The backbone's shape: ``arch`` with the ``embed_dim``/``depth``/``heads`` overrides."""
        from hybrids.shared_blocks.vit import VIT_CONFIGS

        dim, depth, heads = VIT_CONFIGS[self.arch]
        dim, depth, heads = self.embed_dim or dim, self.depth or depth, self.heads or heads
        if dim % heads:
            raise InputError(f"--embed-dim {dim} must be a multiple of the heads ({heads})")
        return DINOViTConfig(
            img_size=self.image_size,
            patch_size=self.patch_size,
            in_chans=in_chans,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
        )


@dataclass
class DINOResult:
    teacher: Path  # the teacher folder (a medical/dino_vit checkpoint)
    figure: Path | None  # the attention figure (None: no held-out case)
    history: list[dict[str, Any]]  # one record per epoch
    module: Any  # the DINOModule, trained
    is_global_zero: bool = True


def _split(config: DINOConfig, cases: list[Any]) -> tuple[list[Any], list[Any]]:
    """``(training cases, cases of the figure)``."""
    if config.fold is None:
        cut = len(cases) - config.val_cases
        return cases[:cut], cases[cut:]
    from hybrids.datasets.msd import MSDError, kfold_split

    try:
        train_names, valid_names = kfold_split([name for name, _ in cases], config.fold, config.folds)
    except MSDError as exc:
        raise InputError(f"{config.data}: {exc}") from None
    train, valid = set(train_names), set(valid_names)
    valid_cases = [c for c in cases if c[0] in valid]
    shown = valid_cases[len(valid_cases) - min(config.val_cases, len(valid_cases)) :]  # the last val_cases
    return [c for c in cases if c[0] in train], shown


def pretrain_dino(config: DINOConfig) -> DINOResult:
    """Pretrain as ``config`` says (module docstring); every process returns."""
    from hybrids.apps.core.training import RunCheckpoint, build_trainer, fit
    from hybrids.apps.medical.dino_crops import local_crop_size
    from hybrids.apps.medical.dino_data import (
        DINODataModule,
        default_dino_preprocessing,
        find_images,
        load_slices,
    )
    from hybrids.apps.medical.dino_figure import attention_figure, held_out_slices
    from hybrids.apps.medical.dino_module import DINOModule
    from hybrids.apps.medical.dino_vit import save_teacher
    from hybrids.datasets.msd import NNUNET_SPLIT

    config.check()
    run = config.run
    cases, dataset = find_images(config.data)
    if config.cases:
        cases = cases[: config.cases]
    if len(cases) <= config.val_cases:
        raise InputError(
            f"{config.data}: {len(cases)} case(s), need more than --val-cases {config.val_cases}"
        )
    prep = default_dino_preprocessing(config.data, cases, dataset)
    train_cases, figure_cases = _split(config, cases)
    started = time.monotonic()
    fit_rule = {"slice_axis": config.slice_axis, "mode": config.vit_input}
    slices, _ = load_slices(train_cases, prep, size=config.image_size, **fit_rule)
    figure_size = config.figure_size or 2 * config.image_size
    figure, names = held_out_slices(figure_cases, prep, size=figure_size, **fit_rule)
    logger.info(
        "%d training slices (%s) in %.1f s",
        len(slices),
        "x".join(map(str, slices.shape[1:])),
        time.monotonic() - started,
    )
    vit = config.vit_config(int(slices.shape[1]))
    world = run.processes * run.num_nodes
    lr = config.lr or 5e-4 * config.batch_size * world / 256
    local_size = local_crop_size(config.image_size, config.patch_size)
    extra = {
        "architecture": config.arch,
        "image_size": config.image_size,
        "vit_input": config.vit_input,
        "slice_axis": config.slice_axis,
        "attention_figure_size": figure_size,
        "attention_maps": "last block, CLS query [:, :, 0, 1:], heads x S/p x S/p, nearest-upsampled by p",
        "training": {
            "method": "DINO (Caron et al. 2021)",
            "data": config.data.name,
            "dataset": getattr(dataset, "name", None),
            "dataset_licence": getattr(dataset, "licence", None),
            "cases": len(train_cases),
            "held_out_cases": [name for name, _ in figure_cases],
            "fold": None
            if config.fold is None
            else {"fold": config.fold, "folds": config.folds, "split": NNUNET_SPLIT},
            "slices": int(slices.shape[0]),
            "epochs": config.epochs,
            "steps_per_epoch": config.steps_per_epoch,
            "batch_size": config.batch_size,
            "global_crop": config.image_size,
            "local_crop": local_size,
            "local_crops": config.local_crops,
            "out_dim": config.out_dim,
            "head_hidden_dim": config.head_hidden_dim,
            "head_batchnorm": config.head_bn,
            "teacher_temp": [config.warmup_teacher_temp, config.teacher_temp],
            "momentum_teacher": [config.momentum_teacher, 1.0],
            "lr": lr,
            "max_time_minutes": run.max_time,
            "seed": run.seed,
            "command": run.command,
        },
    }
    figure_path = run.out / FIGURE_NAME
    preprocessing = prep.to_dict()

    def record(trainer: Any, module: DINOModule) -> dict[str, Any]:
        progress, loss = module.progress(), module.epoch_loss()
        return {
            "loss": loss if math.isfinite(loss) else None,
            "teacher_temp": module.loss.teacher_temp(progress),
            "lr": module.lr_at(progress),
            "seconds": round(module.elapsed(), 1),
        }

    def save(module: DINOModule, folder: Path, rec: dict[str, Any], extra: dict[str, Any]) -> None:
        done = {k: rec[k] for k in ("epoch", "step", "loss")}
        training = {**extra["training"], **done, "train_seconds": rec["seconds"]}
        backbone = module.teacher.backbone
        save_teacher(
            backbone, folder, vit, preprocessing=preprocessing, extra={**extra, "training": training}
        )
        if len(figure):
            was = backbone.training
            loss = "n/a" if rec["loss"] is None else f"{rec['loss']:.3f}"
            side = figure.shape[-1]
            title = (
                f"DINO teacher, last block CLS attention per head at {side}x{side} "
                f"(epoch {rec['epoch']}, step {rec['step']}, loss {loss})"
            )
            attention_figure(backbone, figure.to(module.device), figure_path, title=title, names=names)
            backbone.train(was)

    def describe(rec: dict[str, Any], improved: bool) -> str:
        loss = "n/a" if rec["loss"] is None else f"{rec['loss']:.4f}"
        return f"epoch {rec['epoch']} step {rec['step']}: DINO loss {loss}, {rec['seconds'] / 60:.1f} min"

    checkpoint = RunCheckpoint(
        run.out,
        record=record,
        describe=describe,
        save=save,
        extra=extra,
        trigger="epoch",
        names={"last": TEACHER_FOLDER},
    )
    trainer = build_trainer(
        run,
        callbacks=[checkpoint],
        max_epochs=config.epochs,
        limit_train_batches=config.steps_per_epoch,
        limit_val_batches=0,
        sync_batchnorm=bool(config.head_bn and world > 1),
        log_every_n_steps=min(10, config.steps_per_epoch),
    )
    module = DINOModule(  # after build_trainer, which seeds: the same seed, the same initial weights
        vit,
        out_dim=config.out_dim,
        head_hidden_dim=config.head_hidden_dim,
        head_bn=config.head_bn,
        teacher_temp=(config.warmup_teacher_temp, config.teacher_temp),
        local_crops=config.local_crops,
        lr=lr,
        drop_path_rate=config.drop_path,
        momentum=(config.momentum_teacher, 1.0),
        total_steps=config.epochs * config.steps_per_epoch,
        max_seconds=run.max_time * 60 if run.max_time else None,
        seed=run.seed,
    )
    logger.info(
        "DINO %s/%d (%d parameters) on %d slices, batch %d, %d local crops of %d",
        config.arch,
        config.patch_size,
        sum(p.numel() for p in module.student.backbone.parameters()),
        len(slices),
        config.batch_size,
        config.local_crops,
        local_size,
    )
    data = DINODataModule(
        slices, batch_size=config.batch_size, steps_per_epoch=config.steps_per_epoch, seed=run.seed
    )
    fit(trainer, module, run, datamodule=data)
    if trainer.global_step > 0 and (
        not checkpoint.history or checkpoint.history[-1]["step"] != trainer.global_step
    ):
        checkpoint.checkpoint(trainer, module)  # stopped inside an epoch: keep those steps too
    return DINOResult(
        teacher=run.out / TEACHER_FOLDER,
        figure=figure_path if len(figure) else None,
        history=checkpoint.history,
        module=module,
        is_global_zero=trainer.is_global_zero,
    )
