"""Sequence classification on GUE-style tasks: ``hybrids dna finetune --task DIR``.

    hybrids dna finetune --task ../shared/data/dna/gue/tf_0 --init runs/dna/best -o runs/tf_0
    hybrids dna finetune --task ../shared/data/dna/gue/tf_0 --model cnn -o runs/tf_0_cnn   # the baseline

``DIR`` holds ``train.csv``, ``dev.csv`` and ``test.csv`` (``sequence,label``). The model trains on
train, is evaluated on dev after every validation interval, and the weights with the best dev MCC
(ties: lower dev loss) are restored and scored once on test; dev is used for model selection only.

HybriDNA (``--model hybridna``, weights from ``--init`` = a ``hybrids dna pretrain`` folder, or a random
``--preset``): echo embedding, i.e. the backbone reads ``<bos> x x`` and the hidden states of the
second copy of ``x`` (which has seen all of ``x``) are mean-pooled (``--pooling max`` / ``mean+max``
are options); a linear head gives the class logits. ``--rc-average`` averages the logits of the sequence
and of its reverse complement (both for training and evaluation). The CNN baseline (``--model cnn``,
``hybrids.apps.dna.cnn_baseline``) goes through the same loop. Metrics: MCC, macro F1, AUROC (binary:
of class 1; else one-vs-rest macro).

Output (``-o OUT``): ``OUT/best/`` (``model.safetensors`` + ``config.json``: the classifier's kind,
backbone config, tokenizer, classes, recipe and metrics), ``OUT/metrics.json`` (best dev and test
metrics, history) and Lightning's ``metrics.csv``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hybrids.apps.core.errors import InputError
from hybrids.datasets.atomic import make_output_folder
from hybrids.datasets.dna import (
    BOS_ID,
    PAD_ID,
    DNAFormatError,
    DNATokenizer,
    read_gue_csv,
    reverse_complement,
)

logger = logging.getLogger("hybrids.dna.finetune")

SPLITS = ("train", "dev", "test")


def reverse_complement_padded(tokens: Tensor) -> Tensor:
    """Reverse complement of each row's non-``<pad>`` prefix; ``(b, l) -> (b, l)``, padding stays right."""
    lengths = (tokens != PAD_ID).sum(1, keepdim=True)  # (b, 1)
    pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    src = (lengths - 1 - pos).clamp_min(0)
    flipped = tokens.gather(1, src)
    rc = reverse_complement(flipped).flip(-1)  # complement only: reverse_complement flips, undo it
    return torch.where(pos < lengths, rc, torch.full_like(tokens, PAD_ID))


