"""Audio I/O on the project's real recordings: reading, resampling, channels, writing (wav, flac,
mp3), atomicity, and one-line errors for missing, empty and non-audio files."""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch

from hybrids.datasets.audio import (
    AudioError,
    AudioWriteError,
    EmptyAudioError,
    MissingAudioError,
    NotAudioError,
    UnsupportedAudioError,
    audio_info,
    convert_channels,
    load_audio,
    resample,
    save_audio,
)

# name -> duration in seconds, from ../shared/data/README.md
SONGS = {
    "karissa_hobbs-lets_go_fishin.ogg": 133.0,
    "kevin_macleod-vibe_ace.ogg": 61.5,
    "sorohanro-solo_trumpet_06.ogg": 5.3,
}
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


@pytest.fixture(scope="module")
def excerpt(shared_data):
    """3 s of a real song (vocals, 44.1 kHz stereo), read once."""
    wav, rate = load_audio(
        shared_data / "audio" / "karissa_hobbs-lets_go_fishin.ogg", offset=40.0, duration=3.0
    )
    return wav, rate


def _snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    noise = (reference - estimate).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


# -- reading ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SONGS))
def test_load_real_ogg(shared_data, name):
    path = shared_data / "audio" / name
    wav, rate = load_audio(path)
    assert rate == 44100 and wav.dtype == torch.float32 and wav.shape[0] == 2
    assert abs(wav.shape[1] / rate - SONGS[name]) < 0.1
    assert torch.isfinite(wav).all() and 0.05 < float(wav.abs().max()) <= 1.0
    assert audio_info(path) == (wav.shape[1], 44100, 2)
    assert abs(audio_info(path).duration - SONGS[name]) < 0.1


def test_excerpt_is_the_same_samples_as_a_slice(shared_data):
    path = shared_data / "audio" / "sorohanro-solo_trumpet_06.ogg"
    full, _ = load_audio(path)
    part, rate = load_audio(path, offset=1.0, duration=2.0)
    assert part.shape == (2, 2 * rate)
    torch.testing.assert_close(part, full[:, rate : 3 * rate], rtol=0, atol=0)


def test_resample_sine_is_exact_and_round_trip_is_transparent(excerpt):
    t = torch.arange(44100 * 2, dtype=torch.float64) / 44100  # float64 phase, then float32 samples
    sine = torch.sin(2 * math.pi * 1000 * t).float()[None].repeat(2, 1)
    down = resample(sine, 44100, 16000)
    expected = torch.sin(2 * math.pi * 1000 * torch.arange(32000, dtype=torch.float64) / 16000).float()
    # soxr VHQ: away from the edges the 1 kHz tone is reproduced to better than -90 dB
    assert down.shape == (2, 32000)
    assert float((down[:, 1000:-1000] - expected[1000:-1000]).abs().max()) < 3e-5
    wav, rate = excerpt
    there = resample(wav, rate, 48000)
    back = resample(there, 48000, rate)
    assert there.shape[1] == round(wav.shape[1] * 48000 / rate) and back.shape == wav.shape
    assert _snr_db(wav[:, 2000:-2000], back[:, 2000:-2000]) > 60  # upsampling loses nothing


def test_load_resamples_to_the_requested_rate(shared_data):
    path = shared_data / "audio" / "sorohanro-solo_trumpet_06.ogg"
    native, _ = load_audio(path, duration=2.0)
    wav, rate = load_audio(path, samplerate=22050, duration=2.0)
    assert rate == 22050 and wav.shape == (2, 44100)
    torch.testing.assert_close(wav, resample(native, 44100, 22050))


def test_channel_conversion_follows_demucs(tmp_path, excerpt):
    wav, rate = excerpt
    mono_file = save_audio(wav[:1], tmp_path / "mono.wav", rate, bits=32, clip="none")
    stereo, _ = load_audio(mono_file, channels=2)
    assert stereo.shape == (2, wav.shape[1]) and torch.equal(stereo[0], stereo[1])
    torch.testing.assert_close(stereo[0], wav[0], rtol=0, atol=0)
    down, _ = load_audio(mono_file, channels=1)
    assert down.shape == (1, wav.shape[1])
    torch.testing.assert_close(convert_channels(wav, 1), wav.mean(0, keepdim=True))
    four = torch.cat([wav, -wav])
    assert torch.equal(convert_channels(four, 2), wav)  # demucs keeps the first channels
    four_file = save_audio(four, tmp_path / "four.wav", rate, bits=32, clip="none")
    assert torch.equal(load_audio(four_file, channels=2)[0], wav)
    with pytest.raises(UnsupportedAudioError, match="stereo.wav: has 2 channels; cannot make 3"):
        load_audio(save_audio(wav, tmp_path / "stereo.wav", rate), channels=3)


