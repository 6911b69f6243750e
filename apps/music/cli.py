"""``hybrids music separate`` and the ``separate`` shortcut: demucs's command line, our engine.

    separate song.mp3                                  # -> separated/htdemucs/song/{drums,bass,...}.wav
    separate albums/ --two-stems vocals --mp3 -o out   # every audio file in the folder
    hybrids -q music separate song.flac --int24 --shifts 2 -n runs/exp1/best

Flags follow ``python -m demucs.separate`` (4.1.0), ``--list-models`` and ``-s/--sig`` included.
Differences: ``-n`` also takes one of our checkpoint folders; folders are accepted as inputs
(their audio files, not recursively); ``--precision``, ``--seed`` and ``--batch-segments`` are
ours; ``--float32`` with ``--flac`` is refused (demucs silently writes 16-bit); ``-j`` defaults
to 1 (no extra threads).

Output: ``OUT/<model>/<--filename>``, ``<model>`` naming the model actually used
(``hybrids.apps.music.names.model_folder_name``): the short name (``htdemucs``), a checkpoint
folder's name with its parent's when generic (``-n runs/X/best`` -> ``X_best``), the stem of a
``--weights`` file (a demucs ``<signature>-<sha8>.th``: the signature), or the ``-s`` signature.
A track that fails is reported on one line and the others go on; its stems written so far are
removed. Exit status 2 if any input failed. Tracks are streamed
(``Separator.stream_file``): decoded once into a temporary file in a hidden folder under
``OUT/<model>``, separated chunk by chunk, stems spooled and encoded block by block, so memory
does not grow with the track's length (a 20-minute track stays under 2 GB with htdemucs).

``hybrids music bench [--track PATH] [--seconds S] [--weights PATH] [--repeats N] [-o results.json]``
separates the same audio with demucs 4.1.0 and with ours on the same weights and prints a table
of time, ratio to demucs, peak memory and parity (``hybrids.apps.music.bench``); exit status 1
if a case failed. ``--whole-process [--runs N]`` times the commands themselves instead (our
``separate`` and the demucs CLI, a fresh process per run, alternating): median wall time, CPU
time and peak memory, and their ratios to demucs.
"""

from __future__ import annotations

import argparse
import logging
import string
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import HybridsError, InputError

logger = logging.getLogger("hybrids.music")

DEFAULT_MODEL = "music/htdemucs"
FILENAME_FIELDS = ("track", "trackext", "stem", "ext")


