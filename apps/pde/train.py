"""Training PDE surrogates: ``train(TrainConfig(...))``, behind ``hybrids pde train``.

    hybrids pde simulate -o data/kf64 --grid 64 --trajectories 48
    hybrids pde train --data data/kf64 -m factformer --preset small -o runs/ff --max-time 15 --threads 1
    hybrids pde train --data data/kf64 -m fno -o runs/fno --steps 600 --threads 1

Data (``data``): a folder of ``hybrids pde simulate`` (``hybrids.datasets.kolmogorov``). Frames are taken
every ``interval``-th (2: FactFormer's spacing of 1/16 time units); the last ``test_trajectories``
trajectories (other initial conditions) are held out and validate the model by autoregressive rollout
(``val_steps`` frames from ``val_windows`` start points each). The model normalises its input by the
training frames' mean and standard deviation, stored in its config.

Recipe (``hybrids.apps.pde.training``): FactFormer's relative L2 loss, AdamW, OneCycle, gradient
clipping, latent-step curriculum and push-forward; progress is counted in steps or in ``--max-time``,
whichever runs out first.

Output (``run.out``): ``best/`` (lowest rollout error) and ``last/`` (``model.safetensors`` +
``config.json``, loadable with ``create_model(name, weights=DIR)`` or ``hybrids pde rollout DIR``),
``history.json`` and ``resume.ckpt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import RunOptions, TrainResult, require_at_least_one

logger = logging.getLogger("hybrids.pde.train")

LOSSES = ("rel_l2", "mse")


@dataclass
class TrainConfig:
    """What ``hybrids pde train`` trains (``run``: how the run runs)."""

    data: Path
    model: str
    preset: str | None = None
    test_trajectories: int = 8
    interval: int = 2
    steps: int = 4000
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-4
    clip: float = 1.0
    loss: str = "rel_l2"
    curriculum_steps: int | None = None  # default: 30 % of the progress
    pushforward_after: int | None = None  # default: 40 % of the progress; -1: never
    pushforward_every: int = 3
    val_every: int = 250
    val_steps: int = 16
    val_windows: int = 2
    run: RunOptions = field(default_factory=lambda: RunOptions(out=Path("runs/pde")))

    def __post_init__(self) -> None:
        self.data = Path(self.data)

    def check(self) -> None:
        """Raise ``InputError`` (one line naming the flag) for values no run can use."""
        require_at_least_one(
            self,
            "test_trajectories",
            "interval",
            "steps",
            "batch_size",
            "pushforward_every",
            "val_every",
            "val_steps",
            "val_windows",
        )
        if not self.lr > 0 or self.weight_decay < 0 or not self.clip > 0:
            raise InputError("--lr and --clip must be > 0, --weight-decay >= 0")
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.curriculum_steps is not None and self.curriculum_steps < 0:
            raise InputError(f"--curriculum-steps must be >= 0, got {self.curriculum_steps}")
        self.run.check()


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says (module docstring); every process returns."""
    from hybrids.apps.core.errors import HybridsError
    from hybrids.apps.core.registry import create_model, get_model_entry
    from hybrids.apps.core.training import (
        RunCheckpoint,
        build_trainer,
        fit,
        save_model_folder,
        seed_run,
        validate,
    )
    from hybrids.apps.pde.training import (
        PDEDataModule,
        SurrogateModule,
        TrainWindows,
        load_split,
        validation_windows,
    )
    from hybrids.datasets.kolmogorov import KolmogorovError, read_dataset

    config.check()
    run = config.run
    try:
        entry = get_model_entry(config.model)
        if not entry.name.startswith("pde/"):
            raise InputError(f"-m {config.model}: not a PDE model ({entry.name})")
        dataset = read_dataset(config.data)
        if config.test_trajectories >= len(dataset):
            raise InputError(
                f"--test-trajectories {config.test_trajectories}: {config.data} has only {len(dataset)} "
                "trajectories (some must remain for training)"
            )
        train_set, test_set = load_split(dataset, config.interval, config.test_trajectories)
    except KolmogorovError as exc:
        raise InputError(str(exc)) from None
    n = dataset.grid
    mean, std = float(train_set.mean()), float(train_set.std())
    seed_run(run)  # before the model is built: its initial weights follow --seed
    try:
        model = create_model(entry.name, preset=config.preset, grid=n, norm_mean=mean, norm_std=std)
    except HybridsError as exc:
        raise InputError(str(exc)) from None
    cfg = model.config
    if getattr(cfg, "spatial_dims", 2) != 2:
        raise InputError(f"-m {entry.name}: a {cfg.spatial_dims}-D model cannot train on 2-D Kolmogorov flow")
    if getattr(cfg, "modes", 0) > n // 2:
        raise InputError(f"-m {entry.name}: {cfg.modes} Fourier modes do not fit a {n}x{n} grid")
    in_frames, max_steps = int(model.in_frames), int(getattr(model, "max_steps", 1))
    future = 3 * max_steps  # push-forward: two unrolled chunks, then the trained one
    frames = train_set.shape[1]
    if frames < in_frames + max(future, config.val_steps):
        raise InputError(
            f"{config.data}: trajectories of {frames} frames (every {config.interval}-th) are too short for "
            f"{in_frames} input frames and {max(future, config.val_steps)} predicted ones"
        )
    total = config.steps
    curriculum = 0.3 if config.curriculum_steps is None else config.curriculum_steps / total
    if config.pushforward_after is None:
        pushforward: float | None = 0.4
    else:
        pushforward = None if config.pushforward_after < 0 else config.pushforward_after / total
    data = PDEDataModule(
        TrainWindows(train_set, in_frames, future, seed=run.seed),
        validation_windows(test_set, in_frames, config.val_steps, config.val_windows),
        batch_size=config.batch_size,
    )
    module = SurrogateModule(
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        total_steps=total,
        max_seconds=run.max_time * 60 if run.max_time else None,
        loss=config.loss,
        curriculum=curriculum,
        pushforward_after=pushforward,
        pushforward_every=config.pushforward_every,
        val_steps=config.val_steps,
    )
    parameters = sum(p.numel() for p in model.parameters())
    extra = {
        "training": {
            "data": str(config.data),
            "dataset": dataset.meta.get("simulation", {}),
            "grid": n,
            "frame_dt": dataset.frame_dt * config.interval,
            "train_trajectories": int(train_set.shape[0]),
            "test_trajectories": int(test_set.shape[0]),
            "interval": config.interval,
            "parameters": parameters,
            "steps": total,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "weight_decay": config.weight_decay,
            "clip": config.clip,
            "loss": config.loss,
            "curriculum": curriculum,
            "pushforward_after": pushforward,
            "pushforward_every": config.pushforward_every,
            "max_time_minutes": run.max_time,
            "threads": run.threads,
            "seed": run.seed,
            "command": run.command,
        }
    }
    model.preprocessing = {
        "normalisation": {"mean": mean, "std": std},
        "in_frames": in_frames,
        "frame_dt": dataset.frame_dt * config.interval,
        "grid": n,
    }

    def record(trainer: Any, module: SurrogateModule) -> dict[str, Any] | None:
        result = module.validation_result()
        if result is None:
            return None
        return {
            **result,
            "train_loss": module.epoch_loss(),
            "latent_steps": module.latent_steps(module.progress()),
            "seconds": round(module.elapsed(), 1),
        }

    def save(module: SurrogateModule, folder: Path, rec: dict[str, Any], extra: dict[str, Any]) -> None:
        provenance = {
            "step": rec["step"],
            "train_seconds": rec["seconds"],
            "rollout_rel_l2": rec["rollout_rel_l2"],
            "rel_l2_per_step": rec["rel_l2_per_step"],
            "val_steps": rec["val_steps"],
        }
        save_model_folder(module, folder, provenance, extra)

    def describe(rec: dict[str, Any], improved: bool) -> str:
        loss = rec["train_loss"]
        return (
            f"step {rec['step']}: loss {loss if loss is None else round(loss, 4)}, rollout rel L2 "
            f"{rec['rollout_rel_l2']:.4f} over {rec['val_steps']} steps{' (best)' if improved else ''}, "
            f"{rec['seconds'] / 60:.1f} min"
        )

    checkpoint = RunCheckpoint(
        run.out,
        record=record,
        score=lambda rec: -rec["rollout_rel_l2"],
        describe=describe,
        save=save,
        extra=extra,
    )
    trainer = build_trainer(
        run,
        callbacks=[checkpoint],
        max_steps=total,
        max_epochs=-1,
        val_check_interval=config.val_every,
        check_val_every_n_epoch=None,
        gradient_clip_val=config.clip,
        log_every_n_steps=min(50, config.val_every),
    )
    logger.info(
        "training %s (%d parameters) on %d trajectories (%dx%d, %d frames), validating on %d",
        entry.name,
        parameters,
        train_set.shape[0],
        n,
        n,
        frames,
        test_set.shape[0],
    )
    fit(trainer, module, run, datamodule=data)
    if not checkpoint.history or checkpoint.history[-1]["step"] != trainer.global_step:
        validate(trainer, module, datamodule=data)  # the stopping point
    return TrainResult(module, checkpoint.history, checkpoint.best, run.out, trainer.is_global_zero)
