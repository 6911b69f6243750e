"""Training HT Demucs with Lightning: ``hybrids music train --data PATH --config tiny|htdemucs ...``.

    hybrids music train --data ~/musdb18hq --config htdemucs --devices 8 --strategy ddp -o runs/ht
    hybrids music train --data my_stems/ --init htdemucs --lr 1e-5 --steps 2000 -o runs/finetune
    separate -n runs/finetune/best song.mp3

Data (``--data``): a MUSDB18 / MUSDB18-HQ root (trained on the official train split, validated on
the 14 official validation tracks), a folder with ``train/`` and ``valid/`` folders of tracks, or
a folder of track folders (``{drums,bass,other,vocals}.wav`` [+ ``mixture.wav``]; the last tenth,
by name, at least one track, is held out for validation). See ``hybrids.datasets.musdb``.

Recipe (demucs 4.1.0's solver, re-written): random ``segment + shift``-second excerpts of the
stems (a track drawn in proportion to its length); augmentations on the batch of sources
``(batch, sources, channels, samples)``: random shift (then cropped to the segment), left/right
channel swap and sign flip per source, gain scaling in [0.25, 1.25] per source, and remixing
sources across the tracks of groups of ``--remix-group`` examples; the mixture is the sum of the
augmented sources. L1 waveform loss (mean over sources), AdamW, gradient-norm clipping, an
optional exponential moving average of the weights (validated and saved instead of the raw
weights). Validation separates whole tracks (chunked, ``apply_model``, no shifts) and reports
the L1 loss and the uSDR (MDX: ``10 log10(sum s^2 / sum (s - s_hat)^2)``).

Output (``-o DIR``): ``best/`` (lowest validation loss) and ``last/``, each ``model.safetensors``
+ ``config.json`` (``save_checkpoint``, loadable by ``separate -n DIR/best``), ``history.json``
(every validation: step, loss, uSDR) and Lightning's ``metrics.csv``. No pickle is written.
Multi-device runs use Lightning's strategies (``--devices N --strategy ddp``; gloo on CPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError

HISTORY_NAME = "history.json"
PRESETS = ("tiny", "htdemucs", "htdemucs_6s")
# Defined in hybrids.apps.music.training (torch, Lightning), imported on first use.
_LAZY = (
    "Augmentation",
    "HTDemucsTrainingModule",
    "SafetensorsCheckpoint",
    "SegmentDataset",
    "StemsDataModule",
    "TrackDataset",
    "TrainResult",
    "WeightsEMA",
    "build_model",
    "flip_channels",
    "flip_sign",
    "l1_loss",
    "open_training_tracks",
    "random_scale",
    "random_shift",
    "remix",
    "train",
    "usdr",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from hybrids.apps.music import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the command -------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        required=True,
        help="MUSDB18(-HQ) root, a folder with train/ and valid/ track folders, or a folder of track "
        "folders ({drums,bass,other,vocals}.wav [+ mixture.wav]; the last tenth is held out)",
    )
    data.add_argument("--segment", type=float, help="training excerpt in seconds (default: the model's)")
    data.add_argument(
        "--shift", type=float, default=0.5, help="random time shift in seconds, demucs's Shift (default: 0.5)"
    )
    data.add_argument("--valid-seconds", type=float, help="validate on the first S seconds of each track")
    data.add_argument("--workers", type=int, default=0, help="data-loading processes (default: 0)")
    model = parser.add_argument_group("model")
    model.add_argument("--config", help=f"preset ({', '.join(PRESETS)}; default tiny) or a JSON config file")
    model.add_argument(
        "--init",
        help="start from these weights: a model name (htdemucs: the official weights) or a checkpoint folder",
    )
    model.add_argument("--weights", help="with --init NAME: a weights file (a demucs .th package) or name")
    model.add_argument("--repo", type=Path, help="with --init NAME: a folder of weights files (offline)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=1000, help="optimiser steps (default: %(default)s)")
    optim.add_argument("--batch-size", type=int, default=4, help="excerpts per step and device (default: 4)")
    optim.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default: 3e-4)")
    optim.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    optim.add_argument("--clip-grad", type=float, default=5.0, help="max gradient norm; 0: off (default: 5)")
    optim.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights, e.g. 0.999; 0: off")
    optim.add_argument("--no-augment", dest="augment", action="store_false", help="no flips, gains or remix")
    optim.add_argument("--remix-group", type=int, default=4, help="examples remixed together (default: 4)")
    optim.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    run = parser.add_argument_group("run")
    run.add_argument("-o", "--out", type=Path, default=Path("runs/htdemucs"), help="output folder")
    run.add_argument("--valid-every", type=int, default=200, help="validate every N steps (default: 200)")
    run.add_argument("--epoch-steps", type=int, default=1000, help="steps per epoch (default: 1000)")
    run.add_argument("--accelerator", default="auto", help="cpu, gpu, mps or auto (default: auto)")
    run.add_argument("--devices", default="1", help="devices (processes) to use (default: 1)")
    run.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, ddp_spawn, fsdp ...")
    run.add_argument("--num-nodes", type=int, default=1, help="machines (default: 1)")
    run.add_argument("--precision", default="32-true", help="Lightning precision: 32-true, bf16-mixed, ...")
    run.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")


def check_args(args: argparse.Namespace) -> None:
    for flag in ("steps", "batch_size", "valid_every", "epoch_steps"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("lr", "segment", "valid_seconds"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise InputError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    if args.shift < 0 or args.clip_grad < 0 or args.weight_decay < 0 or args.workers < 0:
        raise InputError("--shift, --clip-grad, --weight-decay and --workers must be >= 0")
    if not 0 <= args.ema < 1:
        raise InputError(f"--ema must be in [0, 1), got {args.ema}")
    if args.remix_group < 0:
        raise InputError(f"--remix-group must be >= 0, got {args.remix_group}")


def run_train(args: argparse.Namespace) -> int:
    from hybrids.apps.music.training import train

    result = train(args)
    if not result.is_global_zero or not result.history:
        return 0
    first, last = result.history[0], result.history[-1]
    best = min(result.history, key=lambda r: r["valid_loss"])
    print(
        f"valid loss {first['valid_loss']:.5f} (step {first['step']}) -> {last['valid_loss']:.5f} "
        f"(step {last['step']}); best {best['valid_loss']:.5f} at step {best['step']}"
    )
    print(f"valid uSDR {first['valid_usdr']:.2f} dB -> {last['valid_usdr']:.2f} dB")
    print(f"checkpoints: {result.out / 'best'} (best), {result.out / 'last'} (last)")
    return 0
