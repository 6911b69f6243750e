"""Readable SSD references: the sequential recurrence and the quadratic ("attention") form.

Both follow Dao & Gu 2024, "Transformers are SSMs" (§3 the recurrence of a selective SSM with scalar
times identity ``A``; §6 its dual, masked-attention form). They are the source of truth in tests.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hybrids.kernels.ssd.common import check_scan_args, compute_dtype, finish_output, prepare_dt

__all__ = ["segsum", "ssd_scan_quadratic", "ssd_scan_reference"]


def ssd_scan_reference(
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
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD recurrence, one token at a time (Dao & Gu 2024, "Transformers are SSMs", §3, §6).

    For every head (with ``Δ = dt`` after ``dt_bias``/softplus/``dt_limit``)::

        h_t = exp(Δ_t · A) · h_{t-1} + Δ_t · x_t ⊗ B_t        h: (p, n)
        y_t = h_t · C_t + D · x_t                               y: (p,)
        y_t = y_t · silu(z_t)                                   (when z is given)

    Args:
        x: ``(b, l, h, p)``; dt: ``(b, l, h)``; A: ``(h,)``; B, C: ``(b, l, g, n)`` (head ``i`` uses
            group ``i // (h // g)``); D: ``(h,)`` or ``(h, p)``; z: ``(b, l, h, p)``;
            dt_bias: ``(h,)``; initial_states: ``(b, h, p, n)``.

    Returns:
        ``y (b, l, h, p)`` in ``x``'s dtype, and with ``return_final_states`` also the state after
        the last token ``(b, h, p, n)`` in the accumulation dtype (float32, or float64 for float64
        inputs).
    """
    b, l, h, p, g, n = check_scan_args(x, dt, A, B, C, D, z, dt_bias, initial_states)
    dtype = compute_dtype(x.dtype)
    dt = prepare_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)
    heads_per_group = h // g
    # Give each head its group's B and C: (b, l, g, n) -> (b, l, h, n).
    B_heads = B.to(dtype).repeat_interleave(heads_per_group, dim=2)
    C_heads = C.to(dtype).repeat_interleave(heads_per_group, dim=2)
    xf = x.to(dtype)
    A = A.to(dtype)

    state = x.new_zeros((b, h, p, n), dtype=dtype) if initial_states is None else initial_states.to(dtype)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)  # (b, h)
        dBx = torch.einsum("bh,bhp,bhn->bhpn", dt[:, t], xf[:, t], B_heads[:, t])
        state = decay[:, :, None, None] * state + dBx
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C_heads[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros((b, 0, h, p))
    y = finish_output(y, x, D, z).to(x.dtype)
    return (y, state) if return_final_states else y


def segsum(a: Tensor) -> Tensor:
    """Stable segment sums with a −inf mask: ``out[..., i, j] = a[..., j+1] + ... + a[..., i]`` for
    ``i >= j`` (0 on the diagonal) and ``-inf`` above it, so ``exp(out)`` is the causal decay matrix.

    ``a: (..., T)`` -> ``(..., T, T)``. Summing masked copies (instead of subtracting two cumulative
    sums) avoids cancellation; it costs ``O(T^2)`` memory, which is fine for small ``T``.
    """
    T = a.shape[-1]
    rows = a[..., :, None].expand(*a.shape, T)  # rows[..., i, j] = a[..., i]
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    out = rows.masked_fill(~strictly_lower, 0).cumsum(dim=-2)
    lower = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return out.masked_fill(~lower, -math.inf)


def ssd_scan_quadratic(
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
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The fully materialised "attention" form of SSD (Dao & Gu 2024, §6, the 1-semiseparable mask).

    ``y = (L ∘ C Bᵀ) (Δ x)`` per head with ``L[t, s] = exp(Δ_{s+1} A + ... + Δ_t A)`` for ``s <= t``
    (``L = exp(segsum(ΔA))``), plus ``exp(Δ_1 A + ... + Δ_t A) · C_t · h_0`` for an initial state.
    Same arguments, shapes and returns as :func:`ssd_scan_reference`. Memory is ``O(b h l²)``: for
    tests on short sequences only.
    """
    b, l, h, p, g, n = check_scan_args(x, dt, A, B, C, D, z, dt_bias, initial_states)
    dtype = compute_dtype(x.dtype)
    dt = prepare_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)  # (b, l, h)
    heads_per_group = h // g
    B_heads = B.to(dtype).repeat_interleave(heads_per_group, dim=2)  # (b, l, h, n)
    C_heads = C.to(dtype).repeat_interleave(heads_per_group, dim=2)
    xdt = x.to(dtype) * dt[..., None]  # (b, l, h, p)
    dA = (dt * A.to(dtype)).transpose(1, 2)  # (b, h, l)

    decay = torch.exp(segsum(dA))  # (b, h, t, s)
    scores = torch.einsum("bthn,bshn->bhts", C_heads, B_heads) * decay
    y = torch.einsum("bhts,bshp->bthp", scores, xdt)
    # Final state: sum_s exp(ΔA_{s+1} + ... + ΔA_l) Δ_s x_s ⊗ B_s, i.e. the last row of the mask.
    final = torch.einsum("bhs,bshp,bshn->bhpn", decay[:, :, -1], xdt, B_heads) if l else None
    if initial_states is not None:
        h0 = initial_states.to(dtype)
        from_start = torch.exp(torch.cumsum(dA, dim=-1))  # (b, h, t): decay of h0 up to token t
        y = y + torch.einsum("bht,bthn,bhpn->bthp", from_start, C_heads, h0)
        if l:
            final = final + from_start[:, :, -1, None, None] * h0
    if final is None:
        final = x.new_zeros((b, h, p, n), dtype=dtype) if initial_states is None else initial_states.to(dtype)
    y = finish_output(y, x, D, z).to(x.dtype)
    return (y, final) if return_final_states else y
