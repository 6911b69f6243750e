"""Argument checking and the pre/post-processing shared by every SSD implementation.

Shapes (Dao & Gu 2024, "Transformers are SSMs", §6; mamba-ssm's ``mamba_chunk_scan_combined``):
``x (b, l, h, p)``, ``dt (b, l, h)``, ``A (h,)``, ``B, C (b, l, g, n)`` with ``h % g == 0`` (head ``i``
reads group ``i // (h // g)``), ``D (h,)`` or ``(h, p)``, ``z`` like ``x``, ``dt_bias (h,)``,
``initial_states (b, h, p, n)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_DT_LIMIT", "check_scan_args", "compute_dtype", "finish_output", "prepare_dt"]

DEFAULT_DT_LIMIT = (0.0, math.inf)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything narrower accumulates in float32."""
    return torch.promote_types(dtype, torch.float32)


def check_scan_args(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    dt_bias: Tensor | None,
    initial_states: Tensor | None,
) -> tuple[int, int, int, int, int, int]:
    """Validate the shapes of a sequence scan and return ``(b, l, h, p, g, n)``."""
    if x.dim() != 4:
        raise ValueError(f"ssd_scan: x must be (b, l, h, p), got shape {tuple(x.shape)}")
    b, l, h, p = x.shape
    if B.dim() != 4 or B.shape[:2] != (b, l):
        raise ValueError(f"ssd_scan: B must be (b={b}, l={l}, g, n), got {tuple(B.shape)}")
    g, n = B.shape[2:]
    if C.shape != B.shape:
        raise ValueError(f"ssd_scan: C {tuple(C.shape)} must have the shape of B {tuple(B.shape)}")
    if dt.shape != (b, l, h):
        raise ValueError(f"ssd_scan: dt must be (b, l, h) = {(b, l, h)}, got {tuple(dt.shape)}")
    if initial_states is not None and initial_states.shape != (b, h, p, n):
        raise ValueError(
            f"ssd_scan: initial_states must be (b, h, p, n) = {(b, h, p, n)}, "
            f"got {tuple(initial_states.shape)}"
        )
    _check_common(h, p, g, A, D, z, x.shape, dt_bias, "ssd_scan")
    return b, l, h, p, g, n


def _check_common(
    h: int,
    p: int,
    g: int,
    A: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    x_shape: torch.Size,
    dt_bias: Tensor | None,
    name: str,
) -> None:
    if g <= 0 or h % g != 0:
        raise ValueError(f"{name}: the number of heads {h} must be a multiple of the number of groups {g}")
    if A.shape != (h,):
        raise ValueError(f"{name}: A must be (h,) = ({h},), got {tuple(A.shape)}")
    if D is not None and D.shape not in ((h,), (h, p)):
        raise ValueError(f"{name}: D must be (h,) or (h, p) = ({h}, {p}), got {tuple(D.shape)}")
    if z is not None and z.shape != x_shape:
        raise ValueError(f"{name}: z {tuple(z.shape)} must have the shape of x {tuple(x_shape)}")
    if dt_bias is not None and dt_bias.shape != (h,):
        raise ValueError(f"{name}: dt_bias must be (h,) = ({h},), got {tuple(dt_bias.shape)}")


def prepare_dt(
    dt: Tensor,
    dt_bias: Tensor | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float],
    dtype: torch.dtype,
) -> Tensor:
    """``dt + dt_bias`` -> optional softplus -> clamp to ``dt_limit``, in ``dtype``.

    As in mamba-ssm, the clamp is applied only when ``dt_limit != (0, inf)`` (so a raw, negative
    ``dt`` without softplus is passed through untouched). ``dt_bias`` broadcasts over the last dim.
    """
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)  # threshold 20, as mamba-ssm's kernels
    lo, hi = dt_limit
    if (lo, hi) != DEFAULT_DT_LIMIT:
        dt = dt.clamp(min=lo, max=hi)
    return dt


def finish_output(
    y: Tensor, x: Tensor, D: Tensor | None, z: Tensor | None, *, inplace: bool = False
) -> Tensor:
    """Add the skip connection ``D * x`` and apply the gate ``y * silu(z)``, in ``y``'s dtype.

    ``y, x, z: (..., h, p)``; ``D: (h,)`` or ``(h, p)``. ``inplace`` updates ``y`` itself (only
    when no gradient flows through it).
    """
    if D is not None:
        d = D.to(y.dtype)
        if d.dim() == 1:
            d = d[:, None]
        y = y.addcmul_(x.to(y.dtype), d) if inplace else y + x.to(y.dtype) * d
    if z is not None:
        gate = F.silu(z.to(y.dtype))
        y = y.mul_(gate) if inplace else y * gate
    return y
