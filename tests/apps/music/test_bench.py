"""``hybrids music bench``: both implementations really run (tiny preset, 3 s of a real track), the
table and the JSON carry finite times, ratios and parity; bad arguments exit 2 with one line."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from hybrids.apps.cli import main

TRACK = "kevin_macleod-vibe_ace.ogg"


def test_bench_runs_demucs_and_ours_and_writes_json(shared_data, tmp_path, monkeypatch, capsys):
    pytest.importorskip("demucs")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the bench's work files stay in tmp_path
    output = tmp_path / "results" / "music.json"
    track = shared_data / "audio" / TRACK
    argv = ["music", "bench", "--preset", "tiny", "--track", str(track), "--seconds", "3", "--offset", "20"]
    assert main([*argv, "--threads", "1", "-o", str(output)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["impl", "precision", "time"]
    assert [line.split()[:2] for line in table.splitlines()[1:4]] == [
        ["demucs", "fp32"],
        ["hybrids", "fp32"],
        ["hybrids", "bf16"],
    ]

    result = json.loads(output.read_text())
    assert not list(output.parent.glob(".*part*"))  # written atomically: no leftovers
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("hybrids-music-bench-")]
    demucs_row, fp32, bf16 = result["rows"]
    assert (demucs_row["impl"], demucs_row["version"]) == ("demucs", "4.1.0")
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["audio_s"] == 3.0 and row["threads"] == 1 and row["track"] == TRACK
        assert math.isfinite(row["time_s"]) and row["time_s"] > 0
        assert math.isfinite(row["time_vs_demucs"]) and row["time_vs_demucs"] > 0
        assert math.isfinite(row["realtime_x"]) and row["realtime_x"] > 0
        if os.path.exists("/proc/self/clear_refs"):
            assert row["peak_mib"] is not None and row["peak_mib"] >= 0
    assert demucs_row["time_vs_demucs"] == 1.0
    sources = ["drums", "bass", "other", "vocals"]
    # same weights, same audio, same shift: ours matches demucs to float32 rounding
    assert list(fp32["max_abs_diff_rel"]) == sources
    assert all(v < 1e-5 for v in fp32["max_abs_diff_rel"].values()), fp32["max_abs_diff_rel"]
    assert "snr_db" not in fp32
    # bf16: close to our fp32, not equal
    assert list(bf16["snr_db"]) == sources
    assert all(20 < v < math.inf for v in bf16["snr_db"].values()), bf16["snr_db"]
    assert all(1e-5 < v < 0.1 for v in bf16["max_abs_diff_rel"].values())
    assert result["settings"]["preset"] == "tiny" and result["machine"]["torch"] == torch.__version__


def test_bench_bad_arguments_exit_2_with_one_line(shared_data, tmp_path, capsys):
    track = str(shared_data / "audio" / TRACK)
    evil = tmp_path / "evil.th"
    torch.save({"payload": print}, evil)  # any global outside the allow-list
    cases = [
        (["--track", str(tmp_path / "missing.ogg")], "missing.ogg: no such audio file"),
        (["--track", track, "--seconds", "0"], "seconds must be > 0"),
        (["--track", track, "--repeats", "0"], "repeats must be >= 1"),
        (["--track", track, "--offset", "100"], "offset 100.0 s is past its end"),
        (["--track", track, "--weights", str(tmp_path / "none.th")], "none.th: no such weights file"),
        (["--track", track, "--weights", str(evil)], "evil.th: refused to unpickle"),
        (["--track", track, "--weights", str(evil), "--preset", "tiny"], "--preset is for random weights"),
    ]
    for extra, message in cases:
        assert main(["music", "bench", *extra, "-o", str(tmp_path / "r.json")]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)
    assert not (tmp_path / "r.json").exists()


def test_whole_process_bench_times_both_commands(shared_data, tmp_path, monkeypatch, capsys):
    """``--whole-process``: our ``separate`` script and the demucs CLI really run, each in its own
    process, on one checkpoint and excerpt; medians, CPU, peak memory, ratios and parity come back."""
    pytest.importorskip("demucs")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    output = tmp_path / "whole.json"
    track = shared_data / "audio" / TRACK
    argv = ["music", "bench", "--whole-process", "--preset", "tiny", "--track", str(track)]
    argv += ["--seconds", "3", "--offset", "20", "--runs", "1", "--precision", "fp32", "--shifts", "0"]
    assert main([*argv, "-o", str(output)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:4] == ["impl", "precision", "wall", "s"]
    assert [line.split()[:2] for line in table.splitlines()[1:3]] == [["demucs", "fp32"], ["hybrids", "fp32"]]
    result = json.loads(output.read_text())
    assert result["benchmark"] == "music-whole-process"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("hybrids-music-bench-")]
    demucs_row, ours = result["rows"]
    python = Path(sys.executable).name  # the console scripts' fallback
    assert demucs_row["command"][0] in ("demucs", python) and ours["command"][0] in ("separate", python)
    for row in result["rows"]:
        assert "error" not in row, row
        assert len(row["runs"]) == 1 and row["audio_s"] == 3.0
        assert {"--repo", "-n", "--shifts", "--overlap"} <= set(row["command"])
        assert row["command"][row["command"].index("--shifts") + 1] == "0"
        assert math.isfinite(row["wall_s"]) and row["wall_s"] > 0
        if hasattr(os, "wait4"):
            assert row["cpu_s"] > 0 and row["peak_mib"] > 100  # torch alone is more than that
    assert "--precision" in ours["command"] and "--precision" not in demucs_row["command"]
    assert demucs_row["wall_vs_demucs"] == 1.0
    assert ours["wall_vs_demucs"] == ours["wall_s"] / demucs_row["wall_s"]
    # the same checkpoint and audio on both sides: the written 16-bit stems agree to a few steps
    assert list(ours["max_abs_diff_rel"]) == ["drums", "bass", "other", "vocals"]
    assert all(v < 1e-2 for v in ours["max_abs_diff_rel"].values()), ours["max_abs_diff_rel"]


def test_run_measured_reports_cpu_peak_memory_and_failures(tmp_path):
    from hybrids.apps.music.bench import run_measured

    busy = "import time\nx = bytearray(300 << 20)\nt = time.process_time()\n"
    busy += "while time.process_time() - t < 0.3: pass"
    # A large parent (pytest in the full suite is over 1 GB): Linux's ru_maxrss of the child would
    # include it; the peak must be the child's own.
    ballast = bytearray(1100 << 20)
    ballast[:: 1 << 12] = b"\1" * len(range(0, len(ballast), 1 << 12))
    result = run_measured([sys.executable, "-c", busy], log=tmp_path / "log")
    del ballast
    assert result["wall_s"] >= 0.3
    if hasattr(os, "wait4"):  # this child's own figures, not a running total over all children
        assert result["cpu_s"] >= 0.3 and 300 <= result["peak_mib"] < 1000
    failing = [sys.executable, "-c", "print('first'); raise SystemExit('the reason')"]
    assert run_measured(failing, log=tmp_path / "l2") == {"error": "exit 1: the reason"}
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    assert run_measured(slow, log=tmp_path / "l3", timeout_s=0.5) == {"error": "timed out after 0.5 s"}


def test_whole_process_bench_bad_arguments_exit_2_with_one_line(shared_data, tmp_path, capsys):
    track = str(shared_data / "audio" / TRACK)
    cases = [
        (["--whole-process", "--runs", "0"], "--runs must be >= 1"),
        (["--whole-process", "--repeats", "2"], "--repeats is an option of the in-process bench"),
        (["--whole-process", "--threads", "1"], "--threads is an option of the in-process bench"),
        (["--whole-process", "--segment", "0"], "--segment must be > 0"),
        (["--runs", "2"], "--runs is an option of --whole-process"),
        (["--no-warmup"], "--no-warmup is an option of --whole-process"),
        (["--whole-process", "--track", str(tmp_path / "missing.ogg")], "missing.ogg: no such audio file"),
    ]
    for extra, message in cases:
        argv = ["music", "bench", "--track", track, *extra, "-o", str(tmp_path / "r.json")]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (extra, err)
    assert not (tmp_path / "r.json").exists()
