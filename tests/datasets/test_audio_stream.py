"""Streaming audio I/O on the real recordings: ``AudioReader`` yields exactly what ``load_audio``
returns (native rate, resampled, mono to stereo, ffmpeg-decoded MP3), ``AudioWriter`` writes
exactly what ``save_audio`` writes, and both fail with one line naming the file, leaving nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile
import torch

from hybrids.datasets.audio import (
    AudioReader,
    AudioWriteError,
    AudioWriter,
    EmptyAudioError,
    MissingAudioError,
    NotAudioError,
    UnsupportedAudioError,
    load_audio,
    save_audio,
)

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


@pytest.fixture(scope="module")
def trumpet(shared_data):
    return shared_data / "audio" / "sorohanro-solo_trumpet_06.ogg"  # 5.3 s, 44.1 kHz stereo


def _read_all(reader: AudioReader) -> torch.Tensor:
    blocks = list(reader)
    assert all(b.dtype == torch.float32 and b.shape[0] == reader.channels for b in blocks)
    return torch.cat(blocks, dim=-1)


@pytest.mark.parametrize("samplerate", [None, 48000, 22050])
def test_reader_equals_load_audio(trumpet, samplerate):
    expected, rate = load_audio(trumpet, samplerate=samplerate)
    reader = AudioReader(trumpet, samplerate=samplerate, block_frames=10_000)  # ~24 blocks
    assert (reader.samplerate, reader.channels, reader.source_samplerate) == (rate, 2, 44100)
    got = _read_all(reader)
    assert got.shape == expected.shape and torch.equal(got, expected)


def test_reader_converts_channels_like_load_audio(trumpet, tmp_path):
    mono = save_audio(load_audio(trumpet)[0][:1], tmp_path / "mono.wav", 44100, bits=32, clip="none")
    for channels in (1, 2):
        got = _read_all(AudioReader(mono, channels=channels, block_frames=4096))
        assert torch.equal(got, load_audio(mono, channels=channels)[0])
    assert torch.equal(_read_all(AudioReader(trumpet, channels=1)), load_audio(trumpet, channels=1)[0])
    surround = tmp_path / "three.wav"
    soundfile.write(str(surround), np.zeros((100, 3), dtype=np.float32), 44100)
    with pytest.raises(UnsupportedAudioError, match="three.wav: has 3 channels; cannot make 4"):
        AudioReader(surround, channels=4)


@needs_ffmpeg
def test_reader_decodes_through_ffmpeg(trumpet, tmp_path):
    mp3 = save_audio(load_audio(trumpet)[0], tmp_path / "trumpet.mp3", 44100)
    expected, _ = load_audio(mp3, samplerate=48000)
    got = _read_all(AudioReader(mp3, samplerate=48000, block_frames=5000))
    assert got.shape == expected.shape and torch.equal(got, expected)


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(MissingAudioError, match="nothing.wav: no such file"):
        AudioReader(tmp_path / "nothing.wav")
    empty = tmp_path / "empty.flac"
    empty.touch()
    with pytest.raises(EmptyAudioError, match="empty.flac: file is empty"):
        AudioReader(empty)
    text = tmp_path / "notes.mp3"
    text.write_text("these are not samples\n" * 50)
    with pytest.raises(NotAudioError, match="notes.mp3: not an audio file"):
        AudioReader(text)
    silent = tmp_path / "zero.wav"
    soundfile.write(str(silent), np.zeros((0, 2), dtype=np.float32), 44100)
    with pytest.raises(EmptyAudioError, match="zero.wav: contains no audio samples"):
        list(AudioReader(silent))


@pytest.mark.parametrize(("suffix", "bits"), [(".wav", 16), (".wav", 24), (".wav", 32), (".flac", 24)])
def test_writer_blocks_equal_save_audio(trumpet, tmp_path, suffix, bits):
    wav, rate = load_audio(trumpet)
    whole = save_audio(wav, tmp_path / f"whole{suffix}", rate, bits=bits, clip="none")
    with AudioWriter(tmp_path / f"blocks{suffix}", rate, 2, bits=bits) as writer:
        for start in range(0, wav.shape[1], 7777):
            writer.write(wav[:, start : start + 7777])
    assert (tmp_path / f"blocks{suffix}").read_bytes() == whole.read_bytes()


@needs_ffmpeg
def test_writer_mp3_streams_through_ffmpeg(trumpet, tmp_path):
    wav, rate = load_audio(trumpet)
    with AudioWriter(tmp_path / "blocks.mp3", rate, 2) as writer:
        for start in range(0, wav.shape[1], 50_000):
            writer.write(wav[:, start : start + 50_000])
    decoded, _ = load_audio(tmp_path / "blocks.mp3")
    n = min(decoded.shape[1], wav.shape[1])
    assert abs(decoded.shape[1] - wav.shape[1]) < 0.01 * rate  # sample-aligned, no encoder delay
    noise = (decoded[:, :n] - wav[:, :n]).pow(2).sum()
    assert 10 * torch.log10(wav[:, :n].pow(2).sum() / noise) > 20  # 320 kbit/s


def test_writer_is_atomic_and_validates(trumpet, tmp_path):
    wav, rate = load_audio(trumpet)
    target = tmp_path / "stem.wav"
    with pytest.raises(KeyboardInterrupt):
        with AudioWriter(target, rate, 2) as writer:
            writer.write(wav[:, :1000])
            raise KeyboardInterrupt  # Ctrl-C halfway
    assert list(tmp_path.iterdir()) == []
    with AudioWriter(target, rate, 2) as writer:
        with pytest.raises(ValueError, match=r"stem.wav: expected a block \(2, n\)"):
            writer.write(wav[:1])
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        writer.write(wav)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(AudioWriteError, match="cannot write"):
        with AudioWriter(blocker / "stem.wav", rate, 2):
            pass
    with pytest.raises(UnsupportedAudioError, match="FLAC cannot store 32-bit float"):
        AudioWriter(tmp_path / "x.flac", rate, 2, bits=32)
    with pytest.raises(UnsupportedAudioError, match="cannot write .ogg"):
        AudioWriter(tmp_path / "x.ogg", rate, 2)