def add_parser(commands: Any) -> None:
    music = commands.add_parser(
        "music",
        help="music source separation (HT Demucs)",
        description="Music source separation with Hybrid Transformer Demucs.",
    )
    verbs = music.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    separate = verbs.add_parser(
        "separate",
        help="separate tracks into stems (drums, bass, other, vocals)",
        description="Separate the sources of the given tracks (demucs's `separate` flags). Stems are "
        "written to OUT/<model>/<filename>, at the model's sample rate.",
    )
    add_separate_arguments(separate)
    separate.set_defaults(func=run_separate)
    bench = verbs.add_parser(
        "bench",
        help="time and compare our separation with demucs 4.1.0 on the same weights and audio",
        description="Separate the same real audio with demucs 4.1.0's apply_model and ours, on the same "
        "weights (--weights FILE, a demucs .th package, or random HT Demucs weights), each case in a "
        "fresh process; prints wall time, ratio to demucs, peak memory and parity, and writes JSON.",
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=run_bench)
    evaluate = verbs.add_parser(
        "evaluate",
        help="separate a MUSDB18(-HQ) subset or a stems folder and score it (BSS Eval v4, uSDR)",
        description="Separate every track of a MUSDB18 / MUSDB18-HQ subset (or a folder of track folders "
        "with mixture.wav and stems) and score it with museval's BSS Eval v4 metrics and the MDX uSDR; "
        "writes museval JSON per track (resumable), tables (CSV, Markdown, the HT Demucs paper's "
        "Table 1 layout) and box plots.",
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(func=run_evaluate)
    train = verbs.add_parser(
        "train",
        help="train or fine-tune HT Demucs on MUSDB18(-HQ) or a folder of stems (Lightning)",
        description="Train HT Demucs (any configuration, tiny to released, or fine-tune official weights "
        "with --init htdemucs) on random excerpts with demucs's augmentations, L1 loss and AdamW; "
        "validates on whole tracks (L1, uSDR) and writes OUT/best and OUT/last checkpoints that "
        "`separate -n OUT/best` loads. Several devices: --devices N --strategy ddp; continue a "
        "stopped run with --resume.",
    )
    add_train_arguments(train)
    train.set_defaults(func=run_train)


# -- precision names --------------------------------------------------------------------------------
_PRECISIONS = {
    "fp32": "fp32",
    "32": "fp32",
    "32-true": "fp32",
    "bf16": "bf16",
    "bf16-mixed": "bf16",
    "bf16-true": "bf16",
}


def inference_precision(text: str) -> str:
    """``--precision`` of the inference verbs: ``fp32``/``bf16``, or Lightning's names for them
    (``32-true``, ``bf16-mixed``, as ``music train`` takes), returned as ``fp32``/``bf16``."""
    try:
        return _PRECISIONS[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from fp32, bf16, or Lightning's 32-true, bf16-mixed)"
        ) from None


def add_shift_seed_argument(parser: argparse.ArgumentParser) -> None:
    """``--seed`` of the inference verbs (``separate``, ``evaluate``): the random shifts' offsets,
    not a training run's seed (``RunOptions.seed``)."""
    parser.add_argument("--seed", type=int, default=0, help="seed of the random shifts (default: 0)")


# -- train ------------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``music train``: one per ``TrainConfig`` field (same name, same default), then the
    core's run flags (``-o``, ``--max-time``, ``--resume``, devices, ``--precision``, ``--seed``...)."""
    from hybrids.apps.core.run_options import add_run_arguments
    from hybrids.apps.music.train import PRESETS, TrainConfig

    d = TrainConfig(data=Path("."))
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
        "--shift",
        type=float,
        default=d.shift,
        help="random time shift in seconds, demucs's Shift (%(default)s)",
    )
    data.add_argument("--valid-seconds", type=float, help="validate on the first S seconds of each track")
    data.add_argument("--workers", type=int, default=d.workers, help="data-loading processes (%(default)s)")
    model = parser.add_argument_group("model")
    model.add_argument("--config", help=f"preset ({', '.join(PRESETS)}; default tiny) or a JSON config file")
    model.add_argument(
        "--init",
        help="start from these weights: a model name (htdemucs: the official weights) or a checkpoint folder",
    )
    model.add_argument("--weights", help="with --init NAME: a weights file (a demucs .th package) or name")
    model.add_argument("--repo", type=Path, help="with --init NAME: a folder of weights files (offline)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=d.steps, help="optimiser steps (%(default)s)")
    optim.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="excerpts per step and device (%(default)s)"
    )
    optim.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (%(default)s)")
    optim.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (%(default)s)"
    )
    optim.add_argument(
        "--clip-grad", type=float, default=d.clip_grad, help="max gradient norm; 0: off (%(default)s)"
    )
    optim.add_argument(
        "--ema", type=float, default=d.ema, help="EMA decay of the weights, e.g. 0.999; 0: off"
    )
    optim.add_argument("--no-augment", dest="augment", action="store_false", help="no flips, gains or remix")
    optim.add_argument(
        "--remix-group", type=int, default=d.remix_group, help="examples remixed together (%(default)s)"
    )
    optim.add_argument(
        "--valid-every", type=int, default=d.valid_every, help="validate every N steps (%(default)s)"
    )
    optim.add_argument("--epoch-steps", type=int, default=d.epoch_steps, help="steps per epoch (%(default)s)")
    add_run_arguments(parser, default_out=str(d.run.out))


