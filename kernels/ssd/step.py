"""One-token SSD update for recurrent decoding (Dao & Gu 2024, "Transformers are SSMs", §3, §6)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hybrids.kernels.ssd.common import _check_common, compute_dtype, finish_output, prepare_dt

__all__ = ["ssd_step"]


def ssd_step(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
) -> tuple[Tensor, Tensor]:
    """Advance the SSD recurrence by one token (the decoding step of Mamba2).

    ``h' = exp(Δ A) h + Δ x ⊗ B``, ``y = h' · C + D x``, then ``y * silu(z)`` when ``z`` is given,
    with ``Δ = dt`` after ``dt_bias``, softplus and ``dt_limit`` exactly as in :func:`ssd_scan`.

    Args:
        state: ``(b, h, p, n)``; x: ``(b, h, p)``; dt: ``(b, h)``; A: ``(h,)``; B, C: ``(b, g, n)``;
            D: ``(h,)`` or ``(h, p)``; z: ``(b, h, p)``; dt_bias: ``(h,)``.

    Returns:
        ``(y, new_state)``: ``y (b, h, p)`` in ``x``'s dtype and ``new_state (b, h, p, n)`` in
        ``state``'s dtype. ``state`` itself is not modified (copy the result into a cache).
    """
    if x.dim() != 3:
        raise ValueError(f"ssd_step: x must be (b, h, p), got shape {tuple(x.shape)}")
    b, h, p = x.shape
    if B.dim() != 3 or B.shape[0] != b or C.shape != B.shape:
        raise ValueError(
            f"ssd_step: B and C must be (b={b}, g, n), got {tuple(B.shape)} and {tuple(C.shape)}"
        )
    g, n = B.shape[1:]
    if state.shape != (b, h, p, n):
        raise ValueError(f"ssd_step: state must be (b, h, p, n) = {(b, h, p, n)}, got {tuple(state.shape)}")
    if dt.shape != (b, h):
        raise ValueError(f"ssd_step: dt must be (b, h) = {(b, h)}, got {tuple(dt.shape)}")
    _check_common(h, p, g, A, D, z, x.shape, dt_bias, "ssd_step")

    dtype = torch.promote_types(compute_dtype(x.dtype), state.dtype)
    dt = prepare_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)  # (b, h)
    decay = torch.exp(dt * A.to(dtype))  # (b, h)
    hpg = h // g
    xdt = (x.to(dtype) * dt[..., None]).view(b, g, hpg, p)
    new_state = decay[..., None, None] * state.to(dtype) + (
        xdt[..., None] * B.to(dtype)[:, :, None, None, :]
    ).view(b, h, p, n)
    y = torch.matmul(new_state.view(b, g, hpg * p, n), C.to(dtype)[..., None]).view(b, h, p)
    y = finish_output(y, x, D, z).to(x.dtype)
    return y, new_state.to(state.dtype)
