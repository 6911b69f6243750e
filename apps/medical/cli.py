"""``hybrids medical ...``: medical image segmentation commands.

    hybrids medical segment INPUT... -o OUT [-m MODEL | --weights PATH] [--device DEV] [--tta]
                            [--save-probabilities] [--overlap F] [--batch-size N]
    hybrids medical evaluate --pred preds/ --ref labelsTr/ [-o report/] [--labels 1 2] [--tolerance 1]
    hybrids medical report -m RUN_A/best RUN_B/best --data DIR [-o report/] [--attention-png]
    hybrids medical train --data DIR -m MODEL [--preset P] [--fold K] [-o OUT] [--max-time M] [--resume]
    hybrids medical pretrain-dino --data DIR [-o OUT] [--arch vit_small] [--patch-size 16|8] [--max-time M]

``segment`` is ``hybrids.apps.medical.segment`` (see there: model folders, output naming, grids).

``evaluate`` scores every NIfTI label file in ``--pred`` against the file of the same case name in
``--ref`` (which may hold more cases): Dice (nnU-Net's empty rule), HD95 in mm and normalised
surface Dice per class (``hybrids.evaluation.segmentation``), and writes ``cases.csv``,
``summary.csv``, ``summary.json``, ``report.md`` and ``contours.png`` into ``-o`` (default:
``PRED/evaluation``). Any bad input (missing case, mismatched shape, unreadable file) is one line
and exit status 2, before anything is written.

Heavy imports (numpy, torch, MONAI) happen inside the handlers, so ``hybrids --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from hybrids.apps.core.arguments import reject_peer_flags
from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import add_run_arguments, config_from_args
from hybrids.apps.medical.segment import BUILTIN_MODELS, DEFAULT_MODEL
from hybrids.apps.medical.train import LOSSES

logger = logging.getLogger("hybrids.medical")


def add_parser(commands: Any) -> None:
    medical = commands.add_parser(
        "medical",
        help="medical image segmentation (NIfTI / DICOM)",
        description="Medical image segmentation on NIfTI files and DICOM series.",
    )
    verbs = medical.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    evaluate = verbs.add_parser(
        "evaluate",
        help="score predicted label volumes against references (Dice, HD95, NSD) and write a report",
        description="Score every NIfTI label file in --pred against the file of the same case name in --ref: "
        "Dice per class (NaN only when prediction and reference are both empty; empty reference with a "
        "non-empty prediction scores 0), HD95 in mm (MONAI) and normalised surface Dice at --tolerance mm. "
        "Writes cases.csv, summary.csv, summary.json, report.md and contours.png.",
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=run_evaluate)
    segment = verbs.add_parser(
        "segment",
        help="segment NIfTI files / DICOM series into label volumes (nnU-Net-style output folder)",
        description="Segment each input (a NIfTI file, a DICOM series folder, or a folder of NIfTI files) "
        "with a model folder's recorded preprocessing and MONAI sliding windows (2-D models slice by "
        "slice); writes OUT/<case>.nii.gz in the input's exact grid (shape, affine, header) with the label "
        "names. A failing case does not stop the batch (exit status 2 with a summary).",
    )
    add_segment_arguments(segment)
    segment.set_defaults(func=run_segment)
    train = verbs.add_parser(
        "train",
        help="train a segmentation model on a Medical Segmentation Decathlon folder (Lightning)",
        description="Train a registered segmentation model on an MSD dataset folder (nnU-Net's k-fold "
        "split): foreground-oversampled patches, MONAI augmentations, Dice + cross-entropy; validates "
        "whole cases (Dice per class) and writes OUT/best, a model folder `hybrids medical segment` "
        "reads. Several devices: --devices N --strategy ddp.",
    )
    add_train_arguments(train)
    train.set_defaults(func=run_train)
    pretrain_dino = verbs.add_parser(
        "pretrain-dino",
        help="DINO self-supervised pretraining of a ViT on unlabeled slices (DIAMANT's attention encoder)",
        description="Pretrain a ViT with DINO (student/EMA teacher, multi-crop, centering and sharpening) on "
        "the 2-D slices of every volume in an MSD folder's imagesTr or a folder of NIfTI files; writes "
        "OUT/teacher (a medical/dino_vit checkpoint folder: model.safetensors + config.json) and "
        "OUT/attention_maps.png. Resumable (--resume).",
    )
    add_pretrain_dino_arguments(pretrain_dino)
    pretrain_dino.set_defaults(func=run_pretrain_dino)
    report = verbs.add_parser(
        "report",
        help="compare trained model folders on their shared validation cases (Dice, HD95, size, speed)",
        description="Segment the validation cases the model folders share with each model (CPU) and "
        "write report.md / report.csv: Dice and HD95 per class, parameters, GFLOPs per slice, CPU "
        "seconds per volume (see hybrids.apps.medical.report).",
    )
    add_report_arguments(report)
    report.set_defaults(func=run_report)


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
    optim.add_argument(
        "--loss",
        choices=LOSSES,
        default="dice_ce",
        help="dice_ce (default: nnU-Net's Dice + cross-entropy), dice or ce",
    )
    optim.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default: 1)")
    add_run_arguments(parser, default_out="runs/medical")


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


def run_train(args: argparse.Namespace) -> int:
    from hybrids.apps.medical.train import TrainConfig, train

    result = train(config_from_args(TrainConfig, args))
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


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        metavar="INPUT",
        help="NIfTI files (.nii, .nii.gz), DICOM series folders, or folders of NIfTI files",
    )
    parser.add_argument(
        "-i",
        "--input",
        dest="more_inputs",
        action="append",
        type=Path,
        default=[],
        metavar="INPUT",
        help="another input (nnU-Net / TotalSegmentator style; may repeat)",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="OUT",
        help="output folder (one <case>.nii.gz per case), or a .nii.gz file for a single input",
    )
    parser.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="MODEL",
        help=f"built-in model name ({', '.join(sorted(BUILTIN_MODELS))}; default {DEFAULT_MODEL}) or a "
        "model folder (model.safetensors + config.json)",
    )
    parser.add_argument(
        "--weights", type=Path, metavar="PATH", help="a model folder or its model.safetensors (instead of -m)"
    )
    parser.add_argument(
        "--device",
        "-device",
        default="auto",
        metavar="DEV",
        help="auto (default: CUDA if available, else CPU), cpu, cuda, cuda:N (gpu, gpu:N), mps",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over mirrorings along every spatial axis (nnU-Net's; "
        "8x slower in 3-D, 4x in 2-D)",
    )
    parser.add_argument(
        "--save-probabilities",
        "--save_probabilities",
        action="store_true",
        help="also write <case>.npz with float16 class probabilities (K, X, Y, Z) in the input's grid",
    )
    parser.add_argument(
        "--overlap",
        type=float,
        default=None,
        metavar="F",
        help="overlap of neighbouring sliding windows, 0 <= F < 1 (default: the model's, usually 0.5; "
        "nnU-Net's step size is 1 - F)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="windows (2-D models: slices) per forward pass (default: sized to the window)",
    )
    reject_peer_flags(
        parser,
        {
            "-d": "nnU-Net's dataset flag; here the model carries its dataset: pass -m MODEL "
            "(a built-in name or a model folder)",
            "-c": "nnU-Net's configuration flag; a model folder holds one configuration: pass -m MODEL",
            "-f": "nnU-Net's fold flag; a model folder holds one trained model: pass -m FOLDER",
        },
    )

def run_segment(args: argparse.Namespace) -> int:
    from hybrids.apps.medical.segment import SegmentConfig, segment

    return segment(config_from_args(SegmentConfig, args, inputs=[*args.inputs, *args.more_inputs]))


def add_pretrain_dino_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``pretrain-dino``: one per ``DINOConfig`` field (same name, same default), run flags."""
    from hybrids.apps.medical.dino_vit import VIT_INPUTS
    from hybrids.apps.medical.pretrain_dino import ARCHS, DINOConfig

    d = DINOConfig(data=Path("."))
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="MSD folder (imagesTr/) or folder of NIfTI files",
    )
    data.add_argument(
        "--slice-axis", type=int, default=d.slice_axis, choices=(0, 1, 2), help="slice axis (default: 2)"
    )
    data.add_argument("--cases", type=int, metavar="N", help="use the first N cases only (quick runs)")
    data.add_argument(
        "--val-cases",
        type=int,
        default=d.val_cases,
        metavar="N",
        help="held-out cases for the attention figure (%(default)s)",
    )
    data.add_argument(
        "--fold",
        type=int,
        metavar="K",
        help="pretrain on fold K's training cases only (nnU-Net's split, as `hybrids medical train "
        "--fold K`), so the validation images stay unseen; the figure shows the last --val-cases of its "
        "validation cases (default: every case but the last --val-cases)",
    )
    data.add_argument("--folds", type=int, default=d.folds, help="folds of the split (default: %(default)s)")
    data.add_argument(
        "--figure-size",
        type=int,
        metavar="S",
        help="ViT input side for the attention figure (default: 2 x --image-size, a patch grid twice as "
        "fine, as DINO's visualize_attention.py shows 224-trained models at 480)",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=ARCHS, default=d.arch, help="ViT size (default: %(default)s)")
    model.add_argument(
        "--patch-size", type=int, choices=(8, 16), default=d.patch_size, help="patch size (%(default)s)"
    )
    model.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        metavar="S",
        help="ViT input / global crop size (default: %(default)s)",
    )
    model.add_argument(
        "--vit-input",
        choices=VIT_INPUTS,
        default=d.vit_input,
        help="slice -> S x S: resize (default) or pad",
    )
    model.add_argument("--embed-dim", type=int, help="override the architecture's width")
    model.add_argument("--depth", type=int, help="override the number of blocks")
    model.add_argument("--heads", type=int, help="override the number of heads")
    model.add_argument(
        "--out-dim", type=int, default=d.out_dim, metavar="K", help="DINO head outputs (%(default)s)"
    )
    model.add_argument(
        "--head-hidden-dim", type=int, default=d.head_hidden_dim, help="DINO head MLP width (%(default)s)"
    )
    model.add_argument(
        "--no-head-bn",
        dest="head_bn",
        action="store_false",
        help="no BatchNorm in the DINO head (DINO's ViT recipe); the default adds it (DINO's "
        "--use_bn_in_head): without it short runs on small data collapse to a uniform teacher",
    )
    model.add_argument(
        "--local-crops",
        type=int,
        default=d.local_crops,
        metavar="N",
        help="local crops per image (%(default)s)",
    )
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=d.epochs, help="epochs (default: %(default)s)")
    optim.add_argument(
        "--steps-per-epoch",
        type=int,
        default=d.steps_per_epoch,
        help="optimiser steps per epoch (%(default)s)",
    )
    optim.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="slices per step and device (%(default)s)"
    )
    optim.add_argument("--lr", type=float, help="peak learning rate (default: 5e-4 x global batch / 256)")
    optim.add_argument(
        "--teacher-temp",
        type=float,
        default=d.teacher_temp,
        help="teacher temperature after the warm-up from --warmup-teacher-temp (%(default)s)",
    )
    optim.add_argument(
        "--warmup-teacher-temp",
        type=float,
        default=d.warmup_teacher_temp,
        help="teacher temperature at the start (%(default)s)",
    )
    optim.add_argument(
        "--momentum-teacher",
        type=float,
        default=d.momentum_teacher,
        help="teacher EMA momentum at the start, cosine to 1 (%(default)s; short runs learn faster "
        "with 0.99)",
    )
    optim.add_argument(
        "--drop-path", type=float, default=d.drop_path, help="student stochastic depth (%(default)s)"
    )
    add_run_arguments(parser, default_out=str(d.run.out))