def echo_inputs(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``tokens (b, l)`` right-padded -> ``(inputs, second)``: ``inputs (b, 1 + 2 l)`` is ``<bos> x x``
    per row, right-padded; ``second (b, l)`` indexes the second copy, ``second[i, j] = 1 + n_i + j``
    (``n_i``: row ``i``'s length; 0 where ``j >= n_i``)."""
    b, l = tokens.shape
    lengths = (tokens != PAD_ID).sum(1, keepdim=True)
    pos = torch.arange(l, device=tokens.device).expand(b, l)
    valid = pos < lengths
    out = torch.full((b, 1 + 2 * l), PAD_ID, dtype=tokens.dtype, device=tokens.device)
    out[:, 0] = BOS_ID
    first = torch.where(valid, 1 + pos, torch.zeros_like(pos))
    second = torch.where(valid, 1 + lengths + pos, torch.zeros_like(pos))
    out.scatter_(1, first, torch.where(valid, tokens, torch.full_like(tokens, BOS_ID)))
    out.scatter_(1, second, torch.where(valid, tokens, torch.full_like(tokens, BOS_ID)))
    out[:, 0] = BOS_ID
    return out, second


def echo_embeddings(backbone: nn.Module, tokens: Tensor) -> Tensor:
    """Per-token echo embeddings ``(b, l, d_model)`` of right-padded ``tokens (b, l)`` (padded rows
    positions hold garbage: mask them with ``tokens != <pad>``)."""
    inputs, second = echo_inputs(tokens)
    hidden = backbone.hidden_states(inputs)  # (b, 1 + 2l, d)
    return hidden.gather(1, second.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


POOLINGS = ("mean", "max", "mean+max")


class HybriDNAClassifier(nn.Module):
    """Echo-embedding classifier: ``forward(tokens (b, l)) -> logits (b, num_classes)``.

    ``tokens``: bases only (no ``<bos>``), right-padded with ``<pad>``. ``pooling`` over the second copy's
    valid positions: ``"mean"`` (the echo-embedding paper's and the default), ``"max"`` (per channel) or
    ``"mean+max"`` (both, concatenated: the head reads ``2 d_model`` features, as the CNN baseline).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        rc_average: bool = False,
        dropout: float = 0.1,
        pooling: str = "mean",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.rc_average = bool(rc_average)
        self.pooling = pooling
        self.drop = nn.Dropout(dropout)
        width = backbone.config.d_model * (2 if pooling == "mean+max" else 1)
        self.head = nn.Linear(width, self.num_classes)

    def pooled(self, tokens: Tensor) -> Tensor:
        """The second copy's hidden states pooled over the valid positions: ``(b, d_model)`` (mean or
        max) or ``(b, 2 d_model)`` (mean+max)."""
        h = echo_embeddings(self.backbone, tokens)
        valid = (tokens != PAD_ID).unsqueeze(-1)
        parts = []
        if self.pooling in ("mean", "mean+max"):
            mask = valid.to(h.dtype)
            parts.append((h * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        if self.pooling in ("max", "mean+max"):
            parts.append(h.masked_fill(~valid, float("-inf")).amax(1).clamp_min(torch.finfo(h.dtype).min))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def forward(self, tokens: Tensor) -> Tensor:
        logits = self.head(self.drop(self.pooled(tokens)))
        if self.rc_average:
            logits = 0.5 * (logits + self.head(self.drop(self.pooled(reverse_complement_padded(tokens)))))
        return logits


# -- data ------------------------------------------------------------------------------------------------


def load_task(task: str | Path, tokenizer: DNATokenizer) -> dict[str, tuple[list[Tensor], np.ndarray]]:
    """``{"train"|"dev"|"test": (token tensors, labels)}`` from ``task/{split}.csv``."""
    root = Path(task)
    if not root.is_dir():
        raise InputError(f"{root}: no such task folder (expected train.csv, dev.csv and test.csv)")
    out = {}
    for split in SPLITS:
        path = root / f"{split}.csv"
        if not path.is_file():
            raise InputError(
                f"{root}: missing {split}.csv (a task folder holds train.csv, dev.csv, test.csv)"
            )
        try:
            seqs, labels = read_gue_csv(path, u_to_t=tokenizer.u_to_t)
        except DNAFormatError as exc:
            raise InputError(str(exc)) from None
        out[split] = ([tokenizer.encode(s) for s in seqs], labels)
    n_classes = int(out["train"][1].max()) + 1
    for split in ("dev", "test"):
        if int(out[split][1].max()) >= n_classes:
            raise InputError(
                f"{root / (split + '.csv')}: label {int(out[split][1].max())} never seen in train.csv"
            )
    if n_classes < 2:
        raise InputError(f"{root / 'train.csv'}: a single class; classification needs at least two")
    return out


# -- building models -----------------------------------------------------------------------------------


def build_classifier(args: argparse.Namespace, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier and its JSON description (kind, backbone config, ...)."""
    if args.model == "cnn":
        from hybrids.apps.dna.cnn_baseline import CNNClassifier, CNNConfig

        if args.init:
            raise InputError(
                "--init goes with --model hybridna (the CNN baseline starts from random weights)"
            )
        cfg = CNNConfig.from_preset(
            args.preset or "default", num_classes=num_classes, rc_average=args.rc_average
        )
        return CNNClassifier(cfg), {"kind": "cnn", "config": cfg.to_dict()}
    from hybrids.apps.dna.hybridna import HybriDNA, HybriDNAConfig

    if args.init:
        backbone = load_lm(args.init)
        source = str(args.init)
    else:
        cfg = HybriDNAConfig.from_preset(args.preset or "tiny")
        backbone = HybriDNA(cfg)
        source = f"random {args.preset or 'tiny'}"
        logger.warning("no --init: fine-tuning a randomly initialised HybriDNA (%s)", source)
    pooling = getattr(args, "pooling", "mean")
    model = HybriDNAClassifier(backbone, num_classes, rc_average=args.rc_average, pooling=pooling)
    return model, {
        "kind": "hybridna",
        "config": backbone.config.to_dict(),
        "init": source,
        "rc_average": args.rc_average,
        "echo": True,
        "pooling": pooling,
    }


def load_lm(path: str | Path) -> nn.Module:
    """A HybriDNA language model from one of our checkpoint folders (``hybrids dna pretrain`` output)."""
    from hybrids.apps.core.checkpoint import load_checkpoint, read_checkpoint_info
    from hybrids.apps.dna.hybridna import HybriDNA, HybriDNAConfig

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint (expected a folder written by `hybrids dna pretrain`)")
    info = read_checkpoint_info(path)
    if info is None:
        raise InputError(f"{path}: not a hybrids checkpoint (no config.json with a model name)")
    try:
        model = load_checkpoint(path)
    except Exception as exc:  # unknown model name when dna models are not registered
        if "dna/hybridna" not in str(info.get("model")):
            raise
        from hybrids.apps.core.weights import SAFETENSORS_NAME, load_into, load_safetensors

        logger.debug("load_checkpoint failed (%s); building HybriDNA directly", exc)
        model = HybriDNA(HybriDNAConfig.from_dict(info["config"]))
        weights = path / SAFETENSORS_NAME if path.is_dir() else path
        load_into(model, load_safetensors(weights), weights)
        model.preprocessing = dict(info.get("preprocessing") or {})
    if not isinstance(model, HybriDNA):
        raise InputError(f"{path}: holds a {type(model).__name__}, not a HybriDNA language model")
    return model


def save_classifier(model: nn.Module, directory: Path, info: dict[str, Any]) -> None:
    """``directory/model.safetensors`` + ``directory/config.json`` (atomic, no pickle)."""
    from safetensors.torch import save_file

    from hybrids.datasets.atomic import atomic_write_path, atomic_write_text

    make_output_folder(directory)
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        state[key] = tensor.contiguous()
    with atomic_write_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "hybrids.classifier": info["kind"]})
    atomic_write_text(
        directory / "config.json", json.dumps(info, indent=2, sort_keys=True, default=str) + "\n"
    )


