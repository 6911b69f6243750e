"""Process-wide memory settings for long-running commands.

glibc gives every thread that allocates its own malloc arena (up to 8 per core) and keeps memory
freed there for reuse instead of returning it. Separation runs forwards in worker threads whose
activations (hundreds of MB each, of varying sizes) then leave each arena holding its own peak: on
the project's 2-core machine, ``hybrids music separate`` with htdemucs peaked at 1569 MiB with the
default arenas and 1416 MiB with a single arena, at the same speed (large tensors dominate, so
the shared arena's lock is rarely contended).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def limit_malloc_arenas(count: int = 1) -> bool:
    """Cap glibc's malloc arenas at ``count`` for the rest of the process (call it before worker
    threads start); returns whether the setting was applied (False off glibc, e.g. macOS, musl)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = bool(mallopt(_M_ARENA_MAX, int(count)))
    logger.debug("malloc arenas capped at %d: %s", count, applied)
    return applied
