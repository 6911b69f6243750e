"""Factorised kernel integral (FactFormer chained, IFactFormer-m parallel) vs explicit full-index sums."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hybrids.kernels.attention import factorized_attention as exported
from hybrids.kernels.attention.factorized import (
    apply_axis_kernel,
    axis_kernels,
    axis_mean_pool,
    factorized_attention,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


GRIDS = [(5, 6), (3, 4, 5)]


def _inputs(grid, b=2, h=2, d=3, dv=4, dtype=torch.float64, requires_grad=False):
    qs = [torch.randn(b, h, n, d, dtype=dtype, requires_grad=requires_grad) for n in grid]
    ks = [torch.randn(b, h, n, d, dtype=dtype, requires_grad=requires_grad) for n in grid]
    v = torch.randn(b, h, *grid, dv, dtype=dtype, requires_grad=requires_grad)
    return qs, ks, v


def _explicit_kernel(q, k, scale, quadrature):
    """K[i, i'] = scale * sum_d q[i, d] k[i', d] (/ N), by loops over the index pairs."""
    b, h, n, _ = q.shape
    out = torch.empty(b, h, n, n, dtype=q.dtype)
    for i in range(n):
        for j in range(n):
            out[:, :, i, j] = (q[:, :, i, :] * k[:, :, j, :]).sum(-1) * scale / (n if quadrature else 1)
    return out


def _explicit(qs, ks, v, mode, combine, scale=1.0, quadrature=False):
    """Sums over the full index set of the grid (a kernel over *all* grid points; tiny grids only).

    chained:  u[p] = sum_{p'} prod_a K_a[p_a, p'_a] v[p']
    parallel: u_a[p] = sum_{p'} K_a[p_a, p'_a] prod_{e != a} delta(p_e, p'_e) v[p']
    """
    grid = v.shape[2:-1]
    kernels = [_explicit_kernel(q, k, scale, quadrature) for q, k in zip(qs, ks)]
    points = list(itertools.product(*(range(n) for n in grid)))
    size = len(points)
    b, h, dv = v.shape[0], v.shape[1], v.shape[-1]
    v_flat = v.reshape(b, h, size, dv)

    def full(weight):  # weight(p, p') -> (b, h) tensor; the (N, N) kernel over all grid points
        mat = torch.zeros(b, h, size, size, dtype=v.dtype)
        for i, p in enumerate(points):
            for j, pp in enumerate(points):
                mat[:, :, i, j] = weight(p, pp)
        return mat

    if mode == "chained":

        def chained(p, pp):
            return math.prod(kernels[a][:, :, p[a], pp[a]] for a in range(len(grid)))

        return (full(chained) @ v_flat).reshape(v.shape)
    parts = []
    for a in range(len(grid)):

        def single(p, pp, a=a):
            same = all(p[e] == pp[e] for e in range(len(grid)) if e != a)
            return kernels[a][:, :, p[a], pp[a]] * float(same)

        parts.append((full(single) @ v_flat).reshape(v.shape))
    if combine == "concat":
        return torch.cat(parts, dim=-1)
    total = sum(parts)
    return total / len(parts) if combine == "mean" else total


MODES = [("chained", "concat"), ("parallel", "concat"), ("parallel", "sum"), ("parallel", "mean")]


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("mode, combine", MODES)
@pytest.mark.parametrize("grid", GRIDS)
def test_matches_explicit_full_index_sums(grid, mode, combine, impl):
    qs, ks, v = _inputs(grid)
    for scale, quadrature in ((1.0, False), (0.5, True)):
        got = factorized_attention(
            qs, ks, v, mode=mode, combine=combine, scale=scale, quadrature=quadrature, impl=impl
        )
        want = _explicit(qs, ks, v, mode, combine, scale, quadrature)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_chained_2d_einsum_formula():
    """u[i, j] = sum_{i', j'} K_x[i, i'] K_y[j, j'] v[i', j'] (FactFormer FABlock2D)."""
    qs, ks, v = _inputs((7, 5), d=6)
    kx = qs[0] @ ks[0].transpose(-1, -2)
    ky = qs[1] @ ks[1].transpose(-1, -2)
    want = torch.einsum("bhip,bhjq,bhpqc->bhijc", kx, ky, v)
    torch.testing.assert_close(factorized_attention(qs, ks, v), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode, combine", MODES)
@pytest.mark.parametrize("grid, d", [((9, 4), 2), ((3, 8, 5), 2), ((6, 6), 8)])
def test_fast_matches_reference_float32_forward_and_backward(grid, d, mode, combine):
    # d = 2 < N / 2 on some axes exercises the associative q (kᵀ v) order.
    qs, ks, v = _inputs(grid, d=d, dtype=torch.float32, requires_grad=True)
    leaves = [*qs, *ks, v]
    outs, grads = [], []
    for impl in ("auto", "reference"):
        out = factorized_attention(qs, ks, v, mode=mode, combine=combine, quadrature=True, impl=impl)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), leaves))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-4)


def test_output_shapes_and_dtype():
    qs, ks, v = _inputs((4, 5, 6), dv=3, dtype=torch.float32)
    assert factorized_attention(qs, ks, v).shape == (2, 2, 4, 5, 6, 3)
    assert factorized_attention(qs, ks, v, mode="parallel").shape == (2, 2, 4, 5, 6, 9)
    assert factorized_attention(qs, ks, v, mode="parallel", combine="mean").shape == (2, 2, 4, 5, 6, 3)
    assert factorized_attention(qs, ks, v, impl="reference").dtype == torch.float32
    assert exported is factorized_attention


def test_parallel_concat_layout_is_axis_major():
    qs, ks, v = _inputs((4, 5), dv=3)
    cat = factorized_attention(qs, ks, v, mode="parallel")
    kernels = axis_kernels(qs, ks)
    torch.testing.assert_close(cat[..., :3], apply_axis_kernel(kernels[0], v, 0))
    torch.testing.assert_close(cat[..., 3:], apply_axis_kernel(kernels[1], v, 1))


def test_quadrature_divides_each_kernel_by_its_axis_length():
    qs, ks, v = _inputs((4, 6))
    scaled = [q / q.shape[-2] for q in qs]
    torch.testing.assert_close(
        factorized_attention(qs, ks, v, quadrature=True),
        factorized_attention(scaled, ks, v),
        rtol=0,
        atol=1e-12,
    )
    kernels = axis_kernels(qs, ks, scale=2.0, quadrature=True)
    torch.testing.assert_close(kernels[1], 2.0 * qs[1] @ ks[1].transpose(-1, -2) / 6)


def test_axis_mean_pool_matches_explicit_means():
    x = torch.randn(2, 3, 4, 5, 6)
    torch.testing.assert_close(axis_mean_pool(x, 0), x.mean(dim=(2, 3)))
    torch.testing.assert_close(axis_mean_pool(x, 1), x.mean(dim=(1, 3)))
    torch.testing.assert_close(axis_mean_pool(x, 2), x.mean(dim=(1, 2)))
    y = torch.randn(2, 3, 4, 6)
    torch.testing.assert_close(axis_mean_pool(y, 1)[:, 2], y[:, :, 2].mean(1))
    with pytest.raises(ValueError):
        axis_mean_pool(y, 2)


@pytest.mark.parametrize(
    "make",
    [
        lambda qs, ks, v: factorized_attention(qs, ks, v, mode="serial"),
        lambda qs, ks, v: factorized_attention(qs, ks, v, mode="parallel", combine="max"),
        lambda qs, ks, v: factorized_attention(qs, ks, v, impl="sdpa"),
        lambda qs, ks, v: factorized_attention(qs[:1], ks, v),
        lambda qs, ks, v: factorized_attention(qs, ks, v[..., 0]),
        lambda qs, ks, v: factorized_attention([qs[1], qs[0]], [ks[1], ks[0]], v),
        lambda qs, ks, v: factorized_attention(qs, [ks[0][..., :2], ks[1]], v),
        lambda qs, ks, v: factorized_attention([qs[0].float(), qs[1]], ks, v),
        lambda qs, ks, v: factorized_attention(qs, ks, v[:1]),
        lambda qs, ks, v: factorized_attention([], [], v),
    ],
)
def test_bad_arguments_raise_value_error(make):
    qs, ks, v = _inputs((4, 5))
    with pytest.raises(ValueError):
        make(qs, ks, v)
