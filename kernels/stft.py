"""Short-time Fourier transform and its inverse, with a Hann window and centred frames (demucs's and
most separation models' spectrogram convention).

``stft(x, n_fft, hop)``: ``(..., samples) -> (..., n_fft // 2 + 1, frames)`` complex, torch's own
``torch.stft`` (reflect padding; ``normalized=True`` scales by ``1 / sqrt(n_fft)``).

``istft(z, hop, length, impl="auto")``: the inverse. ``impl="reference"`` is ``torch.istft``;
``impl="overlap_add"`` computes the same sums without autograd when ``hop`` divides ``n_fft``: each
frame's inverse FFT is split into ``n_fft / hop`` slabs of ``hop`` samples and slab ``j`` of frame
``f`` lands on output block ``f + j``, so the windowed overlap-add is ``n_fft / hop`` strided
multiply-adds over whole slabs (``torch.istft`` windows every frame into a new buffer and scatters it
with a col2im, and builds the window envelope the same way). It reads frame-major spectrograms
(``z.transpose(-1, -2)`` contiguous) without a copy. ``"auto"`` takes it where it applies (no
autograd, ``hop`` divides ``n_fft``, ``length`` within the frames, a non-vanishing envelope) and
``torch.istft`` elsewhere. The two agree to float rounding (tests: ~1e-6 relative).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IMPLS", "istft", "istft_reference", "stft"]

IMPLS = ("auto", "reference", "overlap_add")


def _window(n_fft: int, like: Tensor) -> Tensor:
    dtype = like.real.dtype if like.is_complex() else like.dtype
    return torch.hann_window(n_fft, device=like.device, dtype=dtype)


def stft(x: Tensor, n_fft: int, hop: int, *, normalized: bool = True) -> Tensor:
    """Centred STFT with a Hann window of ``n_fft`` samples: ``(..., samples) -> (..., bins, frames)``."""
    *lead, length = x.shape
    z = torch.stft(
        x.reshape(-1, length),
        n_fft,
        hop,
        window=_window(n_fft, x),
        win_length=n_fft,
        normalized=normalized,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    return z.view(*lead, *z.shape[-2:])


def istft_reference(z: Tensor, hop: int, length: int, *, normalized: bool = True) -> Tensor:
    """``torch.istft`` of :func:`stft`'s output: ``(..., bins, frames)`` complex -> ``(..., length)``."""
    *lead, bins, frames = z.shape
    n_fft = 2 * bins - 2
    x = torch.istft(
        z.reshape(-1, bins, frames),
        n_fft,
        hop,
        window=_window(n_fft, z),
        win_length=n_fft,
        normalized=normalized,
        length=length,
        center=True,
    )
    return x.view(*lead, length)


def istft(z: Tensor, hop: int, length: int, *, normalized: bool = True, impl: str = "auto") -> Tensor:
    """Inverse of :func:`stft`: ``(..., bins, frames)`` complex -> ``(..., length)`` real (module
    docstring for ``impl``; ``"overlap_add"`` raises ``RuntimeError`` where it cannot run)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "reference":
        return istft_reference(z, hop, length, normalized=normalized)
    *lead, bins, frames = z.shape
    n_fft = 2 * bins - 2
    applies = (
        not torch.is_grad_enabled() and n_fft % hop == 0 and length <= n_fft + hop * (frames - 1) - n_fft // 2
    )
    if applies:
        x = _overlap_add(z.reshape(-1, bins, frames), _window(n_fft, z), hop, length, normalized)
        if x is not None:
            return x.view(*lead, length)
    if impl == "overlap_add":
        raise RuntimeError(
            "istft impl='overlap_add' needs no autograd, hop dividing n_fft, a length within the "
            "frames and a non-vanishing window envelope"
        )
    return istft_reference(z, hop, length, normalized=normalized)


def _overlap_add(z: Tensor, window: Tensor, hop: int, length: int, normalized: bool) -> Tensor | None:
    """``(n, bins, frames)`` -> ``(n, length)``; ``None`` where the window envelope vanishes (torch's
    istft then raises its own error)."""
    n, bins, frames = z.shape
    n_fft = 2 * bins - 2
    taps = n_fft // hop
    with torch.no_grad():
        y = torch.fft.irfft(z.transpose(-1, -2), n=n_fft, dim=-1, norm="ortho" if normalized else "backward")
        y = y.view(n, frames, taps, hop)
        slabs = window.view(taps, hop)
        out = y.new_zeros(n, frames + taps - 1, hop)
        envelope = slabs.new_zeros(frames + taps - 1, hop)
        for j in range(taps):
            out[:, j : j + frames].addcmul_(y[:, :, j], slabs[j])
            envelope[j : j + frames] += slabs[j].square()
        start = n_fft // 2
        envelope = envelope.view(-1)[start : start + length]
        if bool(envelope.abs().min() < 1e-11):
            return None
        return out.view(n, -1)[:, start : start + length].div_(envelope)
