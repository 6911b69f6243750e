"""``hybrids music separate`` / ``separate`` end to end on real audio with the tiny HT Demucs
(random weights, saved as one of our checkpoints): every flag, folder input, the Python API
equivalence, and one-line exit-2 errors that leave no partial stems."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from hybrids.apps.cli import main
from hybrids.apps.music.cli import separate_main
from hybrids.apps.music.separate import Separator
from hybrids.datasets.audio import load_audio, prevent_clip, save_audio

SOURCES = ["drums", "bass", "other", "vocals"]
MODEL_DIR = "htdemucs_tiny"  # the checkpoint folder's name: the output sub-folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("hybrids.apps.music.models")
    from hybrids.apps.core.checkpoint import save_checkpoint
    from hybrids.apps.core.registry import create_model

    torch.manual_seed(0)
    model = create_model("music/htdemucs", preset="tiny")  # 1 s segment, 44.1 kHz, 4 sources
    return save_checkpoint(model, tmp_path_factory.mktemp("models") / MODEL_DIR)


@pytest.fixture(scope="module")
def tracks(shared_data, tmp_path_factory):
    """Short excerpts of the real songs: song.wav (3 s, vocals), jazz.flac (2 s), short.wav (0.8 s)."""
    audio = shared_data / "audio"
    folder = tmp_path_factory.mktemp("tracks")
    song, rate = load_audio(audio / "karissa_hobbs-lets_go_fishin.ogg", offset=40.0, duration=3.0)
    jazz, _ = load_audio(audio / "kevin_macleod-vibe_ace.ogg", offset=10.0, duration=2.0)
    return {
        "song": save_audio(song, folder / "song.wav", rate, bits=32, clip="none"),
        "jazz": save_audio(jazz, folder / "jazz.flac", rate, bits=24, clip="none"),
        "short": save_audio(song[:, : int(0.8 * rate)], folder / "short.wav", rate, bits=32, clip="none"),
    }


@pytest.fixture(scope="module")
def api_stems(checkpoint, tracks):
    """The Python API's stems of song.wav with the default options (what the CLI must write)."""
    return Separator(checkpoint).separate_file(tracks["song"])[0]


def run(*argv: object) -> int:
    return main(["music", "separate", *map(str, argv)])


