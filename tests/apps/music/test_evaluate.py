"""``hybrids music evaluate`` end to end on a MUSDB18-HQ-layout folder built from the real
recordings, with the tiny HT Demucs: museval JSON per track (read back by museval), tables and
plots, resuming without re-separating, and one-line errors naming the track."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hybrids.apps.cli import main
from hybrids.datasets.audio import load_audio, save_audio

SOURCES = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("hybrids.apps.music.models")
    from hybrids.apps.core.checkpoint import save_checkpoint
    from hybrids.apps.core.registry import create_model

    torch.manual_seed(0)
    return save_checkpoint(
        create_model("music/htdemucs", preset="tiny"), tmp_path_factory.mktemp("m") / "tiny"
    )


def _build_musdb(root, shared_data, seconds=3.0):
    """test/<track>/{drums,bass,other,vocals,mixture}.wav: excerpts of the real songs as stems."""
    audio = shared_data / "audio"
    song, rate = load_audio(audio / "karissa_hobbs-lets_go_fishin.ogg")
    jazz, _ = load_audio(audio / "kevin_macleod-vibe_ace.ogg")
    n = int(seconds * rate)
    for index, name in enumerate(("Artist A - Song", "Artist B - Tune")):
        at = int((10 + 20 * index) * rate)
        stems = {
            "drums": jazz[:, at : at + n] * 0.5,
            "bass": song[:, at + 5 * rate : at + 5 * rate + n] * 0.3,
            "other": jazz[:, at + 9 * rate : at + 9 * rate + n] * 0.4,
            "vocals": song[:, at + 2 * rate : at + 2 * rate + n] * 0.5,
        }
        folder = root / "test" / name
        for stem, wav in stems.items():
            save_audio(wav, folder / f"{stem}.wav", rate, bits=32, clip="none")
        save_audio(sum(stems.values()), folder / "mixture.wav", rate, bits=32, clip="none")
    (root / "train").mkdir()
    return root


def test_evaluate_writes_scores_tables_and_plots_and_resumes(
    checkpoint, shared_data, tmp_path, capsys, monkeypatch
):
    root = _build_musdb(tmp_path / "musdb18hq", shared_data)
    out = tmp_path / "report"
    assert (
        main(
            [
                "-q",
                "music",
                "evaluate",
                "--musdb",
                str(root),
                "-n",
                str(checkpoint),
                "-o",
                str(out),
                "-j",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| Method | All | Drums | Bass | Other | Vocals |" in printed and "| tiny |" in printed
    for name in ("Artist A - Song", "Artist B - Tune"):
        museval_file = out / "museval" / "test" / f"{name}.json"
        data = json.loads(museval_file.read_text())
        assert [t["name"] for t in data["targets"]] == list(SOURCES)
        assert len(data["targets"][0]["frames"]) == 3  # 3 s, 1 s frames
        usdr = json.loads((out / "usdr" / "test" / f"{name}.json").read_text())
        assert sorted(usdr) == sorted(SOURCES) and all(math.isfinite(v) for v in usdr.values())
    museval = pytest.importorskip("museval")
    frame = museval.aggregate.json2df(
        json.loads((out / "museval" / "test" / "Artist A - Song.json").read_text()), "A"
    )
    assert set(frame["target"]) == set(SOURCES) and set(frame["metric"]) == {"SDR", "SIR", "SAR", "ISR"}
    for name in ("tracks.csv", "tracks.md", "summary.csv", "summary.md", "boxplot_SDR.png"):
        assert (out / name).is_file()

    # Resume: scored tracks are not separated again; a removed score is recomputed alone.
    from hybrids.apps.music.separate import Separator

    calls = []
    real = Separator.separate_tensor

    def counting(self, wav, rate=None, *, desc=None):
        calls.append(desc)
        return real(self, wav, rate, desc=desc)

    monkeypatch.setattr(Separator, "separate_tensor", counting)
    summary_before = (out / "summary.csv").read_text()
    assert main(["-q", "music", "evaluate", "--musdb", str(root), "-n", str(checkpoint), "-o", str(out)]) == 0
    assert calls == [] and (out / "summary.csv").read_text() == summary_before
    (out / "museval" / "test" / "Artist B - Tune.json").unlink()
    # from Python with a typed config (no argparse); Lightning's precision names work too
    from hybrids.apps.music.evaluate import EvaluateConfig, evaluate

    config = EvaluateConfig(musdb=root, name=str(checkpoint), out=out, precision="32-true", plots=False)
    assert config.precision == "fp32"
    result = evaluate(config)
    assert calls == ["Artist B - Tune"] and (out / "summary.csv").read_text() == summary_before
    assert result.out == out and result.summary["tracks"] == 2
    assert main(["-q", "music", "evaluate", "--musdb", str(root), "-n", str(checkpoint), "-o", str(out),
                 "--precision", "bf16-mixed", "--tracks", "Artist A - Song"]) == 0  # fmt: skip
    assert calls == ["Artist B - Tune"]  # already scored: nothing separated


def test_evaluate_bad_folders_name_the_track(checkpoint, shared_data, tmp_path, capsys):
    root = _build_musdb(tmp_path / "musdb", shared_data, seconds=1.0)
    (root / "test" / "Artist B - Tune" / "bass.wav").unlink()
    argv = ["-q", "music", "evaluate", "--musdb", str(root), "-n", str(checkpoint), "-o", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Artist B - Tune" in err and "bass" in err
    track = root / "test" / "Artist B - Tune"
    (track / "bass.wav").write_bytes((track / "drums.wav").read_bytes())
    assert main([*argv, "--tracks", "Nobody - Nothing"]) == 2
    assert "Nobody - Nothing" in capsys.readouterr().err
    assert main(["-q", "music", "evaluate", "--musdb", str(tmp_path / "missing"), "-n", str(checkpoint)]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    assert main([*argv, "--precision", "16-mixed"]) == 2
    assert "16-mixed" in capsys.readouterr().err
