"""HT Demucs inference paths added for bfloat16 speed: the overlap-add inverse STFT and the cached
folded transformer weights (cast once under autocast, rebuilt when a parameter changes)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hybrids.apps.music import htdemucs
from hybrids.apps.music.htdemucs import HTDemucs, HTDemucsConfig, istft
from hybrids.kernels.linear import onednn_available


def _torch_istft(z: torch.Tensor, hop: int, length: int) -> torch.Tensor:
    *lead, bins, frames = z.shape
    nfft = 2 * bins - 2
    window = torch.hann_window(nfft, dtype=z.real.dtype)
    x = torch.istft(
        z.reshape(-1, bins, frames),
        nfft,
        hop,
        window=window,
        win_length=nfft,
        normalized=True,
        length=length,
        center=True,
    )
    return x.view(*lead, length)


@pytest.mark.parametrize(
    ("nfft", "hop", "frames", "length"), [(512, 128, 20, 2300), (512, 128, 20, 100), (64, 16, 7, 96)]
)
def test_overlap_add_istft_equals_torch(nfft, hop, frames, length):
    gen = torch.Generator().manual_seed(nfft + length)
    # frame-major memory, as HTDemucs._waveform builds it
    z = torch.view_as_complex(torch.randn(2, 3, frames, nfft // 2 + 1, 2, generator=gen)).transpose(-1, -2)
    expected = _torch_istft(z, hop, length)
    with torch.no_grad():
        got = istft(z, hop, length)
    assert got.shape == (2, 3, length)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(istft(z, hop, length), expected)  # autograd on: torch's istft itself


def test_istft_falls_back_where_the_overlap_add_does_not_apply():
    z = torch.randn(1, 129, 12, dtype=torch.complex64)
    with torch.no_grad():  # hop does not divide nfft; a length beyond the frames
        torch.testing.assert_close(istft(z, 96, 900), _torch_istft(z, 96, 900), rtol=1e-5, atol=1e-6)
        length = 64 * 11 + 256  # longer than the frames cover: torch pads with zeros (and warns)
        with pytest.warns(UserWarning, match="padded with zeros"):
            got, expected = istft(z, 64, length), _torch_istft(z, 64, length)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not onednn_available(torch.bfloat16), reason="oneDNN bfloat16 is not available")
def test_bf16_folded_weights_are_cached_and_follow_parameter_updates(perturb):
    torch.manual_seed(0)
    model = perturb(HTDemucs(HTDemucsConfig.from_preset("tiny"))).eval()
    mix = torch.randn(1, 2, 44100)
    layer = model.crosstransformer.layers[0]

    def run() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(mix)

    first = run()
    cache = htdemucs._FOLDED[layer.self_attn]
    ((stamp, weights),) = cache.values()
    assert all(w.dtype == torch.bfloat16 for w in weights if w is not None)
    second = run()
    assert torch.equal(first, second)
    assert next(iter(cache.values()))[1][0] is weights[0]  # reused, not rebuilt
    # an in-place update (as load_state_dict does) invalidates the cached copies
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["crosstransformer.layers.0.self_attn.in_proj_weight"] *= 1.5
    state["crosstransformer.layers.0.linear2.weight"] *= 0.5
    model.load_state_dict(state)
    third = run()
    fresh = perturb(HTDemucs(HTDemucsConfig.from_preset("tiny"))).eval()
    fresh.load_state_dict(state)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = fresh(mix)
    assert not torch.equal(third, first)
    assert torch.equal(third, expected)
    # float32 inference keeps no second copy of the weights
    with torch.inference_mode():
        model(mix)
    assert all(key[1] == torch.bfloat16 for key in cache)
    # the cache is not part of the module: copies start without it, and run under plain no_grad
    clone = copy.deepcopy(model)
    assert clone.crosstransformer.layers[0].self_attn not in htdemucs._FOLDED
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(clone(mix), third) and torch.equal(model(mix), third)


def test_folded_cache_is_not_used_in_the_parameters_dtype():
    owner = torch.nn.Linear(3, 3)
    calls = []

    def build():
        calls.append(1)
        return (owner.weight * 2,)

    with torch.no_grad():
        for _ in range(2):
            htdemucs._folded(owner, "k", torch.float32, (owner.weight,), build)
        assert len(calls) == 2 and owner not in htdemucs._FOLDED
        for _ in range(2):
            (w,) = htdemucs._folded(owner, "k", torch.bfloat16, (owner.weight,), build)
        assert len(calls) == 3 and w.dtype == torch.bfloat16
        assert math.isclose(float(w[0, 0]), float(owner.weight[0, 0] * 2), rel_tol=1e-2)
        owner.weight.add_(1.0)  # in place: rebuilt
        htdemucs._folded(owner, "k", torch.bfloat16, (owner.weight,), build)
        assert len(calls) == 4
