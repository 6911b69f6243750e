"""``hybrids medical pretrain-dino --data DIR -o OUT``: DINO self-supervised pretraining of a ViT on the
2-D slices of unlabeled volumes (see :mod:`hybrids.apps.medical.dino` for the method).

    hybrids medical pretrain-dino --data ../shared/data/hippocampus -o runs/dino --max-time 15
    hybrids medical pretrain-dino --data scans/ --arch vit_small --patch-size 8 --image-size 96 -o runs/dino8
    hybrids medical pretrain-dino --data scans/ -o runs/dino --resume          # continue a stopped run
    hybrids medical train --data ../shared/data/hippocampus -m diamant \
        --init-attention-encoder runs/dino/teacher

Data (``--data``): an MSD / nnU-Net folder (every image of ``imagesTr``; labels are never read) or any
folder of NIfTI files. Each volume is re-oriented, resampled and z-scored (an MSD folder: the same
defaults as ``hybrids medical train``), cut into slices along ``--slice-axis`` and each slice fitted to
the ViT's ``--image-size`` square (``--vit-input resize``: bilinear; ``pad``: centred zero padding). The
last ``--val-cases`` cases (sorted names) are held out for the attention-map figure.

Model: ``--arch`` (``vit_small``: 384 dims, 12 blocks, 6 heads; ``vit_tiny``; ``vit_base``) with
``--patch-size`` 16 or 8; ``--embed-dim``/``--depth``/``--heads`` override the shape (e.g. the
192x6x6 encoder of DIAMANT's hippocampus preset). Recipe: DINO's (2 global crops of ``--image-size``, N
local crops of 96/224 of it, ``--out-dim`` prototypes, teacher temperature 0.04 -> 0.07, EMA momentum
``--momentum-teacher`` (0.996) -> 1, AdamW with weight decay 0.04 -> 0.4, ``--lr`` default DINO's
5e-4 x batch / 256); the schedules end at the last step or at ``--max-time`` minutes, whichever comes first.

Cost on the project's CPU (1 thread, shared with other jobs; batch 32, 2 global crops of 64 + 6 local):
ViT-S/16 3.2 s per step, ViT-S/8 9.5 s, ViT-Ti/8 3.3 s, a 192-wide 6-block 6-head ViT/8 (DIAMANT's
hippocampus preset) 2.1 s -- a 15-minute run is 300-450 steps of the smaller models.

Output (``-o OUT``): ``OUT/teacher/`` (``model.safetensors``: the teacher backbone with DINO's key names;
``config.json``: the ViT config, ``image_size``, ``vit_input``, ``slice_axis``, the preprocessing, the
recipe), written after every epoch; ``OUT/attention_maps.png`` (the image and every head's map for a few
held-out slices); ``OUT/history.json`` (loss per epoch); ``OUT/resume.ckpt`` (Lightning's state, read back
with ``weights_only=True``) for ``--resume``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError

RESUME_NAME = "resume.ckpt"
ARCHS = ("vit_small", "vit_tiny", "vit_base")


def add_pretrain_dino_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="MSD folder (imagesTr/) or folder of NIfTI files",
    )
    data.add_argument("--slice-axis", type=int, default=2, choices=(0, 1, 2), help="slice axis (default: 2)")
    data.add_argument("--cases", type=int, metavar="N", help="use the first N cases only (quick runs)")
    data.add_argument(
        "--val-cases", type=int, default=2, metavar="N", help="held-out cases for the attention figure (2)"
    )
    data.add_argument(
        "--fold",
        type=int,
        metavar="K",
        help="pretrain on fold K's training cases only (nnU-Net's split, as `hybrids medical train "
        "--fold K`), so the validation images stay unseen; the figure shows the last --val-cases of its "
        "validation cases (default: every case but the last --val-cases)",
    )
    data.add_argument("--folds", type=int, default=5, help="folds of the split (default: 5)")
    data.add_argument(
        "--figure-size",
        type=int,
        metavar="S",
        help="ViT input side for the attention figure (default: 2 x --image-size, a patch grid twice as "
        "fine, as DINO's visualize_attention.py shows 224-trained models at 480)",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=ARCHS, default="vit_small", help="ViT size (default: vit_small)")
    model.add_argument("--patch-size", type=int, choices=(8, 16), default=16, help="patch size (16)")
    model.add_argument(
        "--image-size", type=int, default=64, metavar="S", help="ViT input / global crop size (default: 64)"
    )
    model.add_argument(
        "--vit-input",
        choices=("resize", "pad"),
        default="resize",
        help="slice -> S x S: resize (default) or pad",
    )
    model.add_argument("--embed-dim", type=int, help="override the architecture's width")
    model.add_argument("--depth", type=int, help="override the number of blocks")
    model.add_argument("--heads", type=int, help="override the number of heads")
    model.add_argument("--out-dim", type=int, default=4096, metavar="K", help="DINO head outputs (4096)")
    model.add_argument("--head-hidden-dim", type=int, default=2048, help="DINO head MLP width (2048)")
    model.add_argument(
        "--no-head-bn",
        dest="head_bn",
        action="store_false",
        help="no BatchNorm in the DINO head (DINO's ViT recipe); the default adds it (DINO's "
        "--use_bn_in_head): without it short runs on small data collapse to a uniform teacher",
    )
    model.add_argument("--local-crops", type=int, default=6, metavar="N", help="local crops per image (6)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=100, help="epochs (default: %(default)s)")
    optim.add_argument("--steps-per-epoch", type=int, default=50, help="optimiser steps per epoch (50)")
    optim.add_argument("--batch-size", type=int, default=32, help="slices per step and device (32)")
    optim.add_argument("--lr", type=float, help="peak learning rate (default: 5e-4 x batch / 256)")
    optim.add_argument(
        "--teacher-temp",
        type=float,
        default=0.07,
        help="teacher temperature after the warm-up from --warmup-teacher-temp (0.07)",
    )
    optim.add_argument(
        "--warmup-teacher-temp", type=float, default=0.04, help="teacher temperature at the start (0.04)"
    )
    optim.add_argument(
        "--momentum-teacher",
        type=float,
        default=0.996,
        help="teacher EMA momentum at the start, cosine to 1 (0.996; short runs learn faster with 0.99)",
    )
    optim.add_argument("--drop-path", type=float, default=0.1, help="student stochastic depth (0.1)")
    optim.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    run = parser.add_argument_group("run")
    run.add_argument("-o", "--out", type=Path, default=Path("runs/dino"), help="output folder")
    run.add_argument("--max-time", type=float, metavar="MINUTES", help="stop after this many minutes")
    run.add_argument("--resume", action="store_true", help="continue from OUT/resume.ckpt")
    run.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu, ...")
    run.add_argument("--devices", default="1", help="devices (default: 1)")
    run.add_argument("--strategy", default="auto", help="Lightning strategy (e.g. ddp)")
    run.add_argument("--precision", default="32-true", help="Lightning precision: 32-true, bf16-mixed, ...")
    run.add_argument("--threads", type=int, help="torch threads (default: all cores)")


def check_args(args: argparse.Namespace) -> None:
    for flag in ("epochs", "steps_per_epoch", "batch_size", "image_size", "out_dim", "head_hidden_dim"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("cases", "threads", "embed_dim", "depth", "heads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.fold is not None and not 0 <= args.fold < args.folds:
        raise InputError(f"--fold must be in 0..{args.folds - 1}, got {args.fold}")
    if args.val_cases < 0 or args.local_crops < 0:
        raise InputError("--val-cases and --local-crops must be >= 0")
    if args.figure_size is not None and (args.figure_size < 1 or args.figure_size % args.patch_size):
        raise InputError(f"--figure-size {args.figure_size} must be a positive multiple of --patch-size")
    if args.image_size % args.patch_size:
        raise InputError(
            f"--image-size {args.image_size} must be a multiple of --patch-size {args.patch_size}"
        )
    for flag in ("lr", "max_time", "teacher_temp", "warmup_teacher_temp"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise InputError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    if not 0 <= args.momentum_teacher <= 1:
        raise InputError(f"--momentum-teacher must be in [0, 1], got {args.momentum_teacher}")
    if not 0 <= args.drop_path < 1:
        raise InputError(f"--drop-path must be in [0, 1), got {args.drop_path}")
    if args.resume and not (Path(args.out) / RESUME_NAME).is_file():
        raise InputError(f"{Path(args.out) / RESUME_NAME}: nothing to resume (no such file)")


def run_pretrain_dino(args: argparse.Namespace) -> int:
    from hybrids.apps.medical.dino import pretrain

    result: Any = pretrain(args)
    if not result["is_global_zero"]:
        return 0
    print(f"teacher: {result['teacher']}; attention maps: {result['figure']}")
    return 0
