"""Run options: how a training run runs (output, stopping, devices, precision, seed, threads).

Every training verb's config has a ``run: RunOptions`` field, and its command line gets the run
flags from ``add_run_arguments``: each flag is defined here once, with one default. ``cli.py`` files
turn parsed flags into a verb's config with ``config_from_args``. Nothing here imports torch or
Lightning (``hybrids --help`` stays fast); the run itself is ``hybrids.apps.core.training``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hybrids.apps.core.errors import InputError

__all__ = [
    "DEFAULT_SEED",
    "RESUME_NAME",
    "RunOptions",
    "TrainResult",
    "add_run_arguments",
    "config_from_args",
    "require_at_least_one",
]

RESUME_NAME = "resume.ckpt"
DEFAULT_SEED = 42


@dataclass
class RunOptions:
    """How a training run runs (not what it trains): output, stopping, devices, precision, seed.

    ``devices``: a count (``1``, ``4``) or Lightning's device list/``"auto"``; ``precision``:
    Lightning's precision names; ``threads``: torch threads per process (``None``: on a CPU, the
    machine's cores divided among the processes; else torch's default); ``verbosity``: the CLI's
    ``-v`` (positive) / ``-q`` (negative) count.
    """

    out: Path = Path("runs/run")
    max_time: float | None = None  # minutes
    resume: bool = False
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    seed: int = DEFAULT_SEED
    threads: int | None = None
    verbosity: int = 0
    command: str = ""  # the command line that started the run, recorded with its checkpoints

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if isinstance(self.devices, str) and self.devices.isdigit():
            self.devices = int(self.devices)

    def check(self) -> None:
        """Raise ``InputError`` (one line naming the flag) for a value no run can use."""
        if self.max_time is not None and not self.max_time > 0:
            raise InputError(f"--max-time must be > 0 minutes, got {self.max_time}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        if self.num_nodes < 1:
            raise InputError(f"--num-nodes must be >= 1, got {self.num_nodes}")
        if isinstance(self.devices, int) and self.devices < 1 and self.devices != -1:
            raise InputError(f"--devices must be >= 1 (or -1: all), got {self.devices}")
        if self.resume and not (self.out / RESUME_NAME).is_file():
            raise InputError(f"{self.out / RESUME_NAME}: nothing to resume (no such file)")
        from hybrids.datasets.atomic import check_output_folder

        check_output_folder(self.out)

    @property
    def processes(self) -> int:
        """Processes on this machine (``devices`` when it is a count, else 1)."""
        return self.devices if isinstance(self.devices, int) and self.devices > 0 else 1

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0

    @property
    def resume_path(self) -> Path | None:
        return self.out / RESUME_NAME if self.resume else None


@dataclass
class TrainResult:
    """What a training verb's ``train(config)`` returns (every process returns one)."""

    module: Any  # the vertical's LightningModule, its model trained
    history: list[dict[str, Any]]  # every record of OUT/history.json
    best: dict[str, Any] | None  # the record of OUT/best (None: no score was kept)
    out: Path
    is_global_zero: bool = True


def require_at_least_one(config: Any, *fields: str) -> None:
    """Raise ``InputError`` naming the flag (``--batch-size must be >= 1, got 0``) for the first of
    ``config``'s integer ``fields`` below 1."""
    for name in fields:
        value = getattr(config, name)
        if value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    default_out: str,
    multi_device: bool = True,
    default_seed: int = DEFAULT_SEED,
) -> None:
    """The run flags (``RunOptions``), in a group of their own. ``multi_device=False`` leaves out
    ``--devices``, ``--strategy`` and ``--num-nodes`` for verbs that run on one device."""
    run = parser.add_argument_group("run")
    run.add_argument("-o", "--out", type=Path, default=Path(default_out), help="output folder (%(default)s)")
    run.add_argument("--max-time", type=float, metavar="MINUTES", help="stop cleanly after this many minutes")
    run.add_argument("--resume", action="store_true", help="continue from OUT/resume.ckpt")
    run.add_argument("--accelerator", default="auto", help="cpu, gpu, mps or auto (default: auto)")
    if multi_device:
        run.add_argument("--devices", default="1", help="devices (processes) to use (default: 1)")
        run.add_argument(
            "--strategy", default="auto", help="Lightning strategy: auto, ddp, ddp_spawn, fsdp ... (auto)"
        )
        run.add_argument("--num-nodes", type=int, default=1, help="machines (default: 1)")
    run.add_argument(
        "--precision", default="32-true", help="Lightning precision: 32-true, bf16-mixed, 16-mixed (32-true)"
    )
    run.add_argument("--seed", type=int, default=default_seed, help="random seed (default: %(default)s)")
    run.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")


def run_options_from_args(args: argparse.Namespace) -> RunOptions:
    """The ``RunOptions`` of parsed flags (``add_run_arguments`` plus the root's ``-v``/``-q``)."""
    names = {f.name for f in dataclasses.fields(RunOptions)} - {"verbosity", "command"}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values["verbosity"] = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
    values["command"] = _command_line(args)
    return RunOptions(**values)


def _command_line(args: argparse.Namespace) -> str:
    """The command line that parsed ``args`` (``main`` records it as ``args.argv``)."""
    return " ".join(["hybrids", *getattr(args, "argv", [])])


ConfigT = TypeVar("ConfigT")


def config_from_args(cls: type[ConfigT], args: argparse.Namespace, **values: Any) -> ConfigT:
    """A verb's config dataclass from parsed flags: every field named like a flag's ``dest``, the
    ``run`` field from the run flags, a ``command`` field from the command line, ``values``
    overriding them all. This is all a ``cli.py`` does."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    picked = {name: getattr(args, name) for name in fields if hasattr(args, name) and name != "run"}
    if "run" in fields:
        picked["run"] = run_options_from_args(args)
    if "command" in fields:  # the command line, for the provenance a report or a page records
        picked["command"] = _command_line(args)
    picked.update(values)
    return cls(**picked)
