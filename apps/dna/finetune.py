"""Sequence classification on GUE-style tasks: ``finetune(FinetuneConfig(...))``, behind
``hybrids dna finetune --task DIR``.

    hybrids dna finetune --task ../shared/data/dna/gue/tf_0 --init runs/dna/best -o runs/tf_0
    hybrids dna finetune --task ../shared/data/dna/gue/tf_0 --model cnn -o runs/tf_0_cnn   # the baseline

``DIR`` holds ``train.csv``, ``dev.csv`` and ``test.csv`` (``sequence,label``). The model trains on
train, is evaluated on dev after every validation interval, and the weights with the best dev MCC
(ties: lower dev loss) are written to ``OUT/best`` as they improve; at the end they are reloaded from
``OUT/best`` and scored once on test; dev is used for model selection only.

HybriDNA (``model="hybridna"``, registered as ``dna/hybridna_classifier``; weights from ``init`` = a
``hybrids dna pretrain`` folder, or a random ``preset``): echo embedding, i.e. the backbone reads
``<bos> x x`` and the hidden states of the second copy of ``x`` (which has seen all of ``x``) are
mean-pooled (``pooling="max"`` / ``"mean+max"`` are options); a linear head gives the class logits.
``rc_average`` averages the logits of the sequence and of its reverse complement (both for training
and evaluation). The CNN baseline (``model="cnn"``, ``dna/cnn_classifier``,
``hybrids.apps.dna.cnn_baseline``) goes through the same loop. Metrics: MCC, macro F1, AUROC (binary:
of class 1; else one-vs-rest macro). Runs on one device; the initial weights, the training subset
(``max_train``) and the batch order follow ``--seed`` (default 42).

From Python::

    from hybrids.apps.core.run_options import RunOptions
    from hybrids.apps.dna.finetune import FinetuneConfig, finetune

    result = finetune(FinetuneConfig(task="gue/tf_0", model="cnn", run=RunOptions(out="runs/tf_0_cnn")))
    result.metrics["test"]["mcc"]

Output (``run.out``, ``-o OUT``): ``OUT/best/`` and ``OUT/last/`` (``model.safetensors`` +
``config.json``: the registered model name and config, the tokenizer, the recipe and the dev metrics;
``best`` also the test metrics), loadable with ``create_model(name, weights=OUT/best)`` or
``hybrids.apps.core.checkpoint.load_checkpoint(OUT/best)``; ``OUT/metrics.json`` (best dev and test
metrics, history), ``OUT/history.json``, ``OUT/resume.ckpt`` (``--resume``) and Lightning's
``metrics.csv``. The run itself (Trainer, checkpoints, resume, threads) is
``hybrids.apps.core.training``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import RunOptions, require_at_least_one
from hybrids.apps.dna.classifier import POOLINGS, HybriDNAClassifier
from hybrids.datasets.dna import DNAFormatError, DNATokenizer, read_gue_csv

logger = logging.getLogger("hybrids.dna.finetune")

SPLITS = ("train", "dev", "test")
MODELS = {"hybridna": "dna/hybridna_classifier", "cnn": "dna/cnn_classifier"}


@dataclass
class FinetuneConfig:
    """What ``hybrids dna finetune`` trains (``run``: how the run runs; module docstring).

    ``model``: ``"hybridna"`` (echo-embedding classifier) or ``"cnn"`` (the baseline); ``init``: a
    pretrained HybriDNA folder (``hybridna`` only); ``preset``: the config preset without ``init``
    (HybriDNA: default ``tiny``; CNN: default ``default``); ``lr``: default 1e-3 (CNN), 3e-4 (HybriDNA);
    ``valid_every``: steps between dev evaluations (default: one epoch); ``max_train``: train on a
    random subset of this many sequences.
    """

    task: Path
    model: str = "hybridna"
    init: Path | None = None
    preset: str | None = None
    rc_average: bool = False
    pooling: str = "mean"
    rc_augment: bool = False
    epochs: int = 3
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 0.01
    valid_every: int | None = None
    max_train: int | None = None
    run: RunOptions = field(default_factory=lambda: RunOptions(out=Path("runs/finetune")))

    def __post_init__(self) -> None:
        self.task = Path(self.task)
        if self.init is not None:
            self.init = Path(self.init)

    def check(self) -> None:
        """Raise ``InputError`` (one line naming the flag) for values no run can use."""
        if self.model not in MODELS:
            raise InputError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.pooling not in POOLINGS:
            raise InputError(f"--pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        require_at_least_one(self, "epochs", "batch_size")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise InputError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.valid_every is not None and self.valid_every < 1:
            raise InputError(f"--valid-every must be >= 1, got {self.valid_every}")
        if self.max_train is not None and self.max_train < 2:
            raise InputError(f"--max-train must be >= 2, got {self.max_train}")
        if self.model == "cnn" and self.init is not None:
            raise InputError(
                "--init goes with --model hybridna (the CNN baseline starts from random weights)"
            )
        if self.init is not None and not self.init.exists():
            raise InputError(
                f"{self.init}: no such checkpoint (expected a folder written by `hybrids dna pretrain`)"
            )
        if self.run.processes != 1 or self.run.num_nodes != 1:
            raise InputError("hybrids dna finetune runs on one device (devices=1, num_nodes=1)")
        self.run.check()


@dataclass
class FinetuneResult:
    metrics: dict[str, Any]  # what OUT/metrics.json holds: task, model, selected, dev, test, recipe, history
    out: Path

    @property
    def best(self) -> Path:
        """The selected classifier's folder (``create_model(name, weights=...)``/``load_checkpoint``)."""
        return self.out / "best"


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


