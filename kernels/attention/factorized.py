"""Axial factorised kernel integral of FactFormer (Li, Shu & Barati Farimani, "Scalable Transformer for
PDE Surrogate Modeling", NeurIPS 2023, Sec. 3) and its parallel variant of IFactFormer-m (Yang, Wang &
Wang, "Implicit factorized transformer approach to fast prediction of turbulent channel flows", 2024).

A field sampled on an ``N_1 x ... x N_n`` grid is reduced to one 1-D sub-function per axis; each axis ``a``
gets per-head queries ``q_a (b, h, N_a, d)`` and keys ``k_a (b, h, N_a, d)`` from its sub-function and a
softmax-free kernel

    K_a = scale · q_a k_aᵀ            (b, h, N_a, N_a)      [· 1/N_a with ``quadrature=True``]

Scaling, as in the reference code (``libs/attention.py::LowRankKernel`` of github.com/BaratiLab/FactFormer):
``K = einsum(q, k) * scaling`` with ``scaling = 1`` by default (``1/sqrt(d)`` only when its
``kernel_multiplier > 4``) and *no* ``1/N`` factor — its comment notes that quadrature weights are left
out on a uniform grid. ``quadrature=True`` adds the uniform-grid quadrature weight ``1/N_a`` of the
integral over ``[0, 1]`` (the ``/ n`` of its Galerkin-type ``AsymetricKernel``) for resolution-independent
magnitudes; it is off by default to match FactFormer.

Modes, for values ``v (b, h, N_1, ..., N_n, dv)``:

- ``"chained"`` (FactFormer, ``FABlock2D/3D``): ``u = K_1 ·_1 K_2 ·_2 ... K_n ·_n v``, i.e.
  ``u[i, j] = sum_{i', j'} K_1[i, i'] K_2[j, j'] v[i', j']`` (2-D); the axis products commute.
- ``"parallel"`` (IFactFormer-m, ``FABlock2D_m/3D_m`` of github.com/EntropyXi/IFactFormer-m): each kernel is
  applied to the *same* ``v`` along its own axis, ``u_a = K_a ·_a v``, and the per-axis results are
  combined by ``combine``:
  ``"concat"`` (default, what that code does: ``torch.cat([u_x, u_y, u_z], dim=-1)`` per head, followed in
  the block by an instance norm and a linear layer from ``n · h · dv`` features), giving
  ``(b, h, *grid, n · dv)`` with the axis-major layout ``[u_1 | u_2 | ...]``; or ``"sum"`` / ``"mean"``
  of the ``u_a`` (``(b, h, *grid, dv)``), which equal ``"concat"`` followed by a linear layer whose
  per-axis blocks are tied (identical / divided by ``n``).

Never materialises a kernel over all grid points: each axis is one batched GEMM against ``v`` with the
other axes flattened, optionally in the associative order ``q_a (k_aᵀ v)`` when ``2 d < N_a``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "COMBINES",
    "FACTORIZED_IMPLS",
    "MODES",
    "apply_axis_kernel",
    "axis_kernels",
    "axis_mean_pool",
    "factorized_attention",
]

MODES = ("chained", "parallel")
COMBINES = ("concat", "sum", "mean")
FACTORIZED_IMPLS = ("auto", "reference")


def axis_mean_pool(x: Tensor, axis: int) -> Tensor:
    """Mean over every grid axis but ``axis``: ``(b, N_1, ..., N_n, c) -> (b, N_axis, c)``.

    The pooling of FactFormer's ``PoolingReducer`` (the learnable projection to a 1-D sub-function is
    ``MLP(mean_other_axes(Linear(x)))``; a linear map commutes with the mean, so it may be applied after).
    """
    n = x.dim() - 2
    if n < 1:
        raise ValueError(f"axis_mean_pool: x must be (b, *grid, c), got shape {tuple(x.shape)}")
    if not 0 <= axis < n:
        raise ValueError(f"axis_mean_pool: axis must be in [0, {n}), got {axis}")
    others = tuple(1 + d for d in range(n) if d != axis)
    return x.mean(dim=others) if others else x


def _validate(
    qs: Sequence[Tensor], ks: Sequence[Tensor], v: Tensor, mode: str, combine: str, impl: str
) -> int:
    if mode not in MODES:
        raise ValueError(f"factorized_attention: unknown mode {mode!r}; expected one of {MODES}")
    if combine not in COMBINES:
        raise ValueError(f"factorized_attention: unknown combine {combine!r}; expected one of {COMBINES}")
    if impl not in FACTORIZED_IMPLS:
        raise ValueError(f"factorized_attention: unknown impl {impl!r}; expected one of {FACTORIZED_IMPLS}")
    n = len(qs)
    if n < 1 or len(ks) != n:
        raise ValueError(f"factorized_attention: need one query and one key per axis, got {n} and {len(ks)}")
    if v.dim() != n + 3:
        raise ValueError(
            f"factorized_attention: v must be (b, heads, *grid ({n} axes), dv), got shape {tuple(v.shape)}"
        )
    b, h = v.shape[:2]
    for a, (q, k) in enumerate(zip(qs, ks)):
        if q.dim() != 4 or q.shape != k.shape:
            raise ValueError(
                f"factorized_attention: q and k of axis {a} must both be (b, heads, N, d), "
                f"got {tuple(q.shape)} and {tuple(k.shape)}"
            )
        if q.shape[:3] != (b, h, v.shape[2 + a]):
            raise ValueError(
                f"factorized_attention: axis {a} q/k {tuple(q.shape)} do not match v {tuple(v.shape)} "
                f"(expected (b, heads, N_{a}) = {(b, h, v.shape[2 + a])})"
            )
        if q.dtype != v.dtype or k.dtype != v.dtype:
            raise ValueError(
                f"factorized_attention: dtypes differ on axis {a} ({q.dtype}, {k.dtype}, {v.dtype})"
            )
    if not v.is_floating_point():
        raise ValueError(f"factorized_attention: inputs must be floating point, got {v.dtype}")
    return n


def axis_kernels(
    qs: Sequence[Tensor], ks: Sequence[Tensor], *, scale: float = 1.0, quadrature: bool = False
) -> list[Tensor]:
    """Per-axis kernels ``K_a = scale · q_a k_aᵀ`` (``/ N_a`` if ``quadrature``): ``(b, h, N_a, N_a)``."""
    out = []
    for q, k in zip(qs, ks):
        factor = scale / q.shape[-2] if quadrature else scale
        out.append(torch.matmul(q, k.transpose(-1, -2)) * factor)
    return out


def apply_axis_kernel(kernel: Tensor, v: Tensor, axis: int) -> Tensor:
    """Integrate ``v`` along one grid axis: ``u[..., i, ...] = sum_j kernel[i, j] v[..., j, ...]``.

    ``kernel (b, h, N, N)``, ``v (b, h, *grid, dv)`` with ``grid[axis] == N`` -> ``(b, h, *grid, dv)``;
    one batched GEMM with the other axes (and ``dv``) flattened.
    """
    dim = 2 + axis
    moved = v.movedim(dim, 2)
    shape = moved.shape
    b, h, n = shape[:3]
    out = torch.matmul(kernel, moved.reshape(b, h, n, -1))
    return out.reshape(shape).movedim(2, dim)


def _apply_axis_qk(q: Tensor, k: Tensor, factor: float, v: Tensor, axis: int) -> Tensor:
    """``(factor · q kᵀ) ·_axis v`` choosing the cheaper association (kernel first or ``kᵀ v`` first)."""
    n, d = q.shape[-2], q.shape[-1]
    if 2 * d >= n:
        kernel = torch.matmul(q, k.transpose(-1, -2)) * factor
        return apply_axis_kernel(kernel, v, axis)
    dim = 2 + axis
    moved = v.movedim(dim, 2)
    shape = moved.shape
    flat = moved.reshape(shape[0], shape[1], n, -1)  # (b, h, N, R)
    state = torch.matmul(k.transpose(-1, -2), flat)  # (b, h, d, R)
    out = torch.matmul(q * factor, state)
    return out.reshape(shape).movedim(2, dim)


_LETTERS = "ijklmnopqrstuvw"


def _reference(
    qs: Sequence[Tensor],
    ks: Sequence[Tensor],
    v: Tensor,
    mode: str,
    combine: str,
    scale: float,
    quadrature: bool,
) -> Tensor:
    """Explicit einsum per axis in float32 (float64 for float64 inputs)."""
    compute = torch.float64 if v.dtype == torch.float64 else torch.float32
    n = len(qs)
    grid = _LETTERS[:n]
    kernels = []
    for q, k in zip(qs, ks):
        factor = scale / q.shape[-2] if quadrature else scale
        kernels.append(torch.einsum("bhxd,bhyd->bhxy", q.to(compute), k.to(compute)) * factor)
    v = v.to(compute)

    def along(kernel: Tensor, x: Tensor, a: int) -> Tensor:
        src = grid[:a] + "z" + grid[a + 1 :]
        return torch.einsum(f"bh{grid[a]}z,bh{src}c->bh{grid}c", kernel, x)

    if mode == "chained":
        u = v
        for a, kernel in enumerate(kernels):
            u = along(kernel, u, a)
        return u
    parts = [along(kernel, v, a) for a, kernel in enumerate(kernels)]
    if combine == "concat":
        return torch.cat(parts, dim=-1)
    total = torch.stack(parts).sum(0)
    return total / n if combine == "mean" else total


def factorized_attention(
    qs: Sequence[Tensor],
    ks: Sequence[Tensor],
    v: Tensor,
    *,
    mode: str = "chained",
    combine: str = "concat",
    scale: float = 1.0,
    quadrature: bool = False,
    impl: str = "auto",
) -> Tensor:
    """Axial factorised kernel integral (FactFormer Sec. 3.2; IFactFormer-m's parallel form).

    Args:
        qs: per-axis queries ``q_a (b, h, N_a, d_a)``, one per grid axis (2 or 3 axes in practice; any
            ``n >= 1`` works).
        ks: per-axis keys, shaped like the matching query.
        v: values ``(b, h, N_1, ..., N_n, dv)``.
        mode: ``"chained"`` (FactFormer: ``u = K_1 ·_1 ... K_n ·_n v``) or ``"parallel"`` (IFactFormer-m:
            ``u_a = K_a ·_a v`` combined by ``combine``).
        combine: parallel mode only: ``"concat"`` (IFactFormer-m code; last dim ``n · dv``, axis-major),
            ``"sum"`` or ``"mean"`` (last dim ``dv``).
        scale: multiplies every kernel (FactFormer's ``scaling``; 1 by default there).
        quadrature: also multiply ``K_a`` by ``1 / N_a`` (uniform-grid quadrature weight; FactFormer's
            code does not).
        impl: ``"auto"`` (batched GEMMs, input dtype) or ``"reference"`` (explicit einsums in float32 /
            float64, the source of truth in tests).

    Returns:
        ``(b, h, N_1, ..., N_n, dv)``, or ``(..., n · dv)`` for ``mode="parallel", combine="concat"``;
        in ``v``'s dtype.
    """
    n = _validate(qs, ks, v, mode, combine, impl)
    if impl == "reference":
        return _reference(qs, ks, v, mode, combine, scale, quadrature).to(v.dtype)
    factors = [scale / q.shape[-2] if quadrature else scale for q in qs]
    if mode == "chained":
        u = v
        for a in range(n):
            u = _apply_axis_qk(qs[a], ks[a], factors[a], u, a)
        return u
    parts = [_apply_axis_qk(qs[a], ks[a], factors[a], v, a) for a in range(n)]
    if combine == "concat":
        return torch.cat(parts, dim=-1)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total / n if combine == "mean" else total
