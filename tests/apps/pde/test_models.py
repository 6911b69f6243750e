"""FactFormer, IFactFormer-m and the FNO wrapper: parameter counts of the reference configs, shapes,
gradients, and the factorised block against an explicit re-computation of FactFormer's FABlock2D."""

from __future__ import annotations

import math

import pytest
import torch

from hybrids.apps.core.registry import count_parameters, create_model
from hybrids.apps.pde.factformer import FactFormer, FactFormerConfig, grid_coordinates
from hybrids.apps.pde.ifactformer import IFactFormer, IFactFormerConfig


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_factformer_km2d_has_the_reference_parameter_count():
    # FactFormer2D of examples/turb_ns2d_fact_lm.py with configs/ns2d_fact_lm.yml (trainable parameters)
    assert count_parameters("pde/factformer") == 3_463_489
    assert count_parameters("pde/factformer", preset="small") == 136_529


def test_ifactformer_m_parameter_counts():
    # the repository's current FABlock3D_m at configs/IFactFormer.yml: 1,163,331 with the 144 fixed
    # Fourier-feature weights (its notebook's 1,181,763 had a second output MLP of 2 x 96 x 96 since removed)
    model = create_model("pde/ifactformer_m", preset="channel3d", device="meta")
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    assert (params, buffers) == (1_163_187, 144)
    assert params + buffers + 2 * 96 * 96 == 1_181_763
    assert count_parameters("pde/ifactformer_m") == 844_657  # the 2-D Kolmogorov default
    assert count_parameters("pde/ifactformer_m", preset="small") == 133_753


def test_fno_peers_are_parameter_matched():
    pytest.importorskip("neuralop")
    assert count_parameters("pde/fno") == 140_101
    assert count_parameters("pde/tfno") == 136_449


@pytest.mark.parametrize(
    ("name", "preset", "shape", "steps", "out"),
    [
        ("pde/factformer", "tiny", (2, 10, 16, 16), 2, (2, 2, 16, 16)),
        ("pde/factformer_3d", "tiny3d", (1, 10, 8, 8, 8), 2, (1, 2, 8, 8, 8)),
        ("pde/ifactformer_m", "tiny", (2, 10, 16, 12), 1, (2, 1, 16, 12)),
        ("pde/ifactformer_m", "tiny3d", (1, 10, 8, 6, 4), 1, (1, 1, 8, 6, 4)),
    ],
)
def test_shapes_and_gradients(name, preset, shape, steps, out):
    torch.manual_seed(0)
    model = create_model(name, preset=preset)
    x = torch.randn(shape)
    y = model(x, steps=steps)
    assert y.shape == out
    y.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_fno_wrapper_shapes_and_tensor_only_state_dict():
    pytest.importorskip("neuralop")
    model = create_model("pde/fno", preset="tiny")
    assert model(torch.randn(2, 10, 16, 16)).shape == (2, 1, 16, 16)
    assert all(isinstance(v, torch.Tensor) for v in model.state_dict().values())
    with pytest.raises(ValueError, match="one frame"):
        model(torch.randn(1, 10, 16, 16), steps=2)


def test_normalisation_is_part_of_the_model():
    torch.manual_seed(0)
    a = FactFormer(FactFormerConfig.from_preset("tiny"))
    torch.manual_seed(0)
    b = FactFormer(FactFormerConfig.from_preset("tiny", norm_mean=1.0, norm_std=3.0))
    x = torch.randn(1, 10, 16, 16)
    torch.testing.assert_close(b(3 * x + 1), 3 * a(x) + 1, atol=1e-5, rtol=1e-5)


def test_bad_inputs_raise():
    model = IFactFormer(IFactFormerConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match="frames must be"):
        model(torch.randn(1, 9, 16, 16))
    with pytest.raises(ValueError, match="steps"):
        FactFormer(FactFormerConfig.from_preset("tiny"))(torch.randn(1, 10, 16, 16), steps=3)


def _reference_fablock2d(block, u, pos):
    """FactFormer's FABlock2D.forward written out (libs/factorization_module.py, libs/attention.py):
    PoolingReducer = to_in, mean over the other axis, LayerNorm, GEGLU MLP; LowRankKernel with rotary
    embedding at coordinates * 64 (min_freq 1/64, base 10000, rotate-half), no softmax, scaling 1;
    chained einsums; GroupNorm(heads, domain_wise=True, affine=False, eps 1e-8, unbiased variance)."""
    h = block.heads
    u = block.in_norm(u)
    v = block.to_v(u)
    u = block.to_in(u)
    kernels = []
    for a in range(2):
        red = block.reducers[a]
        z = red.to_in(u)
        z = z.mean(dim=2) if a == 0 else z.mean(dim=1)  # (b, N_a, c)
        z = red.fc1(red.norm(z))
        c = z.shape[-1] // 2
        z = red.fc2(torch.nn.functional.gelu(z[..., :c]) * z[..., c:])
        q = block.to_q[a](z).reshape(z.shape[0], -1, h, block.qk_dim).transpose(1, 2)
        k = block.to_k[a](z).reshape(z.shape[0], -1, h, block.qk_dim).transpose(1, 2)
        d = block.qk_dim
        inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        freqs = torch.einsum("i,j->ij", pos[a] * 64.0, inv_freq)
        freqs = torch.cat((freqs, freqs), dim=-1)

        def rot(t, freqs=freqs, d=d):
            x1, x2 = t[..., : d // 2], t[..., d // 2 :]
            return t * freqs.cos() + torch.cat((-x2, x1), dim=-1) * freqs.sin()

        kernels.append(torch.einsum("bhid,bhjd->bhij", rot(q), rot(k)) * block.scale)
    phi = v.reshape(*v.shape[:3], h, -1).permute(0, 3, 1, 2, 4)  # b h i l c
    phi = torch.einsum("bhij,bhjmc->bhimc", kernels[0], phi)
    phi = torch.einsum("bhlm,bhimc->bhilc", kernels[1], phi)
    phi = phi.permute(0, 2, 3, 1, 4).reshape(*phi.shape[:1], phi.shape[2], phi.shape[3], -1)  # b i l (h c)
    b, nx, ny, gc = phi.shape
    g = phi.reshape(b, nx * ny, h, gc // h).permute(0, 2, 1, 3).reshape(b, h, -1)
    g = (g - g.mean(-1, keepdim=True)) / (g.var(-1, keepdim=True) + 1e-8).sqrt()
    phi = g.reshape(b, h, nx * ny, gc // h).permute(0, 2, 1, 3).reshape(b, nx, ny, gc)
    return block.to_out(phi)


def test_factformer_block_matches_the_reference_forward():
    torch.manual_seed(0)
    model = FactFormer(FactFormerConfig(dim=32, depth=1, heads=4, dim_head=8, grid=12))
    block = model.blocks[0]
    for p in block.parameters():  # larger q/k weights than the 0.02-gain init, so RoPE matters
        p.data.normal_(0, 0.3)
    u = torch.randn(2, 12, 10, 32, dtype=torch.float64)
    block = block.double()
    pos = grid_coordinates((12, 10), 2 * math.pi)
    pos = [p.double() for p in pos]
    torch.testing.assert_close(block(u, pos), _reference_fablock2d(block, u, pos), rtol=1e-9, atol=1e-9)
