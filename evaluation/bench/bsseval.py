"""``hybrids bench bsseval``: our BSS Eval v4 (``hybrids.evaluation.bsseval``) against
``museval.evaluate`` on the same stems, timed alternately in the same run, with the largest
differences in dB.

Two cases (``make_cases``), both from the project's real recordings:

- ``broadband`` (``make_stems``): consecutive pieces of ``kevin_macleod-vibe_ace.ogg`` (61.5 s) and
  ``karissa_hobbs-lets_go_fishin.ogg`` (133 s) are the sources; each estimate is its source plus
  low-passed noise (0, 10 or 20 dB below it) plus the other sources leaking in at ``leak_db``;
- ``band-limited`` (``make_band_limited_stems``): one stretch of ``vibe_ace`` band-passed into
  30-200, 200-1500, 1500-6000 and 6000-16000 Hz under slowly varying gains, like the stems of one mix
  (bass, ..., hi-hats); each estimate is its source plus the others through short random FIR
  filters plus 1 % white noise.

museval's own ISR/SIR/SAR are not always reproducible (``museval_noise``): the comparison is split
into values where museval is stable when both inputs are multiplied by 3, those also stable when a
noise floor 120 dB below the references is added to them, and the unstable rest. On the band-limited
stems museval's ISR/SIR/SAR come from roundoff (the references have no energy, to below roundoff,
outside their bands, and the least-squares filters blow up there): values that survive the x 3
check (e.g. SAR near 0 dB) still move by dB under the -120 dB floor.

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
from hybrids.evaluation.bench.kernels import _with_ratios
from hybrids.evaluation.bench.timing import machine_info

VIBE = "kevin_macleod-vibe_ace.ogg"
SONG = "karissa_hobbs-lets_go_fishin.ogg"
SAMPLERATE = 44100
METRICS = ("SDR", "ISR", "SIR", "SAR")
CASES = ("broadband", "band-limited")
BANDS_HZ = ((30.0, 200.0), (200.0, 1500.0), (1500.0, 6000.0), (6000.0, 16000.0))
STABLE_DB = 1e-3  # museval's value is "stable" where inputs x 3 move it by less than this (dB)
FLOOR_DB = -120.0  # the noise floor added to the references in the second stability check
FLOOR_STABLE_DB = 0.01  # ... and "stable under the floor" where that moves it by less than this (dB)


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


def make_band_limited_stems(
    duration: float,
    nsrc: int = 4,
    *,
    channels: int = 2,
    offset: float = 0.0,
    recordings: Sequence[np.ndarray] | None = None,
    data_dir: str | Path | None = None,
    bands: Sequence[tuple[float, float]] = BANDS_HZ,
    leak_taps: int = 16,
    leak_gain: float = 0.1,
    noise: float = 0.01,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(references, estimates)``, each ``(nsrc, duration * 44100, channels)``, like the stems of
    one mix: the same stretch of the first recording (``offset`` seconds in; ``VIBE`` by default)
    band-passed into ``bands[j % len(bands)]`` for source ``j`` (4th-order Butterworth, zero phase:
    ``sosfiltfilt``), each under a slowly varying gain (0.5 .. 1.5, 0.05 .. 0.2 Hz). Estimate ``j`` is
    reference ``j`` plus every other reference through a random FIR filter (``leak_taps`` taps, gain
    about ``leak_gain``) plus white noise at ``noise`` times its RMS; seeded."""
    from scipy.signal import butter, lfilter, sosfiltfilt

    if recordings is None:
        recordings = load_recordings((VIBE,), data_dir=data_dir)
    wav = recordings[0][int(round(offset * SAMPLERATE)) :, :channels]
    nsamples = int(round(duration * SAMPLERATE))
    if nsamples < 1 or nsamples > len(wav):
        raise ValueError(
            f"the recording holds {len(wav) / SAMPLERATE:.1f} s after the offset, not {duration} s"
        )
    wav = wav[:nsamples]
    rng = np.random.default_rng(seed)
    time_s = np.arange(nsamples) / SAMPLERATE
    references = np.empty((nsrc, nsamples, wav.shape[1]))
    for j in range(nsrc):
        sos = butter(4, bands[j % len(bands)], btype="bandpass", fs=SAMPLERATE, output="sos")
        gain = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * time_s + rng.uniform(0, 2 * np.pi))
        references[j] = sosfiltfilt(sos, wav, axis=0) * gain[:, None]
    estimates = references.copy()
    for j in range(nsrc):
        for k in range(nsrc):
            if k != j:
                taps = rng.standard_normal(leak_taps) * leak_gain / np.sqrt(leak_taps)
                estimates[j] += lfilter(taps, [1.0], references[k], axis=0)
        rms = np.sqrt(np.mean(references[j] ** 2))
        estimates[j] += noise * rms * rng.standard_normal(references[j].shape)
    return references, estimates


