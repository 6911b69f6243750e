"""Mamba2 block: mamba-ssm's parameter layout and initialisation, recurrent decoding vs the parallel
forward, chunked prefill, gradients, parity with transformers' Mamba2Mixer, long-context memory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hybrids.shared_blocks.mamba2 import Mamba2, Mamba2Cache


def small_block(**overrides):
    torch.manual_seed(0)
    kwargs = {"d_state": 16, "headdim": 16, "ngroups": 2, "chunk_size": 16, **overrides}
    return Mamba2(64, **kwargs)


def test_parameter_names_and_shapes_follow_mamba_ssm():
    block = Mamba2(64, d_state=16, headdim=16, ngroups=2)
    d_inner, nheads, conv_dim = 128, 8, 128 + 2 * 2 * 16
    expected = {
        "in_proj.weight": (2 * d_inner + 2 * 2 * 16 + nheads, 64),  # [z, x, B, C, dt]
        "conv1d.weight": (conv_dim, 1, 4),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (64, d_inner),
    }
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == expected
    with_bias = Mamba2(64, d_state=16, headdim=16, bias=True, conv_bias=False, rmsnorm=False)
    names = set(with_bias.state_dict())
    assert (
        {"in_proj.bias", "out_proj.bias"} <= names
        and "conv1d.bias" not in names
        and "norm.weight" not in names
    )
    assert block.norm.group_size == d_inner // 2 and not block.norm.norm_before_gate


def test_initialisation():
    torch.manual_seed(0)
    block = Mamba2(1024, d_state=8, headdim=8)  # 256 heads: enough draws to see the ranges
    A = -torch.exp(block.A_log)
    assert A.min() >= -16.0 and A.max() <= -1.0 and A.max() - A.min() > 10.0
    dt = F.softplus(block.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    # log-uniform: about half the heads below the geometric mean of the range
    assert 0.35 < (dt < math.sqrt(1e-3 * 0.1)).float().mean() < 0.65
    assert torch.equal(block.D, torch.ones(256)) and torch.equal(block.norm.weight, torch.ones(2048))
    # the floor applies when dt_min is below it
    floored = F.softplus(Mamba2(64, headdim=8, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4).dt_bias)
    assert torch.allclose(floored, torch.full_like(floored, 1e-4), rtol=1e-4)


def test_forward_shape_dtype_and_bad_inputs():
    block = small_block()
    u = torch.randn(3, 21, 64)
    y = block(u)
    assert y.shape == u.shape and y.dtype == u.dtype and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="expected u"):
        block(torch.randn(3, 21, 32))
    with pytest.raises(ValueError, match="cache shapes"):
        block(u, block.allocate_cache(2))
    with pytest.raises(ValueError, match="multiple of headdim"):
        Mamba2(60, headdim=16)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(64, headdim=16, ngroups=3)


def test_allocate_cache():
    block = small_block()
    cache = block.allocate_cache(5)
    assert isinstance(cache, Mamba2Cache) and cache.seqlen_offset == 0
    assert cache.conv_state.shape == (5, block.conv_dim, 4) and cache.conv_state.dtype == torch.float32
    assert cache.ssm_state.shape == (5, 8, 16, 16) and cache.ssm_state.dtype == torch.float32
    assert not cache.conv_state.any() and not cache.ssm_state.any()
    assert block.allocate_cache(1, dtype=torch.float64).ssm_state.dtype == torch.float64


@pytest.mark.parametrize("prefill", [0, 1, 3, 17])
@pytest.mark.parametrize("overrides", [{}, {"ngroups": 1}, {"rmsnorm": False}, {"dt_limit": (0.01, 0.05)}])
def test_recurrent_decoding_reproduces_the_parallel_forward(prefill, overrides):
    block = small_block(**overrides)
    u = torch.randn(2, 40, 64)
    with torch.no_grad():
        y_parallel = block(u)
        cache = block.allocate_cache(2)
        outs = [block(u[:, :prefill], cache)] if prefill else []
        for t in range(prefill, 40):
            outs.append(block.step(u[:, t : t + 1], cache))
    assert cache.seqlen_offset == 40
    y_decoded = torch.cat(outs, dim=1)
    assert (y_decoded - y_parallel).abs().max() <= 1e-5


def test_step_accepts_two_dimensional_tokens_and_updates_the_cache_in_place():
    block = small_block()
    u = torch.randn(2, 5, 64)
    cache = block.allocate_cache(2)
    conv_state, ssm_state = cache.conv_state, cache.ssm_state
    with torch.no_grad():
        out3 = [block.step(u[:, t : t + 1], cache) for t in range(5)]
        cache2 = block.allocate_cache(2)
        out2 = [block.step(u[:, t], cache2) for t in range(5)]
    assert out3[0].shape == (2, 1, 64) and out2[0].shape == (2, 64)
    assert torch.equal(torch.cat(out3, 1), torch.stack(out2, 1))
    assert cache.conv_state is conv_state and cache.ssm_state is ssm_state and ssm_state.any()


def test_chunked_prefill_continues_from_the_cache():
    # Pieces shorter and longer than the conv kernel and the chunk: same as one pass, same final cache.
    block = small_block()
    u = torch.randn(2, 50, 64)
    with torch.no_grad():
        whole_cache = block.allocate_cache(2)
        y_whole = block(u, whole_cache)
        cache = block.allocate_cache(2)
        pieces = [block(u[:, a:b], cache) for a, b in ((0, 2), (2, 3), (3, 20), (20, 50))]
    assert (torch.cat(pieces, 1) - y_whole).abs().max() <= 1e-5
    assert (cache.ssm_state - whole_cache.ssm_state).abs().max() <= 1e-5
    assert torch.equal(cache.conv_state, whole_cache.conv_state)
    # the conv state holds the last d_conv inputs of [x, B, C] (before the convolution)
    xBC = block.in_proj(u[:, -4:]).split([128, block.conv_dim, 8], dim=-1)[1]
    assert torch.allclose(cache.conv_state, xBC.transpose(1, 2).detach())


def test_gradient_reaches_every_parameter_and_cache_stays_detached():
    block = small_block(bias=True)
    u = torch.randn(2, 30, 64, requires_grad=True)
    cache = block.allocate_cache(2)
    y = block(u[:, :20], cache)
    y2 = block(u[:, 20:], cache)  # continuing under autograd must not break the first graph
    (y.square().sum() + y2.square().sum()).backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert u.grad is not None and not cache.ssm_state.requires_grad and not cache.conv_state.requires_grad


def test_float64_and_bfloat16_blocks():
    block64 = small_block().double()
    u = torch.randn(2, 12, 64, dtype=torch.float64)
    assert block64(u).dtype == torch.float64
    blockbf = small_block().to(torch.bfloat16)
    y = blockbf(u.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("ngroups", [1, 2])
def test_matches_transformers_mamba2_mixer_on_identical_weights(ngroups):
    # transformers' Mamba2Mixer uses the same parameter names as mamba-ssm: its state dict loads
    # strictly, and its pure-torch forward gives the same outputs (transformers is optional).
    pytest.importorskip("transformers")
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    block = small_block(ngroups=ngroups)
    with torch.no_grad():  # non-trivial values for the parameters initialised to ones
        block.D.uniform_(0.5, 1.5)
        block.norm.weight.uniform_(0.5, 1.5)
    config = Mamba2Config(
        hidden_size=64, state_size=16, expand=2, head_dim=16, num_heads=8, n_groups=ngroups, chunk_size=16,
        conv_kernel=4, use_conv_bias=True, use_bias=False, layer_norm_epsilon=1e-5, num_hidden_layers=1,
    )  # fmt: skip
    peer = Mamba2Mixer(config, layer_idx=0).eval()
    peer.load_state_dict(block.state_dict(), strict=True)
    u = torch.randn(2, 45, 64)
    with torch.no_grad():
        assert (block(u) - peer(u)).abs().max() <= 1e-5


@pytest.mark.gpu
def test_matches_mamba_ssm_on_identical_weights():
    mamba2 = pytest.importorskip("mamba_ssm.modules.mamba2")
    block = small_block().cuda()
    peer = mamba2.Mamba2(64, d_state=16, headdim=16, ngroups=2, chunk_size=16).cuda()
    peer.load_state_dict(block.state_dict(), strict=True)
    u = torch.randn(2, 45, 64, device="cuda")
    with torch.no_grad():
        assert (block(u) - peer(u)).abs().max() <= 1e-3


@pytest.mark.slow
def test_long_context_forward_stays_under_4_gb():
    # One block, d_model 256 (d_inner 512, 8 heads of 64, d_state 128), 131,072 tokens, inference,
    # measured in a fresh process: peak resident memory above the pre-call baseline.
    from hybrids.evaluation.bench.ssd import BLOCK_LENGTH, mamba2_block_case
    from hybrids.evaluation.bench.timing import measure_case

    assert BLOCK_LENGTH == 131072
    assert mamba2_block_case.__module__ == "hybrids.evaluation.bench.ssd"
    result = measure_case(
        "hybrids.evaluation.bench.ssd:mamba2_block_case", {"L": 131072}, repeats=1, timeout_s=600
    )
    assert "error" not in result, result
    print(f"\nMamba2 block, L=131072: {result['time_s']:.2f} s, peak {result['peak_mib']:.0f} MiB")
    assert result["peak_mib"] is not None and result["peak_mib"] < 4096
