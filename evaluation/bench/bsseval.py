"""``hybrids bench bsseval``: our BSS Eval v4 (``hybrids.evaluation.bsseval``) against
``museval.evaluate`` on the same stems, timed in the same run, with the largest difference in dB.

The stems are cut from the project's real recordings (``kevin_macleod-vibe_ace.ogg``, 61.5 s, and
``karissa_hobbs-lets_go_fishin.ogg``, 133 s): consecutive pieces of each file are the sources, and
each estimate is its source plus low-passed noise (0, 10 or 20 dB below it) plus the other sources
leaking in at ``leak_db``. ``make_stems`` is also what the parity tests use.

Rows follow ``hybrids bench kernels``: ``{"group", "case", "impl", "time_s", "note"}``; the
``museval`` row carries ``time_vs_fast`` (its time over ours) and ``max_abs_diff_db`` per metric.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrids.datasets.atomic import atomic_write_text
from hybrids.evaluation.bench.kernels import _with_ratios, format_table
from hybrids.evaluation.bench.timing import machine_info

VIBE = "kevin_macleod-vibe_ace.ogg"
SONG = "karissa_hobbs-lets_go_fishin.ogg"
SAMPLERATE = 44100
METRICS = ("SDR", "ISR", "SIR", "SAR")


def audio_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir/audio``; by default ``$HYBRIDS_SHARED_DATA/audio``, else ``../shared/data/audio``
    beside the repository root (a source checkout)."""
    if data_dir is None:
        env = os.environ.get("HYBRIDS_SHARED_DATA")
        data_dir = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return Path(data_dir) / "audio"


def load_recordings(
    files: Sequence[str] = (VIBE, SONG), *, data_dir: str | Path | None = None
) -> list[np.ndarray]:
    """The recordings as float64 arrays ``(nsamples, 2)`` at 44.1 kHz."""
    from hybrids.datasets.audio import load_audio

    out = []
    for name in files:
        wav, _ = load_audio(audio_dir(data_dir) / name, samplerate=SAMPLERATE, channels=2)
        out.append(wav.double().numpy().T.copy())
    return out


