"""``hybrids medical ...``: medical image segmentation commands.

    hybrids medical segment INPUT... -o OUT [-m MODEL | --weights PATH] [--device DEV] [--tta]
                            [--save-probabilities] [--overlap F] [--batch-size N]
    hybrids medical evaluate --pred preds/ --ref labelsTr/ [-o report/] [--labels 1 2] [--tolerance 1]
    hybrids medical report -m RUN_A/best RUN_B/best --data DIR [-o report/] [--attention-png]
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

from hybrids.apps.core.errors import InputError

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
    from hybrids.apps.medical.segment import add_segment_arguments, run_segment

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
    from hybrids.apps.medical.train import add_train_arguments, run_train

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
    from hybrids.apps.medical.pretrain_dino import add_pretrain_dino_arguments, run_pretrain_dino

    pretrain_dino = verbs.add_parser(
        "pretrain-dino",
        help="DINO self-supervised pretraining of a ViT on unlabeled slices (DIAMANT's attention encoder)",
        description="Pretrain a ViT with DINO (student/EMA teacher, multi-crop, centering and sharpening) on "
        "the 2-D slices of every volume in an MSD folder's imagesTr or a folder of NIfTI files; writes "
        "OUT/teacher (model.safetensors + config.json) and OUT/attention_maps.png. Resumable (--resume).",
    )
    add_pretrain_dino_arguments(pretrain_dino)
    pretrain_dino.set_defaults(func=run_pretrain_dino)
    from hybrids.apps.medical.report import add_report_arguments, run_report

    report = verbs.add_parser(
        "report",
        help="compare trained model folders on their shared validation cases (Dice, HD95, size, speed)",
        description="Segment the validation cases the model folders share with each model (CPU) and "
        "write report.md / report.csv: Dice and HD95 per class, parameters, GFLOPs per slice, CPU "
        "seconds per volume (see hybrids.apps.medical.report).",
    )
    add_report_arguments(report)
    report.set_defaults(func=run_report)


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