def run_train(args: argparse.Namespace) -> int:
    from hybrids.apps.core.run_options import config_from_args
    from hybrids.apps.music.train import TrainConfig, train

    result = train(config_from_args(TrainConfig, args))
    if not result.is_global_zero or not result.history:
        return 0
    first, last, best = result.history[0], result.history[-1], result.best or result.history[-1]
    print(
        f"valid loss {first['valid_loss']:.5f} (step {first['step']}) -> {last['valid_loss']:.5f} "
        f"(step {last['step']}); best {best['valid_loss']:.5f} at step {best['step']}"
    )
    print(f"valid uSDR {first['valid_usdr']:.2f} dB -> {last['valid_usdr']:.2f} dB")
    print(f"checkpoints: {result.out / 'best'} (best), {result.out / 'last'} (last)")
    return 0


# -- evaluate ---------------------------------------------------------------------------------------
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``music evaluate``: one per ``EvaluateConfig`` field."""
    parser.add_argument(
        "--musdb",
        type=Path,
        required=True,
        metavar="PATH",
        help="MUSDB18 (.stem.mp4) or MUSDB18-HQ (wav folders) root, or a folder of track folders "
        "holding mixture.wav and the stems",
    )
    parser.add_argument("-n", "--name", default=DEFAULT_MODEL, help="model (as for separate)")
    parser.add_argument("--weights", help="weights for -n NAME (default: the official ones)")
    parser.add_argument("--repo", type=Path, help="folder holding official weights files")
    parser.add_argument("--subset", default="test", choices=["train", "test"], help="(default: %(default)s)")
    parser.add_argument("--tracks", nargs="+", metavar="NAME", help="only these tracks (folder names)")
    parser.add_argument("-o", "--out", type=Path, help="report folder (default: evaluation/<model>)")
    parser.add_argument("-d", "--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    parser.add_argument("--shifts", type=int, default=1, help="random shifts (default: 1)")
    parser.add_argument("--overlap", type=float, default=0.25, help="chunk overlap (default: 0.25)")
    parser.add_argument(
        "--precision",
        type=inference_precision,
        default="fp32",
        metavar="{fp32,bf16}",
        help="model compute precision; Lightning's 32-true and bf16-mixed also work (default: fp32)",
    )
    parser.add_argument("-j", "--jobs", type=int, help="parallel forwards (default: one per CPU core)")
    add_shift_seed_argument(parser)
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the box plots")


def run_evaluate(args: argparse.Namespace) -> int:
    from hybrids.apps.core.run_options import config_from_args
    from hybrids.apps.music.evaluate import EvaluateConfig, evaluate

    result = evaluate(config_from_args(EvaluateConfig, args))
    print((result.out / "summary.md").read_text(), end="")
    logger.info("report written to %s (%d tracks)", result.out.resolve(), result.summary["tracks"])
    return 0


def add_separate_arguments(parser: argparse.ArgumentParser) -> None:
    # -v/-q here too, so `hybrids music separate -v x` and `separate -v x` work; SUPPRESS keeps a
    # top-level `hybrids -v music separate x` from being reset by this subparser's defaults.
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output (-vv: debug)"
    )
    verbosity.add_argument(
        "-q", "--quiet", action="count", default=argparse.SUPPRESS, help="only warnings and errors, no bars"
    )
    parser.add_argument("tracks", nargs="*", type=Path, metavar="TRACK_OR_DIR", help="audio files or folders")
    parser.add_argument(
        "--list-models", action="store_true", help="list the models (of --repo DIR, if given) and exit"
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "-n",
        "--name",
        default=DEFAULT_MODEL,
        help="model: a registered name (htdemucs = music/htdemucs) or a checkpoint folder "
        "(default: %(default)s)",
    )
    model.add_argument(
        "-s",
        "--sig",
        metavar="SIGNATURE",
        help="a single model by its demucs signature: SIGNATURE-*.th in --repo or the weights cache, "
        "or the official model of that signature (955717e8: htdemucs)",
    )
    parser.add_argument(
        "--weights",
        help="weights for -n NAME: a file (a demucs .th package or one of our checkpoints), or a weights "
        "name (default: the official ones)",
    )
    parser.add_argument(
        "--repo",
        type=Path,
        help="folder of weights files: the official ones (searched before the cache), or a demucs "
        "repository (NAME.yaml bags, <signature>-<sha8>.th models)",
    )
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("separated"),
        help="output root; a sub-folder named after the model is added (default: %(default)s)",
    )
    parser.add_argument(
        "--filename",
        default="{track}/{stem}.{ext}",
        help="output file name under OUT/<model>; fields {track}, {trackext}, {stem}, {ext} "
        '(default: "%(default)s")',
    )
    parser.add_argument(
        "-d", "--device", help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--shifts", type=int, default=1, help="random shifts averaged (shift trick); 0 disables (default: 1)"
    )
    parser.add_argument("--overlap", type=float, default=0.25, help="overlap between chunks (default: 0.25)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument(
        "--no-split",
        dest="split",
        action="store_false",
        default=True,
        help="run the model on the whole track at once (transformer models: tracks up to one segment)",
    )
    split.add_argument("--segment", type=float, help="chunk length in seconds (default: the model's)")
    parser.add_argument(
        "--two-stems", dest="stem", metavar="STEM", help="only write STEM and its complement (e.g. vocals)"
    )
    parser.add_argument(
        "--other-method",
        choices=["none", "add", "minus"],
        default="add",
        help="complement of --two-stems: add = sum of the other stems (no_STEM), minus = mix - STEM "
        "(minus_STEM), none = not written (default: add)",
    )
    depth = parser.add_mutually_exclusive_group()
    depth.add_argument("--int24", action="store_true", help="24-bit PCM output")
    depth.add_argument("--float32", action="store_true", help="32-bit float WAV output")
    parser.add_argument(
        "--clip-mode",
        choices=["rescale", "clamp", "none"],
        default="rescale",
        help="avoid clipping by rescaling the whole stem, or by clamping (default: rescale)",
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--flac", action="store_true", help="write FLAC instead of WAV")
    fmt.add_argument("--mp3", action="store_true", help="write MP3 instead of WAV")
    parser.add_argument("--mp3-bitrate", type=int, default=320, help="MP3 bitrate in kbit/s (default: 320)")
    parser.add_argument(
        "--mp3-preset",
        type=int,
        choices=range(2, 8),
        default=2,
        metavar="{2..7}",
        help="MP3 encoder quality: 2 best ... 7 fastest (default: 2)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        help="chunk batches run in parallel threads (default: one per CPU core on CPU, else 1)",
    )
    parser.add_argument(
        "--precision",
        type=inference_precision,
        default="fp32",
        metavar="{fp32,bf16}",
        help="model compute precision; Lightning's 32-true and bf16-mixed also work (default: fp32)",
    )
    add_shift_seed_argument(parser)
    parser.add_argument(
        "--batch-segments", type=int, default=None, help="chunks per forward (default: 1 on CPU, else 4)"
    )


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--track",
        type=Path,
        help="audio file to separate (default: kevin_macleod-vibe_ace.ogg from ../shared/data/audio)",
    )
    parser.add_argument("--seconds", type=float, help="separate only this many seconds (default: all)")
    parser.add_argument("--offset", type=float, default=0.0, help="start of the excerpt in seconds")
    parser.add_argument(
        "--weights", type=Path, help="a demucs .th package for both (default: random weights at --preset)"
    )
    parser.add_argument(
        "--preset",
        choices=["htdemucs", "htdemucs_6s", "tiny"],
        help="HT Demucs configuration of the random weights (default: htdemucs)",
    )
    parser.add_argument(
        "--repeats", type=int, help="timed runs per case in one process; the best is kept (default: 1)"
    )
    parser.add_argument(
        "--precision",
        action="append",
        choices=["fp32", "bf16"],
        help="our precision(s), repeatable (default: fp32 and bf16; demucs runs fp32)",
    )
    parser.add_argument("--threads", type=int, help="torch threads per case (default: all cores)")
    parser.add_argument("--shifts", type=int, default=1, help="random shifts, as for separate (default: 1)")
    parser.add_argument(
        "--batch-segments", type=int, default=None, help="our chunks per forward (default: 1 on CPU, else 4)"
    )
    whole = parser.add_argument_group(
        "whole process",
        "--whole-process times the commands instead of the model forwards: our `separate` and the "
        "demucs CLI, each run a fresh process on the same checkpoint (--repo DIR -n NAME) and track, "
        "alternating; medians of wall time, CPU time and peak memory.",
    )
    whole.add_argument(
        "--whole-process", action="store_true", help="time the `separate` and `demucs` commands end to end"
    )
    whole.add_argument("--runs", type=int, default=3, help="timed runs per command (default: 3)")
    whole.add_argument("--segment", type=float, help="--segment for both commands (default: the model's)")
    whole.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="no untimed warm-up run of each command"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="JSON file to write (default: bench-results/music.json; music-whole.json with --whole-process)",
    )


def run_bench(args: argparse.Namespace) -> int:
    from hybrids.apps.music.bench import format_table, run_music_benchmark, save_result

    if args.weights is not None and args.preset is not None:
        raise InputError("--preset is for random weights; --weights brings its own configuration")
    if args.shifts < 0:
        raise InputError(f"--shifts must be >= 0, got {args.shifts}")
    if args.batch_segments is not None and args.batch_segments < 1:
        raise InputError(f"--batch-segments must be >= 1, got {args.batch_segments}")
    if args.whole_process:
        return _run_whole_process_bench(args)
    used = [flag for flag, value in (("--runs", args.runs != 3), ("--segment", args.segment)) if value]
    if used or not args.warmup:
        raise InputError(f"{(used or ['--no-warmup'])[0]} is an option of --whole-process")
    output = args.output or Path("bench-results/music.json")
    result = run_music_benchmark(
        track=args.track,
        seconds=args.seconds,
        offset=args.offset,
        repeats=1 if args.repeats is None else args.repeats,
        precision=tuple(args.precision or ("fp32", "bf16")),
        threads=args.threads,
        weights=args.weights,
        preset=args.preset or "htdemucs",
        shifts=args.shifts,
        batch_segments=args.batch_segments,
        log=logger.info,
    )
    print(format_table(result))
    save_result(result, output)
    logger.info("wrote %s", output)
    return _report_failures(result)


def _run_whole_process_bench(args: argparse.Namespace) -> int:
    from hybrids.apps.music.bench import format_whole_process_table, run_whole_process_benchmark, save_result

    for flag, value in (
        ("--repeats", args.repeats),
        ("--threads", args.threads),
        ("--batch-segments", args.batch_segments),
    ):
        if value is not None:
            raise InputError(f"{flag} is an option of the in-process bench, not of --whole-process")
    if args.runs < 1:
        raise InputError(f"--runs must be >= 1, got {args.runs}")
    if args.segment is not None and args.segment <= 0:
        raise InputError(f"--segment must be > 0 seconds, got {args.segment}")
    output = args.output or Path("bench-results/music-whole.json")
    result = run_whole_process_benchmark(
        track=args.track,
        seconds=args.seconds,
        offset=args.offset,
        runs=args.runs,
        precision=tuple(args.precision or ("fp32", "bf16")),
        weights=args.weights,
        preset=args.preset or "htdemucs",
        shifts=args.shifts,
        segment=args.segment,
        warmup=args.warmup,
        log=logger.info,
    )
    print(format_whole_process_table(result))
    save_result(result, output)
    logger.info("wrote %s", output)
    return _report_failures(result)


def _report_failures(result: dict[str, Any]) -> int:
    failed = [f"{r['impl']} {r['precision']}: {r['error']}" for r in result["rows"] if "error" in r]
    for line in failed:
        logger.error("%s", line)
    return 1 if failed else 0


def separate_parser() -> argparse.ArgumentParser:
    """The parser of the ``separate`` console script: ``hybrids music separate``'s flags only, so
    the shortcut builds (and imports) no other command."""
    from hybrids.apps.core.arguments import Parser

    parser = Parser(
        prog="separate",
        description="Separate the sources of the given tracks (demucs's `separate` flags). Stems are "
        "written to OUT/<model>/<filename>, at the model's sample rate. "
        "(`hybrids music separate` with the same flags.)",
    )
    add_separate_arguments(parser)
    parser.set_defaults(func=run_separate, verbose=0, quiet=0)
    return parser


def separate_main(argv: Sequence[str] | None = None) -> int:
    """The ``separate`` console script: ``hybrids music separate`` with the same flags and exit codes."""
    import sys

    from hybrids.apps.cli import run

    return run(separate_parser, list(sys.argv[1:] if argv is None else argv))


# -- the command --------------------------------------------------------------------------------
def run_separate(args: argparse.Namespace) -> int:
    from hybrids.apps.music.names import list_models_text, model_folder_name, resolve_signature

    if args.list_models:  # before anything imports torch: a listing answers at once
        print(list_models_text(args.repo))
        return 0
    if not args.tracks:
        raise InputError(
            "no TRACK_OR_DIR given: pass audio files or folders (--list-models lists the models)"
        )
    if args.sig is not None:
        args.name, args.repo = resolve_signature(args.sig, args.repo)
    from hybrids.datasets.audio import AUDIO_EXTENSIONS, AudioError, audio_info

    _check_options(args)
    bits = 32 if args.float32 else 24 if args.int24 else 16
    ext = "mp3" if args.mp3 else "flac" if args.flac else "wav"

    # Inputs: files as given, folders expanded to their audio files; each one's header is read
    # now, so missing, empty and non-audio files are reported before the model loads.
    candidates: list[Path] = []
    failures: list[str] = []
    for item in args.tracks:
        if item.is_dir():
            found = sorted(
                p
                for p in item.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_EXTENSIONS
            )
            if not found:
                failures.append(f"{item}: folder has no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
            candidates.extend(found)
        else:
            candidates.append(item)
    tracks: list[Path] = []
    for path in candidates:
        try:
            audio_info(path)
        except AudioError as exc:
            failures.append(str(exc))
        else:
            tracks.append(path)
    n_inputs = len(tracks) + len(failures)
    if n_inputs == 1 and failures:
        raise InputError(failures[0])
    for message in failures:
        logger.error("%s", message)
    if not tracks:
        raise InputError(f"none of the {n_inputs} inputs can be separated (see the messages above)")

    out_dir = args.out / model_folder_name(args.name, weights=args.weights, repo=args.repo)
    _check_output_root(out_dir)
    from hybrids.apps.core.memory import limit_malloc_arenas

    limit_malloc_arenas(1)  # worker threads' arenas would each keep a forward's peak
    started = time.perf_counter()
    separator = _make_separator(args)
    logger.debug("model loaded in %.2f s", time.perf_counter() - started)
    if args.stem is not None and args.stem not in separator.sources:
        raise InputError(
            f'--two-stems: stem "{args.stem}" is not a source of the model; choose one of '
            f"{', '.join(separator.sources)}"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None

    claimed: dict[Path, Path] = {}
    done = 0
    for index, track in enumerate(tracks, 1):
        # One track: its progress bar says enough (and an error stays the only line on stderr).
        level = logging.INFO if len(tracks) > 1 else logging.DEBUG
        logger.log(level, "Separating track %s (%d/%d)", track, index, len(tracks))
        try:
            _separate_one(track, separator, args, out_dir, ext, bits, claimed)
            done += 1
        except HybridsError as exc:
            if n_inputs == 1:
                raise
            failures.append(str(exc))
            logger.error("%s", exc)
    if done:
        logger.info("Stems of %d track%s written to %s", done, "s" if done > 1 else "", out_dir.resolve())
    if failures:
        raise InputError(f"{len(failures)} of {n_inputs} inputs failed (see the messages above)")
    return 0


def _check_options(args: argparse.Namespace) -> None:
    if args.shifts < 0:
        raise InputError(f"--shifts must be >= 0, got {args.shifts}")
    if not 0 <= args.overlap < 1:
        raise InputError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.segment is not None and args.segment <= 0:
        raise InputError(f"--segment must be > 0 seconds, got {args.segment}")
    if args.jobs is not None and args.jobs < 0:
        raise InputError(f"--jobs must be >= 0, got {args.jobs}")
    if args.batch_segments is not None and args.batch_segments < 1:
        raise InputError(f"--batch-segments must be >= 1, got {args.batch_segments}")
    if args.mp3_bitrate <= 0:
        raise InputError(f"--mp3-bitrate must be > 0, got {args.mp3_bitrate}")
    if args.float32 and (args.flac or args.mp3):
        raise InputError("--float32 is for WAV output; FLAC and MP3 cannot store float samples")
    if args.stem is None and args.other_method != "add":
        logger.warning("--other-method is ignored without --two-stems")
    fields = {name for _, name, _, _ in string.Formatter().parse(args.filename) if name is not None}
    unknown = sorted(fields - set(FILENAME_FIELDS))
    if unknown:
        raise InputError(
            f"--filename: unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; "
            f"use {', '.join('{' + f + '}' for f in FILENAME_FIELDS)}"
        )
    if "stem" not in fields:
        raise InputError("--filename must contain {stem}, or every stem would be written to the same file")
    try:
        _format_name(args.filename, "track", "wav", "stem", "wav")
    except (ValueError, IndexError) as exc:
        raise InputError(f"--filename: invalid template {args.filename!r} ({exc})") from None


def _check_output_root(out_dir: Path) -> None:
    """Fail before loading the model when the output folder obviously cannot be created: a
    path component is a file, or the nearest existing folder is not writable."""
    import os

    existing = out_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{out_dir}: cannot create the output folder ({existing} is a file)")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{out_dir}: cannot create the output folder ({existing} is not writable)")


def _format_name(template: str, track: str, trackext: str, stem: str, ext: str) -> str:
    return template.format(track=track, trackext=trackext, stem=stem, ext=ext)


def _make_separator(args: argparse.Namespace) -> Any:
    import torch

    from hybrids.apps.music.separate import Separator

    device = args.device
    if device is None:
        device = (
            "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        )
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        raise InputError(f"--device: unknown device {device!r} (use cpu, cuda, cuda:N or mps)") from None
    if device_type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS is not available on this machine")
    return Separator(
        args.name,
        weights=args.weights,
        repo=args.repo,
        device=device,
        shifts=args.shifts,
        overlap=args.overlap,
        segment=args.segment,
        split=args.split,
        precision=args.precision,
        seed=args.seed,
        jobs=None if args.jobs is None else max(1, args.jobs),
        batch_segments=args.batch_segments,
        progress=True,
    )


def _separate_one(
    track: Path,
    separator: Any,
    args: argparse.Namespace,
    out_dir: Path,
    ext: str,
    bits: int,
    claimed: dict[Path, Path],
) -> None:
    """Separate one track and write its stems, streaming: memory does not grow with the track's
    length. Stems are spooled as float32 in a hidden folder under ``out_dir`` when
    ``--clip-mode rescale`` needs their peaks, then encoded; every file appears only complete
    (temporary file + rename), and on any failure the files written for this track are removed."""
    import contextlib
    import tempfile

    import torch

    from hybrids.datasets.audio import AudioError

    name, _, suffix = track.name.rpartition(".")
    if not name:  # no dot in the name
        name, suffix = track.name, ""
    if args.stem is None:
        names = list(separator.sources)
    else:
        names = [args.stem] + {"minus": [f"minus_{args.stem}"], "add": [f"no_{args.stem}"]}.get(
            args.other_method, []
        )
    targets = {stem: out_dir / _format_name(args.filename, name, suffix, stem, ext) for stem in names}
    for target in targets.values():
        owner = claimed.get(target)
        if owner is not None and owner != track:
            raise InputError(
                f"{track}: its stems would overwrite those of {owner} ({target}); "
                "rename one or use --filename with {trackext}"
            )

    def outputs_of(stems: dict[str, Any], mix: Any) -> dict[str, Any]:
        if args.stem is None:
            return stems
        chosen = stems[args.stem]
        outputs = {args.stem: chosen}
        if args.other_method == "minus":
            outputs[f"minus_{args.stem}"] = mix - chosen
        elif args.other_method == "add":  # the other stems summed in order, as demucs
            others = torch.zeros_like(chosen)
            for stem, value in stems.items():
                if stem != args.stem:
                    others += value
            outputs[f"no_{args.stem}"] = others
        return outputs

    written: list[Path] = []
    try:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".hybrids-separate-") as tmp:
            if args.clip_mode == "rescale":
                spools = {stem: _Spool(Path(tmp) / f"{i}.f32") for i, stem in enumerate(names)}
                with contextlib.ExitStack() as stack:
                    for spool in spools.values():
                        stack.enter_context(spool)

                    def spool_block(start: int, stems: dict[str, Any], mix: Any) -> None:
                        for stem, value in outputs_of(stems, mix).items():
                            spools[stem].write(value)

                    started = time.perf_counter()
                    _stream(separator, track, spool_block, tmp)
                    logger.debug("%s: separated in %.2f s", track.name, time.perf_counter() - started)
                started = time.perf_counter()
                for stem, target in targets.items():
                    scale = max(1.01 * spools[stem].peak, 1.0)  # demucs's prevent_clip "rescale"
                    with _writer(target, separator, bits, args) as writer:
                        for block in spools[stem].blocks():
                            writer.write(block / scale)
                    written.append(target)
                    claimed[target] = track
                    logger.debug("wrote %s", target)
                logger.debug("%s: stems encoded in %.2f s", track.name, time.perf_counter() - started)
            else:
                with contextlib.ExitStack() as stack:  # all stems at once, completed together
                    writers = {
                        stem: stack.enter_context(_writer(target, separator, bits, args))
                        for stem, target in targets.items()
                    }

                    def write_block(start: int, stems: dict[str, Any], mix: Any) -> None:
                        for stem, value in outputs_of(stems, mix).items():
                            writers[stem].write(
                                value.clamp(-0.99, 0.99) if args.clip_mode == "clamp" else value
                            )

                    _stream(separator, track, write_block, tmp)
                    written.extend(targets.values())  # renamed into place as the stack closes
                for target in targets.values():
                    claimed[target] = track
                    logger.debug("wrote %s", target)
    except BaseException as exc:
        for path in written:
            path.unlink(missing_ok=True)
            claimed.pop(path, None)
        if isinstance(exc, AudioError):  # an unwritable folder, a full disk: one line, exit 2
            raise InputError(str(exc)) from None
        raise


def _stream(separator: Any, track: Path, on_block: Any, tmp: str) -> None:
    try:
        separator.stream_file(track, on_block, tmp_dir=tmp, desc=track.name)
    except InputError as exc:
        message = str(exc)
        raise InputError(message if message.startswith(str(track)) else f"{track}: {message}") from None


def _writer(target: Path, separator: Any, bits: int, args: argparse.Namespace) -> Any:
    from hybrids.datasets.audio import AudioWriter

    return AudioWriter(
        target,
        separator.samplerate,
        separator.audio_channels,
        bits=bits,
        mp3_bitrate=args.mp3_bitrate,
        mp3_preset=args.mp3_preset,
    )


class _Spool:
    """A stem as raw float32 frames in a temporary file, with its running peak |sample|."""

    def __init__(self, path: Path, block_frames: int = 1 << 18):
        self.path, self.block_frames = path, block_frames
        self.peak, self.channels = 0.0, 0
        self.handle: Any = None

    def __enter__(self) -> _Spool:
        self.handle = open(self.path, "wb")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()

    def write(self, block: Any) -> None:
        """``block``: ``(channels, n)`` float tensor."""
        import numpy as np

        self.channels = block.shape[0]
        if block.numel():
            self.peak = max(self.peak, float(block.abs().max()))
        self.handle.write(np.ascontiguousarray(block.numpy().T).data)  # interleaved frames

    def blocks(self) -> Any:
        """The stem back, as ``(channels, n)`` views of the interleaved frames (no transposing copy:
        the writer interleaves them again)."""
        import numpy as np
        import torch

        with open(self.path, "rb") as handle:
            while True:
                data = bytearray(self.block_frames * self.channels * 4)
                size = handle.readinto(data)
                if not size:
                    return
                frames = np.frombuffer(data, dtype="<f4", count=size // 4).reshape(-1, self.channels)
                yield torch.from_numpy(frames).T