def run_pretrain_dino(args: argparse.Namespace) -> int:
    from hybrids.apps.medical.pretrain_dino import DINOConfig, pretrain_dino

    result = pretrain_dino(config_from_args(DINOConfig, args))
    if result.is_global_zero:
        figure = f"; attention maps: {result.figure}" if result.figure is not None else ""
        print(f"teacher: {result.teacher}{figure}")
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``report``: one per ``ReportConfig`` field."""
    parser.add_argument(
        "-m",
        "--models",
        nargs="+",
        required=True,
        metavar="MODEL",
        help="model folders to compare (or built-in names, e.g. hippocampus)",
    )
    parser.add_argument(
        "--data", required=True, type=Path, metavar="DIR", help="the MSD dataset folder they were trained on"
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("report"), help="report folder (report/)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the timing (default: 1)")
    parser.add_argument("--tolerance", type=float, default=1.0, metavar="MM", help="NSD tolerance in mm (1)")
    parser.add_argument(
        "--flops-size",
        type=_ints,
        metavar="HxW",
        help="window the GFLOPs are counted on (default: the largest inference window of the models, "
        "e.g. 48x64 for the 2-D hippocampus models)",
    )
    parser.add_argument(
        "--attention-png", action="store_true", help="also draw the DINO attention maps of a DIAMANT model"
    )
    parser.add_argument(
        "--page",
        type=Path,
        metavar="FILE",
        help="also write the table as a results page stamped with this command, the commit, the date "
        "and the machine (docs/results/medical.md)",
    )


def run_report(args: argparse.Namespace) -> int:
    from hybrids.apps.medical.report import ReportConfig, markdown_table, report

    result = report(config_from_args(ReportConfig, args))
    print(markdown_table(result.rows, result.labels))
    logger.info("wrote %s", ", ".join(str(p) for p in result.written))
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pred", required=True, type=Path, metavar="DIR", help="folder of predicted label NIfTIs"
    )
    parser.add_argument(
        "--ref", required=True, type=Path, metavar="DIR", help="folder of reference label NIfTIs"
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="REPORT", help="report folder (default: PRED/evaluation)"
    )
    parser.add_argument(
        "--labels",
        type=int,
        nargs="+",
        metavar="L",
        help="foreground labels to score (default: those of dataset.json beside --ref, else all found)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        metavar="MM",
        help="NSD tolerance in mm (default: %(default)s)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="optional image folder drawn under the contours in contours.png",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    if not (args.tolerance > 0):
        raise InputError(f"--tolerance must be a positive number of mm, got {args.tolerance}")
    if args.labels is not None and any(label <= 0 for label in args.labels):
        raise InputError(f"--labels must be foreground labels (> 0), got {' '.join(map(str, args.labels))}")
    if args.images is not None and not args.images.is_dir():
        raise InputError(f"{args.images}: no such folder (--images)")

    from hybrids.datasets.medical import MedicalImageError
    from hybrids.evaluation.segmentation import evaluate_folders, write_segmentation_report

    output = args.output if args.output is not None else args.pred / "evaluation"
    try:
        evaluation = evaluate_folders(
            args.pred,
            args.ref,
            labels=args.labels,
            tolerance_mm=args.tolerance,
            progress=lambda name: logger.debug("scored %s", name),
        )
        written = write_segmentation_report(evaluation, output, images_dir=args.images)
    except MedicalImageError as exc:
        raise InputError(str(exc)) from None
    _print_summary(evaluation)
    logger.info("wrote %s", ", ".join(str(p) for p in written.values()))
    return 0


def _print_summary(evaluation: Any) -> None:
    from hybrids.evaluation.segmentation import summary_rows

    print(f"{len(evaluation.cases)} cases, NSD tolerance {evaluation.tolerance_mm:g} mm")
    print(f"{'LABEL':<24}{'DICE':>16}{'HD95 (mm)':>16}{'NSD':>16}")
    by_label: dict[Any, dict[str, dict]] = {}
    for row in summary_rows(evaluation):
        by_label.setdefault((row["label"], row["name"]), {})[row["metric"]] = row
    for (label, name), metrics in by_label.items():
        cells = []
        for metric, digits in (("dice", 4), ("hd95_mm", 2), ("nsd", 4)):
            row = metrics[metric]
            cells.append(f"{row['mean']:.{digits}f}±{row['std']:.{digits}f}".rjust(16))
        print(f"{f'{label} {name}':<24}" + "".join(cells))
