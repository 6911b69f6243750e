"""FiLM: identity at initialisation, the gamma * x + beta formula, broadcasting over any layout."""

from __future__ import annotations

import pytest
import torch

from hybrids.shared_blocks.film import FiLM


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_identity_at_init_and_shapes(spatial_dims: int) -> None:
    film = FiLM(5, 4)
    x = torch.randn(2, 4, *([3] * spatial_dims))
    out = film(x, torch.randn(2, 5))
    assert out.shape == x.shape
    torch.testing.assert_close(out, x)


def test_formula_channels_first() -> None:
    film = FiLM(3, 2)
    with torch.no_grad():
        film.proj.weight.copy_(torch.randn(4, 3))
        film.proj.bias.copy_(torch.randn(4))
    x, cond = torch.randn(2, 2, 5, 6), torch.randn(2, 3)
    params = cond @ film.proj.weight.T + film.proj.bias  # (b, [gamma0, gamma1, beta0, beta1])
    expected = torch.empty_like(x)
    for b in range(2):
        for c in range(2):
            expected[b, c] = params[b, c] * x[b, c] + params[b, 2 + c]
    torch.testing.assert_close(film(x, cond), expected)


def test_channels_last_tokens() -> None:
    film = FiLM(3, 8, channel_dim=-1)
    with torch.no_grad():
        film.proj.weight.normal_()
    x, cond = torch.randn(2, 7, 8), torch.randn(2, 3)
    gamma, beta = film.proj(cond).chunk(2, dim=-1)
    torch.testing.assert_close(film(x, cond), gamma[:, None, :] * x + beta[:, None, :])


def test_gradient_reaches_every_parameter() -> None:
    film = FiLM(3, 4)
    x = torch.randn(2, 4, 6)
    out = film(x, torch.randn(2, 3))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in film.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="positive"):
        FiLM(0, 4)
    with pytest.raises(ValueError, match="batch"):
        FiLM(3, 4, channel_dim=0)
    film = FiLM(3, 4)
    with pytest.raises(ValueError, match="channels"):
        film(torch.randn(2, 5, 6), torch.randn(2, 3))
    with pytest.raises(ValueError, match="cond"):
        film(torch.randn(2, 4, 6), torch.randn(2, 2))
    with pytest.raises(ValueError, match="channels"):
        FiLM(3, 4, channel_dim=5)(torch.randn(2, 4, 6), torch.randn(2, 3))
