"""Training segmentation models with Lightning: ``hybrids medical train --data DIR -m MODEL ...``.

    hybrids medical train --data ../shared/data/hippocampus -m swtr_unet --preset hippocampus_2d -o runs/h2d
    hybrids medical train --data Task04_Hippocampus -m swtr_unet_3d --fold 1 --max-time 40 -o runs/h3d
    hybrids medical train --data DIR -m hiformer_s --devices 8 --strategy ddp -o runs/hi
    hybrids medical segment -m runs/h2d/best ...

Data (``--data``): a Medical Segmentation Decathlon folder (``dataset.json``, ``imagesTr/``,
``labelsTr/``; nnU-Net v2's raw layout too, see ``hybrids.datasets.msd``). Fold ``--fold K`` of
``--folds`` is nnU-Net's split (sorted case names, ``KFold(shuffle=True, random_state=12345)``):
the model never trains on its validation cases. Every case is preprocessed once and kept in
memory: re-oriented and resampled (``Preprocessing``: orientation RAS, the dataset's median voxel
spacing unless ``--spacing``, z-score per volume for MRI, nnU-Net's CT scheme for CT) with exactly
the transforms inference uses.

Recipe: patches (3-D models: ``--patch-size``, default the largest case rounded up to the model's
size divisor, i.e. the whole volume for small datasets; 2-D models: whole slices along
``--slice-axis``) drawn with nnU-Net's foreground oversampling (a third of the patches centred on a
voxel of a random foreground class); MONAI augmentations (random rotation and scaling, flips on
every axis, intensity scale, gamma, Gaussian noise); Dice + cross-entropy loss (soft Dice over
the batch, foreground classes); AdamW (default) or nnU-Net's SGD (momentum 0.99, Nesterov) with a
short warm-up and polynomial decay that ends at the last step or at ``--max-time``, whichever comes
first. Validation predicts each validation case whole (sliding windows, Gaussian weights, 2-D
models slice by slice; ``hybrids.apps.medical.inference``) and scores Dice per class with
nnU-Net's rule (mean over cases, NaN when both masks are empty).

Output (``-o DIR``): ``best/`` (highest mean foreground Dice) and ``last/``, each
``model.safetensors`` + ``config.json`` with the model, its preprocessing, the label names, the
inference settings and the training provenance (``hybrids medical segment -m DIR/best`` reads
them); ``history.json`` (every validation); ``resume.ckpt`` (Lightning's state for ``--resume``,
read back with ``weights_only=True``: tensors and plain values only, no code).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError

HISTORY_NAME = "history.json"
RESUME_NAME = "resume.ckpt"
_LAZY = (
    "CaseData",
    "MedicalDataModule",
    "SegmentationModule",
    "SegmentationCheckpoint",
    "TrainResult",
    "build_model",
    "default_preprocessing",
    "make_augmentation",
    "predict_case",
    "preprocess_case",
    "sample_patch",
    "train",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from hybrids.apps.medical import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 40x56x40, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers such as 40x56x40, got {text!r}")
    return values


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.lower().replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers such as 1,1,1, got {text!r}") from None
    if len(values) != 3 or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected three positive numbers such as 1,1,1, got {text!r}")
    return values


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="MSD dataset folder (dataset.json, imagesTr/, labelsTr/)",
    )
    data.add_argument("--fold", type=int, default=0, help="validation fold, nnU-Net's split (default: 0)")
    data.add_argument("--folds", type=int, default=5, help="number of folds (default: 5)")
    data.add_argument(
        "--val-cases",
        type=int,
        metavar="N",
        help="validate on the first N cases of the fold only (quick runs)",
    )
    data.add_argument(
        "--train-cases", type=int, metavar="N", help="train on the first N training cases of the fold only"
    )
    data.add_argument("--spacing", type=_floats, metavar="X,Y,Z", help="voxel size in mm (default: median)")
    data.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default: 0)")
    model = parser.add_argument_group("model")
    model.add_argument(
        "-m", "--model", required=True, help="registered model, e.g. swtr_unet or medical/hiformer_s"
    )
    model.add_argument("--preset", help="config preset of the model (default: the model's own)")
    model.add_argument(
        "--init-attention-encoder",
        type=Path,
        metavar="PATH",
        help="DIAMANT: frozen ViT weights, a DINO teacher folder (model.safetensors + config.json) or an "
        "official DINO .pth; the model takes its ViT shape and input size (repeat it with --resume)",
    )
    model.add_argument(
        "--patch-size",
        type=_ints,
        metavar="XxYxZ",
        help="training patch (3-D: 3 ints, 2-D: 2 ints); default: the largest case rounded up to the "
        "model's size divisor",
    )
    model.add_argument(
        "--slice-axis", type=int, default=2, choices=(0, 1, 2), help="2-D models: slice axis (2)"
    )
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=100, help="epochs (default: %(default)s)")
    optim.add_argument("--steps-per-epoch", type=int, default=250, help="optimiser steps per epoch (250)")
    optim.add_argument("--batch-size", type=int, help="patches per step and device (default: 2-D 32, 3-D 4)")
    optim.add_argument(
        "--optimizer", choices=("adamw", "sgd"), default="adamw", help="adamw (default) or sgd"
    )
    optim.add_argument("--lr", type=float, help="peak learning rate (default: adamw 1e-3, sgd 1e-2)")
    optim.add_argument("--weight-decay", type=float, help="weight decay (default: adamw 1e-2, sgd 3e-5)")
    optim.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps (default: 50)")
    optim.add_argument(
        "--oversample-fg", type=float, default=1 / 3, help="forced-foreground patch share (1/3)"
    )
    optim.add_argument(
        "--no-augment", dest="augment", action="store_false", help="no spatial/intensity augmentation"
    )
    optim.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    run = parser.add_argument_group("run")
    run.add_argument("-o", "--out", type=Path, default=Path("runs/medical"), help="output folder")
    run.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default: 1)")
    run.add_argument("--max-time", type=float, metavar="MINUTES", help="stop cleanly after this many minutes")
    run.add_argument("--resume", action="store_true", help="continue from OUT/resume.ckpt")
    run.add_argument("--accelerator", default="auto", help="cpu, gpu, mps or auto (default: auto)")
    run.add_argument("--devices", default="1", help="devices (processes) to use (default: 1)")
    run.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, ddp_spawn, fsdp ...")
    run.add_argument("--num-nodes", type=int, default=1, help="machines (default: 1)")
    run.add_argument("--precision", default="32-true", help="Lightning precision: 32-true, bf16-mixed, ...")
    run.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")


def check_args(args: argparse.Namespace) -> None:
    for flag in ("epochs", "steps_per_epoch", "val_every", "folds", "num_nodes"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("batch_size", "val_cases", "train_cases", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    for flag in ("lr", "max_time"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise InputError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    if args.folds < 2:
        raise InputError(f"--folds must be >= 2, got {args.folds}")
    if not 0 <= args.fold < args.folds:
        raise InputError(f"--fold must be in 0..{args.folds - 1}, got {args.fold}")
    if not 0 <= args.oversample_fg <= 1:
        raise InputError(f"--oversample-fg must be in [0, 1], got {args.oversample_fg}")
    if args.num_workers < 0 or args.warmup_steps < 0 or (args.weight_decay or 0) < 0:
        raise InputError("--num-workers, --warmup-steps and --weight-decay must be >= 0")
    if args.resume and not (Path(args.out) / RESUME_NAME).is_file():
        raise InputError(f"{Path(args.out) / RESUME_NAME}: nothing to resume (no such file)")


def run_train(args: argparse.Namespace) -> int:
    from hybrids.apps.medical.training import train

    result = train(args)
    if not result.is_global_zero:
        return 0
    if result.best is None:
        print(f"no validation was run; last weights in {result.out / 'last'}")
        return 0
    dice = ", ".join(f"{k} {v:.4f}" for k, v in result.best["dice"].items())
    print(
        f"best mean foreground Dice {result.best['mean_dice']:.4f} at epoch {result.best['epoch']} "
        f"(step {result.best['step']}): {dice}"
    )
    print(f"checkpoints: {result.out / 'best'} (best), {result.out / 'last'} (last)")
    return 0