def cut_sources(
    recordings: Sequence[np.ndarray], nsrc: int, nsamples: int, channels: int = 2, *, offset: int = 0
) -> np.ndarray:
    """``nsrc`` pieces of ``nsamples`` as sources ``(nsrc, nsamples, channels)``.

    Consecutive pieces from ``offset`` samples into each recording in turn (first pieces of every
    recording first), then pieces ending at each recording's end. ``channels=1`` keeps the left
    channel.
    """
    pieces: list[list[np.ndarray]] = []
    for wav in recordings:
        wav = wav[offset:]
        mine = [wav[k * nsamples : (k + 1) * nsamples] for k in range(len(wav) // nsamples)]
        if mine and len(wav) % nsamples:
            mine.append(wav[len(wav) - nsamples :])
        pieces.append(mine)
    order = [p[i] for i in range(max(map(len, pieces), default=0)) for p in pieces if i < len(p)]
    if len(order) < nsrc:
        raise ValueError(f"the recordings hold only {len(order)} pieces of {nsamples} samples, not {nsrc}")
    return np.stack([piece[:, :channels] for piece in order[:nsrc]])


def make_estimates(
    sources: np.ndarray,
    *,
    snr_db: Sequence[float] = (0.0, 10.0, 20.0),
    leak_db: float = -20.0,
    cutoff_hz: float = 5000.0,
    samplerate: int = SAMPLERATE,
    seed: int = 0,
) -> np.ndarray:
    """Estimates ``(nsrc, nsamples, nchan)``: each source plus noise low-passed at ``cutoff_hz``
    (4th-order Butterworth) at ``snr_db[j % len]`` below the source, plus the other sources
    scaled by ``leak_db``."""
    from scipy.signal import butter, lfilter

    rng = np.random.default_rng(seed)
    b, a = butter(4, cutoff_hz / (samplerate / 2))
    total = sources.sum(0)
    estimates = np.empty_like(sources)
    for j, source in enumerate(sources):
        noise = lfilter(b, a, rng.standard_normal(source.shape), axis=0)
        noise *= np.sqrt(np.mean(source**2) / np.mean(noise**2)) * 10 ** (-snr_db[j % len(snr_db)] / 20)
        estimates[j] = source + noise + (total - source) * 10 ** (leak_db / 20)
    return estimates


def make_stems(
    duration: float,
    nsrc: int,
    *,
    channels: int = 2,
    offset: float = 0.0,
    recordings: Sequence[np.ndarray] | None = None,
    data_dir: str | Path | None = None,
    **estimate_options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """``(references, estimates)``, each ``(nsrc, duration * 44100, channels)``, from the real audio
    (``offset`` seconds into each recording; ``estimate_options`` go to ``make_estimates``)."""
    if recordings is None:
        recordings = load_recordings(data_dir=data_dir)
    nsamples = int(round(duration * SAMPLERATE))
    references = cut_sources(recordings, nsrc, nsamples, channels, offset=int(round(offset * SAMPLERATE)))
    return references, make_estimates(references, **estimate_options)


def compare(ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray]) -> dict[str, float | None]:
    """Largest |ours - theirs| per metric in dB over frames where both are finite (None if none);
    ``nan_mismatch`` counts frames that are NaN in one result only."""
    out: dict[str, float | None] = {}
    mismatch = 0
    for name, a, b in zip(METRICS, ours, theirs):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        mismatch += int(np.sum(np.isnan(a) != np.isnan(b)))
        both = np.isfinite(a) & np.isfinite(b)
        out[name] = float(np.max(np.abs(a[both] - b[both]))) if both.any() else None
    out["nan_mismatch"] = mismatch
    return out


def run_bsseval_benchmark(
    *,
    duration: float = 60.0,
    nsrc: int = 4,
    channels: int = 2,
    repeats: int = 3,
    museval_repeats: int = 1,
    data_dir: str | Path | None = None,
    stems: tuple[np.ndarray, np.ndarray] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time ``hybrids.evaluation.bsseval.evaluate`` (best of ``repeats``) and ``museval.evaluate``
    (best of ``museval_repeats``) on the same stems in this process; returns the result dict."""
    import museval

    from hybrids.evaluation.bsseval import evaluate

    if repeats < 1 or museval_repeats < 1:
        raise ValueError("repeats must be >= 1")
    references, estimates = (
        stems if stems is not None else make_stems(duration, nsrc, channels=channels, data_dir=data_dir)
    )
    nsrc, nsamples, channels = references.shape
    case = f"{nsrc} src x {nsamples / SAMPLERATE:g} s x {channels} ch"
    started = time.perf_counter()

    def timed(fn: Callable[[], Any], n: int) -> tuple[float, Any]:
        best, result = float("inf"), None
        for _ in range(n):
            start = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - start)
        return best, result

    log(f"bsseval: ours on {case} ...")
    ours_s, ours = timed(lambda: evaluate(references, estimates), repeats)
    log(f"bsseval: museval.evaluate on {case} ...")
    theirs_s, theirs = timed(lambda: museval.evaluate(references, estimates), museval_repeats)
    diff = compare(ours, theirs)
    note = "max |diff| dB: " + ", ".join(
        f"{m} {diff[m]:.1e}" if diff[m] is not None else f"{m} -" for m in METRICS
    )
    if diff["nan_mismatch"]:
        note += f"; {diff['nan_mismatch']} NaN mismatches"
    rows = [
        {
            "group": "bsseval",
            "case": case,
            "impl": "fast",
            "time_s": ours_s,
            "note": "hybrids.evaluation.bsseval",
        },
        {
            "group": "bsseval",
            "case": case,
            "impl": "museval",
            "time_s": theirs_s,
            "max_abs_diff_db": diff,
            "note": note,
        },
    ]
    rows = _with_ratios(rows)
    return {
        "machine": machine_info(museval=getattr(museval, "__version__", None) or _museval_version()),
        "repeats": repeats,
        "wall_s": time.perf_counter() - started,
        "speedup": theirs_s / ours_s,
        "rows": rows,
    }


def _museval_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("museval")
    except Exception:
        return None


def format_result(result: dict[str, Any]) -> str:
    """The rows as a table plus one summary line (speed-up and largest difference)."""
    text = format_table(result)
    diff = next(r["max_abs_diff_db"] for r in result["rows"] if r["impl"] == "museval")
    worst = max((v for k, v in diff.items() if k in METRICS and v is not None), default=float("nan"))
    return text + f"\nspeed-up over museval: {result['speedup']:.1f}x; largest |difference| {worst:.2e} dB"


def save_result(result: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")
