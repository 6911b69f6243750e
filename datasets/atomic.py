"""Atomic file output: write to a temporary file in the destination folder, then rename.

A crash, an exception or Ctrl-C while writing leaves no partial file at the destination; an
existing destination is only replaced once the new content is complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write_path(destination: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success rename it onto ``destination``.

    ``suffix`` defaults to the destination's suffix, so writers that pick a format from the file
    extension (soundfile, nibabel, safetensors) keep working. Parent folders are created.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = _format_suffix(destination)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=f".part{suffix}", dir=destination.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


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
