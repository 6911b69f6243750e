"""Progress bars and log verbosity shared by every command.

Bars are tqdm bars on stderr, shown only when stderr is a terminal and the user did not ask for
``-q``; under CI, pipes and redirection they are silent, so logs stay clean.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm.auto import tqdm

_state = {"quiet": False}


def configure_logging(verbosity: int = 0) -> None:
    """``verbosity``: 0 → INFO, 1 (``-v``) → DEBUG, -1 (``-q``) → WARNING, -2 → ERROR.

    Messages go to stderr as ``hybrids: message`` (with the logger name at DEBUG).
    """
    level = {2: logging.DEBUG, 1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING}.get(
        max(-2, min(2, verbosity)), logging.ERROR
    )
    _state["quiet"] = verbosity < 0
    root = logging.getLogger("hybrids")
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_hybrids_cli", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._hybrids_cli = True  # type: ignore[attr-defined]
    fmt = "%(levelname)s %(name)s: %(message)s" if level <= logging.DEBUG else "hybrids: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.propagate = False


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, disabled when stderr is not a TTY or output is quiet."""
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    if _state["quiet"]:
        kwargs["disable"] = True
    else:
        kwargs.setdefault("disable", None)  # tqdm: None disables on a non-TTY
    return tqdm(iterable, **kwargs)
