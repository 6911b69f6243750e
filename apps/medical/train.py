"""Training segmentation models: ``train(TrainConfig(...))``, behind ``hybrids medical train``.

    hybrids medical train --data ../shared/data/hippocampus -m swtr_unet --preset hippocampus_2d -o runs/h2d
    hybrids medical train --data Task04_Hippocampus -m swtr_unet_3d --fold 1 --max-time 40 -o runs/h3d
    hybrids medical train --data DIR -m hiformer_s --devices 8 --strategy ddp -o runs/hi
    hybrids medical segment -m runs/h2d/best ...

Data (``data``): a Medical Segmentation Decathlon folder (``dataset.json``, ``imagesTr/``,
``labelsTr/``; nnU-Net v2's raw layout too, see ``hybrids.datasets.msd``). Fold ``fold`` of
``folds`` is nnU-Net's split (sorted case names, ``KFold(shuffle=True, random_state=12345)``): the
model never trains on its validation cases. Every case is preprocessed once and kept in memory:
re-oriented and resampled (``Preprocessing``: orientation RAS, the dataset's median voxel spacing
unless ``spacing``, z-score per volume for MRI, nnU-Net's CT scheme for CT) with exactly the
transforms inference uses.

Recipe: patches (3-D models: ``patch_size``, default the largest case rounded up to the model's
size divisor, i.e. the whole volume for small datasets; 2-D models: whole slices along
``slice_axis``) drawn with nnU-Net's foreground oversampling (a third of the patches centred on a
voxel of a random foreground class); MONAI augmentations (random rotation and scaling, flips on
every axis, intensity scale, gamma, Gaussian noise); the ``loss`` (default Dice + cross-entropy:
soft Dice over the batch, foreground classes); AdamW (default) or nnU-Net's SGD (momentum 0.99,
Nesterov) with a short warm-up and polynomial decay that ends at the last step or at
``--max-time``, whichever comes first. Validation predicts each validation case whole (sliding
windows, Gaussian weights, 2-D models slice by slice; ``hybrids.apps.medical.inference``) and
scores Dice per class with nnU-Net's rule (mean over cases, NaN when both masks are empty).

Output (``run.out``): ``best/`` (highest mean foreground Dice) and ``last/``, each
``model.safetensors`` + ``config.json`` with the model, its preprocessing, the label names, the
inference settings and the training provenance (``hybrids medical segment -m OUT/best`` reads
them); ``history.json`` (every validation); ``resume.ckpt`` (for ``--resume``). The run itself
(Trainer, checkpoints, resume, threads) is ``hybrids.apps.core.training``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import RunOptions, TrainResult

logger = logging.getLogger("hybrids.medical.train")

LOSSES = ("dice_ce", "dice", "ce")


@dataclass
class TrainConfig:
    """What ``hybrids medical train`` trains (``run``: how the run runs). ``None`` defaults are
    chosen from the data or the model: patch size (largest case), batch size (2-D 32, 3-D 4),
    learning rate (AdamW 1e-3, SGD 1e-2), weight decay (AdamW 1e-2, SGD 3e-5)."""

    data: Path
    model: str
    preset: str | None = None
    fold: int = 0
    folds: int = 5
    val_cases: int | None = None  # validate on the fold's first N validation cases only
    train_cases: int | None = None  # train on the fold's first N training cases only
    spacing: tuple[float, float, float] | None = None  # mm; default: the dataset's median
    num_workers: int = 0
    init_attention_encoder: Path | None = None  # DIAMANT: frozen ViT weights (a DINO teacher)
    patch_size: tuple[int, ...] | None = None
    slice_axis: int = 2
    epochs: int = 100
    steps_per_epoch: int = 250
    batch_size: int | None = None
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int = 50
    oversample_fg: float = 1 / 3
    augment: bool = True
    loss: str = "dice_ce"
    val_every: int = 1  # epochs
    run: RunOptions = field(default_factory=lambda: RunOptions(out=Path("runs/medical")))

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        for name in ("patch_size", "spacing"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(value))

    def check(self) -> None:
        """Raise ``InputError`` (one line naming the flag) for values no run can use."""
        for flag in ("epochs", "steps_per_epoch", "val_every", "folds"):
            if getattr(self, flag) < 1:
                raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(self, flag)}")
        for flag in ("batch_size", "val_cases", "train_cases"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.folds < 2:
            raise InputError(f"--folds must be >= 2, got {self.folds}")
        if not 0 <= self.fold < self.folds:
            raise InputError(f"--fold must be in 0..{self.folds - 1}, got {self.fold}")
        if not 0 <= self.oversample_fg <= 1:
            raise InputError(f"--oversample-fg must be in [0, 1], got {self.oversample_fg}")
        if self.num_workers < 0 or self.warmup_steps < 0 or (self.weight_decay or 0) < 0:
            raise InputError("--num-workers, --warmup-steps and --weight-decay must be >= 0")
        if self.optimizer not in ("adamw", "sgd"):
            raise InputError(f"--optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        self.run.check()


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says (module docstring); every process returns."""
    from hybrids.apps.core.training import RunCheckpoint, build_trainer, fit, seed_run, validate
    from hybrids.apps.medical.training import (
        MedicalDataModule,
        SegmentationModule,
        build_model,
        default_patch,
        default_preprocessing,
        inference_settings,
        preprocess_case,
    )
    from hybrids.datasets.msd import NNUNET_SPLIT, MSDError, kfold_split, names_digest, read_msd_dataset

    config.check()
    run = config.run
    seed_run(run)  # before the model is built: its initial weights follow --seed
    try:
        dataset = read_msd_dataset(config.data)
        train_names, valid_names = kfold_split(dataset.case_names, config.fold, config.folds)
    except MSDError as exc:
        raise InputError(str(exc)) from None
    if config.train_cases:
        train_names = train_names[: config.train_cases]
    scored_names = valid_names[: config.val_cases] if config.val_cases else valid_names
    model = build_model(
        config.model, config.preset, in_channels=dataset.in_channels, num_classes=dataset.num_classes
    )
    if config.init_attention_encoder:
        if not hasattr(model, "load_attention_encoder"):
            raise InputError(
                f"--init-attention-encoder: {config.model} has no attention encoder (DIAMANT has)"
            )
        model.load_attention_encoder(config.init_attention_encoder)
    dims, divisor = int(model.spatial_dims), int(getattr(model, "size_divisor", 1) or 1)
    if config.patch_size is not None:
        if len(config.patch_size) != dims:
            raise InputError(
                f"--patch-size: a {dims}-D model needs {dims} sizes, got {len(config.patch_size)}"
            )
        bad = [p for p in config.patch_size if p % divisor]
        if bad:
            raise InputError(f"--patch-size: sizes must be multiples of {divisor} (the model's), got {bad}")
    train_set = [dataset.case(n) for n in train_names]
    prep = default_preprocessing(dataset, train_set, config.spacing)
    started = time.monotonic()
    train_cases = [preprocess_case(c, prep) for c in train_set]
    valid_cases = [preprocess_case(dataset.case(n), prep) for n in scored_names]
    logger.info(
        "preprocessed %d cases in %.1f s", len(train_cases) + len(valid_cases), time.monotonic() - started
    )
    patch = config.patch_size or default_patch(
        [c.shape for c in train_cases], dims, divisor, config.slice_axis
    )
    batch_size = config.batch_size or (32 if dims == 2 else 4)
    sgd = config.optimizer == "sgd"
    lr = config.lr or (1e-2 if sgd else 1e-3)
    weight_decay = config.weight_decay if config.weight_decay is not None else (3e-5 if sgd else 1e-2)
    settings = inference_settings(dims, patch, config.slice_axis)
    data = MedicalDataModule(
        train_cases,
        valid_cases,
        patch=patch,
        spatial_dims=dims,
        batch_size=batch_size,
        steps_per_epoch=config.steps_per_epoch,
        slice_axis=config.slice_axis,
        oversample_fg=config.oversample_fg,
        augment=config.augment,
        num_workers=config.num_workers,
        seed=run.seed,
    )
    module = SegmentationModule(
        model,
        valid_cases=valid_cases,
        inference=settings,
        label_names={k: v for k, v in dataset.labels.items() if k > 0},
        optimizer=config.optimizer,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=config.warmup_steps,
        total_steps=config.epochs * config.steps_per_epoch,
        max_seconds=run.max_time * 60 if run.max_time else None,
        loss=config.loss,
    )
    extra = {
        "labels": dataset.labels_json(),
        "inference": settings,
        "training": {
            "data": config.data.name,
            "dataset": dataset.name,
            "dataset_licence": dataset.licence,
            "dataset_reference": dataset.reference,
            "fold": config.fold,
            "folds": config.folds,
            "split": NNUNET_SPLIT,
            "train_cases": len(train_names),
            "validation_cases": scored_names,
            "fold_validation_cases": len(valid_names),
            "validation_cases_sha256": names_digest(valid_names),
            "epochs": config.epochs,
            "steps_per_epoch": config.steps_per_epoch,
            "batch_size": batch_size,
            "patch_size": list(patch),
            "optimizer": config.optimizer,
            "loss": config.loss,
            "lr": lr,
            "weight_decay": weight_decay,
            "augment": config.augment,
            "oversample_fg": config.oversample_fg,
            "max_time_minutes": run.max_time,
            "seed": run.seed,
            "command": run.command,
        },
    }
    model.preprocessing = prep.to_dict()
    steps_per_epoch = config.steps_per_epoch

    def record(trainer: Any, module: SegmentationModule) -> dict[str, Any] | None:
        scores = module.validation_scores()
        if scores is None:
            return None
        return {  # the epoch the last step belongs to (also after the loop ended or stopped)
            "epoch": max(0, math.ceil(trainer.global_step / steps_per_epoch) - 1),
            "train_loss": module.epoch_loss(),
            **scores,
            "seconds": round(module.elapsed(), 1),
        }

    def save(module: SegmentationModule, folder: Path, rec: dict[str, Any], extra: dict[str, Any]) -> None:
        from hybrids.apps.core.training import save_model_folder

        provenance = {
            "epoch": rec["epoch"],
            "step": rec["step"],
            "train_seconds": rec["seconds"],
            "validation_dice": rec["dice"],
            "validation_mean_dice": rec["mean_dice"],
            "validation_cases_scored": rec["cases"],
        }
        save_model_folder(module, folder, provenance, extra)

    def describe(rec: dict[str, Any], improved: bool) -> str:
        dice = " ".join(f"{k} {v:.4f}" for k, v in rec["dice"].items())
        return (
            f"epoch {rec['epoch']} step {rec['step']}: loss {rec['train_loss']:.4f}, val Dice {dice} "
            f"mean {rec['mean_dice']:.4f}{' (best)' if improved else ''}, {rec['seconds'] / 60:.1f} min"
        )

    checkpoint = RunCheckpoint(
        run.out, record=record, score=lambda rec: rec["mean_dice"], describe=describe, save=save, extra=extra
    )
    trainer = build_trainer(
        run,
        callbacks=[checkpoint],
        max_epochs=config.epochs,
        limit_train_batches=config.steps_per_epoch,
        check_val_every_n_epoch=config.val_every,
        gradient_clip_val=12.0,
        log_every_n_steps=min(50, config.steps_per_epoch),
        use_distributed_sampler=True,
    )
    logger.info(
        "training %s (%d parameters, %d-D, patch %s, batch %d) on %d cases, validating on %d",
        model.model_name,
        sum(p.numel() for p in model.parameters()),
        dims,
        "x".join(map(str, patch)),
        batch_size,
        len(train_cases),
        len(valid_cases),
    )
    fit(trainer, module, run, datamodule=data)
    if valid_cases and (not checkpoint.history or checkpoint.history[-1]["step"] != trainer.global_step):
        validate(trainer, module, datamodule=data)  # the stopping point
    return TrainResult(module, checkpoint.history, checkpoint.best, run.out, trainer.is_global_zero)
