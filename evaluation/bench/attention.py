"""Attention kernel benchmarks: factorised vs full softmax attention on grids, and SDPA vs reference.

Two groups of rows (``{"group", "case", "impl", "time_s", "peak_mib", "note"}``), each case measured in a
fresh subprocess by :func:`hybrids.evaluation.bench.timing.measure_case` (best of ``repeats``; peak
resident memory above the pre-call baseline):

- ``"factorized"``: FactFormer's chained factorised kernel integral
  (:func:`hybrids.kernels.attention.factorized.factorized_attention`) on an ``n x n`` grid vs softmax
  attention over all ``n²`` grid points, either with explicit ``(n², n²)`` scores (``full-reference``) or
  torch's fused SDPA (``full-sdpa``; on CPU a flash-style kernel that never stores the scores). A full case
  whose estimated memory exceeds :data:`FULL_MEMORY_LIMIT_BYTES`, or whose estimated time exceeds
  :data:`FULL_TIME_LIMIT_S`, is reported as infeasible instead of run.
- ``"sdpa"``: the dispatcher's fused path vs its explicit reference at ``b=1, h=8, d=64``.

The factories are module-level so the subprocess can import them; inputs are built outside the timed
callable, which runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from hybrids.evaluation.bench.timing import measure_case
from hybrids.kernels.attention.factorized import factorized_attention
from hybrids.kernels.attention.sdpa import attention

__all__ = [
    "FULL_MEMORY_LIMIT_BYTES",
    "FULL_TIME_LIMIT_S",
    "bench_attention",
    "factorized_case",
    "full_attention_bytes",
    "full_attention_case",
    "sdpa_case",
]

#: Full attention cases needing more memory than this (estimated) are reported, not run.
FULL_MEMORY_LIMIT_BYTES = 8 * 2**30
#: Full attention cases whose estimated time per call exceeds this are reported, not run (CPU budget).
FULL_TIME_LIMIT_S = 4.0
#: Rough sustained fp32 matmul throughput assumed for the time estimate (FLOP/s per CPU core).
_FLOPS_PER_CORE = 2.0e10

GRID_SIDES = (32, 64, 128)
GRID_HEADS = 4
GRID_DIM_HEAD = 32
SDPA_LENGTHS = (1024, 4096)
SDPA_HEADS = 8
SDPA_DIM_HEAD = 64

_TARGET = "hybrids.evaluation.bench.attention"


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def factorized_case(
    side: int, heads: int = GRID_HEADS, dim_head: int = GRID_DIM_HEAD, batch: int = 1, seed: int = 0
) -> Callable[[], Any]:
    """Chained factorised kernel integral on a ``side x side`` grid: per-axis ``q, k (b, h, side, d)``,
    values ``(b, h, side, side, d)``."""
    g = _generator(seed)
    qs = [torch.randn(batch, heads, side, dim_head, generator=g) for _ in range(2)]
    ks = [torch.randn(batch, heads, side, dim_head, generator=g) for _ in range(2)]
    v = torch.randn(batch, heads, side, side, dim_head, generator=g)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return factorized_attention(qs, ks, v, mode="chained")

    return run


def full_attention_case(
    side: int,
    heads: int = GRID_HEADS,
    dim_head: int = GRID_DIM_HEAD,
    batch: int = 1,
    impl: str = "reference",
    seed: int = 0,
) -> Callable[[], Any]:
    """Softmax attention over all ``side²`` grid points: ``q, k, v (b, h, side², d)``."""
    g = _generator(seed)
    length = side * side
    q, k, v = (torch.randn(batch, heads, length, dim_head, generator=g) for _ in range(3))

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return attention(q, k, v, impl=impl)

    return run


def sdpa_case(
    length: int, heads: int = SDPA_HEADS, dim_head: int = SDPA_DIM_HEAD, impl: str = "sdpa", seed: int = 0
) -> Callable[[], Any]:
    """Self-attention ``q, k, v (1, heads, length, dim_head)`` through the dispatcher with ``impl``."""
    g = _generator(seed)
    q, k, v = (torch.randn(1, heads, length, dim_head, generator=g) for _ in range(3))

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return attention(q, k, v, impl=impl)

    return run


def full_attention_bytes(
    side: int, heads: int, dim_head: int, batch: int = 1, impl: str = "reference"
) -> int:
    """Estimated peak bytes of full fp32 attention over ``side²`` points.

    ``reference`` holds the ``(b, h, L, L)`` scores and their softmax at once (2 ``L²`` floats per head);
    ``sdpa`` on CPU streams over key blocks and needs only ``q, k, v`` and the output (4 ``L d``).
    """
    length = side * side
    qkvo = 4 * batch * heads * length * dim_head * 4
    if impl == "reference":
        return qkvo + 2 * batch * heads * length * length * 4
    return qkvo


def _full_attention_seconds(
    side: int, heads: int, dim_head: int, batch: int = 1, threads: int | None = None
) -> float:
    """Rough time of one call: ``4 b h L² d`` FLOPs (two GEMMs) at the assumed per-core throughput."""
    length = side * side
    flops = 4.0 * batch * heads * length * length * dim_head
    return flops / (_FLOPS_PER_CORE * (threads or os.cpu_count() or 1))


def _row(group: str, case: str, impl: str, result: dict[str, Any], note: str = "") -> dict[str, Any]:
    error = result.get("error")
    return {
        "group": group,
        "case": case,
        "impl": impl,
        "time_s": result.get("time_s"),
        "peak_mib": result.get("peak_mib"),
        "note": f"failed: {error}" if error else note,
    }


def _gib(nbytes: float) -> str:
    if nbytes < 2**30:
        return f"{nbytes / 2**20:.0f} MiB"
    return f"{nbytes / 2**30:.1f} GiB"


def bench_attention(
    repeats: int = 3, *, threads: int | None = None, timeout_s: float = 120.0
) -> list[dict[str, Any]]:
    """Run both groups; returns one row per (case, implementation), infeasible full cases included.

    ``threads`` sets torch's intra-op threads in each case's subprocess (default: all CPU cores). On a
    machine shared with other busy processes, multi-threaded runs of sub-millisecond ops pay a fixed
    scheduling stall (tens of ms observed on 2 loaded cores); ``threads=1`` then gives steadier numbers.
    """
    rows: list[dict[str, Any]] = []

    def measure(factory: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        return measure_case(
            f"{_TARGET}:{factory}", kwargs, repeats=repeats, threads=threads, timeout_s=timeout_s
        )

    for side in GRID_SIDES:
        case = f"grid={side}x{side}"
        kwargs = {"side": side, "heads": GRID_HEADS, "dim_head": GRID_DIM_HEAD}
        shape = f"b=1 h={GRID_HEADS} d={GRID_DIM_HEAD}"
        result = measure("factorized_case", kwargs)
        rows.append(
            _row("factorized", case, "factorized", result, f"chained, {shape}, kernels {side}x{side}")
        )
        for impl in ("reference", "sdpa"):
            need = full_attention_bytes(side, GRID_HEADS, GRID_DIM_HEAD, impl=impl)
            seconds = _full_attention_seconds(side, GRID_HEADS, GRID_DIM_HEAD, threads=threads)
            name = f"full-{impl}"
            scores = f"L={side * side}, est. {_gib(need)}"
            if need > FULL_MEMORY_LIMIT_BYTES:
                note = f"infeasible: {scores} > {_gib(FULL_MEMORY_LIMIT_BYTES)} limit; not run"
                rows.append(_row("factorized", case, name, {}, note))
                continue
            if seconds > FULL_TIME_LIMIT_S:
                note = f"not run: est. {seconds:.0f} s per call > {FULL_TIME_LIMIT_S:.0f} s budget ({scores})"
                rows.append(_row("factorized", case, name, {}, note))
                continue
            result = measure("full_attention_case", {**kwargs, "impl": impl})
            rows.append(_row("factorized", case, name, result, f"{shape}, {scores}"))
    for length in SDPA_LENGTHS:
        case = f"L={length}"
        for impl in ("sdpa", "reference"):
            kwargs = {"length": length, "heads": SDPA_HEADS, "dim_head": SDPA_DIM_HEAD, "impl": impl}
            result = measure("sdpa_case", kwargs)
            rows.append(_row("sdpa", case, impl, result, f"b=1 h={SDPA_HEADS} d={SDPA_DIM_HEAD}"))
    return rows
