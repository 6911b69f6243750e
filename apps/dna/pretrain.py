"""Pretraining HybriDNA: ``pretrain(PretrainConfig(...))``, behind ``hybrids dna pretrain``.

    hybrids dna pretrain --fasta ../shared/data/dna/genomes/ecoli_k12_mg1655.fasta.gz --preset small \\
        --context 4096 --warmup-schedule 1024,2048,4096 --steps 3000 --max-time 120 -o runs/hybridna

Data: every record of every file (FASTA or GenBank, compressed or not) is split into its first
``1 - holdout_fraction`` (training) and its last ``holdout_fraction`` (validation); a record too
short to split goes to training whole. Training draws random windows (``<bos>`` + ``L`` bases,
reverse-complemented with probability 1/2) from the training parts; the context ``L`` follows the
``--warmup-schedule`` (each length for an equal share of ``--steps``, the number of windows per batch
scaled so a batch keeps ``batch_size * context`` tokens), ending at ``--context``. Validation: bits
per base (mean ``-log2 p`` over the A/C/G/T targets) on deterministic non-overlapping tiles of
``--valid-context`` bases of the held-out parts, every ``--valid-every`` steps, at the start and at
the end (including a ``--max-time`` stop). The random initial weights and the windows drawn follow
``--seed`` (default 42).

From Python::

    from hybrids.apps.core.run_options import RunOptions
    from hybrids.apps.dna.pretrain import PretrainConfig, pretrain

    run = RunOptions(out="runs/x", max_time=10)
    result = pretrain(PretrainConfig(fasta=["genome.fa"], preset="tiny", steps=100, run=run))

Output (``run.out``, ``-o OUT``): ``best/`` (lowest validation bits per base) and ``last/``, each
``model.safetensors`` + ``config.json`` (model name and config, the tokenizer, the training
context; loadable with ``load_checkpoint``, ``hybrids dna generate/embed/finetune -m``),
``history.json``, Lightning's ``metrics.csv`` and ``resume.ckpt`` (``--resume``). The run itself
(Trainer, checkpoints, resume, threads) is ``hybrids.apps.core.training``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import RunOptions, require_at_least_one

logger = logging.getLogger("hybrids.dna.pretrain")

MODEL_NAME = "dna/hybridna"


def parse_schedule(text: str | Sequence[int] | None, context: int) -> list[int]:
    """``"1024,4096"`` (or ``[1024, 4096]``) -> ``[1024, 4096, context]`` (``context`` appended when
    not last); increasing."""
    if text is None or len(text) == 0:
        return [int(context)]
    if isinstance(text, str):
        try:
            lengths = [int(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise InputError(
                f"--warmup-schedule {text!r}: expected comma-separated integers, e.g. 1024,4096"
            ) from None
    else:
        lengths = [int(v) for v in text]
        text = ",".join(map(str, lengths))
    if not lengths or any(v < 1 for v in lengths):
        raise InputError(f"--warmup-schedule {text!r}: lengths must be positive integers")
    if lengths[-1] != context:
        if lengths[-1] > context:
            raise InputError(f"--warmup-schedule {text!r} goes beyond --context {context}")
        lengths.append(int(context))
    if any(b <= a for a, b in zip(lengths, lengths[1:])):
        raise InputError(f"--warmup-schedule {text!r}: lengths must increase")
    return lengths


@dataclass
class PretrainConfig:
    """What ``hybrids dna pretrain`` trains (``run``: how the run runs; module docstring).

    ``warmup_schedule``: context lengths trained in turn (``"1024,4096"`` or ``[1024, 4096]``), ending at
    ``context``; ``None``: ``context`` only. ``init``: a checkpoint folder to start from instead of a
    random ``preset``. ``clip_grad`` 0: no gradient clipping.
    """

    fasta: list[Path]
    holdout_fraction: float = 0.1
    context: int = 1024
    warmup_schedule: str | list[int] | None = None
    valid_context: int | None = None  # default: context
    valid_max_tiles: int | None = None  # default: every tile
    rc: bool = True  # reverse-complement augmentation
    preset: str = "small"
    init: Path | None = None
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    clip_grad: float = 1.0
    valid_every: int = 200
    run: RunOptions = field(default_factory=lambda: RunOptions(out=Path("runs/hybridna")))

    def __post_init__(self) -> None:
        paths = [self.fasta] if isinstance(self.fasta, str | Path) else self.fasta
        self.fasta = [Path(p) for p in paths]
        if self.init is not None:
            self.init = Path(self.init)

    @property
    def schedule(self) -> list[int]:
        """The context lengths trained in turn (``parse_schedule``)."""
        return parse_schedule(self.warmup_schedule, self.context)

    def check(self) -> None:
        """Raise ``InputError`` (one line naming the flag) for values no run can use."""
        if not self.fasta:
            raise InputError("--fasta: give at least one FASTA or GenBank file")
        require_at_least_one(self, "steps", "batch_size", "valid_every", "context")
        for flag in ("lr", "valid_context", "valid_max_tiles"):
            value = getattr(self, flag)
            if value is not None and value <= 0:
                raise InputError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise InputError(f"--holdout-fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.warmup_steps < 0 or self.clip_grad < 0 or self.weight_decay < 0:
            raise InputError("--warmup-steps, --clip-grad and --weight-decay must be >= 0")
        if self.init is not None and not self.init.exists():
            raise InputError(f"{self.init}: no such checkpoint (--init)")
        if self.init is None:
            from hybrids.apps.dna.hybridna import HybriDNAConfig

            HybriDNAConfig.from_preset(self.preset)  # raises for an unknown --preset, naming the known ones
        parse_schedule(self.warmup_schedule, self.context)  # raises for a bad --warmup-schedule
        self.run.check()


@dataclass
class PretrainResult:
    history: list[dict[str, Any]]  # every validation (OUT/history.json)
    best: dict[str, Any] | None  # the validation with the lowest bits per base (OUT/best)
    summary: dict[str, Any]  # records and bases read, trained on, held out
    out: Path
    is_global_zero: bool = True


def load_genomes(paths, holdout_fraction: float, tokenizer) -> tuple[list, list, dict[str, Any]]:
    """Token arrays ``(train_parts, valid_parts, summary)`` of every record of ``paths``."""
    from hybrids.datasets.dna import DNAFormatError, count_scored_bases, read_sequences, split_holdout

    train, valid = [], []
    records = bases = 0
    try:
        for path in paths:
            for rec in read_sequences(path):
                tokens = tokenizer.encode_array(rec.sequence, source=f"{path}: record {rec.id!r}")
                records += 1
                bases += len(tokens)
                try:
                    split = split_holdout(tokens, holdout_fraction, 0.5)
                except ValueError:
                    train.append(tokens)  # too short to split
                    continue
                train.append(split.train)
                valid.append(split.test)
    except DNAFormatError as exc:
        raise InputError(str(exc)) from None
    names = ", ".join(map(str, paths))
    if not valid:
        raise InputError(
            f"{names}: no record is long enough to hold out {holdout_fraction:.0%} for validation"
        )
    # The loss is scored on A/C/G/T targets only: with none there is nothing to learn or to measure.
    if not any(count_scored_bases(t) for t in train):
        raise InputError(f"{names}: no A, C, G or T in any record (only N or ambiguity codes)")
    if not any(count_scored_bases(v) for v in valid):
        raise InputError(
            f"{names}: the held-out {holdout_fraction:.0%} of the records has no A, C, G or T to validate on"
        )
    summary = {
        "records": records,
        "bases": bases,
        "train_bases": int(sum(len(t) for t in train)),
        "valid_bases": int(sum(len(v) for v in valid)),
    }
    return train, valid, summary


def build_lm(config: PretrainConfig, vocab_size: int):
    """A trainable HybriDNA: from ``config.init`` or random at ``config.preset`` (``dna/hybridna``)."""
    from hybrids.apps.core.registry import create_model
    from hybrids.apps.dna.hybridna import HybriDNAConfig
    from hybrids.apps.dna.models import load_lm

    if config.init:
        return load_lm(config.init).train()
    cfg = HybriDNAConfig.from_preset(config.preset, max_seq_len=max(config.context, 1024))
    if cfg.vocab_size < vocab_size:
        cfg = cfg.replace(vocab_size=vocab_size)
    return create_model(MODEL_NAME, config=cfg).train()


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pretrain as ``config`` says (module docstring); every process returns."""
    from hybrids.apps.core.training import RunCheckpoint, build_trainer, default_threads, fit, validate
    from hybrids.apps.dna.training import CausalLMModule, GenomeDataModule
    from hybrids.datasets.dna import DNATokenizer

    config.check()
    run = config.run
    schedule = config.schedule
    tokenizer = DNATokenizer()
    train_parts, valid_parts, summary = load_genomes(config.fasta, config.holdout_fraction, tokenizer)
    longest = max(len(t) for t in train_parts)
    if longest < schedule[0]:
        raise InputError(
            f"the longest training part has {longest} bases, fewer than the context {schedule[0]}"
        )
    preprocessing = {
        "tokenizer": tokenizer.to_dict(),
        "bos": True,
        "context": config.context,
        "echo_embedding": "<bos> x x; mean of the second copy",
    }
    recipe = {
        "fasta": [str(p) for p in config.fasta],
        **summary,
        "holdout_fraction": config.holdout_fraction,
        "schedule": schedule,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "rc_augmentation": bool(config.rc),
        "seed": run.seed,
        "init": str(config.init) if config.init else None,
        "command": run.command,
    }

    def record(trainer: Any, module: CausalLMModule) -> dict[str, Any] | None:
        if module.valid_bpb is None:
            return None
        data = trainer.datamodule
        context = data.context_at(trainer.current_epoch) if data is not None else None
        return {"context": context, "valid_bpb": module.valid_bpb}

    def describe(rec: dict[str, Any], improved: bool) -> str:
        return (
            f"step {rec['step']} (context {rec['context']}): valid {rec['valid_bpb']:.4f} bits/base"
            f"{' (best)' if improved else ''}"
        )

    checkpoint = RunCheckpoint(
        run.out,
        record=record,
        score=lambda rec: -rec["valid_bpb"],
        describe=describe,
        extra={"training": recipe},
    )
    trainer = build_trainer(  # seeds: the model's initial weights below follow --seed
        run,
        callbacks=[checkpoint],
        max_steps=config.steps,
        max_epochs=-1,
        val_check_interval=config.valid_every,
        check_val_every_n_epoch=None,
        reload_dataloaders_every_n_epochs=1,
        gradient_clip_val=config.clip_grad,
        log_every_n_steps=min(50, config.valid_every),
    )
    model = build_lm(config, tokenizer.vocab_size)
    model.preprocessing = preprocessing
    data = GenomeDataModule(
        train_parts,
        valid_parts,
        schedule=schedule,
        batch_size=config.batch_size,
        epoch_steps=max(1, -(-config.steps // len(schedule))),
        valid_context=config.valid_context or config.context,
        valid_max_tiles=config.valid_max_tiles,
        rc_prob=0.5 if config.rc else 0.0,
        seed=run.seed,
    )
    module = CausalLMModule(
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=min(config.warmup_steps, config.steps),
        total_steps=config.steps,
    )
    logger.info(
        "pretraining %s (%d parameters) on %d records (%d training bases, %d held out); "
        "contexts %s, %s threads",
        MODEL_NAME,
        sum(p.numel() for p in model.parameters()),
        summary["records"],
        summary["train_bases"],
        summary["valid_bases"],
        ",".join(map(str, schedule)),
        default_threads(run) or "torch's default",
    )
    if not run.resume:
        validate(trainer, module, datamodule=data)  # the starting point
    fit(trainer, module, run, datamodule=data)
    if not checkpoint.history or checkpoint.history[-1]["step"] != trainer.global_step:
        validate(trainer, module, datamodule=data)  # the end point
    return PretrainResult(checkpoint.history, checkpoint.best, summary, run.out, trainer.is_global_zero)
