"""Mlp and SwiGLU against their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hybrids.shared_blocks.mlp import Mlp, SwiGLU


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("activation", "fn"),
    [("gelu", F.gelu), ("relu", F.relu), ("silu", lambda t: t * torch.sigmoid(t))],
)
def test_mlp_formula(activation, fn) -> None:
    mlp = Mlp(6, 10, 4, activation=activation)
    x = torch.randn(2, 3, 6)
    expected = fn(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
    out = mlp(x)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, expected)


def test_mlp_defaults_and_no_bias() -> None:
    mlp = Mlp(8)
    assert mlp.fc1.weight.shape == (32, 8) and mlp.fc2.weight.shape == (8, 32)
    assert Mlp(8, bias=False).fc1.bias is None


def test_swiglu_formula_and_names() -> None:
    ffn = SwiGLU(6, 16)
    assert {n for n, _ in ffn.named_parameters()} == {"w1.weight", "w2.weight", "w3.weight"}
    x = torch.randn(4, 6)
    a = x @ ffn.w1.weight.T
    expected = (a * torch.sigmoid(a) * (x @ ffn.w3.weight.T)) @ ffn.w2.weight.T
    torch.testing.assert_close(ffn(x), expected)
    assert len(list(SwiGLU(6, 16, bias=True).parameters())) == 6


def test_dropout_only_in_training() -> None:
    mlp = Mlp(8, dropout=0.5)
    x = torch.randn(4, 8)
    torch.testing.assert_close(mlp.eval()(x), mlp(x))
    assert not torch.allclose(mlp.train()(x), mlp(x))


@pytest.mark.parametrize("kind", ["mlp", "swiglu"])
def test_gradient_reaches_every_parameter(kind: str) -> None:
    module = Mlp(8, 12, activation="silu") if kind == "mlp" else SwiGLU(8, 12, bias=True)
    out = module(torch.randn(3, 5, 8))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="activation"):
        Mlp(8, activation="tanh")
    with pytest.raises(ValueError, match="positive"):
        Mlp(8, hidden_dim=0)
    with pytest.raises(ValueError, match="positive"):
        SwiGLU(0, 4)
