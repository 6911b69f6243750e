"""SSD scan benchmark: sequential reference vs chunked fast path vs Hugging Face transformers' pure-torch
chunk scan, plus one Mamba2 block forward at long context (peak memory).

Every case is a module-level factory ``factory(**kwargs) -> zero-argument callable`` (inputs are built
outside the callable), measured by :func:`hybrids.evaluation.bench.timing.measure_case` in a fresh
subprocess. All cases run forward only, without autograd, on the same inputs: ``x (1, L, h, p)``
unit normal, ``dt`` raw with ``dt_bias`` and softplus (Mamba2's usage), ``A`` in ``-[1, 16]``,
``B, C (1, L, 1, n)`` unit normal, ``D (h,)``.

The peer is ``transformers.models.mamba2.modeling_mamba2.mamba2_chunk_scan`` — the pure-torch scan
that ``Mamba2Mixer.torch_forward`` uses on CPU (transformers >= 5 exposes it as a module-level
function; its kernel-hub wrapper is bypassed through ``__wrapped__`` so the pure-torch body runs even
where mamba-ssm is installed). It runs at its default ``chunk_size=256`` and computes inter-chunk state
passing with an ``nchunks × nchunks`` decay matrix.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from typing import Any

from hybrids.evaluation.bench.timing import measure_case

__all__ = [
    "bench_ssd",
    "mamba2_block_case",
    "ssd_fast_case",
    "ssd_reference_case",
    "ssd_transformers_case",
]

_MODULE = "hybrids.evaluation.bench.ssd"
#: Skip a reference or peer case whose estimated time per call exceeds this (it runs 1 + repeats times).
MAX_CALL_S = 3.0
#: Minimum repeats of the (cheap) fast cases.
FAST_REPEATS = 10
#: The Mamba2 block case: one block at this length must stay under this peak memory.
BLOCK_LENGTH = 131072
BLOCK_PEAK_LIMIT_MIB = 4096


def _inputs(L: int, h: int, p: int, n: int, g: int = 1, b: int = 1, seed: int = 0) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(b, L, h, p, generator=gen),
        "dt": torch.randn(b, L, h, generator=gen) - 4.0,
        "A": -(1.0 + 15.0 * torch.rand(h, generator=gen)),
        "B": torch.randn(b, L, g, n, generator=gen),
        "C": torch.randn(b, L, g, n, generator=gen),
        "D": torch.ones(h),
        "dt_bias": torch.full((h,), 0.5),
    }


def _ours(impl: str, L: int, h: int, p: int, n: int, g: int, chunk_size: int | None) -> Callable[[], Any]:
    import torch

    from hybrids.kernels.ssd import ssd_scan

    a = _inputs(L, h, p, n, g)

    def run() -> Any:
        with torch.no_grad():
            return ssd_scan(
                a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size=chunk_size, D=a["D"],
                dt_bias=a["dt_bias"], dt_softplus=True, impl=impl,
            )  # fmt: skip

    return run


def ssd_reference_case(L: int, h: int = 8, p: int = 64, n: int = 64, g: int = 1) -> Callable[[], Any]:
    """The sequential recurrence (``impl="reference"``)."""
    return _ours("reference", L, h, p, n, g, None)


def ssd_fast_case(
    L: int, h: int = 8, p: int = 64, n: int = 64, g: int = 1, chunk_size: int | None = None
) -> Callable[[], Any]:
    """The chunked fast path (``impl="chunked"``, the CPU default of ``impl="auto"``)."""
    return _ours("chunked", L, h, p, n, g, chunk_size)


def ssd_transformers_case(
    L: int, h: int = 8, p: int = 64, n: int = 64, g: int = 1, chunk_size: int = 256
) -> Callable[[], Any]:
    """Hugging Face transformers' pure-torch Mamba2 chunk scan (``mamba2_chunk_scan``)."""
    import torch
    from transformers.models.mamba2 import modeling_mamba2

    scan = getattr(modeling_mamba2, "mamba2_chunk_scan", None)
    if scan is None:
        raise RuntimeError("this transformers version has no module-level mamba2_chunk_scan (needs >= 5)")
    scan = getattr(scan, "__wrapped__", scan)  # the pure-torch body, not the kernel-hub dispatcher
    a = _inputs(L, h, p, n, g)

    def run() -> Any:
        with torch.no_grad():
            return scan(
                a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size, D=a["D"], dt_bias=a["dt_bias"],
                dt_softplus=True,
            )  # fmt: skip

    return run


def mamba2_block_case(
    L: int = BLOCK_LENGTH, d_model: int = 256, d_state: int = 128, headdim: int = 64, batch: int = 1
) -> Callable[[], Any]:
    """One Mamba2 block forward (inference mode) on ``(batch, L, d_model)``."""
    import torch

    from hybrids.shared_blocks.mamba2 import Mamba2

    torch.manual_seed(0)
    block = Mamba2(d_model, d_state=d_state, headdim=headdim).eval()
    u = torch.randn(batch, L, d_model)

    def run() -> Any:
        with torch.inference_mode():
            return block(u)

    return run


