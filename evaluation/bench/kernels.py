"""``hybrids bench kernels``: every kernel benchmark in one run, printed as a table and saved as JSON.

Rows come from the per-kernel benchmark modules (``ssd.py``, ``attention.py``); each row is one
implementation of one case: ``{"group", "case", "impl", "time_s", "peak_mib", "note"}``, measured
in a fresh subprocess (best of ``repeats``; peak resident memory above the pre-call baseline).
Ratios are computed against the ``fast`` row of the same case, measured in the same run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hybrids.datasets.atomic import atomic_write_text
from hybrids.evaluation.bench.timing import machine_info

FAST_IMPLS = ("fast", "factorized", "sdpa")


def _suites() -> dict[str, Callable[..., list[dict[str, Any]]]]:
    from hybrids.evaluation.bench.attention import bench_attention
    from hybrids.evaluation.bench.ssd import bench_ssd

    return {"ssd": bench_ssd, "attention": bench_attention}


def run_kernel_benchmarks(
    suites: Sequence[str] | None = None, *, repeats: int = 3, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the chosen suites (default: all) and return ``{"machine": ..., "rows": [...]}``."""
    available = _suites()
    chosen = list(suites or available)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(
            f"unknown benchmark suite(s) {', '.join(unknown)}; choose from {', '.join(available)}"
        )
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in chosen:
        log(f"running {name} benchmarks ...")
        rows.extend(available[name](repeats=repeats))
    return {
        "machine": machine_info(),
        "repeats": repeats,
        "wall_s": time.perf_counter() - started,
        "rows": _with_ratios(rows),
    }


def _with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``time_vs_fast`` (this row's time / the fast row's time, same group and case)."""
    fast = {}
    for row in rows:
        if row.get("impl") in FAST_IMPLS and row.get("time_s"):
            fast.setdefault((row["group"], row["case"]), row["time_s"])
    out = []
    for row in rows:
        row = dict(row)
        base = fast.get((row["group"], row["case"]))
        if base and row.get("time_s"):
            row["time_vs_fast"] = row["time_s"] / base
        out.append(row)
    return out


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width text table of the rows (times in ms, peak memory in MiB)."""
    header = ("group", "case", "impl", "time ms", "peak MiB", "x fast", "note")
    lines = []
    for row in result["rows"]:
        time_s, peak = row.get("time_s"), row.get("peak_mib")
        ratio = row.get("time_vs_fast")
        lines.append(
            (
                str(row.get("group", "")),
                str(row.get("case", "")),
                str(row.get("impl", "")),
                f"{time_s * 1e3:.2f}" if time_s is not None else "-",
                f"{peak:.0f}" if peak is not None else "-",
                f"{ratio:.2f}" if ratio is not None else "-",
                str(row.get("note") or row.get("error") or ""),
            )
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header) - 1)]
    text = []
    for r in [header, *lines]:
        text.append(
            "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            + "  "
            + r[-1]
        )
    machine = result["machine"]
    text.append(
        f"({machine['cpu_count']} CPU cores, torch {machine['torch']}, best of {result['repeats']}, "
        f"total {result['wall_s']:.0f} s)"
    )
    return "\n".join(text)


def save_result(result: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")
