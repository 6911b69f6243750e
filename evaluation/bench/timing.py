"""Timing and peak-memory measurement shared by every benchmark.

A benchmark case is a *factory*: a module-level function ``factory(**kwargs) -> Callable[[], Any]``
that builds its inputs and returns the zero-argument callable to time. ``measure_case`` runs the
factory in a fresh subprocess (so one case's allocations cannot hide another's peak), calls the
callable once to warm up, resets the kernel's peak-RSS counter, then times ``repeats`` calls and
reports the best time and the peak resident memory above the pre-call baseline.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from typing import Any


def best_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Best wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _run_case(target: str, kwargs: dict[str, Any], repeats: int, threads: int | None) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    module_name, _, func_name = target.partition(":")
    factory = getattr(importlib.import_module(module_name), func_name)
    fn = factory(**kwargs)
    fn()  # warm-up: first-call allocations, lazy initialisation
    peak_supported = _reset_peak_rss()
    baseline = _read_status_kib("VmRSS")
    seconds = best_time(fn, repeats=repeats, warmup=0)
    peak = _read_status_kib("VmHWM")
    peak_mib = None
    if peak_supported and peak is not None and baseline is not None:
        peak_mib = max(0, peak - baseline) / 1024.0
    return {"time_s": seconds, "peak_mib": peak_mib}


def measure_case(
    target: str,
    kwargs: dict[str, Any] | None = None,
    *,
    repeats: int = 3,
    threads: int | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Measure ``target`` ("package.module:factory") in a fresh subprocess.

    Returns ``{"time_s": best seconds, "peak_mib": peak RSS above baseline or None}``; on failure
    (an exception, out of memory, or the timeout) returns ``{"error": "..."}`` instead.
    """
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_run_case, (target, kwargs or {}, repeats, threads or os.cpu_count()))
        try:
            return result.get(timeout_s)
        except mp.TimeoutError:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        except Exception as exc:  # the case itself failed; report it as a row, not a crash
            return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}


def machine_info(**extra: Any) -> dict[str, Any]:
    """What a benchmark result records about the machine it ran on (plus ``extra`` versions)."""
    import platform

    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        **extra,
    }
