"""Measured-results pages (``docs/results/<app>.md``): a report's markdown, stamped with how, where
and when it was measured.

Every number in ``docs/results/`` is written by a ``report`` or ``bench`` command with ``--page
FILE``, never typed by hand; the stamp names the command line, the commit of the code that ran,
the date and the machine (CPU, cores, torch threads, GPU), so a reader can tell what the numbers
are and rerun them.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

from hybrids.datasets.atomic import atomic_write_text

__all__ = ["measurement_stamp", "stamp_line", "write_results_page"]


def _commit() -> str:
    """The short commit of the source tree hybrids runs from (``-dirty`` with local changes), or the
    installed version when it does not run from a git checkout."""
    source = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib import metadata

        try:
            version = metadata.version("hybrids")
        except metadata.PackageNotFoundError:
            version = "0+unknown"
        return f"hybrids {version} (not a git checkout)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measurement_stamp(command: str | None = None) -> dict[str, str]:
    """``{"command", "commit", "date", "machine"}`` of a measurement made now in this process
    (the machine includes the 1-minute load average, so a timing made beside other work says so).

    ``command`` defaults to this process's command line. Torch facts (version, GPU) are
    read only when torch is already imported (a report that measured nothing with torch has none).
    """
    if command is None:
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    machine = f"{_cpu_name()}, {os.cpu_count()} cores"
    if hasattr(os, "getloadavg"):  # timings on a shared machine mean little without it
        machine += f" (load average {os.getloadavg()[0]:.1f} when written)"
    torch = sys.modules.get("torch")
    if torch is not None:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        machine += f", torch {torch.__version__}, {gpu}"  # threads: each report states its own
    return {
        "command": command,
        "commit": _commit(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
    }


def stamp_line(stamp: dict[str, str]) -> str:
    """One markdown line: ``Measured by `cmd` at commit X on DATE; machine: ....``"""
    return (
        f"Measured by `{stamp['command']}` at commit `{stamp['commit']}` on {stamp['date']}; "
        f"machine: {stamp['machine']}."
    )


def write_results_page(path: str | Path, title: str, body: str, stamp: dict[str, str]) -> Path:
    """Write ``# title``, the stamp line and ``body`` (markdown) to ``path``, atomically."""
    path = Path(path)
    text = f"# {title}\n\n{stamp_line(stamp)}\n\n{body.strip()}\n"
    atomic_write_text(path, text)
    return path