@needs_ffmpeg
def test_formats_soundfile_cannot_read_go_through_ffmpeg(tmp_path, excerpt):
    wav, rate = excerpt
    source = save_audio(wav, tmp_path / "in.wav", rate, bits=32, clip="none")
    m4a = tmp_path / "song.m4a"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(source), "-c:a", "aac", "-b:a", "192k", str(m4a)], check=True
    )
    decoded, got_rate = load_audio(m4a)
    assert got_rate == rate and decoded.shape[0] == 2
    assert abs(decoded.shape[1] - wav.shape[1]) < 2048  # container priming/padding
    info = audio_info(m4a)
    assert (info.samplerate, info.channels) == (rate, 2) and abs(info.frames - wav.shape[1]) < 2048
    part, _ = load_audio(m4a, offset=1.0, duration=1.0, samplerate=22050)
    assert part.shape == (2, 22050)


# -- writing ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bits", "subtype", "tolerance"),
    [(16, "PCM_16", 1.5 / 2**15), (24, "PCM_24", 1.5 / 2**23), (32, "FLOAT", 0.0)],
)
def test_wav_round_trip(tmp_path, excerpt, bits, subtype, tolerance):
    wav, rate = excerpt
    path = save_audio(wav, tmp_path / "out.wav", rate, bits=bits, clip="none")
    info = soundfile.info(str(path))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", subtype, rate, 2)
    back, back_rate = load_audio(path)
    assert back_rate == rate and back.shape == wav.shape
    assert float((back - wav).abs().max()) <= tolerance
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temporary file left


@pytest.mark.parametrize(("bits", "subtype"), [(16, "PCM_16"), (24, "PCM_24")])
def test_flac_round_trip(tmp_path, excerpt, bits, subtype):
    wav, rate = excerpt
    path = save_audio(wav, tmp_path / "out.flac", rate, bits=bits, clip="none")
    assert soundfile.info(str(path)).subtype == subtype
    back, _ = load_audio(path)
    assert float((back - wav).abs().max()) <= 1.5 / 2 ** (bits - 1)
    with pytest.raises(UnsupportedAudioError, match="FLAC cannot store 32-bit float"):
        save_audio(wav, tmp_path / "float.flac", rate, bits=32)


@needs_ffmpeg
def test_mp3_with_ffmpeg_is_sample_aligned_at_the_requested_bitrate(tmp_path, excerpt):
    wav, rate = excerpt
    seconds = wav.shape[1] / rate
    sizes = {}
    for kbps in (320, 128):
        path = save_audio(
            wav, tmp_path / f"out{kbps}.mp3", rate, mp3_bitrate=kbps, clip="none", mp3_encoder="ffmpeg"
        )
        sizes[kbps] = path.stat().st_size
        assert abs(sizes[kbps] - kbps * 1000 / 8 * seconds) < 0.1 * kbps * 1000 / 8 * seconds
        back, back_rate = load_audio(path)
        assert back_rate == rate and back.shape == wav.shape  # the LAME header removes the encoder delay
        assert _snr_db(wav, back) > (30 if kbps == 320 else 20)
    assert sizes[128] < sizes[320] / 2


def test_mp3_with_lameenc(tmp_path, excerpt):
    pytest.importorskip("lameenc")
    wav, rate = excerpt
    path = save_audio(wav, tmp_path / "out.mp3", rate, mp3_bitrate=192, mp3_encoder="lameenc")
    info = audio_info(path)
    assert (info.samplerate, info.channels) == (rate, 2)
    assert wav.shape[1] <= info.frames < wav.shape[1] + 4096  # raw LAME output keeps its delay


def test_clip_modes(tmp_path, excerpt):
    wav, rate = excerpt
    loud = wav * (2.0 / float(wav.abs().max()))  # peak 2.0
    cases = {"rescale": 1 / 1.01, "clamp": 0.99, "none": 2.0}
    for mode, peak in cases.items():
        back, _ = load_audio(save_audio(loud, tmp_path / f"{mode}.wav", rate, bits=32, clip=mode))
        assert float(back.abs().max()) == pytest.approx(peak, rel=1e-6)
    quiet = wav * 0.5  # below the threshold: rescale leaves it alone
    back, _ = load_audio(save_audio(quiet, tmp_path / "quiet.wav", rate, bits=32))
    assert torch.equal(back, quiet)
    back, _ = load_audio(save_audio(loud, tmp_path / "int.wav", rate, bits=16, clip="none"))
    assert float(back.abs().max()) <= 1.0  # integers saturate instead of wrapping around