def weights_source(config: FinetuneConfig) -> str:
    """Where the classifier's initial weights come from (recorded with the checkpoints)."""
    if config.init is not None:
        return str(config.init)
    return f"random {config.preset or ('default' if config.model == 'cnn' else 'tiny')}"


def build_classifier(config: FinetuneConfig, num_classes: int) -> nn.Module:
    """The registered classifier ``config`` asks for (``MODELS``), its ``preprocessing`` set. With
    ``init``, the pretrained backbone is loaded (``load_checkpoint``) and a new head put on it."""
    from hybrids.apps.core.registry import create_model
    from hybrids.apps.dna.cnn_baseline import CNNConfig
    from hybrids.apps.dna.hybridna import HybriDNAConfig
    from hybrids.apps.dna.models import load_lm

    if config.model == "cnn":
        preset = config.preset or "default"
        cfg = CNNConfig.from_preset(preset, num_classes=num_classes, rc_average=config.rc_average)
        model = create_model(MODELS["cnn"], config=cfg)
        model.preprocessing = {"tokenizer": DNATokenizer().to_dict()}
        return model
    if config.init:
        backbone = load_lm(config.init)
    else:
        preset = config.preset or "tiny"
        backbone = create_model("dna/hybridna", config=HybriDNAConfig.from_preset(preset))
        logger.warning("no --init: fine-tuning a randomly initialised HybriDNA (%s)", weights_source(config))
    model = HybriDNAClassifier(backbone, num_classes, rc_average=config.rc_average, pooling=config.pooling)
    model.preprocessing = {"tokenizer": DNATokenizer().to_dict(), "echo": "<bos> x x; pooled second copy"}
    return model


