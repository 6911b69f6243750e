"""Separation report tables and plots: the aggregation rules (median over frames, median over
tracks, mean over sources), the Table 1 layout, CSV/Markdown agreement and the PNG box plots."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from hybrids.evaluation.separation_report import track_rows, write_separation_report

METRICS = ("SDR", "ISR", "SIR", "SAR")


def _scores(seed=0):
    rng = np.random.default_rng(seed)
    scores = {}
    for t in range(5):
        scores[f"track {t}"] = {
            source: {m: list(rng.normal(5 + k, 2, size=30)) for m in METRICS}
            for k, source in enumerate(("vocals", "drums", "bass", "other"))
        }
    scores["track 0"]["vocals"]["SDR"][:10] = [math.nan] * 10  # silent frames
    scores["track 1"]["bass"]["SDR"] = [math.nan] * 30  # a silent source: left out of the median
    return scores


def test_summary_follows_the_sisec_rules(tmp_path):
    scores = _scores()
    usdrs = {t: {"vocals": 1.0 + i, "drums": 2.0, "bass": 3.0, "other": 4.0} for i, t in enumerate(scores)}
    written = write_separation_report(tmp_path, scores, usdrs, method="htdemucs", title="MUSDB18-HQ test")
    assert sorted(written) == sorted(
        ["tracks.csv", "tracks.md", "summary.csv", "summary.md"] + [f"boxplot_{m}.png" for m in METRICS]
    )
    for name in (f"boxplot_{m}.png" for m in METRICS):
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def median_of_medians(source, metric="SDR"):
        finite = [np.asarray(track[source][metric]) for track in scores.values()]
        medians = [np.median(v[np.isfinite(v)]) for v in finite if np.isfinite(v).any()]
        return float(np.median(medians))

    with open(written["summary.csv"]) as handle:
        rows = {(r["metric"], r["source"]): float(r["value"]) for r in csv.DictReader(handle)}
    sources = ["drums", "bass", "other", "vocals"]  # the paper's column order
    for source in sources:
        assert rows[("SDR", source)] == pytest.approx(median_of_medians(source))
        assert rows[("SIR", source)] == pytest.approx(median_of_medians(source, "SIR"))
    assert rows[("SDR", "All")] == pytest.approx(np.mean([median_of_medians(s) for s in sources]))
    assert rows[("uSDR", "vocals")] == pytest.approx(3.0)  # mean over tracks
    summary = written["summary.md"].read_text()
    assert "| Method | All | Drums | Bass | Other | Vocals |" in summary
    assert f"| htdemucs | {rows[('SDR', 'All')]:.2f} | {rows[('SDR', 'drums')]:.2f} |" in summary
    assert summary.startswith("# MUSDB18-HQ test")


def test_track_rows_and_markdown_agree(tmp_path):
    scores = _scores(1)
    rows = track_rows(scores, sources=["drums", "bass", "other", "vocals"])
    assert [r["source"] for r in rows[:4]] == ["drums", "bass", "other", "vocals"]
    assert math.isnan(next(r["SDR"] for r in rows if r["track"] == "track 1" and r["source"] == "bass"))
    write_separation_report(tmp_path, scores, plots=False)
    lines = (tmp_path / "tracks.md").read_text().splitlines()
    assert lines[0] == "| track | source | SDR | ISR | SIR | SAR |" and len(lines) == 2 + 20
    assert "| track 1 | bass | nan |" in "\n".join(lines)
    assert not list(tmp_path.glob("*.png"))
    with pytest.raises(ValueError, match="no scored tracks"):
        write_separation_report(tmp_path, {})
