"""Command-line plumbing shared by every app: the parser class and flags of peer tools.

``Parser`` turns off argparse's prefix abbreviations: with them, nnU-Net's ``-d 4`` was silently
read as our ``-device 4``. Subparsers inherit the class, so one ``Parser`` at the root covers every
command. ``reject_peer_flags`` gives the flags users bring from other tools one clear line saying
what to use instead, rather than argparse's generic "unrecognized arguments".
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

__all__ = ["Parser", "reject_peer_flags"]


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without prefix abbreviations (``allow_abbrev=False``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def reject_peer_flags(parser: argparse.ArgumentParser, flags: Mapping[str, str]) -> None:
    """Accept each of ``flags`` (e.g. ``{"-d": "nnU-Net's dataset flag: ..."}``) only to fail with
    ``usage error: -d is <explanation>``; they are hidden from ``--help``."""

    class _Reject(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None):
            parser.error(f"{option} is {flags[option]}")

    for flag in flags:
        parser.add_argument(flag, action=_Reject, nargs="?", help=argparse.SUPPRESS)