# -- the command -------------------------------------------------------------------------------------------


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune as ``config`` says (module docstring); ``result.metrics`` is ``OUT/metrics.json``."""
    from torch.utils.data import DataLoader

    from hybrids.apps.core.checkpoint import load_checkpoint
    from hybrids.apps.core.training import RunCheckpoint, build_trainer, fit, save_model_folder, validate
    from hybrids.apps.dna.training import ClassificationModule, ListDataset, pad_collate
    from hybrids.datasets.atomic import atomic_write_text

    config.check()
    run = config.run
    tokenizer = DNATokenizer()
    data = load_task(config.task, tokenizer)
    num_classes = int(data["train"][1].max()) + 1
    train_tokens, train_labels = data["train"]
    order = np.arange(len(train_tokens))
    if config.max_train is not None and config.max_train < len(order):
        order = np.sort(np.random.default_rng(run.seed).choice(len(order), config.max_train, replace=False))
    train_set = ListDataset([(train_tokens[i], int(train_labels[i])) for i in order])
    dev_set = ListDataset(list(zip(data["dev"][0], data["dev"][1].tolist())))
    test_set = ListDataset(list(zip(data["test"][0], data["test"][1].tolist())))
    loader = dict(collate_fn=pad_collate, num_workers=0)
    batch_size = config.batch_size
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=False, **loader)
    eval_bs = batch_size * 2
    dev_loader = DataLoader(dev_set, batch_size=eval_bs, **loader)
    test_loader = DataLoader(test_set, batch_size=eval_bs, **loader)
    steps_per_epoch = len(train_loader)
    total = steps_per_epoch * config.epochs
    valid_every = min(config.valid_every or steps_per_epoch, total)
    lr = config.lr or (1e-3 if config.model == "cnn" else 3e-4)
    recipe = {
        "task": str(config.task),
        "model": config.model,
        "epochs": config.epochs,
        "steps": None,  # filled in at the end
        "batch_size": config.batch_size,
        "lr": lr,
        "weight_decay": config.weight_decay,
        "rc_average": config.rc_average,
        "rc_augment": config.rc_augment,
        "pooling": config.pooling if config.model == "hybridna" else None,
        "train_sequences": len(train_set),
        "seed": run.seed,
        "max_time_minutes": run.max_time,
    }

    def record(trainer: Any, module: ClassificationModule) -> dict[str, Any] | None:
        if not module.last_metrics:
            return None
        return {f"dev_{k}": v for k, v in module.last_metrics.items()}

    def describe(rec: dict[str, Any], improved: bool) -> str:
        return (
            f"step {rec['step']}: dev MCC {rec['dev_mcc']:.4f}, F1 {rec['dev_f1']:.4f}, "
            f"AUROC {rec['dev_auroc']:.4f}, loss {rec['dev_loss']:.4f}{' (best)' if improved else ''}"
        )

    training = {
        **{k: v for k, v in recipe.items() if k != "steps"},
        "total_steps": total,
        "init": weights_source(config),
        "command": run.command,
    }
    checkpoint = RunCheckpoint(
        run.out,
        record=record,
        score=lambda rec: (rec["dev_mcc"], -rec["dev_loss"]),  # ties: the lower dev loss
        describe=describe,
        extra={"training": training},
    )
    trainer = build_trainer(  # seeds: the initial weights and the batch order below follow --seed
        run,
        callbacks=[checkpoint],
        max_epochs=config.epochs,
        val_check_interval=valid_every,
        check_val_every_n_epoch=None,
        gradient_clip_val=1.0,
        log_every_n_steps=min(50, valid_every),
    )
    model = build_classifier(config, num_classes)  # bases have the same ids in every DNATokenizer
    module = ClassificationModule(
        model,
        lr=lr,
        weight_decay=config.weight_decay,
        warmup_steps=min(100, max(1, total // 20)),
        total_steps=total,
        rc_augment=config.rc_augment,
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "fine-tuning %s (%d parameters) on %d training sequences, %d steps per epoch",
        model.model_name,
        n_params,
        len(train_set),
        steps_per_epoch,
    )
    fit(trainer, module, run, train_dataloaders=train_loader, val_dataloaders=dev_loader)
    if not checkpoint.history or checkpoint.history[-1]["step"] != trainer.global_step:
        validate(trainer, module, dataloaders=dev_loader)  # the stopping point
    if checkpoint.best is None:
        raise InputError("no validation on dev.csv was run (is --max-time too short?)")
    best_folder = run.out / "best"
    module.model.load_state_dict(load_checkpoint(best_folder).state_dict())  # the selected weights
    trainer.test(module, dataloaders=test_loader, verbose=False)
    test = {k: float(v) for k, v in module.last_metrics.items()}
    dev = {k[4:]: v for k, v in checkpoint.best.items() if k.startswith("dev_")}
    recipe["steps"] = trainer.global_step
    metrics = {
        "task": config.task.name,
        "model": config.model,
        "parameters": n_params,
        "selected": {"step": checkpoint.best["step"], "epoch": checkpoint.best["epoch"]},
        "dev": dev,
        "test": test,
        "recipe": recipe,
        "history": checkpoint.history,
    }
    # OUT/best again, now with its test metrics beside the dev ones (same weights)
    final = {"training": {**training, "steps": trainer.global_step}, "dev": dev, "test": test}
    save_model_folder(module, best_folder, checkpoint.best, final)
    atomic_write_text(run.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return FinetuneResult(metrics, run.out)