def make_cases(
    duration: float = 60.0,
    band_duration: float = 30.0,
    nsrc: int = 4,
    *,
    channels: int = 2,
    cases: Sequence[str] = CASES,
    data_dir: str | Path | None = None,
) -> list[tuple[str, tuple[np.ndarray, np.ndarray]]]:
    """The benchmark's ``[(case, (references, estimates))]``: ``"broadband"`` (``make_stems``,
    ``duration`` s) and ``"band-limited"`` (``make_band_limited_stems``, ``band_duration`` s)."""
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if duration <= 0 or band_duration <= 0 or nsrc < 1:
        raise ValueError("durations must be > 0 and the number of sources >= 1")
    recordings = load_recordings(data_dir=data_dir)
    out = []
    for case in cases:
        if case == "broadband":
            out.append((case, make_stems(duration, nsrc, channels=channels, recordings=recordings)))
        else:
            stems = make_band_limited_stems(band_duration, nsrc, channels=channels, recordings=recordings)
            out.append((case, stems))
    return out


def museval_noise(
    references: np.ndarray, estimates: np.ndarray, *, floor_db: float = FLOOR_DB, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """How much museval's own values move, per value ``(4, nsrc, nwin)`` in dB, when (a) both inputs
    are multiplied by 3 (the same metrics in exact arithmetic) and (b) white noise ``floor_db``
    below each reference's RMS is added to the references (far below 16-bit quantisation).
    Returns ``(scaled, floor)``; 0 where museval's value is not finite."""
    import museval

    base = _stack(museval.evaluate(references, estimates))
    scaled = _stack(museval.evaluate(references * 3, estimates * 3))
    rng = np.random.default_rng(seed)
    rms = np.sqrt(np.mean(references**2, axis=(1, 2), keepdims=True))
    noisy = references + rng.standard_normal(references.shape) * rms * 10 ** (floor_db / 20)
    floor = _stack(museval.evaluate(noisy, estimates))
    with np.errstate(invalid="ignore"):
        scaled, floor = (np.where(np.isfinite(base), np.abs(base - other), 0.0) for other in (scaled, floor))
    return scaled, floor


def compare(
    ours: Sequence[np.ndarray],
    theirs: Sequence[np.ndarray],
    noise: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    stable_db: float = STABLE_DB,
    floor_stable_db: float = FLOOR_STABLE_DB,
) -> dict[str, Any]:
    """Largest |ours - theirs| per metric in dB over frames where both are finite (None if none);
    ``nan_mismatch`` counts values that are NaN in one result only.

    With ``noise`` (``museval_noise``), also per metric, as ``[n values, largest |difference|]``:
    ``"stable"`` where museval moves by less than ``stable_db`` when its inputs are scaled by 3,
    ``"stable_floor"`` where it also moves by less than ``floor_stable_db`` (the parity tolerance)
    under the -120 dB noise floor, and ``"unstable"`` for the rest.
    """
    a, b = _stack(ours), _stack(theirs)
    both = np.isfinite(a) & np.isfinite(b)
    diff = np.where(both, np.abs(a - b), 0.0)
    out: dict[str, Any] = {}
    for i, name in enumerate(METRICS):
        out[name] = float(diff[i][both[i]].max()) if both[i].any() else None
    out["nan_mismatch"] = int(np.sum(np.isnan(a) != np.isnan(b)))
    if noise is not None:
        scaled, floor = noise
        splits = {
            "stable": both & (scaled < stable_db),
            "stable_floor": both & (scaled < stable_db) & (floor < floor_stable_db),
            "unstable": both & ~(scaled < stable_db),
        }
        for split, mask in splits.items():
            out[split] = {
                name: [int(mask[i].sum()), float(diff[i][mask[i]].max()) if mask[i].any() else None]
                for i, name in enumerate(METRICS)
            }
    return out


def run_bsseval_benchmark(
    *,
    duration: float = 60.0,
    band_duration: float = 30.0,
    nsrc: int = 4,
    channels: int = 2,
    repeats: int = 3,
    museval_repeats: int = 1,
    data_dir: str | Path | None = None,
    cases: Sequence[tuple[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    stems: tuple[np.ndarray, np.ndarray] | None = None,
    stability: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time ``hybrids.evaluation.bsseval.evaluate`` (best of ``repeats``) and ``museval.evaluate``
    (best of ``museval_repeats``), alternating, on each case in this process; returns the result dict.

    ``cases``: ``[(name, (references, estimates))]``, by default ``make_cases(duration,
    band_duration, nsrc)`` (``stems``: a single case named ``"stems"``). With ``stability``, museval
    also runs on the rescaled and the noise-floored inputs (``museval_noise``) and the differences
    are split into stable and unstable values.
    """
    import museval

    from hybrids.evaluation.bsseval import evaluate

    if repeats < 1 or museval_repeats < 1:
        raise ValueError("repeats must be >= 1")
    if cases is None:
        if stems is not None:
            cases = [("stems", stems)]
        else:
            cases = make_cases(duration, band_duration, nsrc, channels=channels, data_dir=data_dir)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for name, (references, estimates) in cases:
        nsrc_, nsamples, channels_ = references.shape
        case = f"{name} {nsrc_} src x {nsamples / SAMPLERATE:g} s x {channels_} ch"
        ours_s = theirs_s = float("inf")
        ours = theirs = None
        for r in range(max(repeats, museval_repeats)):  # alternate: both see the same machine load
            if r < repeats:
                log(f"bsseval: ours on {case} ({r + 1}/{repeats}) ...")
                start = time.perf_counter()
                ours = evaluate(references, estimates)
                ours_s = min(ours_s, time.perf_counter() - start)
            if r < museval_repeats:
                log(f"bsseval: museval.evaluate on {case} ({r + 1}/{museval_repeats}) ...")
                start = time.perf_counter()
                theirs = museval.evaluate(references, estimates)
                theirs_s = min(theirs_s, time.perf_counter() - start)
        noise = None
        if stability:
            log(f"bsseval: museval on {case}, inputs x 3 and with a {FLOOR_DB:g} dB floor ...")
            noise = museval_noise(references, estimates)
        diff = compare(ours, theirs, noise)
        note = "max |diff| dB: " + ", ".join(
            f"{m} {diff[m]:.1e}" if diff[m] is not None else f"{m} -" for m in METRICS
        )
        if diff["nan_mismatch"]:
            note += f"; {diff['nan_mismatch']} NaN mismatches"
        rows.append({"group": "bsseval", "case": case, "impl": "fast", "time_s": ours_s, "note": "hybrids"})
        rows.append(
            {
                "group": "bsseval",
                "case": case,
                "impl": "museval",
                "time_s": theirs_s,
                "max_abs_diff_db": diff,
                "note": note,
            }
        )
        summary.append({"case": case, "ours_s": ours_s, "museval_s": theirs_s, "speedup": theirs_s / ours_s})
    rows = _with_ratios(rows)
    return {
        "machine": machine_info(museval=getattr(museval, "__version__", None) or _museval_version()),
        "repeats": repeats,
        "wall_s": time.perf_counter() - started,
        "speedup": min(c["speedup"] for c in summary),
        "cases": summary,
        "rows": rows,
    }


def _stack(result: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(m, dtype=np.float64) for m in result[:4]])


def _museval_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("museval")
    except Exception:
        return None


def format_result(result: dict[str, Any]) -> str:
    """Per case: our time, museval's, the speed-up, and the largest |difference| per metric (over
    stable and unstable values where museval's stability was measured)."""
    lines = []
    width = max(len(c["case"]) for c in result["cases"])
    lines.append(f"{'case'.ljust(width)}  {'ours s':>8}  {'museval s':>9}  {'speed-up':>8}")
    for c in result["cases"]:
        lines.append(
            f"{c['case'].ljust(width)}  {c['ours_s']:8.2f}  {c['museval_s']:9.2f}  {c['speedup']:7.1f}x"
        )
    lines.append("")
    lines.append("max |ours - museval| dB [values compared]")
    splits = [
        ("all", None),
        ("stable", "museval moves < {db:g} dB when inputs x 3"),
        ("stable_floor", "... and < {fdb:g} dB with a {floor:g} dB noise floor on the references"),
        ("unstable", "museval moves >= {db:g} dB when inputs x 3"),
    ]
    head = f"{'':{width}}  {'':12}" + "".join(f"  {m:>18}" for m in METRICS)
    lines.append(head)
    for row in result["rows"]:
        if row["impl"] != "museval":
            continue
        diff = row["max_abs_diff_db"]
        for split, _ in splits:
            if split == "all":
                cells = [_cell(diff[m]) for m in METRICS]
            elif split in diff:
                cells = [_cell(v, n) for n, v in (diff[split][m] for m in METRICS)]
            else:
                continue
            case = row["case"] if split == "all" else ""
            lines.append(f"{case.ljust(width)}  {split:12}" + "".join(f"  {c:>18}" for c in cells))
    lines.append("")
    for split, text in splits[1:]:
        lines.append(f"{split}: " + text.format(db=STABLE_DB, fdb=FLOOR_STABLE_DB, floor=FLOOR_DB))
    machine = result["machine"]
    lines.append(
        f"({machine['cpu_count']} CPU cores, museval {machine.get('museval')}, best of {result['repeats']}, "
        f"total {result['wall_s']:.0f} s)"
    )
    lines.append(f"speed-up over museval: {result['speedup']:.1f}x (the smallest over the cases)")
    return "\n".join(lines)


def _cell(value: float | None, n: int | None = None) -> str:
    text = "-" if value is None else f"{value:.1e}"
    return text if n is None else f"{text} [{n}]"


def save_result(result: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")
