"""Reports of source-separation scores: tables and plots as the papers show them.

Input: framewise BSS Eval v4 metrics per track, ``{track: {source: {metric: frame values}}}``
(what ``hybrids.evaluation.bsseval`` computes and museval's JSON holds), and optionally the
MDX/SDX uSDR per track and source, ``{track: {source: value}}``. ``write_separation_report``
writes into one folder:

- ``tracks.csv`` / ``tracks.md``: one row per track and source, each metric's median over frames
  (NaN and inf frames left out, as museval) and the uSDR;
- ``summary.csv`` / ``summary.md``: the aggregate in the layout of Table 1 of "Hybrid Transformers
  for Music Source Separation" (Rouard et al., 2023): one row per method, SDR in dB for "All"
  (mean over sources, the "cSDR") and each source; each source's value is the median over tracks
  of the median over frames (the SiSEC 2018 / museval rule). Below it, every metric per source,
  and the uSDR (mean over tracks) where given;
- ``boxplot_<metric>.png``: museval-style box plots, one box per source over the tracks' medians.

Every file is written atomically. ``evaluation`` never imports ``apps``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from hybrids.datasets.atomic import atomic_write_path, atomic_write_text
from hybrids.evaluation.bsseval import METRICS, aggregate_tracks, track_medians

__all__ = ["write_separation_report", "summary_rows", "track_rows"]

Scores = Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]]  # track -> source -> metric -> frames
USDRs = Mapping[str, Mapping[str, float]]  # track -> source -> uSDR


def _sources_in_order(scores: Scores, sources: Sequence[str] | None) -> list[str]:
    found = {s for track in scores.values() for s in track}
    ordered = [s for s in (sources or ()) if s in found]
    return ordered + sorted(found - set(ordered))


def track_rows(
    scores: Scores, usdrs: USDRs | None = None, sources: Sequence[str] | None = None
) -> list[dict]:
    """One dict per (track, source): ``track``, ``source``, the four metrics' medians over
    frames, and ``uSDR`` when given; tracks sorted by name, sources in ``sources`` order."""
    order = _sources_in_order(scores, sources)
    rows = []
    for name in sorted(scores):
        medians = track_medians(scores[name])
        for source in order:
            if source not in medians:
                continue
            row = {"track": name, "source": source, **{m: medians[source].get(m, math.nan) for m in METRICS}}
            if usdrs is not None:
                row["uSDR"] = float((usdrs.get(name) or {}).get(source, math.nan))
            rows.append(row)
    return rows


def summary_rows(
    scores: Scores, usdrs: USDRs | None = None, sources: Sequence[str] | None = None
) -> tuple[list[str], dict]:
    """``(sources in order, aggregate)`` with ``aggregate`` as ``bsseval.aggregate_tracks``."""
    return _sources_in_order(scores, sources), aggregate_tracks(scores, usdrs)


def _fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.2f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_separation_report(
    folder: str | Path,
    scores: Scores,
    usdrs: USDRs | None = None,
    *,
    method: str = "model",
    sources: Sequence[str] | None = None,
    title: str | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write the tables and plots described in the module docstring into ``folder``; returns
    ``{name: path}``. ``method`` names the row of the summary table; ``sources`` orders the
    columns (default: drums, bass, other, vocals order when present, then the rest)."""
    if not scores:
        raise ValueError("no scored tracks to report")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sources = sources or ("drums", "bass", "other", "vocals", "guitar", "piano")
    written: dict[str, Path] = {}

    rows = track_rows(scores, usdrs, sources)
    header = ["track", "source", *METRICS] + (["uSDR"] if usdrs is not None else [])
    atomic_write_text(folder / "tracks.csv", _csv(header, [[r[h] for h in header] for r in rows]))
    md_rows = [[r["track"], r["source"], *(_fmt(r[h]) for h in header[2:])] for r in rows]
    atomic_write_text(folder / "tracks.md", _markdown(header, md_rows))
    written["tracks.csv"], written["tracks.md"] = folder / "tracks.csv", folder / "tracks.md"

    order, agg = summary_rows(scores, usdrs, sources)
    per_source = agg["sources"]
    names = [s.capitalize() for s in order]
    table1 = [[method, _fmt(agg["cSDR"]), *(_fmt(per_source[s].get("SDR", math.nan)) for s in order)]]
    text = [
        f"# {title or 'Separation scores'}\n",
        f"{agg['tracks']} tracks. Test SDR in dB (BSS Eval v4: "
        "median over 1 s frames, median over tracks; All = mean over sources).\n",
    ]
    text.append(_markdown(["Method", "All", *names], table1))
    detail = [[s, *(_fmt(per_source[s].get(m, math.nan)) for m in METRICS)] for s in order]
    text.append("\nAll metrics per source (dB, median over frames, median over tracks):\n")
    text.append(_markdown(["Source", *METRICS], detail))
    csv_rows = [[method, "SDR", "All", agg["cSDR"]]]
    csv_rows += [[method, m, s, per_source[s].get(m, math.nan)] for s in order for m in METRICS]
    if usdrs is not None:
        usdr_row = [
            [
                method,
                _fmt(agg.get("uSDR", math.nan)),
                *(_fmt(per_source[s].get("uSDR", math.nan)) for s in order),
            ]
        ]
        text.append("\nuSDR in dB (MDX/SDX rule: per track over the whole signal, mean over tracks):\n")
        text.append(_markdown(["Method", "All", *names], usdr_row))
        csv_rows += [[method, "uSDR", "All", agg.get("uSDR", math.nan)]]
        csv_rows += [[method, "uSDR", s, per_source[s].get("uSDR", math.nan)] for s in order]
    atomic_write_text(folder / "summary.md", "\n".join(text))
    atomic_write_text(folder / "summary.csv", _csv(["method", "metric", "source", "value"], csv_rows))
    written["summary.md"], written["summary.csv"] = folder / "summary.md", folder / "summary.csv"

    if plots:
        for metric in METRICS:
            path = folder / f"boxplot_{metric}.png"
            _boxplot(path, rows, order, metric, title or method)
            written[path.name] = path
    return written


def _boxplot(path: Path, rows: Sequence[dict], order: Sequence[str], metric: str, title: str) -> None:
    """One box per source over the tracks' medians (NaN left out), as museval's plots."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    data = [[r[metric] for r in rows if r["source"] == s and not math.isnan(r[metric])] for s in order]
    figure, axes = plt.subplots(figsize=(1.6 + 1.3 * len(order), 4.0), dpi=120)
    try:
        axes.boxplot(data, showfliers=True, whis=1.5)
        axes.set_xticks(range(1, len(order) + 1), [s.capitalize() for s in order])
        axes.set_ylabel(f"{metric} (dB)")
        axes.set_title(f"{title}: {metric} per track (median over frames)")
        axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        with atomic_write_path(path) as tmp:
            figure.savefig(tmp, format="png")
    finally:
        plt.close(figure)