def load_classifier(directory: str | Path) -> nn.Module:
    """A classifier written by ``hybrids dna finetune`` (``OUT/best``), in eval mode."""
    from hybrids.apps.core.weights import load_into, load_safetensors

    directory = Path(directory)
    try:
        info = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{directory}: not a classifier folder ({exc})") from None
    if info.get("kind") == "cnn":
        from hybrids.apps.dna.cnn_baseline import CNNClassifier, CNNConfig

        model: nn.Module = CNNClassifier(CNNConfig.from_dict(info["config"]))
    elif info.get("kind") == "hybridna":
        from hybrids.apps.dna.hybridna import HybriDNA, HybriDNAConfig

        backbone = HybriDNA(HybriDNAConfig.from_dict(info["config"]))
        model = HybriDNAClassifier(
            backbone,
            info["num_classes"],
            rc_average=info.get("rc_average", False),
            pooling=info.get("pooling", "mean"),
        )
    else:
        raise InputError(f"{directory}/config.json: unknown classifier kind {info.get('kind')!r}")
    load_into(model, load_safetensors(directory / "model.safetensors"), directory / "model.safetensors")
    return model.eval()


# -- the command -------------------------------------------------------------------------------------------


def check_args(args: argparse.Namespace) -> None:
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("lr", "max_time"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise InputError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    if args.valid_every is not None and args.valid_every < 1:
        raise InputError(f"--valid-every must be >= 1, got {args.valid_every}")
    if args.max_train is not None and args.max_train < 2:
        raise InputError(f"--max-train must be >= 2, got {args.max_train}")


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``hybrids dna finetune`` (module docstring); returns the metrics written to ``metrics.json``."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from hybrids.apps.dna.training import (
        BestWeights,
        ClassificationModule,
        ListDataset,
        pad_collate,
        quiet_lightning,
    )
    from hybrids.datasets.atomic import atomic_write_text

    check_args(args)
    quiet_lightning(getattr(args, "verbose", 0))
    threads = args.threads or max(1, min(os.cpu_count() or 1, torch.get_num_threads()))
    torch.set_num_threads(threads)
    L.seed_everything(args.seed, workers=True, verbose=False)
    tokenizer = DNATokenizer()
    data = load_task(args.task, tokenizer)
    num_classes = int(data["train"][1].max()) + 1
    model, info = build_classifier(args, num_classes)  # bases have the same ids in every DNATokenizer
    train_tokens, train_labels = data["train"]
    order = np.arange(len(train_tokens))
    if args.max_train is not None and args.max_train < len(order):
        order = np.sort(np.random.default_rng(args.seed).choice(len(order), args.max_train, replace=False))
    train_set = ListDataset([(train_tokens[i], int(train_labels[i])) for i in order])
    dev_set = ListDataset(list(zip(data["dev"][0], data["dev"][1].tolist())))
    test_set = ListDataset(list(zip(data["test"][0], data["test"][1].tolist())))
    loader = dict(collate_fn=pad_collate, num_workers=0)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=False, **loader)
    eval_bs = args.batch_size * 2
    dev_loader = DataLoader(dev_set, batch_size=eval_bs, **loader)
    test_loader = DataLoader(test_set, batch_size=eval_bs, **loader)
    steps_per_epoch = len(train_loader)
    total = steps_per_epoch * args.epochs
    lr = args.lr or (1e-3 if args.model == "cnn" else 3e-4)
    module = ClassificationModule(
        model,
        lr=lr,
        weight_decay=args.weight_decay,
        warmup_steps=min(100, max(1, total // 20)),
        total_steps=total,
        rc_augment=args.rc_augment,
    )
    best = BestWeights()
    out = Path(args.out)
    quiet = getattr(args, "quiet", 0) > 0
    valid_every = min(args.valid_every or steps_per_epoch, total)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        precision=args.precision,
        max_epochs=args.epochs,
        max_time={"seconds": args.max_time * 60} if args.max_time else None,
        val_check_interval=valid_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=[best],
        logger=CSVLogger(out, name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=not quiet,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, valid_every)),
        default_root_dir=out,
        inference_mode=False,  # no_grad: the SSD kernel caches masks that autograd reuses later
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "fine-tuning %s (%d parameters) on %d training sequences, %d steps per epoch",
        info["kind"],
        n_params,
        len(train_set),
        steps_per_epoch,
    )
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=dev_loader)
    if not best.history or best.history[-1]["step"] != trainer.global_step:
        trainer.validate(module, dataloaders=dev_loader, verbose=False)  # the stopping point
    if best.best_state is None:
        raise InputError("no validation on dev.csv was run (is --max-time too short?)")
    model.load_state_dict(best.best_state)
    trainer.test(module, dataloaders=test_loader, verbose=False)
    test = {k: float(v) for k, v in module.last_metrics.items()}
    dev = {k[4:]: v for k, v in best.best.items() if k.startswith("dev_")}
    recipe = {
        "task": str(args.task),
        "model": args.model,
        "epochs": args.epochs,
        "steps": trainer.global_step,
        "batch_size": args.batch_size,
        "lr": lr,
        "weight_decay": args.weight_decay,
        "rc_average": args.rc_average,
        "rc_augment": args.rc_augment,
        "pooling": getattr(args, "pooling", "mean") if args.model == "hybridna" else None,
        "train_sequences": len(train_set),
        "seed": args.seed,
        "max_time_minutes": args.max_time,
    }
    result = {
        "task": Path(args.task).name,
        "model": info["kind"],
        "parameters": n_params,
        "selected": {"step": best.best["step"], "epoch": best.best["epoch"]},
        "dev": dev,
        "test": test,
        "recipe": recipe,
        "history": best.history,
    }
    info.update(
        num_classes=num_classes,
        tokenizer=tokenizer.to_dict(),
        recipe=recipe,
        dev=dev,
        test=test,
    )
    save_classifier(model, out / "best", info)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    return result
