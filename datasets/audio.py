"""Audio files in and out: ``load_audio``, ``audio_info``, ``save_audio``.

Reading uses soundfile (libsndfile) for the formats it handles natively (wav, flac, ogg/vorbis,
aiff, ...) and an ``ffmpeg`` subprocess decoding to 32-bit float for everything else (mp3, m4a,
aac, opus, mp4, ...), or when soundfile cannot read a file. Resampling is done with soxr at its
"VHQ" quality; channel conversion follows demucs's ``convert_audio_channels`` (mono is duplicated,
extra channels are dropped when fewer but more than one are asked for, and averaged for mono).

Writing picks the format from the extension: ``.wav`` (16/24-bit PCM or 32-bit float) and
``.flac`` (16/24-bit) through soundfile, ``.mp3`` through ``ffmpeg`` (libmp3lame) when it is
installed, else ``lameenc``. ffmpeg is preferred because it writes the LAME/Xing header that lets
decoders drop the encoder delay: its MP3s decode sample-aligned with the input, while raw
``lameenc`` output (demucs's writer) starts 1105 samples late. Every file is written atomically:
an interrupted write leaves nothing.

Differences from demucs's ``save_audio`` (4.1.0), on purpose: integer samples are rounded to the
nearest step instead of truncated toward zero (at most one LSB apart, half the error), and 32-bit
float output is not clamped to [-1, 1] (its point is headroom; ``clip`` still applies).

Errors a user can cause raise ``AudioError`` (a ``ValueError``) with a one-line message naming
the file and the problem; this module never imports ``hybrids.apps``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from hybrids.datasets.atomic import atomic_write_path

_logger = logging.getLogger("hybrids.datasets.audio")

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "AudioInfo",
    "AudioReader",
    "AudioWriteError",
    "AudioWriter",
    "EmptyAudioError",
    "MissingAudioError",
    "NotAudioError",
    "UnsupportedAudioError",
    "audio_info",
    "convert_channels",
    "load_audio",
    "resample",
    "save_audio",
]

# Extensions treated as audio when a folder is given as input.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".oga", ".m4a", ".aac", ".opus", ".aiff", ".aif", ".mp4", ".wma"}
)
# Read with soundfile first (ffmpeg is the fallback when libsndfile refuses the file).
_SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".w64", ".rf64"})
_WRITE_EXTENSIONS = (".wav", ".flac", ".mp3")
CLIP_MODES = ("rescale", "clamp", "none")


class AudioError(ValueError):
    """A problem with an audio file the user gave; ``str(error)`` is one line naming the file."""


class MissingAudioError(AudioError):
    """The file does not exist (or is a folder)."""


class EmptyAudioError(AudioError):
    """The file is empty or holds no samples."""


class NotAudioError(AudioError):
    """Neither soundfile nor ffmpeg can decode the file."""


class UnsupportedAudioError(AudioError):
    """A format or option this module cannot write (unknown extension, float FLAC, ...)."""


class AudioWriteError(AudioError):
    """The output file could not be written (folder not creatable, permission, disk full)."""


class AudioInfo(NamedTuple):
    frames: int  # exact for soundfile formats; from the container's duration for ffmpeg ones
    samplerate: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0


# -- reading ------------------------------------------------------------------------------------
def _check_input(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingAudioError(f"{path}: no such file")
    if path.is_dir():
        raise MissingAudioError(f"{path}: is a folder, not an audio file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise EmptyAudioError(f"{path}: file is empty (0 bytes)")
    return path


def _short_reason(text: str, path: Path | None = None) -> str:
    """The last non-empty line of a tool's stderr (where ffmpeg puts the actual error), without
    the file name it starts with (our messages name the file already)."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else ""
    if path is not None and reason.startswith(f"{path}: "):
        reason = reason[len(f"{path}: ") :]
    return reason


def _ffmpeg_binary(name: str = "ffmpeg") -> str | None:
    return shutil.which(name)