def test_wav_matches_demucs_save_audio(tmp_path, excerpt):
    demucs_audio = pytest.importorskip("demucs.audio")
    wav, rate = excerpt
    loud = wav * 1.7
    for bits, kwargs in ((16, {}), (24, {"bits_per_sample": 24})):
        for clip in ("rescale", "clamp"):
            ours = save_audio(loud, tmp_path / f"ours{bits}{clip}.wav", rate, bits=bits, clip=clip)
            theirs = tmp_path / f"demucs{bits}{clip}.wav"
            demucs_audio.save_audio(loud.clone(), str(theirs), rate, clip=clip, **kwargs)
            dtype = "int16" if bits == 16 else "int32"
            a, _ = soundfile.read(str(ours), dtype=dtype)
            b, _ = soundfile.read(str(theirs), dtype=dtype)
            step = 1 if bits == 16 else 256  # 24-bit samples sit on the top bits of int32
            # demucs truncates toward zero, we round: at most one step apart
            assert np.abs(a.astype(np.int64) - b.astype(np.int64)).max() <= step


def test_writes_are_atomic(tmp_path, excerpt, monkeypatch):
    import hybrids.datasets.audio as audio

    wav, rate = excerpt
    target = save_audio(wav, tmp_path / "stem.wav", rate)
    before = target.read_bytes()

    def broken(self, frames):
        self.handle.write(frames[:10].astype("<f4"))  # half a file on disk, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio._SoundfileSink, "write", broken)
    with pytest.raises(AudioWriteError, match=r"stem.wav: cannot write \(No space left on device\)"):
        save_audio(wav * 0.5, target, rate)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["stem.wav"]
    with pytest.raises(AudioWriteError):
        save_audio(wav * 0.5, tmp_path / "new.flac", rate)
    assert [p.name for p in tmp_path.iterdir()] == ["stem.wav"]


def test_write_errors(tmp_path, excerpt):
    wav, rate = excerpt
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(AudioWriteError, match="cannot write") as info:
        save_audio(wav, blocker / "out" / "x.wav", rate)
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(UnsupportedAudioError, match=r"x.ogg: cannot write .ogg; use .wav, .flac, .mp3"):
        save_audio(wav, tmp_path / "x.ogg", rate)
    with pytest.raises(UnsupportedAudioError, match="bits must be 16, 24 or 32"):
        save_audio(wav, tmp_path / "x.wav", rate, bits=8)
    with pytest.raises(ValueError, match="clip must be one of"):
        save_audio(wav, tmp_path / "x.wav", rate, clip="tanh")
    with pytest.raises(ValueError, match=r"expected audio of shape \(channels, samples\)"):
        save_audio(wav[0], tmp_path / "x.wav", rate)
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


# -- errors -------------------------------------------------------------------------------------
def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and isinstance(error.value, AudioError) and isinstance(error.value, ValueError)
    return text


def test_missing_file(tmp_path):
    for read in (load_audio, audio_info):
        with pytest.raises(MissingAudioError) as error:
            read(tmp_path / "missing.wav")
        assert _one_line(error) == f"{tmp_path / 'missing.wav'}: no such file"
    with pytest.raises(MissingAudioError) as error:
        load_audio(tmp_path)
    assert _one_line(error).endswith("is a folder, not an audio file")


def test_text_file_named_wav_is_not_audio(tmp_path):
    fake = tmp_path / "song.wav"
    fake.write_text("these are lyrics, not samples\n" * 20)
    for read in (load_audio, audio_info):
        with pytest.raises(NotAudioError) as error:
            read(fake)
        assert _one_line(error).startswith(f"{fake}: ")
        assert "not an audio file" in str(error.value) or "cannot decode" in str(error.value)


def test_empty_files(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyAudioError) as error:
        load_audio(empty)
    assert _one_line(error) == f"{empty}: file is empty (0 bytes)"
    no_samples = tmp_path / "zero.wav"
    soundfile.write(str(no_samples), np.zeros((0, 2), dtype="float32"), 44100)
    assert no_samples.stat().st_size > 0
    with pytest.raises(EmptyAudioError) as error:
        load_audio(no_samples)
    assert _one_line(error) == f"{no_samples}: contains no audio samples"
    assert audio_info(no_samples).frames == 0
