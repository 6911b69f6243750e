"""Training HT Demucs: ``train(TrainConfig(...))``, behind ``hybrids music train``.

    hybrids music train --data ~/musdb18hq --config htdemucs --devices 8 --strategy ddp -o runs/ht
    hybrids music train --data my_stems/ --init htdemucs --lr 1e-5 --steps 2000 -o runs/finetune
    hybrids music train --data my_stems/ -o runs/finetune --resume      # after a stop or --max-time
    separate -n runs/finetune/best song.mp3

From Python::

    from hybrids.apps.core.run_options import RunOptions
    from hybrids.apps.music.train import TrainConfig, train

    result = train(TrainConfig(data="my_stems", config="tiny", steps=200, run=RunOptions(out="runs/t")))

Data (``data``): a MUSDB18 / MUSDB18-HQ root (trained on the official train split, validated on
the 14 official validation tracks), a folder with ``train/`` and ``valid/`` folders of tracks, or
a folder of track folders (``{drums,bass,other,vocals}.wav`` [+ ``mixture.wav``]; the last tenth,
by name, at least one track, is held out for validation). See ``hybrids.datasets.musdb``.

Recipe (demucs 4.1.0's solver, re-written): random ``segment + shift``-second excerpts of the
stems (a track drawn in proportion to its length); augmentations on the batch of sources
``(batch, sources, channels, samples)``: random shift (then cropped to the segment), left/right
channel swap and sign flip per source, gain scaling in [0.25, 1.25] per source, and remixing
sources across the tracks of groups of ``remix_group`` examples; the mixture is the sum of the
augmented sources. L1 waveform loss (mean over sources), AdamW, gradient-norm clipping, an
optional exponential moving average of the weights (validated and saved instead of the raw
weights). Validation separates whole tracks (chunked, ``apply_model``, no shifts) and reports
the L1 loss and the uSDR (MDX: ``10 log10(sum s^2 / sum (s - s_hat)^2)``); a fresh run validates
its starting point (step 0) first.

Output (``run.out``): ``best/`` (lowest validation loss) and ``last/``, each ``model.safetensors``
+ ``config.json`` (loadable by ``separate -n OUT/best`` and ``create_model(..., weights=OUT/best)``),
``history.json`` (every validation: step, loss, uSDR), ``resume.ckpt`` (for ``--resume``) and
Lightning's ``metrics.csv``; every file is written atomically, so a stop (Ctrl-C, ``--max-time``)
never leaves an empty or half-written checkpoint folder. No pickle is written. The run itself
(Trainer, checkpoints, resume, threads, ``--max-time``, several devices with ``--devices N
--strategy ddp``) is ``hybrids.apps.core.training``; the LightningModule, the DataModule and the
augmentations are in ``hybrids.apps.music.training``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import RunOptions, TrainResult, require_at_least_one

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "train"]

logger = logging.getLogger("hybrids.music.train")

PRESETS = ("tiny", "htdemucs", "htdemucs_6s")


@dataclass
class TrainConfig:
    """What ``hybrids music train`` trains (``run``: how the run runs; its defaults are the core's,
    output ``runs/htdemucs``). ``config``: a preset (``PRESETS``) or a JSON file of
    ``HTDemucsConfig`` fields (default ``tiny``); ``init``: start from these weights instead (a
    model name resolved with ``weights``/``repo`` as by ``separate``, or a checkpoint folder).
    ``segment``, ``shift`` and ``valid_seconds`` are seconds; ``valid_every`` and ``epoch_steps`` steps."""

    data: Path
    config: str | Path | None = None
    init: str | Path | None = None
    weights: str | Path | None = None
    repo: Path | None = None
    segment: float | None = None
    shift: float = 0.5
    valid_seconds: float | None = None
    workers: int = 0
    steps: int = 1000
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.0
    clip_grad: float = 5.0
    ema: float = 0.0
    augment: bool = True
    remix_group: int = 4
    valid_every: int = 200
    epoch_steps: int = 1000
    run: RunOptions = field(default_factory=lambda: RunOptions(out=Path("runs/htdemucs")))

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        if self.repo is not None:
            self.repo = Path(self.repo)

    def check(self) -> None:
        """Raise ``InputError`` (one line naming the flag) for values no run can use."""
        require_at_least_one(self, "steps", "batch_size", "valid_every", "epoch_steps")
        for name in ("lr", "segment", "valid_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.shift < 0 or self.clip_grad < 0 or self.weight_decay < 0 or self.workers < 0:
            raise InputError("--shift, --clip-grad, --weight-decay and --workers must be >= 0")
        if not 0 <= self.ema < 1:
            raise InputError(f"--ema must be in [0, 1), got {self.ema}")
        if self.remix_group < 0:
            raise InputError(f"--remix-group must be >= 0, got {self.remix_group}")
        self.run.check()


def train(config: TrainConfig) -> TrainResult:
    """Train as ``config`` says (module docstring); every process returns."""
    from hybrids.apps.core.training import (
        RunCheckpoint,
        build_trainer,
        fit,
        save_model_folder,
        seed_run,
        validate,
    )
    from hybrids.apps.music.training import Augmentation, HTDemucsTrainingModule, StemsDataModule, build_model

    config.check()
    run = config.run
    seed_run(run)  # before the model is built: its initial weights follow --seed
    model = build_model(
        config.config, init=config.init, weights=config.weights, repo=config.repo, segment=config.segment
    )
    cfg = model.config
    data = StemsDataModule.from_folder(
        config.data,
        sources=list(model.sources),
        samplerate=cfg.samplerate,
        channels=cfg.audio_channels,
        segment=cfg.segment_length,
        shift=int(round(config.shift * cfg.samplerate)),
        batch_size=config.batch_size,
        epoch_steps=config.epoch_steps,
        workers=config.workers,
        valid_seconds=config.valid_seconds,
    )
    augmentation = Augmentation(
        shift=data.shift,
        flip=config.augment,
        scale=(0.25, 1.25) if config.augment else None,
        remix_proba=1.0 if config.augment else 0.0,
        remix_group=config.remix_group,
    )
    module = HTDemucsTrainingModule(
        model, lr=config.lr, weight_decay=config.weight_decay, augmentation=augmentation, ema_decay=config.ema
    )
    recipe = {
        "data": str(config.data),
        "init": None if config.init is None else str(config.init),
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "ema": config.ema,
        "augmentation": asdict(augmentation),
        "train_tracks": len(data.train_tracks),
        "valid_tracks": len(data.valid_tracks),
        "max_time_minutes": run.max_time,
        "seed": run.seed,
        "command": run.command,
    }

    def record(trainer: Any, module: Any) -> dict[str, Any] | None:
        metrics = trainer.callback_metrics
        if "valid_loss" not in metrics:
            return None
        return {k: float(v) for k, v in metrics.items() if k.startswith("valid_")}

    def save(module: Any, folder: Path, rec: dict[str, Any], extra: Any) -> None:
        with module.averaged():  # the weights validated: the EMA's when enabled
            save_model_folder(module, folder, rec, extra)

    def describe(rec: dict[str, Any], improved: bool) -> str:
        return (
            f"step {rec['step']}: valid loss {rec['valid_loss']:.5f}, uSDR "
            f"{rec.get('valid_usdr', float('nan')):.2f} dB{' (best)' if improved else ''}"
        )

    checkpoint = RunCheckpoint(
        run.out,
        record=record,
        score=lambda rec: -rec["valid_loss"],
        describe=describe,
        save=save,
        extra={"training": recipe},
    )
    trainer = build_trainer(
        run,
        callbacks=[checkpoint],
        max_steps=config.steps,
        max_epochs=-1,
        val_check_interval=config.valid_every,  # in steps, across epochs
        check_val_every_n_epoch=None,
        gradient_clip_val=config.clip_grad,
        log_every_n_steps=min(50, config.valid_every),
    )
    logger.info(
        "training %s (%d parameters) on %d tracks, validating on %d",
        model.model_name,
        sum(p.numel() for p in model.parameters()),
        len(data.train_tracks),
        len(data.valid_tracks),
    )
    if not run.resume:
        validate(trainer, module, datamodule=data)  # the starting point
    fit(trainer, module, run, datamodule=data)
    if not checkpoint.history or checkpoint.history[-1]["step"] != trainer.global_step:
        validate(trainer, module, datamodule=data)  # the end (or stopping) point
    return TrainResult(module, checkpoint.history, checkpoint.best, run.out, trainer.is_global_zero)
