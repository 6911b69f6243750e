"""``hybrids pde ...``: PDE surrogates on simulated 2-D Kolmogorov flow.

    hybrids pde simulate -o DIR --grid 64 --trajectories 48
    hybrids pde train --data DIR -m factformer --preset small -o runs/ff --max-time 14 --threads 1
    hybrids pde rollout [CKPT] --initial FILE --steps 16 -o rollout.npy
    hybrids pde report --data DIR --equal-params runs/ff/best runs/fno/best ... --page docs/results/pde.md

Every flag maps to a field of the verb's config (``config_from_args``); the verbs themselves are
``hybrids.datasets.kolmogorov.simulate_dataset``, ``hybrids.apps.pde.train.train``,
``hybrids.apps.pde.rollout.rollout_file`` and ``hybrids.apps.pde.report.report``. Heavy imports
happen inside the handlers, so ``hybrids --help`` stays fast. Bad input: one line, exit status 2,
nothing written.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import add_run_arguments, config_from_args

logger = logging.getLogger("hybrids.pde")

DEFAULT_BUILTIN = "kolmogorov64"


def add_parser(commands: Any) -> None:
    pde = commands.add_parser(
        "pde",
        help="PDE surrogates: simulate Kolmogorov flow, train FactFormer / IFactFormer-m / FNO, roll out",
        description="Neural PDE surrogates on 2-D Kolmogorov flow simulated here (pseudo-spectral, "
        "Re 1000): FactFormer, IFactFormer-m and FNO/TFNO (neuraloperator) trained on the same data, "
        "autoregressive rollouts, and a report.",
    )
    verbs = pde.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    simulate = verbs.add_parser(
        "simulate",
        help="simulate Kolmogorov-flow trajectories into a dataset folder",
        description="Solve 2-D Navier-Stokes in vorticity form with Kolmogorov forcing (-8 cos 8y, drag "
        "0.1, Re 1000; FactFormer's data generator) from Gaussian random initial fields, on a grid "
        "twice the stored one, and write OUT/dataset.json and OUT/trajectories/*.npy (float32 frames "
        "every 1/32 time units after a spin-up), streaming each trajectory to disk.",
    )
    add_simulate_arguments(simulate)
    simulate.set_defaults(func=run_simulate)

    train = verbs.add_parser(
        "train",
        help="train a surrogate on a simulated dataset (relative L2, AdamW, OneCycle, push-forward)",
        description="Train a registered PDE model (pde/factformer, pde/ifactformer_m, pde/fno, "
        "pde/tfno) to map --in-frames frames to the next ones, with FactFormer's recipe: relative L2 "
        "loss, AdamW, OneCycle, gradient clipping, a latent-step curriculum and push-forward steps. "
        "Validates by autoregressive rollout on the held-out trajectories and writes OUT/best.",
    )
    add_train_arguments(train)
    train.set_defaults(func=run_train)

    rollout = verbs.add_parser(
        "rollout",
        help="roll a trained model forward from initial frames (a .npy file)",
        description="Predict --steps frames autoregressively from the last frames of --initial (a .npy "
        "array (frames, n, n) or (batch, frames, n, n) of vorticity, as in a dataset's trajectories); "
        "writes a .npy of the predicted frames. Without CKPT the built-in model "
        f"({DEFAULT_BUILTIN}) is used.",
    )
    rollout.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_BUILTIN,
        metavar="CKPT",
        help=f"a checkpoint folder (e.g. runs/ff/best) or a built-in model name (default: {DEFAULT_BUILTIN})",
    )
    rollout.add_argument("--initial", type=Path, required=True, metavar="FILE", help="initial frames (.npy)")
    rollout.add_argument("--steps", type=int, default=16, help="frames to predict (default: 16)")
    rollout.add_argument(
        "-o", "--out", type=Path, default=Path("rollout.npy"), help="output .npy (default: rollout.npy)"
    )
    rollout.add_argument(
        "--interval",
        type=int,
        default=1,
        help="use every N-th frame of FILE, counted back from its last (2 for a `simulate` trajectory: "
        "frames every 1/32, the models step 1/16; default: 1)",
    )
    rollout.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    rollout.set_defaults(func=run_rollout)

    report = verbs.add_parser(
        "report",
        help="rollout errors, spectra, snapshots and cost scaling of trained models; a results page",
        description="Roll every model out on the held-out trajectories of --data (relative L2 per step), "
        "compare energy spectra and vorticity snapshots at the last step, time forward passes at "
        "growing grids (time, peak memory, fitted exponent in N), and write report.md, report.json and "
        "figures into -o (and --page FILE).",
    )
    add_report_arguments(report)
    report.set_defaults(func=run_report)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--out", type=Path, required=True, metavar="DIR", help="dataset folder to write"
    )
    parser.add_argument("--grid", type=int, default=64, help="stored resolution (default: 64)")
    parser.add_argument(
        "--solver-grid", type=int, metavar="N", help="resolution solved on (default: twice --grid)"
    )
    parser.add_argument("--trajectories", type=int, default=16, help="initial conditions (default: 16)")
    parser.add_argument("--frames", type=int, default=320, help="frames per trajectory (default: 320)")
    parser.add_argument(
        "--frame-dt", type=float, default=1 / 32, help="time between frames (default: 1/32, FactFormer's)"
    )
    parser.add_argument("--spinup", type=float, default=2.0, help="time before the first frame (default: 2)")
    parser.add_argument("--re", type=float, default=1000.0, help="Reynolds number (default: 1000)")
    parser.add_argument("--drag", type=float, default=0.1, help="linear drag (default: 0.1)")
    parser.add_argument("--forcing-wavenumber", type=int, default=8, help="k_f of -k_f cos(k_f y) (8)")
    parser.add_argument("--batch", type=int, default=4, help="trajectories solved together (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the initial fields (default: 0)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from hybrids.apps.pde.train import LOSSES

    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset folder (pde simulate)")
    data.add_argument(
        "--test-trajectories",
        type=int,
        default=8,
        metavar="N",
        help="the last N trajectories are held out for validation (default: 8)",
    )
    data.add_argument(
        "--interval", type=int, default=2, help="frame stride: 2 gives FactFormer's 1/16 spacing (default: 2)"
    )
    model = parser.add_argument_group("model")
    model.add_argument("-m", "--model", required=True, help="registered model, e.g. factformer or pde/fno")
    model.add_argument("--preset", help="config preset of the model (default: the model's own)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=4000, help="optimiser steps (default: 4000)")
    optim.add_argument("--batch-size", type=int, default=8, help="samples per step (default: 8)")
    optim.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: 5e-4)")
    optim.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: 1e-4)")
    optim.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (default: 1)")
    optim.add_argument("--loss", choices=LOSSES, default="rel_l2", help="rel_l2 (default) or mse")
    optim.add_argument(
        "--curriculum-steps",
        type=int,
        metavar="N",
        help="steps over which the latent steps grow from 1 to the model's maximum "
        "(default: 30%% of --steps)",
    )
    optim.add_argument(
        "--pushforward-after",
        type=int,
        metavar="N",
        help="push-forward training from this step on (default: 40%% of --steps; -1: never)",
    )
    optim.add_argument(
        "--pushforward-every", type=int, default=3, help="every N-th step is a push-forward step (3)"
    )
    optim.add_argument("--val-every", type=int, default=250, help="validate every N steps (default: 250)")
    optim.add_argument(
        "--val-steps", type=int, default=16, help="autoregressive steps of the validation rollout (16)"
    )
    optim.add_argument(
        "--val-windows", type=int, default=2, help="rollout start points per held-out trajectory (2)"
    )
    add_run_arguments(parser, default_out="runs/pde", multi_device=True)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="dataset folder (pde simulate)"
    )
    parser.add_argument(
        "--equal-params",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="trained model folders (e.g. runs/ff/best) or built-in names sized to equal parameter counts; "
        "each one's budget is read from its config.json",
    )
    parser.add_argument(
        "--equal-time",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="trained model folders or built-in names trained for the same wall-clock time",
    )
    parser.add_argument("--test-trajectories", type=int, default=8, help="held-out trajectories (last N, 8)")
    parser.add_argument("--interval", type=int, default=2, help="frame stride, as in training (default: 2)")
    parser.add_argument("--steps", type=int, default=16, help="rollout steps (default: 16)")
    parser.add_argument("--windows", type=int, default=4, help="rollout start points per trajectory (4)")
    parser.add_argument(
        "--scaling-grids",
        type=int,
        nargs="*",
        default=[64, 128, 256],
        metavar="N",
        help="2-D grids of the cost table (default: 64 128 256)",
    )
    parser.add_argument(
        "--scaling-grids-3d",
        type=int,
        nargs="*",
        default=[32, 64],
        metavar="N",
        help="3-D grids of the cost table (default: 32 64; give none to skip)",
    )
    parser.add_argument("--no-scaling", dest="scaling", action="store_false", help="skip the cost table")
    parser.add_argument(
        "-o", "--out", type=Path, default=Path("pde-report"), help="report folder (pde-report)"
    )
    parser.add_argument(
        "--page",
        type=Path,
        metavar="FILE",
        help="also write the results page here (figures beside it as pde-*.png)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")


def run_simulate(args: argparse.Namespace) -> int:
    from hybrids.datasets.kolmogorov import KolmogorovError, SimulationConfig, simulate_dataset

    config = config_from_args(SimulationConfig, args, progress=args.quiet == 0)
    try:
        simulate_dataset(config, log=logger.info)
    except KolmogorovError as exc:
        raise InputError(str(exc)) from None
    print(
        f"wrote {config.trajectories} trajectories of {config.frames} frames ({config.grid}^2) "
        f"to {config.out}"
    )
    return 0


def run_train(args: argparse.Namespace) -> int:
    from hybrids.apps.pde.train import TrainConfig, train

    result = train(config_from_args(TrainConfig, args))
    if not result.is_global_zero:
        return 0
    if result.best is None:
        print(f"no validation was run; last weights in {result.out / 'last'}")
        return 0
    print(
        f"best rollout relative L2 {result.best['rollout_rel_l2']:.4f} ({result.best['val_steps']} steps) "
        f"at step {result.best['step']}; model in {result.out / 'best'}"
    )
    return 0


def run_rollout(args: argparse.Namespace) -> int:
    from hybrids.apps.pde.rollout import RolloutConfig, rollout_file

    config = config_from_args(RolloutConfig, args)
    out = rollout_file(config)
    print(f"wrote {args.steps} predicted frames to {out}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from hybrids.apps.pde.report import ReportConfig, report

    result = report(config_from_args(ReportConfig, args))
    print(result.markdown_path)
    return 0
