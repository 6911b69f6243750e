"""``hybrids hsi ...``: hyperspectral denoising commands.

    hybrids hsi denoise CUBE... -o OUT [-m MODEL] [--sigma S | --blind] [--bands-first] [--flex]
    hybrids hsi train-denoiser --data SalinasA_corrected.mat [-m hsdt_s] [-o OUT] [--max-time M]
    hybrids hsi report -m RUN_S/best RUN_M/best [--data SalinasA_corrected.mat] [-o DIR] [--page FILE]

``denoise`` is ``hybrids.apps.hsi.denoise``, ``train-denoiser`` ``hybrids.apps.hsi.train``, ``report``
``hybrids.apps.hsi.report``. Heavy imports (numpy, torch) happen inside the handlers, so
``hybrids --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hybrids.apps.core.run_options import add_run_arguments, config_from_args

DEFAULT_DATA = "../shared/data/hsi/SalinasA_corrected.mat"


def add_parser(commands: Any) -> None:
    hsi = commands.add_parser(
        "hsi",
        help="hyperspectral imaging: denoising (HSDT)",
        description="Hyperspectral cube denoising with HSDT (ICCV 2023) on .mat, ENVI, .npy and .tif cubes.",
    )
    verbs = hsi.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    denoise = verbs.add_parser(
        "denoise",
        help="denoise hyperspectral cubes (.mat v5/v7.3, ENVI .hdr, .npy, .tif) with HSDT",
        description="Denoise each cube with an HSDT model folder (default: the built-in HSDT-S trained on "
        "SalinasA's 31 visible bands) or a classical method (bm4d, fasthyde). The cube is scaled to [0, 1] "
        "by "
        "its 0.1 and 99.9 percentiles, denoised in overlapping spatial tiles (bounded memory) and written "
        "back in the input's format, variable, band order and data type, atomically. Bad inputs exit with "
        "status 2 and one line naming the file; nothing is written for them.",
    )
    add_denoise_arguments(denoise)
    denoise.set_defaults(func=run_denoise)
    train = verbs.add_parser(
        "train-denoiser",
        help="train an HSDT denoiser on the SalinasA scene (Lightning, the paper's noise schedule)",
        description="Train HSDT on the 31 visible bands of SalinasA: patches of its training block and of "
        "synthetic mixing scenes made from that block's spectra, the paper's noise schedule (sigma 50, blind "
        "10-70, complex), Adam 1e-3, MSE; validates on a disjoint block and writes OUT/best, a model folder "
        "`hybrids hsi denoise -m` reads. The test block is never read.",
    )
    add_train_arguments(train)
    train.set_defaults(func=run_train)
    report = verbs.add_parser(
        "report",
        help="score denoisers beside BM4D and FastHyDe on SalinasA's held-out block (table + figure)",
        description="Denoise the held-out test block of SalinasA (never seen in training) under each noise "
        "setting with the same noise draws for every method: the noisy input, BM4D, FastHyDe and each "
        "model folder. Writes report.md / report.json / hsi_denoising.png into -o, and with --page a "
        "stamped results page (figure beside it).",
    )
    add_report_arguments(report)
    report.set_defaults(func=run_report)


def add_denoise_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cubes", nargs="+", type=Path, metavar="CUBE", help="cubes to denoise")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        metavar="OUT",
        help="output folder (one file per cube, same name and format), or a file name for a single cube",
    )
    parser.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="MODEL",
        help="an HSDT model folder (OUT/best of train-denoiser), a built-in model name (default: "
        "salinas_hsdt_s), or a classical method: bm4d, fasthyde",
    )
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "--sigma",
        type=float,
        metavar="S",
        help="known Gaussian noise sigma on the 0-255 scale of the cube's range; bm4d uses it, HSDT (a "
        "blind denoiser) only checks it against the levels it was trained for",
    )
    noise.add_argument(
        "--blind", action="store_true", help="unknown noise (the default): estimate what is needed"
    )
    parser.add_argument(
        "--bands-first",
        action="store_true",
        help=".npy / .mat arrays are (bands, H, W) instead of (H, W, bands)",
    )
    parser.add_argument(
        "--flex",
        action="store_true",
        help="HSDT: spectral self-attention instead of the learnable 31-band query, for any band count",
    )
    parser.add_argument("--tile", type=int, default=64, help="tile size in pixels (default: 64)")
    parser.add_argument("--overlap", type=int, default=16, help="tile overlap in pixels (default: 16)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")


def run_denoise(args: argparse.Namespace) -> int:
    from hybrids.apps.hsi.denoise import DenoiseConfig, denoise

    results = denoise(config_from_args(DenoiseConfig, args))
    for result in results:
        print(f"{result.source} -> {result.output} ({result.method}, {result.seconds:.1f} s)")
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data", type=Path, required=True, metavar="FILE", help="the SalinasA cube (SalinasA_corrected.mat)"
    )
    data.add_argument(
        "--labels", type=Path, metavar="FILE", help="its ground truth (default: SalinasA_gt.mat beside it)"
    )
    data.add_argument(
        "--synthetic-scenes", type=int, default=64, help="synthetic mixing scenes (default: %(default)s)"
    )
    data.add_argument(
        "--synthetic-fraction", type=float, default=0.5, help="share of patches from them (default: 0.5)"
    )
    data.add_argument("--num-workers", type=int, default=0, help="data-loading processes (default: 0)")
    model = parser.add_argument_group("model")
    model.add_argument("-m", "--model", default="hsdt_s", help="hsdt_s (default), hsdt_m or hsdt_l")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--patch-size", type=int, default=32, help="training patch in pixels (default: 32)")
    optim.add_argument("--batch-size", type=int, default=4, help="patches per step (default: 4)")
    optim.add_argument(
        "--steps", type=int, default=20000, help="optimiser steps the schedule spans (default: %(default)s)"
    )
    optim.add_argument(
        "--steps-per-epoch", type=int, default=50, help="steps between validations (default: 50)"
    )
    optim.add_argument("--lr", type=float, default=1e-3, help="Adam's base learning rate (default: 1e-3)")
    add_run_arguments(parser, default_out="runs/hsi", multi_device=False)


def run_train(args: argparse.Namespace) -> int:
    from hybrids.apps.hsi.train import TrainConfig, train

    result = train(config_from_args(TrainConfig, args))
    if not result.is_global_zero:
        return 0
    if result.best is None:
        print(f"no validation was run; last weights in {result.out / 'last'}")
        return 0
    best = result.best
    print(
        f"best validation PSNR {best['val_psnr']:.2f} dB (sigma 50 {best['gaussian50']:.2f}, mixture "
        f"{best['mixture']:.2f}) at step {best['step']}; checkpoints: {result.out / 'best'}, "
        f"{result.out / 'last'}"
    )
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m",
        "--models",
        nargs="*",
        default=[],
        metavar="MODEL",
        help="HSDT model folders or built-in names to score (e.g. runs/hsdt_s/best runs/hsdt_m/best)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(DEFAULT_DATA),
        metavar="FILE",
        help=f"the SalinasA cube ({DEFAULT_DATA})",
    )
    parser.add_argument(
        "--noise",
        nargs="+",
        metavar="SETTING",
        help="noise settings (default: gaussian10 gaussian30 gaussian50 gaussian70 blind noniid stripe "
        "deadline impulse mixture)",
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        default=None,
        metavar="METHOD",
        help="classical peers (default: bm4d fasthyde; none: --peers with no name)",
    )
    parser.add_argument("--seed", type=int, default=2023, help="seed of the noise draws (default: 2023)")
    parser.add_argument("-o", "--output", type=Path, default=Path("report/hsi"), help="folder (report/hsi)")
    parser.add_argument("--page", type=Path, metavar="FILE", help="also write the stamped results page here")
    parser.add_argument(
        "--figure-noise", default="gaussian50", help="setting shown in the figure (gaussian50)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")


def run_report(args: argparse.Namespace) -> int:
    from hybrids.apps.hsi.report import ReportConfig, report

    result = report(config_from_args(ReportConfig, args))
    print(result.table)
    print(f"wrote {', '.join(str(p) for p in result.files)}")
    return 0
