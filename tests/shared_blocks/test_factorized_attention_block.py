"""FactorizedAttention block: explicit recomputation, shapes over spatial_dims and modes, gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from hybrids.shared_blocks.factorized_attention import AxisReducer, FactorizedAttention


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _explicit_forward(m: FactorizedAttention, x: torch.Tensor) -> torch.Tensor:
    """The block in FactFormer's order (projection before pooling), kernels summed over all grid points."""
    b, *grid, _ = x.shape
    n = len(grid)
    u = m.in_norm(x)
    v = m.to_v(u).reshape(b, *grid, m.heads, m.dim_head)
    u = m.to_in(u)
    kernels = []
    for a in range(n):
        red = m.reducers[a]
        full = red.to_in(u)  # FactFormer: linear on the full grid, then mean over the other axes
        pooled = full.mean(dim=tuple(1 + e for e in range(n) if e != a))
        z = red.fc1(red.norm(pooled))
        s = red.fc2(F.gelu(z[..., : z.shape[-1] // 2]) * z[..., z.shape[-1] // 2 :])
        q = m.to_q[a](s).reshape(b, grid[a], m.heads, m.qk_dim)
        k = m.to_k[a](s).reshape(b, grid[a], m.heads, m.qk_dim)
        factor = m.scale / (grid[a] if m.quadrature else 1)
        kernels.append(torch.einsum("bihd,bjhd->bhij", q, k) * factor)
    points = list(itertools.product(*(range(g) for g in grid)))
    v_flat = v.reshape(b, len(points), m.heads, m.dim_head)
    outs = []
    for p in points:
        if m.mode == "chained":
            weights = torch.stack(
                [math.prod(kernels[a][:, :, p[a], pp[a]] for a in range(n)) for pp in points], dim=-1
            )  # (b, h, P)
            outs.append(torch.einsum("bhp,bphc->bhc", weights, v_flat))
        else:
            parts = []
            for a in range(n):
                w = torch.stack(
                    [
                        kernels[a][:, :, p[a], pp[a]] * float(all(p[e] == pp[e] for e in range(n) if e != a))
                        for pp in points
                    ],
                    dim=-1,
                )
                parts.append(torch.einsum("bhp,bphc->bhc", w, v_flat))
            outs.append(torch.cat(parts, -1) if m.combine == "concat" else sum(parts))
    out = torch.stack(outs, dim=1).reshape(b, *grid, -1)  # (b, *grid, heads * c)
    dims = tuple(range(1, n + 1))
    mean = out.mean(dim=dims, keepdim=True)
    var = out.var(dim=dims, keepdim=True, unbiased=False)
    return m.to_out((out - mean) / torch.sqrt(var + 1e-5))


@pytest.mark.parametrize(
    "grid, mode, combine, quadrature",
    [
        ((4, 5), "chained", "concat", False),
        ((4, 5), "parallel", "concat", True),
        ((4, 5), "parallel", "sum", False),
        ((3, 4, 2), "chained", "concat", True),
        ((3, 4, 2), "parallel", "concat", False),
    ],
)
def test_forward_equals_explicit_recomputation(grid, mode, combine, quadrature):
    m = FactorizedAttention(
        8,
        heads=2,
        dim_head=3,
        latent_dim=6,
        dim_out=5,
        spatial_dims=len(grid),
        mode=mode,
        combine=combine,
        quadrature=quadrature,
    ).double()
    for layer in (*m.to_q, *m.to_k):  # larger kernels than FactFormer's tiny init, so they matter
        torch.nn.init.normal_(layer.weight, std=0.3)
    x = torch.randn(2, *grid, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), _explicit_forward(m, x), rtol=0, atol=1e-5)


def test_axis_reducer_pools_then_projects_like_factformer():
    red = AxisReducer(6, 5, 4, axis=1).double()
    x = torch.randn(2, 3, 7, 4, 6, dtype=torch.float64)
    z = red.fc1(red.norm(red.to_in(x).mean(dim=(1, 3))))
    want = red.fc2(F.gelu(z[..., :5]) * z[..., 5:])
    out = red(x)
    assert out.shape == (2, 7, 4)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("spatial_dims, grid", [(2, (6, 5)), (3, (4, 3, 5))])
@pytest.mark.parametrize(
    "kwargs, last",
    [
        ({}, 16),
        ({"mode": "parallel"}, 16),
        ({"mode": "parallel", "combine": "mean", "dim_out": 7}, 7),
        ({"rope": True, "kernel_multiplier": 2}, 16),
    ],
)
def test_shapes_and_resolution_independence(spatial_dims, grid, kwargs, last):
    m = FactorizedAttention(16, heads=2, dim_head=4, spatial_dims=spatial_dims, **kwargs)
    out = m(torch.randn(2, *grid, 16))
    assert out.shape == (2, *grid, last) and torch.isfinite(out).all()
    finer = tuple(2 * g for g in grid)  # the same weights apply on another grid
    assert m(torch.randn(1, *finer, 16)).shape == (1, *finer, last)


def test_parallel_concat_output_projection_width_and_scale_rule():
    m = FactorizedAttention(16, heads=2, dim_head=4, spatial_dims=3, mode="parallel")
    assert m.to_out[0].in_features == 3 * 2 * 4
    assert FactorizedAttention(16, heads=2, dim_head=4, mode="chained").to_out[0].in_features == 8
    assert FactorizedAttention(16, heads=2, dim_head=4, kernel_multiplier=3).scale == 1.0
    assert FactorizedAttention(16, heads=2, dim_head=4, kernel_multiplier=5).scale == pytest.approx(
        1 / math.sqrt(20)
    )
    assert FactorizedAttention(16, heads=2, dim_head=4, scale=0.25).scale == 0.25
    assert m.to_q[0].weight.abs().max() < 0.02  # FactFormer's Xavier gain 0.02


@pytest.mark.parametrize(
    "spatial_dims, kwargs",
    [(2, {}), (3, {"mode": "parallel", "rope": True}), (2, {"mode": "parallel", "combine": "sum"})],
)
def test_gradient_reaches_every_parameter(spatial_dims, kwargs):
    m = FactorizedAttention(12, heads=2, dim_head=4, spatial_dims=spatial_dims, **kwargs)
    grid = (5, 4) if spatial_dims == 2 else (3, 4, 5)
    m(torch.randn(2, *grid, 12)).square().mean().backward()
    for name, param in m.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "make",
    [
        lambda: FactorizedAttention(16, spatial_dims=1),
        lambda: FactorizedAttention(16, mode="serial"),
        lambda: FactorizedAttention(16, mode="parallel", combine="max"),
        lambda: FactorizedAttention(16, heads=0),
        lambda: FactorizedAttention(16, dim_head=3, kernel_multiplier=1, rope=True),
        lambda: AxisReducer(4, 0, 4, axis=0),
    ],
)
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_bad_inputs_raise_value_error():
    m = FactorizedAttention(16, heads=2, dim_head=4)
    with pytest.raises(ValueError):
        m(torch.randn(2, 4, 4, 4, 16))  # 3-D grid into a 2-D block
    with pytest.raises(ValueError):
        m(torch.randn(2, 4, 4, 15))
