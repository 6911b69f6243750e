"""``ssd_scan``: one entry point dispatching to the SSD implementations.

- ``"reference"``: :func:`~hybrids.kernels.ssd.reference.ssd_scan_reference`, the sequential
  recurrence (source of truth in tests);
- ``"chunked"``: :func:`~hybrids.kernels.ssd.chunked.ssd_scan_chunked`, the fast pure-torch path;
- ``"quadratic"``: :func:`~hybrids.kernels.ssd.reference.ssd_scan_quadratic`, the materialised
  attention form (tests only, short sequences);
- ``"mamba_ssm"``: mamba-ssm's Triton kernel ``mamba_chunk_scan_combined`` (CUDA only);
- ``"auto"``: ``"mamba_ssm"`` for CUDA tensors when mamba-ssm is importable, else ``"chunked"``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from hybrids.kernels.ssd.chunked import ssd_scan_chunked
from hybrids.kernels.ssd.common import check_scan_args
from hybrids.kernels.ssd.reference import ssd_scan_quadratic, ssd_scan_reference

__all__ = ["IMPLS", "MAMBA_SSM_CHUNK_SIZE", "ssd_scan"]

IMPLS = ("auto", "chunked", "reference", "quadratic", "mamba_ssm")
#: Chunk size handed to mamba-ssm's kernel when none is given (its usual GPU setting).
MAMBA_SSM_CHUNK_SIZE = 256


def _mamba_ssm_scan() -> Any | None:
    """mamba-ssm's fused chunk scan, or ``None`` if it cannot be imported (imported lazily: it pulls
    in Triton at import time)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # ImportError, or a broken Triton/CUDA install
        return None
    return mamba_chunk_scan_combined


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    chunk_size: int | None = None,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
    impl: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba2's structured state-space duality (SSD) scan (Dao & Gu 2024, "Transformers are SSMs", §6).

    Computes, per head and with ``Δ = clamp(softplus(dt + dt_bias))`` (each step optional)::

        h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t ⊗ B_t,    y_t = (C_t · h_t + D x_t) · silu(z_t)

    with the semantics of mamba-ssm's ``mamba_chunk_scan_combined``.

    Args:
        x: ``(b, l, h, p)`` inputs (``h`` heads of ``p`` channels).
        dt: ``(b, l, h)`` time steps (raw when ``dt_softplus``).
        A: ``(h,)`` negative decay rates (``A = -exp(A_log)`` in Mamba2).
        B, C: ``(b, l, g, n)`` input and output projections; ``g`` groups, each shared by ``h // g``
            consecutive heads; ``n`` is the state size.
        chunk_size: chunk length of the chunked paths (defaults: 64 on CPU, 256 for mamba-ssm).
        D: ``(h,)`` or ``(h, p)`` skip connection.
        z: ``(b, l, h, p)`` gate, ``y * silu(z)``.
        dt_bias: ``(h,)`` added to ``dt`` before the softplus.
        dt_softplus: apply ``softplus`` to ``dt + dt_bias``.
        dt_limit: ``(lo, hi)`` clamp applied after the softplus (skipped for the default ``(0, inf)``).
        initial_states: ``(b, h, p, n)`` state before the first token (zeros when ``None``).
        return_final_states: also return the state after the last token.
        impl: ``"auto"``, ``"chunked"``, ``"reference"``, ``"quadratic"`` or ``"mamba_ssm"``.

    Returns:
        ``y (b, l, h, p)`` in ``x``'s dtype, or ``(y, final_states (b, h, p, n))`` with the final
        states in float32 (float64 for float64 inputs).
    """
    if impl not in IMPLS:
        raise ValueError(f"ssd_scan: unknown impl {impl!r}; choose from {', '.join(IMPLS)}")
    kwargs = {
        "D": D,
        "z": z,
        "dt_bias": dt_bias,
        "dt_softplus": dt_softplus,
        "dt_limit": tuple(dt_limit),
        "initial_states": initial_states,
        "return_final_states": return_final_states,
    }
    if impl in ("auto", "mamba_ssm"):
        fused = _mamba_ssm_scan() if x.is_cuda else None
        if fused is not None:
            check_scan_args(x, dt, A, B, C, D, z, dt_bias, initial_states)
            return fused(x, dt, A, B, C, chunk_size or MAMBA_SSM_CHUNK_SIZE, **kwargs)
        if impl == "mamba_ssm":
            raise RuntimeError(
                "ssd_scan(impl='mamba_ssm') needs CUDA tensors and an importable mamba_ssm "
                f"(tensors are on {x.device}); use impl='auto' to fall back to the chunked path"
            )
        impl = "chunked"
    if impl == "chunked":
        return ssd_scan_chunked(x, dt, A, B, C, chunk_size=chunk_size, **kwargs)
    if impl == "reference":
        return ssd_scan_reference(x, dt, A, B, C, **kwargs)
    return ssd_scan_quadratic(x, dt, A, B, C, **kwargs)
