"""The ``hybrids`` command line: ``hybrids [-v|-q] <command> ...``.

Core commands live here (``models``); each app adds its own group (``hybrids music ...``) from
``hybrids/apps/<app>/cli.py``, which defines ``add_parser(subparsers)`` and keeps heavy imports
(torch, models) inside its handlers so ``hybrids --help`` stays fast.

Exit codes: 0 success; 2 usage or input error (one line on stderr); 1 unexpected failure
(a bug: the traceback is printed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from hybrids.apps import __version__
from hybrids.apps.core.errors import HybridsError

logger = logging.getLogger("hybrids.cli")


def build_parser() -> argparse.ArgumentParser:
    from hybrids.apps.core.arguments import Parser

    parser = Parser(
        prog="hybrids",
        description="Hybrid CNN / transformer / state-space model pipelines: "
        "music separation, medical segmentation, DNA language models and more.",
    )
    parser.add_argument("--version", action="version", version=f"hybrids {__version__}")
    _add_verbosity(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    models = commands.add_parser(
        "models",
        help="list the models: architectures and the trained models built in",
        description="List every model name (short names work too where unambiguous): parameter "
        "count, weights (official: cached or to download; built-in: shipped with hybrids, runs "
        "offline), presets and a description.",
    )
    models.add_argument("--app", help="only this app's models (e.g. music)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=_cmd_models)

    bench = commands.add_parser("bench", help="run benchmarks (measured here, beside the peers)")
    suites = bench.add_subparsers(dest="suite", metavar="SUITE")
    suites.required = True
    kernels = suites.add_parser(
        "kernels",
        help="compute kernels: SSD scan, factorised and window attention, SDPA",
        description="Time (best of N) and peak memory of every kernel's reference, fast path and "
        "peer implementation, each case in a fresh process; prints a table and writes JSON.",
    )
    kernels.add_argument(
        "--only", action="append", choices=["ssd", "attention"], help="run only this suite (repeatable)"
    )
    kernels.add_argument("--repeats", type=int, default=3, help="timed runs per case; the best is kept")
    kernels.add_argument(
        "-o",
        "--output",
        default="bench-results/kernels.json",
        help="JSON file to write (default: %(default)s)",
    )
    kernels.set_defaults(func=_cmd_bench_kernels)
    bsseval = suites.add_parser(
        "bsseval",
        help="BSS Eval v4 metrics: ours against museval.evaluate on stems made from the real audio",
        description="Time hybrids.evaluation.bsseval.evaluate and museval.evaluate, alternating, on the "
        "same stems from ../shared/data/audio: broadband (pieces of the recordings as sources, estimates "
        "with filtered noise and leakage) and band-limited (one recording band-passed into 30-200, "
        "200-1500, 1500-6000 and 6000-16000 Hz, estimates with FIR cross-leakage and 1 percent noise). "
        "Prints the times, the speed-ups and the largest differences in dB, split by whether museval's "
        "own value is stable (inputs x 3; a -120 dB noise floor), and writes JSON.",
    )
    bsseval.add_argument(
        "--duration", type=float, default=60.0, help="seconds per source, broadband (default: 60)"
    )
    bsseval.add_argument(
        "--band-duration", type=float, default=30.0, help="seconds per source, band-limited (default: 30)"
    )
    bsseval.add_argument(
        "--cases",
        nargs="+",
        choices=["broadband", "band-limited"],
        default=["broadband", "band-limited"],
        help="which cases to run (default: both)",
    )
    bsseval.add_argument("--sources", type=int, default=4, help="number of sources (default: 4)")
    bsseval.add_argument("--channels", type=int, choices=[1, 2], default=2, help="1 (mono) or 2 (stereo)")
    bsseval.add_argument("--repeats", type=int, default=3, help="timed runs of ours; the best is kept")
    bsseval.add_argument(
        "--no-stability",
        action="store_true",
        help="skip the two extra museval runs per case that tell its stable values from its unstable ones",
    )
    bsseval.add_argument(
        "-o",
        "--output",
        default="bench-results/bsseval.json",
        help="JSON file to write (default: %(default)s)",
    )
    bsseval.set_defaults(func=_cmd_bench_bsseval)

    from hybrids.apps.core.registry import available_apps

    for app in available_apps():
        try:
            module = importlib.import_module(f"hybrids.apps.{app}.cli")
        except ModuleNotFoundError as exc:
            if exc.name == f"hybrids.apps.{app}.cli":
                continue  # an app without commands of its own
            raise
        module.add_parser(commands)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    group.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors, no bars")


def _cmd_models(args: argparse.Namespace) -> int:
    from hybrids.apps.core.catalog import catalog_rows

    rows = catalog_rows(args.app)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        where = f" for app {args.app!r}" if args.app else ""
        print(f"no models registered{where}")
        return 0
    header = ("MODEL", "PARAMS", "WEIGHTS", "PRESETS", "DESCRIPTION")
    table = [
        (
            r["name"],
            _human_count(r["parameters"]),
            r["weights"],
            ",".join(r["presets"]) or "-",
            r["description"],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header) - 1)]
    for row in [header, *table]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _cmd_bench_kernels(args: argparse.Namespace) -> int:
    from hybrids.apps.core.errors import InputError
    from hybrids.evaluation.bench.kernels import format_table, run_kernel_benchmarks, save_result

    if args.repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {args.repeats}")
    result = run_kernel_benchmarks(args.only, repeats=args.repeats, log=logger.info)
    print(format_table(result))
    save_result(result, args.output)
    logger.info("wrote %s", args.output)
    return 0


def _cmd_bench_bsseval(args: argparse.Namespace) -> int:
    from hybrids.apps.core.errors import InputError
    from hybrids.evaluation.bench import bsseval

    if args.repeats < 1 or args.sources < 1 or args.duration <= 0 or args.band_duration <= 0:
        raise InputError("--repeats and --sources must be >= 1, --duration and --band-duration > 0")
    try:
        cases = bsseval.make_cases(
            args.duration, args.band_duration, args.sources, channels=args.channels, cases=args.cases
        )
    except (OSError, ValueError) as exc:
        raise InputError(f"bench bsseval: {exc}") from None
    result = bsseval.run_bsseval_benchmark(
        cases=cases, repeats=args.repeats, stability=not args.no_stability, log=logger.info
    )
    print(bsseval.format_result(result))
    bsseval.save_result(result, args.output)
    logger.info("wrote %s", args.output)
    return 0


def _human_count(n: int | None) -> str:
    if n is None:
        return "?"
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI in-process; returns the exit code (never calls ``sys.exit`` itself)."""
    return run(build_parser, argv)


def run(build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with the parser ``build()`` returns and call the chosen command's ``func``,
    with the CLI's logging set-up, error lines and exit codes (shared by ``hybrids`` and the
    ``separate`` shortcut, whose parser holds only its own command)."""
    from hybrids.apps.core.progress import configure_logging
    from hybrids.datasets.atomic import OutputError

    try:
        parser = build()
        try:
            argv = list(sys.argv[1:] if argv is None else argv)
            args = parser.parse_args(argv)
            args.argv = argv  # the command line, recorded by training runs as their provenance
        except SystemExit as exit_:  # --help, --version and usage errors
            return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
        configure_logging(args.verbose - args.quiet)
        return int(args.func(args) or 0)
    except (HybridsError, OutputError) as error:
        print(f"hybrids: error: {error}", file=sys.stderr)
        return 2
    except PermissionError as error:  # a file or folder the user may not read or write
        print(f"hybrids: error: {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hybrids: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `hybrids models | head`
        return 0
    except Exception:
        traceback.print_exc()
        print(
            "hybrids: unexpected failure (this is a bug; please report it with the traceback above)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
