"""Loading third-party pickled checkpoints (``.th``, ``.pt``, ``.ckpt``) without running their code.

A pickle is a program: ``pickle.load`` on a hostile file can call ``os.system``. We never do that.
Checkpoints are read by PyTorch's restricted ``weights_only`` unpickler, which allows only tensors,
storages, containers, numbers and strings, extended here by an explicit allow-list:

- ``allowed_globals``: ``{"module.Name": object}`` entries the pickle may reference and call
  (e.g. ``{"fractions.Fraction": fractions.Fraction}``), each chosen because it runs no code;
- ``stub_classes``: qualified names of classes the pickle merely *mentions* (demucs stores the
  model class, ``demucs.htdemucs.HTDemucs``, next to its state dict). Each is mapped to an inert
  stub class of the same name that only records its arguments, so the real library is neither
  imported nor executed.

Anything else (``posix.system``, ``builtins.eval``, ``subprocess.Popen`` ...) is refused with an
``UnsafeCheckpointError`` naming the file and the global.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from hybrids.apps.core.errors import CheckpointError, UnsafeCheckpointError

_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+)")


class PickleStub:
    """An inert stand-in for a class a checkpoint references; records what it was built with."""

    qualified_name: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stub of {self.qualified_name}>"


def make_stub(qualified_name: str) -> type[PickleStub]:
    """A ``PickleStub`` subclass whose ``__module__``/``__qualname__`` spell ``qualified_name``."""
    module, _, name = qualified_name.rpartition(".")
    if not module or not name:
        raise ValueError(f"stub name must be 'module.Name', got {qualified_name!r}")
    stub = type(name, (PickleStub,), {"qualified_name": qualified_name, "__module__": module})
    stub.__qualname__ = name
    return stub


def load_pickled_checkpoint(
    path: str | Path,
    *,
    allowed_globals: Mapping[str, Any] | None = None,
    stub_classes: Iterable[str] = (),
) -> Any:
    """Read a PyTorch-pickled checkpoint with a restricted unpickler; tensors land on the CPU.

    Raises ``UnsafeCheckpointError`` for a global outside the allow-list and ``CheckpointError``
    for a file that is missing, truncated or not a PyTorch checkpoint.
    """
    path = Path(path)
    safe: list[Any] = [(obj, name) for name, obj in (allowed_globals or {}).items()]
    stubs = {name: make_stub(name) for name in stub_classes}
    safe.extend((stub, name) for name, stub in stubs.items())
    try:
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file") from None
    except pickle.UnpicklingError as exc:
        message = str(exc)
        found = _GLOBAL_IN_MESSAGE.search(message)
        if found:
            raise UnsafeCheckpointError(
                f"{path}: refused to unpickle: it references the global {found.group(1)}, which is not on "
                "the allow-list (a pickle can run arbitrary code; convert trusted checkpoints to safetensors)"
            ) from None
        detail = _UNPICKLER_DETAIL.search(message)
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint the restricted loader accepts "
            f"({detail.group(1) if detail else _first_line(message)})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError, TypeError) as exc:
        reason = _first_line(str(exc)) or type(exc).__name__
        raise CheckpointError(f"{path}: corrupt, truncated or not a PyTorch checkpoint ({reason})") from None


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0][:200] if message.strip() else ""
