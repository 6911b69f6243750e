"""RMSNorm, Mamba2's gated RMSNorm and the channels-first LayerNorm against their formulas."""

from __future__ import annotations

import pytest
import torch

from hybrids.shared_blocks.norms import ChannelLayerNorm, GatedRMSNorm, RMSNorm


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim, written out."""
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) / x.shape[-1] + eps)


def test_rmsnorm_formula_and_weight() -> None:
    norm = RMSNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    norm = norm.double()
    torch.testing.assert_close(norm(x), rms(x, 1e-6) * torch.arange(1.0, 7.0, dtype=torch.float64))


def test_rmsnorm_hand_value() -> None:
    # [3, 4]: mean square 12.5 -> rms sqrt(12.5)
    out = RMSNorm(2, eps=0.0)(torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(out, torch.tensor([[3.0, 4.0]]) / 12.5**0.5)


def test_rmsnorm_half_is_computed_in_float32() -> None:
    x = (torch.randn(4, 64) * 300).to(torch.float16)  # x^2 overflows float16
    out = RMSNorm(64)(x)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, rms(x.float(), 1e-6).half())


def test_rmsnorm_without_affine_has_no_parameters() -> None:
    norm = RMSNorm(8, elementwise_affine=False)
    assert list(norm.parameters()) == []
    x = torch.randn(3, 8)
    torch.testing.assert_close(norm(x), rms(x, 1e-6))


def gated_formula(x, z, weight, eps, group_size, norm_before_gate):
    """Mamba2's RMSNormGated written out with explicit grouping."""
    if z is not None and not norm_before_gate:
        x = x * z * torch.sigmoid(z)
    g = x.shape[-1] if group_size is None else group_size
    groups = [rms(x[..., i : i + g], eps) for i in range(0, x.shape[-1], g)]
    out = torch.cat(groups, dim=-1) * weight
    if z is not None and norm_before_gate:
        out = out * z * torch.sigmoid(z)
    return out


@pytest.mark.parametrize("group_size", [None, 4, 2])
@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("with_gate", [False, True])
def test_gated_rmsnorm_formula(group_size, norm_before_gate, with_gate) -> None:
    norm = GatedRMSNorm(8, eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    z = torch.randn(2, 5, 8, dtype=torch.float64) if with_gate else None
    expected = gated_formula(x, z, norm.weight, 1e-5, group_size, norm_before_gate)
    torch.testing.assert_close(norm(x, z), expected)


def test_gated_rmsnorm_gate_position_matters_and_groups_matter() -> None:
    x, z = torch.randn(2, 8), torch.randn(2, 8)
    before = GatedRMSNorm(8, norm_before_gate=False)(x, z)
    after = GatedRMSNorm(8, norm_before_gate=True)(x, z)
    assert not torch.allclose(before, after, atol=1e-3)
    whole = GatedRMSNorm(8)(x, z)
    grouped = GatedRMSNorm(8, group_size=2)(x, z)
    assert not torch.allclose(whole, grouped, atol=1e-3)
    torch.testing.assert_close(GatedRMSNorm(8, group_size=8)(x, z), whole)


def test_gated_rmsnorm_parameter_and_dtype() -> None:
    norm = GatedRMSNorm(12, group_size=4)
    assert [name for name, _ in norm.named_parameters()] == ["weight"]
    assert norm.weight.shape == (12,)
    out = norm(torch.randn(3, 12, dtype=torch.bfloat16), torch.randn(3, 12, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("spatial", [(), (7,), (4, 5), (2, 3, 4)])
def test_channel_layernorm_matches_layernorm_over_channels(spatial) -> None:
    norm = ChannelLayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, *spatial)
    out = norm(x)
    assert out.shape == x.shape
    channels_last = x.movedim(1, -1)
    mean = channels_last.mean(-1, keepdim=True)
    var = channels_last.var(-1, unbiased=False, keepdim=True)
    expected = ((channels_last - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias).movedim(-1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "module",
    [RMSNorm(8), GatedRMSNorm(8, group_size=4), ChannelLayerNorm(8)],
    ids=["rms", "gated", "channel_ln"],
)
def test_gradient_reaches_every_parameter(module) -> None:
    x = torch.randn(3, 8, 5) if isinstance(module, ChannelLayerNorm) else torch.randn(3, 5, 8)
    out = module(x, torch.randn_like(x)) if isinstance(module, GatedRMSNorm) else module(x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="group_size"):
        GatedRMSNorm(8, group_size=3)
    with pytest.raises(ValueError, match="dim"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="last dim"):
        RMSNorm(8)(torch.randn(2, 7))
    with pytest.raises(ValueError, match="gate shape"):
        GatedRMSNorm(8)(torch.randn(2, 8), torch.randn(2, 4))
    with pytest.raises(ValueError, match="expected"):
        ChannelLayerNorm(4)(torch.randn(2, 5, 3))
