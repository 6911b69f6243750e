"""hybrids.kernels.linear: the oneDNN fast path against the F.linear reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hybrids.kernels.linear as linear_module
from hybrids.kernels.linear import linear, linear_reference, onednn_available

TOL = 1e-5
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="oneDNN linear is not available")


def _inputs(bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 37, 48, generator=gen)
    w = torch.randn(80, 48, generator=gen) / 7
    b = torch.randn(80, generator=gen) if bias else None
    r = torch.randn(2, 37, 80, generator=gen)
    return x, w, b, r


@needs_onednn
@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_onednn_equals_reference(activation, bias, with_residual):
    x, w, b, r = _inputs(bias)
    residual = r if with_residual else None
    expected = F.linear(x, w, b)
    expected = F.gelu(expected) if activation == "gelu" else expected
    expected = expected + r if with_residual else expected
    torch.testing.assert_close(
        linear_reference(x, w, b, activation=activation, residual=residual), expected, rtol=0, atol=0
    )
    with torch.no_grad():
        got = linear(x, w, b, activation=activation, residual=residual, impl="onednn")
        auto = linear(x, w, b, activation=activation, residual=residual)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=TOL, atol=TOL)
    torch.testing.assert_close(auto, got, rtol=0, atol=0)


@needs_onednn
def test_strided_inputs_and_one_dimensional_x():
    x, w, b, _ = _inputs(True, seed=1)
    xt = x.transpose(0, 1)  # (37, 2, 48), not contiguous
    with torch.no_grad():
        got = linear(xt, w, b)
        vector = linear(x[0, 0], w, b)
    torch.testing.assert_close(got, F.linear(xt, w, b), rtol=TOL, atol=TOL)
    torch.testing.assert_close(vector, F.linear(x[0, 0], w, b), rtol=TOL, atol=TOL)


def test_autograd_takes_the_reference_with_gradients():
    x, w, b, r = _inputs(True, seed=2)
    w.requires_grad_(True)
    y = linear(x, w, b, activation="gelu", residual=r)
    assert y.requires_grad
    y.sum().backward()
    expected = w.detach().clone().requires_grad_(True)
    (F.gelu(F.linear(x, expected, b)) + r).sum().backward()
    torch.testing.assert_close(w.grad, expected.grad, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="impl='onednn'"):
        linear(x, w, b, impl="onednn")


@pytest.mark.skipif(not onednn_available(torch.bfloat16), reason="oneDNN bfloat16 is not available")
@pytest.mark.parametrize("with_residual", [False, True])
def test_autocast_bfloat16(with_residual):
    x, w, b, r = _inputs(True, seed=3)
    residual = r if with_residual else None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear(x, w, b, activation="gelu", residual=residual)
        reference = linear(x, w, b, activation="gelu", residual=residual, impl="reference")
    assert got.dtype == reference.dtype  # bfloat16, or float32 after the float32 residual
    exact = F.gelu(F.linear(x, w, b)) + (r if with_residual else 0)
    assert float((got.float() - exact).norm() / exact.norm()) < 1e-2
    # a bfloat16 residual is fused into the product
    with torch.no_grad():
        fused = linear(x.bfloat16(), w.bfloat16(), b.bfloat16(), residual=r.bfloat16())
    assert fused.dtype == torch.bfloat16
    exact = F.linear(x, w, b) + r
    assert float((fused.float() - exact).norm() / exact.norm()) < 1e-2


def test_falls_back_without_the_private_op(monkeypatch):
    x, w, b, r = _inputs(True, seed=4)
    monkeypatch.setattr(linear_module, "onednn_available", lambda dtype=torch.float32: False)
    with torch.no_grad():
        got = linear(x, w, b, activation="gelu", residual=r)
        with pytest.raises(RuntimeError, match="impl='onednn'"):
            linear(x, w, b, impl="onednn")
    torch.testing.assert_close(got, F.gelu(F.linear(x, w, b)) + r, rtol=0, atol=0)


@needs_onednn
def test_falls_back_when_the_op_fails(monkeypatch):
    x, w, b, _ = _inputs(True, seed=5)

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported")

    monkeypatch.setattr(linear_module, "_linear_onednn", broken)
    with torch.no_grad():
        got = linear(x, w, b)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=0, atol=0)


def test_bad_arguments():
    x, w, b, _ = _inputs(True)
    with pytest.raises(ValueError, match="unknown impl"):
        linear(x, w, b, impl="mkl")
    with pytest.raises(ValueError, match="unknown activation"):
        linear(x, w, b, activation="relu")
    with pytest.raises(ValueError, match="do not match"):
        linear(x, w.t(), b)
    with pytest.raises(ValueError, match="bias must have shape"):
        linear(x, w, b[:3])
    assert not onednn_available(torch.float16)
