"""MUSDB18 / MUSDB18-HQ / stems-folder layouts built from the real recordings in shared/data/audio
(cut into pseudo-stems), in a temporary folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from hybrids.datasets.audio import load_audio
from hybrids.datasets.musdb import (
    SOURCES,
    STEM_STREAMS,
    VALIDATION_TRACKS,
    MusdbError,
    open_musdb,
    open_stems_folder,
)

RATE = 44100
SECONDS = 2.0
VALID_NAME = "Actions - One Minute Smile"  # an official validation track
TRAIN_NAMES = ("Song A", VALID_NAME, "Song B")
TEST_NAMES = ("Song C",)


@pytest.fixture(scope="module")
def recording(shared_data) -> torch.Tensor:
    """20 s of a real stereo song, (2, samples) at 44.1 kHz."""
    wav, rate = load_audio(shared_data / "audio" / "kevin_macleod-vibe_ace.ogg", duration=20.0)
    assert rate == RATE
    return wav


def pseudo_stems(recording: torch.Tensor, index: int, seconds: float = SECONDS) -> dict[str, torch.Tensor]:
    """Four consecutive cuts of the recording as drums/bass/other/vocals, plus their sum."""
    n = int(seconds * RATE)
    start = index * 4 * n // 3
    stems = {
        s: recording[:, start + k * n // 3 : start + k * n // 3 + n] * 0.5 for k, s in enumerate(SOURCES)
    }
    stems["mixture"] = sum(stems.values())
    return stems


def write_track(folder, stems, rate=RATE, skip=()):
    folder.mkdir(parents=True)
    for name, wav in stems.items():
        if name not in skip:
            soundfile.write(str(folder / f"{name}.wav"), wav.T.numpy(), rate, subtype="FLOAT")


def build_hq(root, recording):
    for subset, names in (("train", TRAIN_NAMES), ("test", TEST_NAMES)):
        for name in names:
            index = (TRAIN_NAMES + TEST_NAMES).index(name)
            write_track(root / subset / name, pseudo_stems(recording, index))
    return root


def mux_stem_mp4(path, stems, rates=None, streams=STEM_STREAMS):
    """A MUSDB18-style .stem.mp4: one AAC stream per name in ``streams``, in that order."""
    tmp = path.parent / (path.name + ".parts")
    tmp.mkdir()
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    for name in streams:
        rate = (rates or {}).get(name, RATE)
        soundfile.write(str(tmp / f"{name}.wav"), stems[name].T.numpy(), rate, subtype="FLOAT")
        command += ["-i", str(tmp / f"{name}.wav")]
    for k in range(len(streams)):
        command += ["-map", f"{k}:a"]
    command += ["-c:a", "aac", "-b:a", "256k", str(path)]
    subprocess.run(command, check=True, capture_output=True)
    shutil.rmtree(tmp)


needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="ffmpeg/ffprobe not installed"
)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_validation_list_is_musdbs():
    assert len(VALIDATION_TRACKS) == 14 and len(set(VALIDATION_TRACKS)) == 14
    musdb = pytest.importorskip("musdb")
    import yaml

    config = yaml.safe_load((Path(musdb.__file__).parent / "configs" / "mus.yaml").read_text())
    assert tuple(config["validation_tracks"]) == VALIDATION_TRACKS
    assert STEM_STREAMS == tuple(sorted(config["stem_ids"], key=config["stem_ids"].get))


def test_hq_layout_splits_and_loads(tmp_path, recording):
    root = build_hq(tmp_path / "musdb18hq", recording)
    train = open_musdb(root, "train")
    assert [t.name for t in train] == sorted(TRAIN_NAMES)
    assert {t.name: t.split for t in train} == {"Song A": "train", "Song B": "train", VALID_NAME: "valid"}
    assert [t.name for t in open_musdb(root, "train", split="train")] == ["Song A", "Song B"]
    assert [t.name for t in open_musdb(root, "train", split="valid")] == [VALID_NAME]
    (test,) = open_musdb(root, "test")
    assert test.name == "Song C" and test.split is None and test.subset == "test"
    track = open_musdb(root, "train", split="valid")[0]
    assert track.is_wav and track.samplerate == RATE and track.channels == 2
    assert track.frames == int(SECONDS * RATE) and track.duration == pytest.approx(SECONDS)

    audio = track.load()
    assert list(audio) == ["mixture", *SOURCES]
    expected = pseudo_stems(recording, TRAIN_NAMES.index(VALID_NAME))
    for name, wav in audio.items():
        assert wav.dtype == torch.float32 and wav.shape == (2, track.frames)
        assert torch.equal(wav, expected[name])
    with pytest.raises(MusdbError, match="only in the train subset"):
        open_musdb(root, "test", split="valid")


def test_excerpts_read_only_the_requested_samples(tmp_path, recording):
    track = open_musdb(build_hq(tmp_path / "hq", recording), "train")[0]
    full = track.load(["vocals", "mixture"])
    part = track.load(["vocals", "mixture"], offset=0.5, duration=0.25)
    assert list(part) == ["vocals", "mixture"]
    for name in part:
        assert torch.equal(part[name], full[name][:, 22050 : 22050 + 11025])
    frames = track.load_frames(["bass"], start=track.frames - 100, frames=1000)["bass"]
    assert frames.shape == (2, 100)  # cut at the end of the track
    assert track.load_frames(["bass"], start=track.frames + 5, frames=10)["bass"].shape == (2, 0)
    with pytest.raises(MusdbError, match="no stem 'guitar'"):
        track.load(["guitar"])


def test_stems_folder_sums_a_missing_mixture(tmp_path, recording):
    root = tmp_path / "stems"
    write_track(root / "b_track", pseudo_stems(recording, 0), skip=("mixture",))
    write_track(root / "a_track", pseudo_stems(recording, 1))
    (root / ".hidden").mkdir()
    tracks = open_stems_folder(root)
    assert [t.name for t in tracks] == ["a_track", "b_track"]
    assert tracks[0].has_mixture and not tracks[1].has_mixture
    audio = tracks[1].load(offset=0.1, duration=0.5)
    assert torch.allclose(audio["mixture"], sum(audio[s] for s in SOURCES), atol=1e-6)
    expected = pseudo_stems(recording, 0)["mixture"][:, 4410 : 4410 + 22050]
    assert torch.allclose(audio["mixture"], expected, atol=1e-6)
    # one track folder given directly, and other source names
    (single,) = open_stems_folder(root / "a_track")
    assert single.name == "a_track"
    (two,) = open_stems_folder(root / "a_track", sources=("drums", "vocals"))
    assert list(two.load()) == ["mixture", "drums", "vocals"]


def test_bad_inputs_raise_one_line_naming_the_track(tmp_path, recording):
    stems = pseudo_stems(recording, 0)
    missing = tmp_path / "missing"
    write_track(missing / "Broken Song", stems, skip=("bass",))
    with pytest.raises(MusdbError) as exc:
        open_stems_folder(missing)
    assert "'Broken Song'" in _one_line(exc) and "missing stem bass.wav" in str(exc.value)

    lengths = tmp_path / "lengths"
    write_track(lengths / "Short Drums", {**stems, "drums": stems["drums"][:, :-10]})
    with pytest.raises(MusdbError) as exc:
        open_stems_folder(lengths)
    assert "'Short Drums'" in _one_line(exc) and "mismatched lengths" in str(exc.value)
    assert "drums" in str(exc.value)

    rates = tmp_path / "rates" / "train"
    write_track(rates / "Odd Rate", stems, skip=("vocals",))
    soundfile.write(str(rates / "Odd Rate" / "vocals.wav"), stems["vocals"].T.numpy(), 48000)
    with pytest.raises(MusdbError) as exc:
        open_musdb(rates.parent, "train")
    assert "'Odd Rate'" in _one_line(exc) and "different sample rates" in str(exc.value)
    assert "48000" in str(exc.value)

    channels = tmp_path / "channels"
    write_track(channels / "Mono Bass", {**stems, "bass": stems["bass"][:1]})
    with pytest.raises(MusdbError, match="'Mono Bass'.*different channel counts"):
        open_stems_folder(channels)

    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(MusdbError, match="empty"):
        open_musdb(tmp_path / "empty", "train")
    with pytest.raises(MusdbError, match="empty"):
        open_stems_folder(tmp_path / "empty" / "train")
    with pytest.raises(MusdbError, match="no test/ sub-folder"):
        open_musdb(tmp_path / "empty", "test")
    with pytest.raises(MusdbError, match="no such folder"):
        open_stems_folder(tmp_path / "nowhere")
    assert issubclass(MusdbError, ValueError)


@needs_ffmpeg
def test_stem_mp4_layout(tmp_path, recording):
    root = tmp_path / "musdb18"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    references = {}
    for index, name in enumerate(("Song A", VALID_NAME)):
        references[name] = pseudo_stems(recording, index)
        mux_stem_mp4(root / "train" / f"{name}.stem.mp4", references[name])
    train = open_musdb(root, "train")
    assert [(t.name, t.split, t.is_wav) for t in train] == [
        (VALID_NAME, "valid", False),
        ("Song A", "train", False),
    ]
    assert [t.name for t in open_musdb(root, "train", split="train")] == ["Song A"]
    track = train[0]
    assert track.samplerate == RATE and track.channels == 2
    assert abs(track.frames - int(SECONDS * RATE)) <= 2048

    audio = track.load()
    assert list(audio) == ["mixture", *SOURCES]
    for name, wav in audio.items():
        assert wav.shape == (2, track.frames)
        ref = references[VALID_NAME][name]
        n = min(ref.shape[-1], wav.shape[-1])
        # the stream order is right: each decoded stream matches its own reference (lossy AAC,
        # which may delay the signal by a few samples) better than any other stem
        errors = {
            other: float(((wav[:, :n] - references[VALID_NAME][other][:, :n]) ** 2).mean())
            for other in ["mixture", *SOURCES]
        }
        assert min(errors, key=errors.get) == name
        snr = 10 * np.log10(float((ref[:, :n] ** 2).mean()) / errors[name])
        assert snr > 10, (name, snr)

    part = track.load(["drums", "vocals"], offset=0.5, duration=0.25)
    assert all(w.shape == (2, 11025) for w in part.values())
    for name, wav in part.items():
        full = audio[name][:, 22050 : 22050 + 11025]
        # AAC decoding after a seek is not bit-identical to a decode from the start (ffmpeg
        # re-synchronises the decoder), but the same samples are returned, within -40 dB
        error = float(((wav - full) ** 2).mean()) / float((full**2).mean())
        assert error < 1e-4, error

    with pytest.raises(MusdbError, match="only in the train subset"):
        open_musdb(root, "test", split="train")
    with pytest.raises(MusdbError, match="empty"):
        open_musdb(root, "test")


@needs_ffmpeg
def test_stem_mp4_bad_inputs(tmp_path, recording):
    stems = pseudo_stems(recording, 0)
    four = tmp_path / "four" / "train"
    four.mkdir(parents=True)
    mux_stem_mp4(four / "No Vocals.stem.mp4", stems, streams=STEM_STREAMS[:4])
    with pytest.raises(MusdbError) as exc:
        open_musdb(four.parent, "train")
    assert "'No Vocals'" in _one_line(exc) and "missing stem vocals" in str(exc.value)

    rate = tmp_path / "rate" / "train"
    rate.mkdir(parents=True)
    mux_stem_mp4(rate / "Odd Rate.stem.mp4", stems, rates={"bass": 22050})
    with pytest.raises(MusdbError) as exc:
        open_musdb(rate.parent, "train")
    assert "'Odd Rate'" in _one_line(exc) and "different sample rates" in str(exc.value)

    length = tmp_path / "length" / "train"
    length.mkdir(parents=True)
    mux_stem_mp4(length / "Long Mix.stem.mp4", {**stems, "other": stems["other"][:, : RATE // 2]})
    with pytest.raises(MusdbError, match="'Long Mix'.*mismatched lengths"):
        open_musdb(length.parent, "train")
