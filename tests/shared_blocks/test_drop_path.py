"""DropPath (stochastic depth): whole samples dropped, survivors rescaled, one class for every block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybrids.shared_blocks.drop_path import DropPath, drop_path, drop_path_or_identity
from hybrids.shared_blocks.vit import ViTBlock
from hybrids.shared_blocks.window_attention import SwinTransformerBlock


def test_drop_path():
    torch.manual_seed(0)
    x = torch.ones(1000, 3, 2, dtype=torch.float64)
    assert drop_path(x, 0.5, training=False) is x
    out = drop_path(x, 0.25, training=True)
    per_sample = out.reshape(1000, -1)
    assert set(torch.unique(per_sample).tolist()) <= {0.0, 1.0 / 0.75}
    assert (per_sample == per_sample[:, :1]).all()  # whole samples dropped
    assert 150 < (per_sample[:, 0] == 0).sum() < 350
    unscaled = drop_path(x, 0.25, training=True, scale_by_keep=False)
    assert set(torch.unique(unscaled).tolist()) <= {0.0, 1.0}
    module = DropPath(0.3).eval()
    assert torch.equal(module(x), x)
    assert "drop_prob=0.3" in repr(module)


def test_gradient_reaches_the_input():
    torch.manual_seed(0)
    x = torch.randn(64, 4, requires_grad=True)
    DropPath(0.5).train()(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_arguments_raise():
    for p in (1.0, -0.1):
        with pytest.raises(ValueError, match="drop_prob"):
            DropPath(p)


def test_blocks_share_the_one_class():
    assert isinstance(drop_path_or_identity(0.0), nn.Identity)
    assert type(drop_path_or_identity(0.2)) is DropPath
    assert type(ViTBlock(8, 2, drop_path=0.1).drop_path) is DropPath
    assert type(SwinTransformerBlock(8, 2, window_size=2, drop_path=0.1).drop_path) is DropPath
