"""Pretraining HybriDNA: ``hybrids dna pretrain --fasta FILE... [--context L] [--warmup-schedule ...]``.

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
the end (including a ``--max-time`` stop).

Output (``-o OUT``): ``best/`` (lowest validation bits per base) and ``last/``, each
``model.safetensors`` + ``config.json`` (model name and config, the tokenizer, the training
context; loadable with ``load_checkpoint``, ``hybrids dna generate/embed/finetune -m``),
``history.json``, Lightning's ``metrics.csv`` and ``resume.ckpt`` (``--resume``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError

logger = logging.getLogger("hybrids.dna.pretrain")

MODEL_NAME = "dna/hybridna"


def parse_schedule(text: str | None, context: int) -> list[int]:
    """``"1024,4096"`` -> ``[1024, 4096, context]`` (``context`` appended when not last); increasing."""
    if not text:
        return [int(context)]
    try:
        lengths = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(
            f"--warmup-schedule {text!r}: expected comma-separated integers, e.g. 1024,4096"
        ) from None
    if not lengths or any(v < 1 for v in lengths):
        raise InputError(f"--warmup-schedule {text!r}: lengths must be positive integers")
    if lengths[-1] != context:
        if lengths[-1] > context:
            raise InputError(f"--warmup-schedule {text!r} goes beyond --context {context}")
        lengths.append(int(context))
    if any(b <= a for a, b in zip(lengths, lengths[1:])):
        raise InputError(f"--warmup-schedule {text!r}: lengths must increase")
    return lengths


def check_args(args: argparse.Namespace) -> None:
    for flag in ("steps", "batch_size", "valid_every", "context"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("lr", "max_time", "valid_context", "valid_max_tiles"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise InputError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    if not 0.0 < args.holdout_fraction < 1.0:
        raise InputError(f"--holdout-fraction must be in (0, 1), got {args.holdout_fraction}")
    if args.warmup_steps < 0 or args.clip_grad < 0 or args.weight_decay < 0:
        raise InputError("--warmup-steps, --clip-grad and --weight-decay must be >= 0")
    if args.resume and not (Path(args.out) / "resume.ckpt").is_file():
        raise InputError(f"{Path(args.out) / 'resume.ckpt'}: nothing to resume (no such file)")


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


def build_lm(args: argparse.Namespace, vocab_size: int):
    """A trainable HybriDNA: from ``--init`` or random at ``--preset`` (registered as ``dna/hybridna``
    when the registry knows it, so ``load_checkpoint`` rebuilds it)."""
    from hybrids.apps.dna.hybridna import HybriDNA, HybriDNAConfig

    if args.init:
        from hybrids.apps.dna.finetune import load_lm

        return load_lm(args.init).train()
    cfg = HybriDNAConfig.from_preset(args.preset, max_seq_len=max(args.context, 1024))
    if cfg.vocab_size < vocab_size:
        cfg = cfg.replace(vocab_size=vocab_size)
    try:
        from hybrids.apps.core.registry import create_model

        model = create_model(MODEL_NAME, config=cfg)
    except Exception as exc:  # models.py not there yet: the plain module
        logger.debug("create_model(%s) failed (%s); building HybriDNA directly", MODEL_NAME, exc)
        model = HybriDNA(cfg)
        model.model_name = MODEL_NAME
    return model.train()


def _log_version(out: Path, resume: bool) -> str:
    """Lightning's ``metrics.csv`` goes to ``OUT``, or ``OUT/resumed_N`` for the N-th ``--resume``."""
    if not resume:
        return ""
    n = 1
    while (out / f"resumed_{n}").exists():
        n += 1
    return f"resumed_{n}"


def pretrain(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``hybrids dna pretrain`` (module docstring); returns ``{"history", "best", "summary"}``."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from hybrids.apps.dna.training import CausalLMModule, GenomeDataModule, LMCheckpoint, quiet_lightning
    from hybrids.datasets.dna import DNATokenizer

    check_args(args)
    schedule = parse_schedule(args.warmup_schedule, args.context)
    quiet_lightning(getattr(args, "verbose", 0))
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(args.seed, workers=True, verbose=False)
    tokenizer = DNATokenizer()
    train_parts, valid_parts, summary = load_genomes(args.fasta, args.holdout_fraction, tokenizer)
    longest = max(len(t) for t in train_parts)
    if longest < schedule[0]:
        raise InputError(
            f"the longest training part has {longest} bases, fewer than the context {schedule[0]}"
        )
    model = build_lm(args, tokenizer.vocab_size)
    devices: Any = int(args.devices) if str(args.devices).isdigit() else args.devices
    epoch_steps = max(1, -(-args.steps // len(schedule)))
    data = GenomeDataModule(
        train_parts,
        valid_parts,
        schedule=schedule,
        batch_size=args.batch_size,
        epoch_steps=epoch_steps,
        valid_context=args.valid_context or args.context,
        valid_max_tiles=args.valid_max_tiles,
        rc_prob=0.5 if args.rc else 0.0,
        seed=args.seed,
    )
    module = CausalLMModule(
        model,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=min(args.warmup_steps, args.steps),
        total_steps=args.steps,
    )
    preprocessing = {
        "tokenizer": tokenizer.to_dict(),
        "bos": True,
        "context": args.context,
        "echo_embedding": "<bos> x x; mean of the second copy",
    }
    recipe = {
        "fasta": [str(p) for p in args.fasta],
        **summary,
        "holdout_fraction": args.holdout_fraction,
        "schedule": schedule,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "rc_augmentation": bool(args.rc),
        "seed": args.seed,
    }
    checkpoint = LMCheckpoint(args.out, preprocessing, recipe)
    quiet = getattr(args, "quiet", 0) > 0
    out = Path(args.out)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=devices,
        strategy=args.strategy,
        precision=args.precision,
        max_steps=args.steps,
        max_epochs=-1,
        max_time={"seconds": args.max_time * 60} if args.max_time else None,
        val_check_interval=args.valid_every,
        check_val_every_n_epoch=None,
        reload_dataloaders_every_n_epochs=1,
        num_sanity_val_steps=0,
        gradient_clip_val=args.clip_grad or None,
        callbacks=[checkpoint],
        logger=CSVLogger(out, name="", version=_log_version(out, args.resume)),
        enable_checkpointing=False,
        enable_progress_bar=not quiet,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, args.valid_every)),
        default_root_dir=out,
        inference_mode=False,  # no_grad: the SSD kernel caches masks that autograd reuses later
    )
    logger.info(
        "pretraining %s (%d parameters) on %d records (%d training bases, %d held out); "
        "contexts %s, %d threads",
        MODEL_NAME,
        sum(p.numel() for p in model.parameters()),
        summary["records"],
        summary["train_bases"],
        summary["valid_bases"],
        ",".join(map(str, schedule)),
        torch.get_num_threads(),
    )
    ckpt = out / "resume.ckpt" if args.resume else None
    if ckpt is None:
        trainer.validate(module, datamodule=data, verbose=False)  # the starting point
    trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=True if ckpt else None)
    if not checkpoint.history or checkpoint.history[-1]["step"] != trainer.global_step:
        trainer.validate(module, datamodule=data, verbose=False)  # the end point
    return {"history": checkpoint.history, "best": checkpoint.best, "summary": summary}
