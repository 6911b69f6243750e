"""User-facing errors.

Anything a user can cause — a missing or corrupt file, a wrong format, an unknown model name,
weights that cannot be downloaded — raises a ``HybridsError`` whose message is one line naming the
file (or name) and the problem. The CLI prints that line and exits with status 2; any other
exception is a bug and exits with status 1.
"""

from __future__ import annotations


class HybridsError(Exception):
    """Base class of errors caused by user input; the CLI exits 2 with ``str(error)``."""


class InputError(HybridsError, ValueError):
    """A file or argument the user gave is missing, malformed or of the wrong shape/format."""


class UnknownModelError(HybridsError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(HybridsError):
    """Weights could not be resolved: unknown entry, download failed, checksum mismatch."""


class CheckpointError(HybridsError):
    """A checkpoint file is corrupt, truncated, of an unknown format, or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint references a global outside the allow-list (it could run code)."""