def read(path: Path) -> torch.Tensor:
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert rate == 44100
    return torch.from_numpy(data.T.copy())


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- outputs ------------------------------------------------------------------------------------
def test_default_run_writes_the_apis_stems_as_16_bit_wav(checkpoint, tracks, api_stems, tmp_path, capsys):
    assert run("-n", checkpoint, "-o", tmp_path / "out", tracks["song"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err == f"hybrids: Stems of 1 track written to {(tmp_path / 'out' / MODEL_DIR).resolve()}\n"
    )
    folder = tmp_path / "out" / MODEL_DIR / "song"
    assert files_under(tmp_path / "out") == [folder / f"{s}.wav" for s in sorted(SOURCES)]
    for stem in SOURCES:
        info = soundfile.info(str(folder / f"{stem}.wav"))
        assert (info.subtype, info.samplerate, info.channels, info.frames) == ("PCM_16", 44100, 2, 3 * 44100)
        expected = prevent_clip(api_stems[stem], "rescale")
        assert float((read(folder / f"{stem}.wav") - expected).abs().max()) < 2 / 2**15


@pytest.mark.parametrize(
    ("flags", "suffix", "subtype"),
    [
        (["--int24"], "wav", "PCM_24"),
        (["--float32", "--clip-mode", "none"], "wav", "FLOAT"),
        (["--flac"], "flac", "PCM_16"),
        (["--flac", "--int24"], "flac", "PCM_24"),
        (["--mp3", "--mp3-bitrate", "128", "--mp3-preset", "7"], "mp3", None),
    ],
)
def test_output_formats(checkpoint, tracks, api_stems, tmp_path, flags, suffix, subtype):
    out = tmp_path / "out"
    assert run("-q", "-n", checkpoint, "-o", out, *flags, "--two-stems", "vocals", tracks["song"]) == 0
    path = out / MODEL_DIR / "song" / f"vocals.{suffix}"
    assert {p.name for p in files_under(out)} == {f"vocals.{suffix}", f"no_vocals.{suffix}"}
    decoded, rate = load_audio(path)
    assert rate == 44100 and decoded.shape == (2, 3 * 44100)
    if subtype is not None:
        assert soundfile.info(str(path)).subtype == subtype
    expected = api_stems["vocals"] if "none" in flags else prevent_clip(api_stems["vocals"], "rescale")
    error = float((decoded - expected).abs().max())
    if subtype == "FLOAT":  # the API's samples, written unclamped (a model's first run may round
        assert error < 1e-6  # differently from the next ones, ~1e-8, hence not exact equality)
    elif subtype is not None:
        assert error < 2 / 2 ** (15 if subtype == "PCM_16" else 23)
    else:  # mp3 at 128 kbit/s: size matches the bitrate, content is close
        assert abs(path.stat().st_size - 128_000 / 8 * 3) < 0.15 * 128_000 / 8 * 3
        noise = float((decoded - expected).pow(2).sum() / expected.pow(2).sum())
        assert noise < 0.05


def test_clip_mode_clamp(checkpoint, tracks, tmp_path):
    out = tmp_path / "out"
    loud = tmp_path / "loud.wav"
    wav, rate = load_audio(tracks["song"])
    save_audio(wav * 3, loud, rate, bits=32, clip="none")
    assert run("-q", "-n", checkpoint, "-o", out, "--float32", "--clip-mode", "clamp", loud) == 0
    peaks = [float(read(p).abs().max()) for p in files_under(out)]
    assert len(peaks) == 4 and max(peaks) <= 0.99 + 1e-7


def test_folder_input(checkpoint, tracks, tmp_path):
    folder = tmp_path / "album"
    folder.mkdir()
    for key in ("song", "jazz"):
        shutil.copy(tracks[key], folder / tracks[key].name)
    save_audio(load_audio(tracks["short"])[0], folder / "intro.mp3", 44100)  # decoded by ffmpeg
    (folder / "notes.txt").write_text("liner notes")
    shutil.copy(tracks["song"], folder / ".hidden.wav")
    out = tmp_path / "out"
    flags = ["-q", "-n", checkpoint, "-o", out, "--two-stems", "drums", "--other-method", "none"]
    assert run(*flags, folder) == 0
    assert [p.relative_to(out).as_posix() for p in files_under(out)] == [
        f"{MODEL_DIR}/intro/drums.wav",
        f"{MODEL_DIR}/jazz/drums.wav",
        f"{MODEL_DIR}/song/drums.wav",
    ]
    assert soundfile.info(str(out / MODEL_DIR / "jazz" / "drums.wav")).frames == 2 * 44100
    assert soundfile.info(str(out / MODEL_DIR / "intro" / "drums.wav")).frames == int(0.8 * 44100)


@pytest.mark.parametrize("method", ["add", "minus", "none"])
def test_two_stems(checkpoint, tracks, api_stems, tmp_path, method):
    out = tmp_path / "out"
    flags = ["--float32", "--clip-mode", "none", "--two-stems", "vocals", "--other-method", method]
    assert run("-q", "-n", checkpoint, "-o", out, *flags, tracks["song"]) == 0
    folder = out / MODEL_DIR / "song"
    complement = {"add": "no_vocals", "minus": "minus_vocals", "none": None}[method]  # demucs's names
    assert {p.stem for p in files_under(out)} == {"vocals"} | ({complement} if complement else set())
    torch.testing.assert_close(read(folder / "vocals.wav"), api_stems["vocals"], rtol=0, atol=1e-6)
    if method == "add":
        others = api_stems["drums"] + api_stems["bass"] + api_stems["other"]
        torch.testing.assert_close(read(folder / "no_vocals.wav"), others, rtol=0, atol=1e-6)
    elif method == "minus":
        mix, _ = load_audio(tracks["song"])
        torch.testing.assert_close(
            read(folder / "minus_vocals.wav"), mix - api_stems["vocals"], rtol=0, atol=1e-6
        )


def test_filename_template(checkpoint, tracks, tmp_path):
    out = tmp_path / "out"
    template = "{stem}-{track}.{trackext}.{ext}"
    assert run("-q", "-n", checkpoint, "-o", out, "--filename", template, "--flac", tracks["jazz"]) == 0
    assert [p.name for p in files_under(out / MODEL_DIR)] == sorted(f"{s}-jazz.flac.flac" for s in SOURCES)


@pytest.mark.parametrize(
    ("flags", "options", "track"),
    [
        (["--shifts", "2", "--seed", "3"], {"shifts": 2, "seed": 3}, "song"),
        (
            ["--shifts", "0", "--segment", "0.5", "--overlap", "0.5"],
            {"shifts": 0, "segment": 0.5, "overlap": 0.5},
            "song",
        ),
        (["--no-split", "--shifts", "0"], {"split": False, "shifts": 0}, "short"),
        (["-j", "2", "--batch-segments", "1", "-d", "cpu"], {"jobs": 2, "batch_segments": 1}, "song"),
        (["--precision", "bf16"], {"precision": "bf16"}, "song"),
    ],
)
def test_separation_flags_reach_the_engine(checkpoint, tracks, api_stems, tmp_path, flags, options, track):
    out = tmp_path / "out"
    assert (
        run("-q", "-n", checkpoint, "-o", out, "--float32", "--clip-mode", "none", *flags, tracks[track]) == 0
    )
    expected = Separator(checkpoint, **options).separate_file(tracks[track])[0]
    for stem in SOURCES:
        written = read(out / MODEL_DIR / tracks[track].stem / f"{stem}.wav")
        torch.testing.assert_close(written, expected[stem], rtol=0, atol=1e-6)
    if track == "song":
        default = api_stems["vocals"]
        if "precision" in options:  # bf16 forward: close to fp32, not equal
            assert 0 < float((expected["vocals"] - default).norm() / default.norm()) < 0.05
        elif "jobs" in options:  # parallelism and batching do not change the numbers beyond rounding
            torch.testing.assert_close(expected["vocals"], default, rtol=1e-5, atol=1e-6)
        else:
            assert not torch.allclose(expected["vocals"], default)


def test_verbosity_and_the_separate_entry_point(checkpoint, tracks, tmp_path, capsys):
    out = tmp_path / "out"
    assert separate_main(["-q", "-n", str(checkpoint), "-o", str(out), str(tracks["short"])]) == 0
    assert capsys.readouterr().err == ""
    assert len(files_under(out)) == 4
    assert separate_main(["-v", "-n", str(checkpoint), "-o", str(out), str(tracks["short"])]) == 0
    err = capsys.readouterr().err
    assert "Separating track" in err and "wrote" in err  # -v: debug lines too
    assert main(["-q", "music", "separate", "-n", str(checkpoint), "-o", str(out), str(tracks["short"])]) == 0
    assert capsys.readouterr().err == ""
    assert separate_main(["--help"]) == 0
    assert "--two-stems" in capsys.readouterr().out


def test_weights_and_repo_flags(checkpoint, tracks, tmp_path, capsys):
    from hybrids.apps.core.registry import get_model_entry
    from hybrids.apps.core.weights import get_weights

    out = tmp_path / "out"
    weights = checkpoint / "model.safetensors"
    assert run("-q", "--weights", weights, "-o", out, "--two-stems", "bass", tracks["short"]) == 0
    # named after the model used (the weights' folder), not the default -n music/htdemucs
    assert (out / MODEL_DIR / "short" / "bass.wav").is_file() and not (out / "htdemucs").exists()
    # --repo is searched for the official file: a wrong file there is rejected by its sha256
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / get_weights(get_model_entry("music/htdemucs").weights[0]).filename).write_bytes(
        b"not the weights"
    )
    capsys.readouterr()
    assert run("-n", "htdemucs", "--repo", repo, "-o", out, tracks["short"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256 mismatch" in err


# -- errors -------------------------------------------------------------------------------------
@pytest.fixture
def bad_inputs(tmp_path):
    lyrics = tmp_path / "lyrics.wav"
    lyrics.write_text("la la la\n" * 50)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    silent = tmp_path / "zero.wav"
    soundfile.write(str(silent), np.zeros((0, 2), dtype="float32"), 44100)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    return {"lyrics": lyrics, "empty": empty, "zero": silent, "blocker": blocker}


ERROR_CASES = {
    "missing file": (["{missing}"], "missing.wav: no such file"),
    "not audio": (["{lyrics}"], "lyrics.wav: not an audio file"),
    "empty file": (["{empty}"], "empty.wav: file is empty (0 bytes)"),
    "no samples": (["{zero}"], "zero.wav: contains no audio samples"),
    "unwritable output": (["-o", "{blocker}/out", "{song}"], "cannot create the output folder"),
    "unknown stem": (["--two-stems", "guitar", "{song}"], 'stem "guitar" is not a source of the model'),
    "bad template": (["--filename", "{track}/{instrument}.{ext}", "{song}"], "unknown field(s) {instrument}"),
    "template without stem": (["--filename", "{track}.{ext}", "{song}"], "--filename must contain {stem}"),
    "segment too long": (["--segment", "2", "{song}"], "longer than the 1 s the transformer model"),
    "no-split too long": (["--no-split", "{song}"], "song.wav: without splitting, 3.00 s of audio + "),
    "float flac": (["--float32", "--flac", "{song}"], "--float32 is for WAV output"),
    "bad overlap": (["--overlap", "1", "{song}"], "--overlap must be in [0, 1)"),
    "negative shifts": (["--shifts", "-1", "{song}"], "--shifts must be >= 0"),
    "checkpoint and weights": (
        ["--weights", "x.safetensors", "{song}"],
        "a checkpoint carries its own weights",
    ),
    "no cuda": (["-d", "cuda", "{song}"], "CUDA is not available"),
    "missing checkpoint": (["-n", "{tmp}/runs/exp1/best", "{song}"], "best: no such checkpoint"),
    "empty folder": (["{tmp}/empty_folder"], "empty_folder: folder has no audio files"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_input_errors_exit_2_with_one_line_and_no_stems(
    checkpoint, tracks, bad_inputs, tmp_path, capsys, case
):
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    argv, message = ERROR_CASES[case]
    (tmp_path / "empty_folder").mkdir()
    names = {**bad_inputs, "missing": tmp_path / "missing.wav", "song": tracks["song"], "tmp": tmp_path}
    for key, value in names.items():
        argv = [arg.replace("{" + key + "}", str(value)) for arg in argv]
    if "-o" not in argv:
        argv = ["-o", str(tmp_path / "out"), *argv]
    assert run("-n", checkpoint, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hybrids: error: ") and err.count("\n") == 1, err
    assert message in err
    assert files_under(tmp_path / "out") == []


def test_default_model_without_weights_offline_is_one_line(tracks, tmp_path, capsys):
    pytest.importorskip("hybrids.apps.music.models")
    assert run("-o", tmp_path / "out", tracks["short"]) == 2  # -n htdemucs, weights not in the cache
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "htdemucs" in err and "--weights" in err
    assert files_under(tmp_path / "out") == []


def test_a_failing_track_does_not_stop_the_batch(checkpoint, tracks, bad_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "missing.wav"
    inputs = [tracks["short"], missing, bad_inputs["lyrics"], tracks["jazz"]]
    assert run("-q", "-n", checkpoint, "-o", out, "--two-stems", "vocals", *inputs) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    assert lines[0] == f"hybrids: {missing}: no such file"
    assert lines[1].startswith(f"hybrids: {bad_inputs['lyrics']}: not an audio file")
    assert lines[2] == "hybrids: error: 2 of 4 inputs failed (see the messages above)"
    assert {p.parent.name for p in files_under(out)} == {"short", "jazz"}


def test_a_track_failing_midway_leaves_none_of_its_stems(checkpoint, tracks, tmp_path, capsys, monkeypatch):
    import hybrids.datasets.audio as audio

    real_write = audio.AudioWriter.write
    calls = []

    def flaky_write(self, block):  # jazz's third stem: the disk fills up
        calls.append(self.path)
        if self.path.parent.name == "jazz" and self.path.stem == "other":
            raise audio.AudioWriteError(f"{self.path}: cannot write (No space left on device)")
        return real_write(self, block)

    monkeypatch.setattr(audio.AudioWriter, "write", flaky_write)
    out = tmp_path / "out"
    assert run("-q", "-n", checkpoint, "-o", out, tracks["short"], tracks["jazz"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "No space left on device" in lines[0] and "1 of 2 inputs failed" in lines[1]
    assert {p.parent.name for p in files_under(out)} == {"short"}  # jazz's first two stems were removed
    assert len(files_under(out)) == 4
    capsys.readouterr()
    calls.clear()
    assert run("-n", checkpoint, "-o", out, tracks["jazz"]) == 2  # a single track: one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hybrids: error: ") and "No space left" in err


def test_tracks_with_the_same_name_do_not_overwrite_each_other(checkpoint, tracks, tmp_path, capsys):
    twin = save_audio(load_audio(tracks["short"])[0], tmp_path / "short.flac", 44100)
    out = tmp_path / "out"
    flags = ["-q", "-n", checkpoint, "-o", out, "--two-stems", "bass", "--other-method", "none"]
    assert run(*flags, tracks["short"], twin) == 2
    assert "would overwrite those of" in capsys.readouterr().err
    assert [p.parent.name for p in files_under(out)] == ["short"]
    assert run(*flags, "--filename", "{track}_{trackext}/{stem}.{ext}", tracks["short"], twin) == 0
    assert {p.parent.name for p in files_under(out / MODEL_DIR)} == {"short", "short_wav", "short_flac"}


def test_console_scripts(tmp_path):
    script = Path(sys.executable).parent / "hybrids"
    if not script.exists():
        pytest.skip("console script not installed")
    result = subprocess.run([str(script), "music", "separate", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--two-stems" in result.stdout
    separate = Path(sys.executable).parent / "separate"
    if separate.exists():
        result = subprocess.run(
            [str(separate), str(tmp_path / "missing.wav")], capture_output=True, text=True, cwd=tmp_path
        )
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no such file" in result.stderr


# -- demucs's conventions (issue 16) ---------------------------------------------------------------
def test_list_models_needs_no_track_and_imports_no_torch(tmp_path):
    """``separate --list-models`` (demucs has it) lists without a track, fast: measured as the
    child's CPU time (load on the machine does not inflate it) with torch never imported."""
    import resource

    probe = (
        "import sys; from hybrids.apps.music.cli import separate_main; code = separate_main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-c", probe, "--list-models"], capture_output=True, text=True, timeout=60
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.0, f"--list-models took {cpu:.2f} s of CPU"
    lines = done.stdout.splitlines()
    assert lines[0] == "Bag of models:" and "Single models:" in lines
    bags = lines[1 : lines.index("Single models:")]
    assert [line.split()[0] for line in bags] == ["htdemucs_ft"]
    singles = [line.split()[0] for line in lines[lines.index("Single models:") + 1 :] if line.startswith(" ")]
    assert {"htdemucs", "htdemucs_6s"} <= set(singles)
    # of a demucs repository: its bags (.yaml) and its models' signatures (.th)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "mybag.yaml").write_text("models: [1234abcd]\n")
    (repo / "1234abcd-0badcafe.th").write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-c", probe, "--list-models", "--repo", str(repo)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Bag", "of", "models:", "mybag", "Single", "models:", "1234abcd"]


def test_help_names_the_command_separate_and_a_missing_track_is_one_line(capsys):
    assert separate_main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: separate ")
    assert separate_main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no TRACK_OR_DIR given" in err
    assert separate_main(["-n", "htdemucs", "-s", "955717e8", "x.wav"]) == 2  # one model or the other
    assert "not allowed with argument" in capsys.readouterr().err
    assert separate_main(["--list-mod", "x.wav"]) == 2  # no prefix abbreviations


def test_sig_selects_a_model_by_signature_and_names_the_output_after_it(tracks, tmp_path, capsys):
    """``-s SIG`` (demucs's signature flag): ``SIG-*.th`` in ``--repo``; the stems go to
    ``OUT/SIG``. ``--weights FILE`` names the output after the file (a demucs package: its signature)."""
    from hybrids.apps.music.bench import random_demucs_package

    repo = tmp_path / "repo"
    repo.mkdir()
    package = random_demucs_package(repo, "tiny", seed=3)
    signature = package.name.split("-", 1)[0]
    out = tmp_path / "out"
    assert (
        separate_main(["-q", "-s", signature, "--repo", str(repo), "-o", str(out), str(tracks["short"])]) == 0
    )
    assert sorted(p.name for p in (out / signature / "short").iterdir()) == [
        f"{s}.wav" for s in sorted(SOURCES)
    ]
    by_sig = read(out / signature / "short" / "vocals.wav")
    copy = tmp_path / "my_finetune.th"
    shutil.copyfile(package, copy)
    assert separate_main(["-q", "--weights", str(copy), "-o", str(out), str(tracks["short"])]) == 0
    torch.testing.assert_close(read(out / "my_finetune" / "short" / "vocals.wav"), by_sig)
    assert (
        separate_main(
            ["-q", "--weights", str(package), "-o", str(out), "--two-stems", "bass", str(tracks["short"])]
        )
        == 0
    )
    assert (out / signature / "short" / "no_bass.wav").is_file()
    capsys.readouterr()
    assert separate_main(["-s", "deadbeef", "--repo", str(repo), "-o", str(out), str(tracks["short"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no deadbeef-*.th in" in err


def test_model_folder_names():
    from hybrids.apps.music.names import model_folder_name

    assert (
        model_folder_name("music/htdemucs") == "htdemucs"
        and model_folder_name("htdemucs_ft") == "htdemucs_ft"
    )
    assert model_folder_name("955717e8", repo="anywhere") == "955717e8"


def test_model_folder_names_of_files_and_folders(tmp_path):
    from hybrids.apps.music.names import model_folder_name

    for run in ("X", "Y"):  # two runs' best checkpoints no longer collide
        (tmp_path / "runs" / run / "best").mkdir(parents=True)
        (tmp_path / "runs" / run / "best" / "model.safetensors").write_bytes(b"")
    assert model_folder_name(tmp_path / "runs" / "X" / "best") == "X_best"
    assert model_folder_name(str(tmp_path / "runs" / "Y" / "best")) == "Y_best"
    assert model_folder_name(tmp_path / "runs" / "X") == "X"
    assert model_folder_name(tmp_path / "runs" / "X" / "best" / "model.safetensors") == "X_best"
    weights = tmp_path / "0d19c1c6-0f06f20e.th"
    weights.write_bytes(b"")
    assert model_folder_name("htdemucs", weights=weights) == "0d19c1c6"
    assert (
        model_folder_name("htdemucs", weights=tmp_path / "runs" / "Y" / "best" / "model.safetensors")
        == "Y_best"
    )
    assert model_folder_name("htdemucs", weights="official") == "htdemucs"


def _damaged_ogg(folder: Path, shared_data: Path) -> Path:
    """A real 5 s excerpt as Ogg Vorbis with 40 % of its bytes missing in the middle: the header and
    the last page (which states the length) are intact, the decoder stops early."""
    wav, rate = load_audio(shared_data / "audio" / "kevin_macleod-vibe_ace.ogg", offset=20.0, duration=5.0)
    whole = folder / "whole.ogg"
    soundfile.write(str(whole), wav.T.numpy(), rate, format="OGG", subtype="VORBIS")
    data = whole.read_bytes()
    damaged = folder / "damaged.ogg"
    damaged.write_bytes(data[: int(0.3 * len(data))] + data[int(0.7 * len(data)) :])
    return damaged


def test_a_damaged_ogg_is_separated_with_a_warning_naming_both_durations(
    checkpoint, shared_data, tmp_path, capsys
):
    """Issue 16, defect 4: the decoder stops before the length the header states. The audio decoded
    is separated (as demucs does) and one warning names the file and both durations."""
    from hybrids.datasets.audio import AudioReader, audio_info

    damaged = _damaged_ogg(tmp_path, shared_data)
    stated = audio_info(damaged)
    assert stated.frames / stated.samplerate == pytest.approx(5.0, abs=0.01)
    reader = AudioReader(damaged)
    decoded = sum(block.shape[-1] for block in reader)
    assert decoded == reader.decoded_frames < 0.8 * stated.frames
    out = tmp_path / "out"
    capsys.readouterr()
    assert run("-n", checkpoint, "-o", out, damaged) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "decoding stopped" in line]
    assert len(warnings) == 1, err
    assert str(damaged) in warnings[0] and f"{decoded / stated.samplerate:.2f} s" in warnings[0]
    assert "of the 5.00 s its header states" in warnings[0]
    assert read(out / MODEL_DIR / "damaged" / "drums.wav").shape[-1] == decoded
    # a complete file gives no warning
    assert run("-q", "-n", checkpoint, "-o", out, tmp_path / "whole.ogg") == 0
    assert "decoding stopped" not in capsys.readouterr().err


def test_precision_takes_lightnings_names_too():
    import argparse

    from hybrids.apps.music.cli import inference_precision

    assert [inference_precision(p) for p in ("fp32", "32-true", "bf16", "bf16-mixed")] == [
        "fp32",
        "fp32",
        "bf16",
        "bf16",
    ]
    with pytest.raises(argparse.ArgumentTypeError, match="16-mixed"):
        inference_precision("16-mixed")


def test_sig_resolves_in_the_repo_the_cache_or_the_official_models(tmp_path, monkeypatch):
    from hybrids.apps.core.errors import InputError
    from hybrids.apps.music.names import resolve_signature

    cache = tmp_path / "cache"
    monkeypatch.setenv("HYBRIDS_CACHE", str(cache))
    assert resolve_signature("955717e8", None) == ("music/htdemucs", None)  # official: htdemucs's file
    assert resolve_signature("5c90dfd2", None) == ("music/htdemucs_6s", None)
    cache.mkdir()
    (cache / "955717e8-8726e21a.th").write_bytes(b"")
    assert resolve_signature("955717e8", None) == ("955717e8", cache)  # found in the cache
    with pytest.raises(InputError, match="no f7e0c4bc-\\*.th in the weights cache"):
        resolve_signature("f7e0c4bc", None)  # one model of the htdemucs_ft bag: not a single model
    with pytest.raises(InputError, match="not a model signature"):
        resolve_signature("../x", None)