def _row(case: str, impl: str, measured: dict[str, Any] | None = None, note: str = "") -> dict[str, Any]:
    measured = measured or {}
    return {
        "group": "ssd",
        "case": case,
        "impl": impl,
        "time_s": measured.get("time_s"),
        "peak_mib": measured.get("peak_mib"),
        "note": measured.get("error") or note,
    }


def bench_ssd(
    lengths: Sequence[int] = (1024, 4096, 16384, 65536),
    h: int = 8,
    p: int = 64,
    n: int = 64,
    repeats: int = 3,
    *,
    block_length: int | None = BLOCK_LENGTH,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Reference vs fast vs transformers at each length, then one Mamba2 block (d_model 256) forward.

    Returns rows ``{"group": "ssd", "case": "L=4096", "impl": "reference"|"fast"|"transformers",
    "time_s", "peak_mib", "note"}`` (best of ``repeats`` after a warm-up; peak RSS above the
    pre-call baseline; the fast path takes at least :data:`FAST_REPEATS`). A reference or peer case
    estimated (linearly, from the lowest time per token measured so far) to take over
    :data:`MAX_CALL_S` per call is skipped with a note, as is one that failed or timed out at a
    shorter length, and the peer without transformers.
    The fast rows' notes give the others' time and peak memory relative to the fast path, and the
    fast path's growth from the previous length. ``block_length=None`` skips the block.
    """
    have_transformers = importlib.util.find_spec("transformers") is not None
    per_token: dict[str, float] = {}  # lowest seconds per token measured so far, per impl
    previous_fast: tuple[int, float] | None = None
    failed: dict[str, int] = {}  # impl -> the length at which it failed or timed out
    rows: list[dict[str, Any]] = []
    for L in sorted(lengths):
        case = f"L={L}"
        kwargs = {"L": L, "h": h, "p": p, "n": n}
        measured: dict[str, dict[str, Any]] = {}
        fast_index = len(rows)  # the fast row is measured first
        for impl, factory in (
            ("fast", "ssd_fast_case"),
            ("reference", "ssd_reference_case"),
            ("transformers", "ssd_transformers_case"),
        ):
            if impl == "transformers" and not have_transformers:
                rows.append(_row(case, impl, note="skipped: transformers is not installed"))
                continue
            if impl != "fast" and impl in failed:
                rows.append(_row(case, impl, note=f"skipped: failed at L={failed[impl]}"))
                continue
            estimate = per_token.get(impl, 0.0) * L
            if impl != "fast" and estimate > MAX_CALL_S:
                rows.append(_row(case, impl, note=f"skipped: estimated {estimate:.0f} s per call"))
                continue
            if log:
                log(f"ssd {case} {impl}")
            # The fast path is cheap: more repeats make its best time robust to a busy machine.
            runs = max(repeats, FAST_REPEATS) if impl == "fast" else repeats
            result = measure_case(f"{_MODULE}:{factory}", kwargs, repeats=runs, timeout_s=120)
            if "time_s" in result:
                per_token[impl] = min(per_token.get(impl, math.inf), result["time_s"] / L)
                measured[impl] = result
            else:
                failed[impl] = L
            rows.append(_row(case, impl, result))
        fast = measured.get("fast")
        if fast:
            notes = []
            for other in ("reference", "transformers"):
                if other in measured:
                    note = f"{other}: {measured[other]['time_s'] / fast['time_s']:.1f}x the time"
                    peaks = (fast.get("peak_mib"), measured[other].get("peak_mib"))
                    if None not in peaks and min(peaks) >= 1.0:  # below 1 MiB, RSS is noise
                        note += f", {peaks[1] / peaks[0]:.1f}x the peak memory"
                    notes.append(note)
            if previous_fast:
                prev_L, prev_time = previous_fast
                notes.append(f"{fast['time_s'] / prev_time:.2f}x the time of L={prev_L}")
            previous_fast = (L, fast["time_s"])
            rows[fast_index]["note"] = "; ".join(notes)
    if block_length:
        if log:
            log(f"mamba2 block L={block_length}")
        result = measure_case(
            f"{_MODULE}:mamba2_block_case", {"L": block_length}, repeats=min(repeats, 2), timeout_s=300
        )
        peak = result.get("peak_mib")
        note = "1 Mamba2 block, d_model 256, d_state 128, 8 heads of 64, forward in inference mode"
        if peak is not None:
            note += f"; peak {'<' if peak < BLOCK_PEAK_LIMIT_MIB else '>='} {BLOCK_PEAK_LIMIT_MIB} MiB"
        rows.append(_row(f"mamba2 block L={block_length}", "fast", result, note))
    return rows


def _format(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'case':<26} {'impl':<13} {'time ms':>10} {'peak MiB':>9}  note"]
    for r in rows:
        t = "-" if r["time_s"] is None else f"{r['time_s'] * 1e3:.1f}"
        m = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"{r['case']:<26} {r['impl']:<13} {t:>10} {m:>9}  {r['note']}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m hybrids.evaluation.bench.ssd
    import time

    start = time.perf_counter()
    print(_format(bench_ssd(log=print)))
    print(f"total {time.perf_counter() - start:.0f} s")
