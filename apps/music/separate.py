"""The ``Separator`` Python API behind ``hybrids music separate`` / ``separate``: a model loaded once,
then tensors, files or long files streamed block by block through the engine
(``hybrids.apps.music.engine``: ``apply_model``, ``stream_model``).

``Separator`` follows demucs's ``Separator.separate_tensor``: the mix is resampled to the model's
rate and channel count, normalised with the mean and standard deviation of its mono downmix
(``ref = wav.mean(0)``; ``(wav - ref.mean()) / (ref.std() + 1e-8)``), separated, and scaled back.
The stems are returned at the model's sample rate (like demucs), not resampled to the input rate.
Inputs at another rate are resampled with soxr ("VHQ") where demucs uses julius, so for them the
stems differ slightly from demucs's; inputs at the model's rate go through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybrids.apps.core.errors import InputError
from hybrids.apps.music.engine import (
    DEFAULT_MODEL,
    PRECISIONS,
    _check_segment,
    _is_bag,
    apply_model,
    draw_shift_offsets,
    model_info,
    stream_model,
)
from hybrids.apps.music.loading import load_separation_model

__all__ = ["Separator", "apply_model", "draw_shift_offsets", "stream_model"]

logger = logging.getLogger(__name__)


class Separator:
    """Separate tracks with a registered model, a checkpoint, or any ``nn.Module`` / bag.

    ``model`` is a registry name (``"music/htdemucs"``; ``"htdemucs"`` works too), a checkpoint
    folder, or a module; ``weights`` picks the weights of a registry name (default: the official
    ones). Separation options are those of ``apply_model``. Stems come out at ``samplerate``, the
    model's rate, whatever the input's rate (as demucs).
    """

    def __init__(
        self,
        model: str | Path | nn.Module = DEFAULT_MODEL,
        *,
        weights: str | Path | None = None,
        repo: str | Path | None = None,
        device: str | torch.device = "cpu",
        shifts: int = 1,
        overlap: float = 0.25,
        segment: float | None = None,
        split: bool = True,
        precision: str = "fp32",
        seed: int = 0,
        jobs: int | None = None,
        batch_segments: int | None = None,
        threads: int | None = None,
        progress: bool = False,
    ):
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if isinstance(model, nn.Module):
            self.model = model
        else:
            from hybrids.apps.music.htdemucs import skip_init

            # Every path of load_separation_model loads all weights strictly: the random initial
            # values (and demucs's conv rescaling) would be computed only to be overwritten.
            with skip_init():
                self.model = load_separation_model(model, weights=weights, repo=repo)
        info = model_info(self.model.models[0] if _is_bag(self.model) else self.model)
        self.sources = list(info.sources)
        self.samplerate = info.samplerate
        self.audio_channels = info.audio_channels
        self.device = torch.device(device)
        self.options = dict(
            shifts=shifts,
            overlap=overlap,
            segment=segment,
            split=split,
            precision=precision,
            seed=seed,
            jobs=jobs,
            batch_segments=batch_segments,
            threads=threads,
        )
        for sub in self.model.models if _is_bag(self.model) else [self.model]:
            _check_segment(sub, segment)
        self.progress = progress
        self.model.to(self.device).eval()

    def separate_tensor(
        self, wav: torch.Tensor, sample_rate: int | None = None, *, desc: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Stems of ``wav`` ``(channels, samples)`` as ``{source: (channels, samples)}`` at
        ``self.samplerate`` (``sample_rate`` is the input's; default: the model's)."""
        from hybrids.datasets.audio import convert_channels, resample

        wav = torch.as_tensor(wav)
        if wav.ndim != 2:
            raise InputError(f"expected audio of shape (channels, samples), got {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise InputError("the audio has no samples")
        wav = wav.detach().to("cpu", torch.float32)
        if sample_rate is not None and sample_rate != self.samplerate:
            wav = resample(wav, sample_rate, self.samplerate)
        try:
            wav = convert_channels(wav, self.audio_channels)
        except ValueError as exc:
            raise InputError(f"the audio {exc}") from None
        ref = wav.mean(0)
        mean = ref.mean()
        std = (ref.std() if ref.numel() > 1 else torch.zeros(())) + 1e-8
        out = apply_model(
            self.model,
            ((wav - mean) / std)[None],
            device=self.device,
            progress=self.progress,
            desc=desc,
            **self.options,
        )
        out.mul_(std).add_(mean)
        return dict(zip(self.sources, out[0]))

    def separate_file(self, path: str | Path) -> tuple[dict[str, torch.Tensor], int]:
        """Read ``path`` (any format ``load_audio`` reads) and return ``(stems, samplerate)``."""
        from hybrids.datasets.audio import AudioError, load_audio

        try:
            wav, rate = load_audio(path, samplerate=self.samplerate, channels=self.audio_channels)
        except AudioError as exc:
            raise InputError(str(exc)) from None
        return self.separate_tensor(wav, rate, desc=Path(path).name), self.samplerate

    def stream_file(
        self,
        path: str | Path,
        on_block: Callable[[int, dict[str, torch.Tensor], torch.Tensor], None],
        *,
        tmp_dir: str | Path | None = None,
        desc: str | None = None,
    ) -> int:
        """Separate ``path`` with memory independent of its length; returns its length in samples
        (at ``self.samplerate``).

        The file is decoded once, block by block, into a temporary float32 file in ``tmp_dir``
        (default: the system's), while the mean and standard deviation of its mono downmix are
        accumulated (float64); the separation then reads the mix back by chunk and calls
        ``on_block(start, stems {source: (channels, n)}, mix (channels, n))`` for consecutive
        blocks covering the track, at the model's rate and channel count. The stems equal
        ``separate_file``'s up to the float rounding of the statistics (~1e-7 relative).
        """
        import os
        import tempfile

        import numpy as np

        from hybrids.datasets.audio import AudioError, AudioReader

        try:
            reader = AudioReader(path, samplerate=self.samplerate, channels=self.audio_channels)
            with tempfile.TemporaryDirectory(dir=tmp_dir, prefix=".hybrids-separate-") as tmp:
                raw = Path(tmp) / "mix.f32"
                stats = _RunningMoments()
                with open(raw, "wb") as handle:
                    for block in reader:
                        frames = block.numpy()  # (channels, n) float32
                        handle.write(np.ascontiguousarray(frames.T).data)
                        # the mono downmix in float64 (numpy: torch's mean over a dim of 2 is slow)
                        stats.update(frames.mean(0, dtype=np.float64))
                mean = torch.tensor(stats.mean, dtype=torch.float32)
                std = torch.tensor(stats.std, dtype=torch.float32) + 1e-8
                channels, length = self.audio_channels, stats.count
                fd = os.open(raw, os.O_RDONLY)
                try:

                    def read_raw(start: int, size: int) -> torch.Tensor:
                        """Mix samples ``[start, start + size)`` ``(channels, size)``, zeros outside."""
                        lo, hi = max(0, start), min(length, start + size)
                        out = torch.zeros(channels, size)
                        if lo < hi:
                            data = os.pread(fd, (hi - lo) * channels * 4, lo * channels * 4)
                            frames = np.frombuffer(data, dtype="<f4").reshape(hi - lo, channels)
                            out[:, lo - start : hi - start] = torch.from_numpy(frames.T.copy())
                        return out

                    def read(start: int, size: int) -> torch.Tensor:
                        lo, hi = max(0, start), min(length, start + size)
                        window = read_raw(start, size)
                        # the in-memory path normalises the whole mix, then pads with zeros
                        window[:, lo - start : max(lo, hi) - start] -= mean
                        window[:, lo - start : max(lo, hi) - start] /= std
                        return window[None]

                    def sink(start: int, block: torch.Tensor) -> None:
                        block.mul_(std).add_(mean)
                        mix = read_raw(start, block.shape[-1])
                        on_block(start, dict(zip(self.sources, block[0])), mix)

                    stream_model(
                        self.model,
                        read,
                        length,
                        sink,
                        channels=channels,
                        device=self.device,
                        progress=self.progress,
                        desc=desc or Path(path).name,
                        **self.options,
                    )
                finally:
                    os.close(fd)
        except AudioError as exc:
            raise InputError(str(exc)) from None
        return length


class _RunningMoments:
    """Count, mean and unbiased standard deviation of a stream of 1-D float64 blocks (Chan et
    al.'s pairwise update, stable for long tracks)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: Any) -> None:
        n = int(values.shape[0])
        if n == 0:
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else 0.0
