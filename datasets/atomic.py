"""Atomic file output: write to a temporary file in the destination folder, then rename.

A crash, an exception or Ctrl-C while writing leaves no partial file at the destination; an
existing destination is only replaced once the new content is complete. The finished file gets
the mode a plain ``open(path, "w")`` would give it (``0o666`` less the umask, or the mode of the
file it replaces), not the owner-only mode of a temporary file. A destination that cannot be
written raises ``OutputError`` with one line naming it and the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputError(OSError):
    """An output path that cannot be written (unwritable folder, a file where a folder must be,
    full disk); ``str()`` is one line naming the path and the reason."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def check_output_folder(folder: str | Path) -> None:
    """Fail early, before long work, when ``folder`` obviously cannot be created or written to:
    a path component is a file, or the nearest existing folder is not writable."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"{folder}: cannot write there ({existing} is a file, not a folder)")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: cannot write there ({existing} is not writable)")


def make_output_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) for output; ``OutputError`` when that is impossible."""
    folder = Path(folder)
    check_output_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    return folder


@contextlib.contextmanager
def atomic_write_path(destination: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success rename it onto ``destination``.

    ``suffix`` defaults to the destination's suffix, so writers that pick a format from the file
    extension (soundfile, nibabel, safetensors) keep working. Parent folders are created.
    """
    destination = Path(destination)
    if suffix is None:
        suffix = _format_suffix(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{destination.name}.", suffix=f".part{suffix}", dir=destination.parent
        )
    except OSError as exc:
        raise OutputError(f"{destination}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            os.chmod(tmp, _mode_for(destination))
            os.replace(tmp, destination)
        except OSError as exc:
            raise OutputError(f"{destination}: cannot write ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_write_folder(destination: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``; on success it takes its place.

    An interruption leaves the old folder (or none) and never a half-written or empty one; an
    existing ``destination`` is moved aside, replaced and then removed, so only what the new
    folder holds remains. Use it for folders whose every file the writer owns (a checkpoint).
    """
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise OutputError(f"{destination}: cannot write a folder there (a file of that name exists)")
    make_output_folder(destination.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent))
    except OSError as exc:
        raise OutputError(f"{destination}: cannot write ({exc.strerror or exc})") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is owner-only
        old = None
        if destination.exists():
            old = tmp.with_name(tmp.name[: -len(".part")] + ".old")
            os.replace(destination, old)
        os.replace(tmp, destination)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _mode_for(destination: Path) -> int:
    """The permission bits ``open(destination, "w")`` would leave: the replaced file's, else
    ``0o666`` less the process umask."""
    try:
        return stat.S_IMODE(destination.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    with contextlib.suppress(OSError, ValueError, StopIteration):  # Linux: read it without changing it
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # elsewhere reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _format_suffix(path: Path) -> str:
    """``.wav`` for ``a.wav``; ``.nii.gz`` for ``scan.nii.gz`` (compression keeps the inner suffix)."""
    suffixes = path.suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() in {".gz", ".bz2", ".xz", ".zst"}:
        return "".join(suffixes[-2:])
    return path.suffix


def atomic_write_bytes(destination: str | Path, data: bytes) -> None:
    with atomic_write_path(destination) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(destination: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_write_path(destination) as tmp:
        tmp.write_text(text, encoding=encoding)
