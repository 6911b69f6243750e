"""``hybrids.kernels.stft``: the overlap-add inverse STFT against ``torch.istft`` (the reference),
the round trip, and where each path applies."""

from __future__ import annotations

import pytest
import torch

from hybrids.kernels.stft import istft, istft_reference, stft


def _spectrogram(lead, n_fft, frames, seed):
    gen = torch.Generator().manual_seed(seed)
    # frame-major memory, as HT Demucs builds it before the inverse
    z = torch.randn(*lead, frames, n_fft // 2 + 1, 2, generator=gen)
    return torch.view_as_complex(z).transpose(-1, -2)


@pytest.mark.parametrize("normalized", [True, False])
@pytest.mark.parametrize(
    ("n_fft", "hop", "frames", "length"),
    [(4096, 1024, 9, 8192), (512, 128, 20, 2300), (512, 128, 20, 100), (64, 16, 7, 96), (256, 128, 5, 600)],
)
def test_overlap_add_equals_torch_istft(n_fft, hop, frames, length, normalized):
    z = _spectrogram((2, 3), n_fft, frames, seed=n_fft + length)
    expected = istft_reference(z, hop, length, normalized=normalized)
    with torch.no_grad():
        got = istft(z, hop, length, normalized=normalized, impl="overlap_add")
        auto = istft(z, hop, length, normalized=normalized)
    assert got.shape == (2, 3, length)
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=2e-6)
    assert torch.equal(auto, got)


@pytest.mark.parametrize("length", [44100, 1000, 4097])
def test_round_trip_recovers_the_signal(length):
    x = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    z = stft(x, 1024, 256)
    assert z.shape == (2, 513, length // 256 + 1) and z.is_complex()
    torch.testing.assert_close(z, torch.stft(x, 1024, 256, window=torch.hann_window(1024), normalized=True,
                                             return_complex=True))  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(istft(z, 256, length), x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(istft(z, 256, length, impl="reference"), x, rtol=1e-5, atol=1e-5)


def test_auto_keeps_autograd_and_falls_back_where_overlap_add_cannot_run():
    x = torch.randn(1, 3000, requires_grad=True)
    y = istft(stft(x, 256, 64), 64, 3000)  # autograd on: torch's istft
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    z = _spectrogram((1,), 256, 12, seed=1)
    with torch.no_grad():  # hop does not divide n_fft: torch's istft, also under "auto"
        torch.testing.assert_close(istft(z, 96, 900), istft_reference(z, 96, 900))
        with pytest.raises(RuntimeError, match="overlap_add"):
            istft(z, 96, 900, impl="overlap_add")
    with pytest.raises(RuntimeError, match="overlap_add"):
        istft(z, 64, 500, impl="overlap_add")  # autograd on
    with pytest.raises(ValueError, match="impl"):
        istft(z, 64, 500, impl="fast")