def _ffprobe(path: Path) -> tuple[int, int, float]:
    """``(samplerate, channels, duration_seconds)`` of the first audio stream, via ffprobe."""
    ffprobe = _ffmpeg_binary("ffprobe")
    if ffprobe is None:
        raise NotAudioError(f"{path}: cannot be read by soundfile and ffprobe/ffmpeg is not installed")
    command = [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_streams", "-show_format"]
    command += ["-of", "json", str(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = _short_reason(result.stderr, path) or "ffprobe failed"
        raise NotAudioError(f"{path}: not an audio file or unsupported format ({reason})")
    try:
        info = json.loads(result.stdout or "{}")
    except ValueError:
        info = {}
    streams = info.get("streams") or []
    if not streams:
        raise NotAudioError(f"{path}: not an audio file (no audio stream found)")
    stream = streams[0]
    try:
        samplerate, channels = int(stream["sample_rate"]), int(stream["channels"])
    except (KeyError, TypeError, ValueError):
        raise NotAudioError(f"{path}: not an audio file (no sample rate or channel count)") from None
    duration = stream.get("duration") or (info.get("format") or {}).get("duration") or 0.0
    try:
        seconds = float(duration)
    except (TypeError, ValueError):
        seconds = 0.0
    return samplerate, channels, seconds


def _read_ffmpeg(path: Path, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    samplerate, channels, _ = _ffprobe(path)
    ffmpeg = _ffmpeg_binary()
    if ffmpeg is None:
        raise NotAudioError(f"{path}: cannot be read by soundfile and ffmpeg is not installed")
    command = [ffmpeg, "-nostdin", "-v", "error"]
    if offset:
        command += ["-ss", f"{offset:.6f}"]
    command += ["-i", str(path), "-map", "0:a:0"]
    if duration is not None:
        command += ["-t", f"{duration:.6f}"]
    command += ["-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(samplerate), "-"]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        reason = _short_reason(result.stderr.decode("utf-8", "replace"), path) or "ffmpeg failed"
        raise NotAudioError(f"{path}: cannot decode audio ({reason})")
    data = np.frombuffer(result.stdout, dtype="<f4")
    usable = data.size - data.size % channels
    return data[:usable].reshape(-1, channels), samplerate


def _read_soundfile(path: Path, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    import soundfile

    with soundfile.SoundFile(str(path)) as handle:
        samplerate = handle.samplerate
        start = int(round(offset * samplerate))
        if start:
            handle.seek(min(start, handle.frames))
        frames = -1 if duration is None else int(round(duration * samplerate))
        data = handle.read(frames, dtype="float32", always_2d=True)
    return data, samplerate


def _read(path: Path, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    if path.suffix.lower() in _SOUNDFILE_EXTENSIONS:
        import soundfile

        try:
            return _read_soundfile(path, offset, duration)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
            pass  # e.g. a codec libsndfile lacks: let ffmpeg try
    return _read_ffmpeg(path, offset, duration)


def load_audio(
    path: str | os.PathLike,
    *,
    samplerate: int | None = None,
    channels: int | None = None,
    offset: float = 0.0,
    duration: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Read ``path`` as ``(float32 tensor (channels, samples), samplerate)``.

    ``samplerate`` resamples (soxr VHQ) to that rate, ``channels`` converts the channel count
    (see ``convert_channels``); ``offset``/``duration`` (seconds, in the file's own rate) read an
    excerpt. Raises ``AudioError`` subclasses for missing, empty, or undecodable files.
    """
    path = _check_input(path)
    if offset < 0 or (duration is not None and duration <= 0):
        raise ValueError(f"offset must be >= 0 and duration > 0, got {offset} and {duration}")
    data, rate = _read(path, offset, duration)
    if data.shape[0] == 0:
        where = f" after {offset} s" if offset else ""
        raise EmptyAudioError(f"{path}: contains no audio samples{where}")
    wav = torch.from_numpy(np.ascontiguousarray(data.T, dtype=np.float32))
    if channels is not None:
        try:
            wav = convert_channels(wav, channels)
        except ValueError as exc:
            raise UnsupportedAudioError(f"{path}: {exc}") from None
    if samplerate is not None and samplerate != rate:
        wav = resample(wav, rate, samplerate)
        rate = samplerate
    return wav, int(rate)


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """``AudioInfo(frames, samplerate, channels)`` without decoding the samples (long files)."""
    path = _check_input(path)
    if path.suffix.lower() in _SOUNDFILE_EXTENSIONS:
        import soundfile

        try:
            info = soundfile.info(str(path))
            return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
            pass
    samplerate, channels, seconds = _ffprobe(path)
    return AudioInfo(int(round(seconds * samplerate)), samplerate, channels)


class AudioReader:
    """Decode ``path`` block by block, for files too long to hold in memory.

    ``for block in AudioReader(path, samplerate=44100, channels=2): ...`` yields float32 tensors
    ``(channels, n)`` converted and resampled exactly as ``load_audio`` does (the same soxr VHQ
    resampler, streamed: the concatenated blocks equal ``load_audio``'s output bit for bit). The
    file's header is read on construction (``AudioError`` for missing, empty or non-audio files
    and impossible channel conversions); decoding errors and files with no samples raise while
    iterating. ``block_frames`` is the size of the blocks read from the decoder (before resampling).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        samplerate: int | None = None,
        channels: int | None = None,
        block_frames: int = 1 << 18,
    ):
        self.path = _check_input(path)
        info = audio_info(self.path)
        self.source_samplerate, self.source_channels = info.samplerate, info.channels
        self.stated_frames = info.frames  # the length the header (or container) states
        self.decoded_frames = 0  # set by iterating: what the decoder actually gave
        self._exact_length = False  # soundfile's frame counts are exact; ffprobe's durations estimates
        self.samplerate = int(samplerate or info.samplerate)
        self.channels = int(channels or info.channels)
        if self.samplerate <= 0 or block_frames < 1:
            raise ValueError(f"samplerate and block_frames must be > 0, got {samplerate}, {block_frames}")
        if self.channels != self.source_channels and self.channels != 1 and self.source_channels != 1:
            if self.source_channels < self.channels:
                raise UnsupportedAudioError(
                    f"{self.path}: has {self.source_channels} channels; cannot make {self.channels} "
                    "from it (only from mono)"
                )
        self.block_frames = int(block_frames)

    def __iter__(self) -> Iterator[torch.Tensor]:
        import soxr

        stream = None
        if self.source_samplerate != self.samplerate:
            stream = soxr.ResampleStream(
                self.source_samplerate, self.samplerate, self.channels, dtype="float32", quality="VHQ"
            )
        total = 0
        for frames in self._decoded():
            total += frames.shape[0]
            wav = convert_channels(torch.from_numpy(np.ascontiguousarray(frames.T)), self.channels)
            if stream is None:
                yield wav.contiguous()
                continue
            out = stream.resample_chunk(np.ascontiguousarray(wav.numpy().T))
            if out.shape[0]:
                yield torch.from_numpy(np.ascontiguousarray(out.T))
        self.decoded_frames = total
        if total == 0:
            raise EmptyAudioError(f"{self.path}: contains no audio samples")
        self._warn_if_short(total)
        if stream is not None:
            out = stream.resample_chunk(np.zeros((0, self.channels), dtype=np.float32), last=True)
            if out.shape[0]:
                yield torch.from_numpy(np.ascontiguousarray(out.T))

    def _warn_if_short(self, total: int) -> None:
        """A damaged file whose header is intact: the decoder stopped before the length the header
        states (e.g. an Ogg file with bytes missing in the middle). The audio decoded is kept (as
        demucs and ffmpeg do) and one warning names the file and both durations. A file cut at its
        end states no other length (Ogg has no length field: it is read from the last page) and
        cannot be told from a short file."""
        rate, stated = self.source_samplerate, self.stated_frames
        # exact counts (soundfile): more than 10 ms missing; ffprobe's estimates: 0.5 s and 5 %
        tolerance = max(1, rate // 100) if self._exact_length else max(rate // 2, stated // 20)
        if stated - total > tolerance:
            _logger.warning(
                "%s: decoding stopped at %.2f s of the %.2f s its header states (the file is damaged "
                "or truncated); only the first %.2f s are used",
                self.path,
                total / rate,
                stated / rate,
                total / rate,
            )

    def _decoded(self) -> Iterator[np.ndarray]:
        """Float32 frames ``(n, source channels)`` from soundfile, or from ffmpeg when libsndfile
        cannot open the file."""
        if self.path.suffix.lower() in _SOUNDFILE_EXTENSIONS:
            import soundfile

            try:
                handle = soundfile.SoundFile(str(self.path))
            except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
                handle = None
            if handle is not None:
                self._exact_length = True
                with handle:
                    while True:
                        try:
                            frames = handle.read(self.block_frames, dtype="float32", always_2d=True)
                        except (soundfile.LibsndfileError, RuntimeError) as exc:
                            raise NotAudioError(f"{self.path}: cannot decode audio ({exc})") from None
                        if frames.shape[0] == 0:
                            return
                        yield frames
        yield from self._decoded_ffmpeg()

    def _decoded_ffmpeg(self) -> Iterator[np.ndarray]:
        import tempfile

        ffmpeg = _ffmpeg_binary()
        if ffmpeg is None:
            raise NotAudioError(f"{self.path}: cannot be read by soundfile and ffmpeg is not installed")
        channels = self.source_channels
        command = [ffmpeg, "-nostdin", "-v", "error", "-i", str(self.path), "-map", "0:a:0", "-f", "f32le"]
        command += ["-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(self.source_samplerate), "-"]
        frame_bytes = 4 * channels
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
            try:
                assert process.stdout is not None
                rest = b""
                while True:
                    data = process.stdout.read(self.block_frames * frame_bytes)
                    if not data:
                        break
                    data = rest + data
                    usable = len(data) - len(data) % frame_bytes
                    rest = data[usable:]
                    if usable:
                        yield np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels)
                code = process.wait()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                if process.stdout is not None:
                    process.stdout.close()
            if code != 0:
                errors.seek(0)
                reason = _short_reason(errors.read().decode("utf-8", "replace"), self.path) or "ffmpeg failed"
                raise NotAudioError(f"{self.path}: cannot decode audio ({reason})")


def convert_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """``(..., C, T)`` to ``channels`` channels, as demucs's ``convert_audio_channels``: same
    count → unchanged; mono asked → mean of all channels; mono source → duplicated; more
    channels than asked → the first ``channels``; fewer (but not mono) → ``ValueError``."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    source = wav.shape[-2]
    if source == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if source == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1]).contiguous()
    if source > channels:
        return wav[..., :channels, :].contiguous()
    raise ValueError(f"has {source} channels; cannot make {channels} from it (only from mono)")


def resample(wav: torch.Tensor, orig_samplerate: int, target_samplerate: int) -> torch.Tensor:
    """Resample a ``(C, T)`` (or ``(T,)``) tensor with soxr, quality "VHQ"; float32 out."""
    import soxr

    if orig_samplerate == target_samplerate:
        return wav
    if orig_samplerate <= 0 or target_samplerate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_samplerate} and {target_samplerate}")
    array = wav.detach().to("cpu", torch.float32).numpy()
    frames_first = np.ascontiguousarray(array.T if array.ndim == 2 else array)
    out = soxr.resample(frames_first, orig_samplerate, target_samplerate, quality="VHQ")
    out = np.ascontiguousarray(out.T if out.ndim == 2 else out, dtype=np.float32)
    return torch.from_numpy(out).to(wav.device)


# -- writing ------------------------------------------------------------------------------------
def prevent_clip(wav: torch.Tensor, mode: str = "rescale") -> torch.Tensor:
    """demucs's strategies: ``rescale`` divides by ``max(1.01 * peak, 1)`` (only when the peak
    is at or above ~0.99), ``clamp`` clamps to [-0.99, 0.99], ``none`` leaves the samples as they are."""
    if mode == "none" or mode is None:
        return wav
    if mode == "rescale":
        return wav / max(1.01 * float(wav.abs().max()) if wav.numel() else 0.0, 1.0)
    if mode == "clamp":
        return wav.clamp(-0.99, 0.99)
    raise ValueError(f"clip must be one of {', '.join(CLIP_MODES)}, got {mode!r}")


def _to_int(frames: np.ndarray, bits: int) -> np.ndarray:
    """Float frames → integers scaled by ``2**(bits-1) - 1`` (demucs's scale), rounded."""
    scale = float(2 ** (bits - 1) - 1)
    ints = np.rint(np.clip(frames, -1.0, 1.0) * scale)
    if bits == 16:
        return ints.astype("<i2")
    return ints.astype("<i4") << 8  # 24-bit samples on the top bits of int32 (libsndfile's layout)


def _check_write_options(path: Path, bits: int) -> str:
    suffix = path.suffix.lower()
    if suffix not in _WRITE_EXTENSIONS:
        what = suffix or "files without an extension"
        raise UnsupportedAudioError(f"{path}: cannot write {what}; use {', '.join(_WRITE_EXTENSIONS)}")
    if bits not in (16, 24, 32):
        raise UnsupportedAudioError(f"{path}: bits must be 16, 24 or 32 (float), got {bits}")
    if suffix == ".flac" and bits == 32:
        raise UnsupportedAudioError(f"{path}: FLAC cannot store 32-bit float samples; use 16 or 24 bits")
    return suffix


def save_audio(
    wav: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    samplerate: int,
    *,
    bits: int = 16,
    clip: str = "rescale",
    mp3_bitrate: int = 320,
    mp3_preset: int = 2,
    mp3_encoder: str = "auto",
) -> Path:
    """Write ``wav`` (``(channels, samples)``, float) to ``path`` atomically; returns the path.

    The format comes from the extension: ``.wav`` (``bits`` 16, 24 or 32 = float), ``.flac``
    (16 or 24) or ``.mp3`` (``mp3_bitrate`` kbit/s, LAME quality ``mp3_preset`` 2 = best ... 7 =
    fastest; ``mp3_encoder`` "auto" = ffmpeg if installed else lameenc). ``clip`` is applied first.
    """
    path = Path(path)
    _check_write_options(path, bits)
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be one of {', '.join(CLIP_MODES)}, got {clip!r}")
    tensor = torch.as_tensor(wav).detach().to("cpu", torch.float32)
    if tensor.ndim != 2:
        raise ValueError(f"{path}: expected audio of shape (channels, samples), got {tuple(tensor.shape)}")
    with AudioWriter(
        path,
        samplerate,
        tensor.shape[0],
        bits=bits,
        mp3_bitrate=mp3_bitrate,
        mp3_preset=mp3_preset,
        mp3_encoder=mp3_encoder,
    ) as writer:
        writer.write(prevent_clip(tensor, clip))
    return path


class AudioWriter:
    """Write audio block by block, atomically: ``with AudioWriter(path, 44100, 2) as w:
    w.write(block)``; the file appears at ``path`` only when the ``with`` block ends without an
    error (until then it is a hidden temporary file beside it, removed on failure).

    Blocks are float ``(channels, n)`` tensors or arrays; integer formats clip them to [-1, 1]
    (apply ``prevent_clip`` before, for the whole signal, to rescale instead). Formats and options
    as ``save_audio``. Errors raise ``AudioWriteError`` naming the file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        samplerate: int,
        channels: int,
        *,
        bits: int = 16,
        mp3_bitrate: int = 320,
        mp3_preset: int = 2,
        mp3_encoder: str = "auto",
    ):
        self.path = Path(path)
        self.suffix = _check_write_options(self.path, bits)
        if samplerate <= 0:
            raise ValueError(f"{self.path}: samplerate must be positive, got {samplerate}")
        if channels < 1:
            raise ValueError(f"{self.path}: channels must be >= 1, got {channels}")
        if mp3_encoder not in ("auto", "lameenc", "ffmpeg"):
            raise ValueError(f"mp3_encoder must be auto, lameenc or ffmpeg, got {mp3_encoder!r}")
        if self.suffix == ".mp3" and channels > 2:
            raise UnsupportedAudioError(f"{self.path}: MP3 holds at most 2 channels, got {channels}")
        self.samplerate, self.channels, self.bits = int(samplerate), int(channels), bits
        self.mp3_bitrate, self.mp3_preset, self.mp3_encoder = int(mp3_bitrate), int(mp3_preset), mp3_encoder
        self._context: Any = None
        self._sink: Any = None

    def __enter__(self) -> AudioWriter:
        self._context = self._open()
        try:
            self._sink = self._context.__enter__()
        except OSError as exc:
            raise AudioWriteError(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        context, self._context, self._sink = self._context, None, None
        try:
            context.__exit__(exc_type, exc, traceback)
        except OSError as error:
            if exc_type is not None:
                raise
            raise AudioWriteError(f"{self.path}: cannot write ({error.strerror or error})") from None

    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        with atomic_write_path(self.path) as tmp:  # renamed on success, removed on any error
            sink = _Mp3Sink(tmp, self) if self.suffix == ".mp3" else _SoundfileSink(tmp, self)
            try:
                yield sink
            except BaseException:
                sink.abort()
                raise
            sink.close()

    def write(self, block: torch.Tensor | np.ndarray) -> None:
        """Append ``block`` ``(channels, n)``."""
        if self._sink is None:
            raise RuntimeError("AudioWriter.write outside its `with` block")
        array = torch.as_tensor(block).detach().to("cpu", torch.float32).numpy()
        if array.ndim != 2 or array.shape[0] != self.channels:
            raise ValueError(f"{self.path}: expected a block ({self.channels}, n), got {array.shape}")
        if array.shape[1] == 0:
            return
        try:
            self._sink.write(np.ascontiguousarray(array.T))
        except OSError as exc:
            raise AudioWriteError(f"{self.path}: cannot write ({exc.strerror or exc})") from None


class _SoundfileSink:
    def __init__(self, tmp: Path, writer: AudioWriter):
        import soundfile

        self.bits = writer.bits
        subtype = "FLOAT" if writer.bits == 32 else f"PCM_{writer.bits}"
        fmt = "WAV" if writer.suffix == ".wav" else "FLAC"
        try:
            self.handle = soundfile.SoundFile(
                str(tmp), "w", writer.samplerate, writer.channels, subtype=subtype, format=fmt
            )
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise OSError(f"libsndfile: {exc}") from None

    def write(self, frames: np.ndarray) -> None:
        import soundfile

        data = frames.astype("<f4") if self.bits == 32 else _to_int(frames, self.bits)
        try:
            self.handle.write(data)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise OSError(f"libsndfile: {exc}") from None

    def close(self) -> None:
        self.handle.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.handle.close()


class _Mp3Sink:
    """16-bit PCM into ffmpeg's libmp3lame (preferred: sample-aligned output) or lameenc."""

    def __init__(self, tmp: Path, writer: AudioWriter):
        import tempfile

        self.process: subprocess.Popen | None = None
        self.encoder: Any = None
        ffmpeg = _ffmpeg_binary()
        if writer.mp3_encoder == "lameenc" or (writer.mp3_encoder == "auto" and ffmpeg is None):
            try:
                import lameenc
            except ImportError:
                raise UnsupportedAudioError(
                    f"{writer.path}: writing MP3 needs ffmpeg or lameenc (pip install lameenc)"
                ) from None
            self.encoder = lameenc.Encoder()
            self.encoder.set_bit_rate(writer.mp3_bitrate)
            self.encoder.set_in_sample_rate(writer.samplerate)
            self.encoder.set_channels(writer.channels)
            self.encoder.set_quality(writer.mp3_preset)
            self.encoder.silence()
            self.file = open(tmp, "wb")
            return
        if ffmpeg is None:
            raise UnsupportedAudioError(f"{writer.path}: writing MP3 with mp3_encoder='ffmpeg' needs ffmpeg")
        command = [ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "s16le", "-ar", str(writer.samplerate)]
        command += ["-ac", str(writer.channels), "-i", "-", "-codec:a", "libmp3lame"]
        command += ["-b:a", f"{writer.mp3_bitrate}k", "-compression_level", str(writer.mp3_preset)]
        command += ["-f", "mp3", str(tmp)]
        self.errors = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=self.errors)

    def write(self, frames: np.ndarray) -> None:
        pcm = _to_int(frames, 16).tobytes()
        if self.encoder is not None:
            self.file.write(bytes(self.encoder.encode(pcm)))
            return
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(pcm)
        except BrokenPipeError:
            self.process.wait()
            raise OSError(f"ffmpeg could not encode MP3 ({self._reason()})") from None

    def close(self) -> None:
        if self.encoder is not None:
            self.file.write(bytes(self.encoder.flush()))
            self.file.close()
            return
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        code = self.process.wait()
        reason = self._reason()
        self.errors.close()
        if code != 0:
            raise OSError(f"ffmpeg could not encode MP3 ({reason})")

    def abort(self) -> None:
        if self.encoder is not None:
            self.file.close()
            return
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(Exception):
            self.process.stdin.close()  # type: ignore[union-attr]
        self.errors.close()

    def _reason(self) -> str:
        self.errors.seek(0)
        return _short_reason(self.errors.read().decode("utf-8", "replace")) or "ffmpeg failed"
