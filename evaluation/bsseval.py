"""BSS Eval v4 separation metrics (SDR, ISR, SIR, SAR), vectorised, with museval's exact definitions.

``bss_eval`` reproduces ``museval.metrics.bss_eval`` (museval 0.4.1) value for value:

- signals are ``(nsrc, nsamples, nchan)``; frames start at ``floor(t * hop)`` and end at
  ``floor(min(t * hop + window, nsamples))`` for ``t < nwin``, with
  ``nwin = floor((nsamples - window + hop) / hop)`` when ``window < nsamples`` (a trailing partial
  window is dropped) and a single frame over the whole signal otherwise;
- ``framewise_filters=False`` (BSS Eval v4): the least-squares distortion filters (``filters_len``
  taps per source and channel pair) are solved ONCE from the whole signals -- ``(G + eps I) C = D``
  with ``G`` the Gram matrix of the delayed references and ``D`` their correlation with each
  estimate, once over all references (``C``) and once over the true source alone (``Cj``);
  each frame's references are then filtered with them (full convolution, so the projections are
  ``frame + filters_len - 1`` samples long) and the energy ratios are taken over that span;
- ``framewise_filters=True`` (v3) solves the filters anew from each frame;
- a frame in which any reference or any estimate is silent (the channel sum is zero at every
  sample) is NaN for every source; a zero denominator gives ``+inf``;
- the filters are a backward-stable solution of that system (museval: LU), and where LU meets an
  exactly zero pivot, the minimum-norm least-squares solution of ``G C = D`` (museval's intended
  fallback; with numpy >= 2 museval itself raises there).

How it is fast (20x museval and more on 4 stereo sources on 2 cores, broadband or band-limited
stems; ``hybrids bench bsseval`` measures it): the correlations of all signal pairs come from block
FFTs at once (bounded memory for long tracks; on museval's default grid, window == hop, the blocks
are the frames and their spectra are reused for the projections). ``G`` is block-Toeplitz, so the
filters are solved in O(L^2 P^3) instead of the O(L^3 P^3) of a dense LU (P = sources x channels):
by block Levinson recursion while its prediction-error covariances stay positive definite, else by
the generalized Schur algorithm (a Cholesky factor of ``G`` from its displacement generator, stable
where Levinson is not), each solution accepted when its residual is what a backward-stable solver
achieves, with museval's dense LU as the last resort. The per-frame projections are FFT
convolutions, a band of frequencies at a time, whose energies come from Parseval's identity
(numpy/scipy, float64). ``compute_permutation`` is not supported (``museval.evaluate`` never uses
it).

Parity: SDR matches museval to ~1e-13 dB; ISR/SIR/SAR to ~1e-8 dB where the problem is well
conditioned. Where the delayed references are nearly dependent (lossy-coded references with empty
bands, narrow-band or quiet passages; condition numbers of 1e14 occur on real music), museval's own
ISR/SIR/SAR depend on roundoff: multiplying both of its inputs by 3 moves them by up to ~0.03 dB.
No implementation can match it more closely than that there; ours stays within that noise.
Where ``G + eps I`` is singular to roundoff -- references without energy, to below roundoff, in
whole bands, as band-limited stems (bass, hi-hats) have -- the filters are not determined by the
signals: museval's LU meets roundoff-sized pivots and returns filters blown up by them (ISR of
-50 to -100 dB, SAR pinned near 0 dB, for good estimates), which a -120 dB noise floor on the
references moves by dB. There the Schur solve adds a diagonal loading of ``1e-13`` of each
channel's energy (a backward error within the accepted one), and ours agree with museval's
values wherever those are stable under both the x 3 scaling and such a floor.

Also here: ``evaluate`` (``museval.evaluate``: pad/truncate the estimates, v4 or v3), ``usdr``
(the MDX/SDX "utterance" SDR), the museval/SiSEC aggregation rules and museval's per-track JSON.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import scipy.linalg
import torch

from hybrids.datasets.atomic import atomic_write_text

METRICS = ("SDR", "ISR", "SIR", "SAR")
MUSEVAL_JSON_VERSION = "0.4.1"  # the museval release whose JSON layout we write
MAX_SOURCES = 100  # as museval.metrics.MAX_SOURCES
_EPS = float(np.finfo(float).eps)  # museval's diagonal loading of the Gram matrix
_FRAME_CHUNK_BYTES = 192 * 2**20  # working memory per batch of frames in the projections
_CORR_BLOCK_FFT = 2**15  # FFT size of the blocked correlations (whole-signal filters)
_CORR_CHUNK_BYTES = 256 * 2**20  # working memory per batch of blocks in the correlations
_SPECTRA_CACHE_BYTES = 512 * 2**20  # frame spectra kept from the correlations for the projections
_SPECTRA_BAND_BYTES = 2 * 2**20  # working memory per band of frequencies in the projections
_SOLVER = "fast"  # or "dense" (museval's LU on the dense Gram matrix)
_FAST_TOL = 1e-13  # accepted backward error of the fast solve (relative), else dense
_LEVINSON_CHECK = 8  # lags between positive-definiteness checks of the Levinson recursion
_SCHUR_LOADINGS = (0.0, 1e-13)  # diagonal loadings tried, relative to each channel's energy
_SCHUR_MIN_PIVOT = 1e-14  # a Schur step whose pivot shrinks by more than this is a breakdown
_SCHUR_CHUNK = 64  # rows per dense piece of the triangular solves
_BLAS_ONE_THREAD = 2**18  # m k n below which OpenBLAS multiplies on one thread


# --------------------------------------------------------------------------------------------
# public API


def bss_eval(
    references: Any,
    estimates: Any,
    *,
    window: float = 44100,
    hop: float = 44100,
    filters_len: int = 512,
    framewise_filters: bool = False,
    bsseval_sources_version: bool = False,
    compute_permutation: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BSS Eval v4 metrics of ``estimates`` against ``references``, framewise.

    ``references``/``estimates``: arrays or tensors ``(nsrc, nsamples, nchan)`` (``(nsrc, nsamples)``
    or ``(nsamples,)`` are read as one channel / one source, as museval does). ``window``/``hop``
    in samples (``np.inf`` = one frame over the whole signal); the defaults are
    ``museval.evaluate``'s (1 s at 44.1 kHz), not ``museval.metrics.bss_eval``'s (2 s / 1.5 s).
    Returns ``(sdr, isr, sir, sar)``, each a float64 array ``(nsrc, nwin)``; museval's fifth
    output (the permutation) is omitted.
    ``bsseval_sources_version=True`` gives the BSS Eval v2/v3 ``bss_eval_sources`` ratios (ISR NaN).
    """
    if compute_permutation:
        raise NotImplementedError("compute_permutation=True is not supported; estimates are taken in order")
    if int(filters_len) != filters_len or filters_len < 1:
        raise ValueError(f"filters_len must be a positive integer, got {filters_len}")
    filters_len = int(filters_len)
    ref = _as_3d(references)
    est = _as_3d(estimates)
    _validate(ref, est)
    if ref.size == 0 or est.size == 0:
        empty = np.array([])
        return empty, empty, empty, empty
    sounding = np.concatenate([_sounding(ref), _sounding(est)])
    for j in np.flatnonzero(~sounding.any(1))[:1]:
        which = "reference" if j < ref.shape[0] else "estimated"
        raise ValueError(
            f"{which} source {j % ref.shape[0]} is all zeros; every reference and estimate must be "
            "non-silent (a silent source makes the evaluation ambiguous)"
        )
    nsrc, nsamples, _ = ref.shape
    frames = _frames(window, hop, nsamples)
    out = np.full((4, nsrc, len(frames)), np.nan)
    silent = _silent_frames(sounding, frames)
    sources_version = bsseval_sources_version
    ref_cm = ref.transpose(0, 2, 1).reshape(-1, nsamples)  # (P, nsamples): channel-major
    est_cm = est.transpose(0, 2, 1).reshape(-1, nsamples)
    p = ref_cm.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        if framewise_filters:
            for t, (start, stop) in enumerate(frames):
                if not silent[t]:
                    filters = _filters_from_signals(
                        ref_cm[:, start:stop], est_cm[:, start:stop], nsrc, filters_len
                    )
                    spectra = _filter_spectra(filters, stop - start)
                    metrics = _frame_metrics(ref_cm, est_cm, nsrc, [(start, stop)], spectra, sources_version)
                    out[:, :, t] = metrics[..., 0]
        elif _on_grid(frames) and _cache_fits(frames, p, filters_len):
            # frames tile the signal from its start: the correlation blocks are the frames, and
            # their spectra (references and estimates) are kept for the per-frame projections
            width, nwin = frames[0][1], len(frames)
            corr, kept = _correlations(
                (ref_cm, est_cm), (ref_cm,), filters_len - 1, block=width, keep_blocks=nwin
            )  # (2P, P, 2L - 1)
            blocks = corr[:p, :].transpose(2, 0, 1)
            rhs = corr[p:, :, filters_len - 1 :: -1].transpose(2, 1, 0)  # sum_m est_q[m] ref_p[m - a]
            filters = _solve_filters(blocks, rhs, nsrc)
            nfft = _next_fast_len(width + 2 * filters_len - 2)
            spectra = (nfft, _rfft(filters.transpose(1, 2, 0), nfft))
            for b0, xf in kept:
                nb = xf.shape[0]
                s = ref_cm[:, b0 * width : (b0 + nb) * width].reshape(p, nb, width)
                e = est_cm[:, b0 * width : (b0 + nb) * width].reshape(p, nb, width)
                out[:, :, b0 : b0 + nb] = _spectra_metrics(
                    s, e, xf[:, :p], xf[:, p:], spectra, nsrc, sources_version
                )
        else:
            filters = _filters_from_signals(ref_cm, est_cm, nsrc, filters_len)
            by_length: dict[int, list[int]] = {}
            for t, (start, stop) in enumerate(frames):
                by_length.setdefault(stop - start, []).append(t)
            for length, ts in by_length.items():
                spectra = _filter_spectra(filters, length)
                batch = max(1, _FRAME_CHUNK_BYTES // (80 * p * (length + filters_len)))
                for i in range(0, len(ts), batch):
                    chunk = ts[i : i + batch]
                    out[:, :, chunk] = _frame_metrics(
                        ref_cm, est_cm, nsrc, [frames[t] for t in chunk], spectra, sources_version
                    )
    out[:, :, silent] = np.nan
    return out[0], out[1], out[2], out[3]


def evaluate(
    references: Any,
    estimates: Any,
    win: float = 1 * 44100,
    hop: float = 1 * 44100,
    mode: str = "v4",
    padding: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``museval.evaluate``: BSS Eval images metrics ``(SDR, ISR, SIR, SAR)``, each ``(nsrc, nwin)``.

    ``references``/``estimates``: ``(nsrc, nsamples, nchan)`` (or lists of ``(nsamples, nchan)``);
    with ``padding`` the estimates are zero-padded or truncated to the references' length.
    ``mode``: ``"v4"`` (filters from the whole signal) or ``"v3"`` (filters per frame).
    """
    if mode not in ("v3", "v4"):
        raise ValueError(f"mode must be 'v4' or 'v3', got {mode!r}")
    references = _as_array(references)
    estimates = _as_array(estimates)
    if padding:
        references, estimates = pad_or_truncate(references, estimates)
    return bss_eval(
        references,
        estimates,
        window=win,
        hop=hop,
        framewise_filters=(mode == "v3"),
        bsseval_sources_version=False,
    )


def pad_or_truncate(references: np.ndarray, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad or cut ``estimates`` ``(nsrc, n_est, nchan)`` to the references' length (axis 1)."""
    n_ref, n_est = references.shape[1], estimates.shape[1]
    if n_est > n_ref:
        estimates = estimates[:, :n_ref]
    elif n_est < n_ref:
        pad = [(0, 0)] * estimates.ndim
        pad[1] = (0, n_ref - n_est)
        estimates = np.pad(estimates, pad)
    return references, estimates


def usdr(references: Any, estimates: Any, delta: float = 1e-7) -> np.ndarray:
    """MDX/SDX "utterance" SDR per source: ``10 log10((sum s^2 + delta) / (sum (s - s_hat)^2 + delta))``.

    ``references``/``estimates``: ``(nsrc, nsamples[, nchan])``; sums run over samples and channels.
    Returns a float64 array ``(nsrc,)``.
    """
    ref = _as_array(references)
    est = _as_array(estimates)
    if ref.shape != est.shape:
        raise ValueError(f"references {ref.shape} and estimates {est.shape} must have the same shape")
    if ref.ndim < 2:
        raise ValueError(f"expected (nsrc, nsamples[, nchan]) arrays, got shape {ref.shape}")
    axes = tuple(range(1, ref.ndim))
    num = np.sum(np.square(ref), axis=axes) + delta
    den = np.sum(np.square(ref - est), axis=axes) + delta
    return 10 * np.log10(num / den)


# --------------------------------------------------------------------------------------------
# aggregation (museval / SiSEC rules)


def frames_median(values: Iterable[float]) -> float:
    """Median over frames as museval aggregates them: NaN and +-inf frames are left out.

    (museval stores +-inf as NaN in its JSON and aggregates with a NaN-skipping median.)
    NaN when no finite frame remains.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(np.median(arr)) if arr.size else math.nan


def track_medians(
    track: Mapping[str, Mapping[str, Sequence[float]]],
) -> dict[str, dict[str, float]]:
    """``{source: {metric: frames}}`` -> ``{source: {metric: median over frames}}``."""
    return {source: {m: frames_median(v) for m, v in metrics.items()} for source, metrics in track.items()}


def aggregate_tracks(
    tracks: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
    usdrs: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Aggregate several tracks' framewise metrics the museval/SiSEC way.

    ``tracks``: ``{track: {source: {metric: frame values}}}``. Each track's frames are reduced
    by ``frames_median``; the per-track medians by the median over tracks (tracks whose median is
    NaN are skipped, as pandas does). ``usdrs`` (optional): ``{track: {source: uSDR}}``, averaged
    over tracks (MDX/SDX rule). Returns ``{"sources": {source: {metric: value[, "uSDR": value]}},
    "cSDR": mean over sources of the SDR, "uSDR": mean over sources (when given), "tracks": n}``.
    """
    per_track = {name: track_medians(track) for name, track in tracks.items()}
    sources: dict[str, dict[str, float]] = {}
    names = sorted({s for track in per_track.values() for s in track})
    for source in names:
        metrics = sorted({m for track in per_track.values() for m in track.get(source, {})})
        sources[source] = {}
        for metric in metrics:
            values = [t[source][metric] for t in per_track.values() if metric in t.get(source, {})]
            values = [v for v in values if not math.isnan(v)]
            sources[source][metric] = float(np.median(values)) if values else math.nan
    result: dict[str, Any] = {"sources": sources, "tracks": len(per_track)}
    sdrs = [m["SDR"] for m in sources.values() if "SDR" in m]
    result["cSDR"] = float(np.mean(sdrs)) if sdrs else math.nan
    if usdrs is not None:
        by_source: dict[str, list[float]] = {}
        for track in usdrs.values():
            for source, value in track.items():
                by_source.setdefault(source, []).append(float(value))
        for source, values in by_source.items():
            sources.setdefault(source, {})["uSDR"] = float(np.mean(values))
        means = [float(np.mean(v)) for v in by_source.values()]
        result["uSDR"] = float(np.mean(means)) if means else math.nan
    return result


# --------------------------------------------------------------------------------------------
# museval's per-track JSON


def museval_track_dict(
    targets: Mapping[str, Mapping[str, Sequence[float]]], *, win: float = 1.0, hop: float = 1.0
) -> dict[str, Any]:
    """museval's per-track score dict (``TrackStore.scores``) for ``{target: {metric: frames}}``.

    Metric values are quantised to 1e-5 as ``decimal.Decimal`` (museval's ``_q``; +-inf -> NaN);
    ``win``/``hop`` are in seconds.
    """
    out: dict[str, Any] = {"targets": [], "museval_version": MUSEVAL_JSON_VERSION}
    for name, values in targets.items():
        missing = [m for m in METRICS if m not in values]
        if missing:
            raise ValueError(f"target {name!r}: missing metric(s) {', '.join(missing)}")
        n = len(values["SDR"])
        if any(len(values[m]) != n for m in METRICS):
            raise ValueError(f"target {name!r}: SDR, SIR, SAR and ISR need the same number of frames")
        frames = []
        for i in range(n):
            frames.append(
                {
                    "time": i * hop,
                    "duration": win,
                    "metrics": {m: _quantize(values[m][i]) for m in ("SDR", "SIR", "SAR", "ISR")},
                }
            )
        out["targets"].append({"name": name, "frames": frames})
    return out


def museval_json(
    track_name: str,
    targets: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    win: float = 1.0,
    hop: float = 1.0,
) -> str:
    """The text museval's ``TrackStore(track_name, win, hop).json`` holds for these scores."""
    del track_name  # museval names the track by its file name, not inside the JSON
    scores = museval_track_dict(targets, win=win, hop=hop)
    decimals: list[str] = []

    def placeholder(value: Decimal | float) -> str:
        decimals.append("NaN" if _is_nan(value) else str(value))
        return f"\x00{len(decimals) - 1}\x00"

    for target in scores["targets"]:
        for frame in target["frames"]:
            frame["metrics"] = {k: placeholder(v) for k, v in frame["metrics"].items()}
    text = json.dumps(scores, indent=2, allow_nan=True)
    for i, value in enumerate(decimals):
        text = text.replace(f'"\\u0000{i}\\u0000"', value, 1)
    return text


def save_museval_json(
    path: str | Path,
    track_name: str,
    targets: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    win: float = 1.0,
    hop: float = 1.0,
) -> Path:
    """Write ``targets`` (``{target: {"SDR": frames, "SIR": ..., "SAR": ..., "ISR": ...}}``) as museval's
    per-track JSON at ``path`` (atomically). museval's own layout is ``<out>/<subset>/<track>.json``.
    """
    path = Path(path)
    atomic_write_text(path, museval_json(track_name, targets, win=win, hop=hop))
    return path


def load_museval_json(path: str | Path) -> dict[str, dict[str, list[float]]]:
    """Read a per-track museval JSON (ours or museval's) as ``{target: {metric: frame values}}``
    (floats; museval's NaN for silent frames and infinities stays NaN)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        targets = data["targets"]
        return {
            t["name"]: {m: [float(f["metrics"][m]) for f in t["frames"]] for m in METRICS} for t in targets
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a museval per-track JSON file ({exc})") from None


def _quantize(number: float) -> Decimal | float:
    number = float(number)
    if math.isinf(number):
        return math.nan
    return Decimal(Decimal(number).quantize(Decimal(".00001")))


def _is_nan(value: Decimal | float) -> bool:
    return value.is_nan() if isinstance(value, Decimal) else math.isnan(value)


# --------------------------------------------------------------------------------------------
# internals


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    if isinstance(x, (list, tuple)):
        return np.array([_as_array(v) for v in x])
    return np.asarray(x, dtype=np.float64)


def _as_3d(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.atleast_3d(_as_array(x)), dtype=np.float64)


def _validate(ref: np.ndarray, est: np.ndarray) -> None:
    if ref.shape != est.shape:
        raise ValueError(
            f"references {ref.shape} and estimates {est.shape} must have the same shape "
            "(nsrc, nsamples, nchan)"
        )
    if ref.ndim > 3:
        raise ValueError(f"expected (nsrc, nsamples, nchan) arrays, got {ref.ndim} dimensions")
    if ref.shape[0] > MAX_SOURCES:
        raise ValueError(f"{ref.shape[0]} sources is more than the maximum of {MAX_SOURCES}")


def _frames(window: float, hop: float, length: int) -> list[tuple[int, int]]:
    """museval's ``Framing``: ``[(start, stop)]`` sample slices of every frame."""
    if window < length:
        nwin = int(np.floor((length - window + hop) / hop))
    else:
        nwin = 1
    frames = []
    for t in range(nwin):
        start = t * hop
        stop = min(t * hop + window, length)
        if np.isnan(start) or np.isinf(start):
            start = 0
        if np.isnan(stop) or np.isinf(stop):
            stop = length
        frames.append((int(np.floor(start)), int(np.floor(stop))))
    return frames


def _on_grid(frames: list[tuple[int, int]]) -> bool:
    """Frames of one width ``W`` at ``0, W, 2W, ...`` (museval's default ``window == hop``)."""
    width = frames[0][1] - frames[0][0]
    return width > 0 and all(f == (t * width, (t + 1) * width) for t, f in enumerate(frames))


def _cache_fits(frames: list[tuple[int, int]], p: int, filters_len: int) -> bool:
    width = frames[0][1]
    return len(frames) * 2 * p * (width // 2 + filters_len + 1) * 16 <= _SPECTRA_CACHE_BYTES


def _sounding(sources: np.ndarray) -> np.ndarray:
    """``(nsrc, nsamples)``: True where the channel sum is non-zero (museval's notion of sound)."""
    total = sources[:, :, 0].copy()
    for c in range(1, sources.shape[2]):
        total += sources[:, :, c]
    return total != 0


def _silent_frames(sounding: np.ndarray, frames: list[tuple[int, int]]) -> np.ndarray:
    """True for frames in which any source (``sounding``: ``(nsrc, nsamples)``) is silent throughout."""
    starts = np.array([f[0] for f in frames])
    stops = np.array([f[1] for f in frames])
    if np.all(starts[1:] >= stops[:-1]):  # sorted, non-overlapping frames: one pass
        padded = np.pad(sounding, ((0, 0), (0, 1)))
        bounds = np.stack([starts, stops], 1).reshape(-1)
        heard = np.logical_or.reduceat(padded, bounds, axis=1)[:, ::2]
    else:
        counts = np.pad(np.cumsum(sounding, axis=1, dtype=np.int64), ((0, 0), (1, 0)))
        heard = counts[:, stops] > counts[:, starts]
    return ~heard.all(0)


def _correlations(
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    max_lag: int,
    *,
    block: int | None = None,
    keep_blocks: int = 0,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Lagged cross-correlations of channel-major signals, ``(P, Q, 2 max_lag + 1)``.

    ``xs``/``ys``: arrays ``(P_i, n)``/``(Q_i, n)``, read as one ``x (P, n)`` and one ``y (Q, n)``:
    ``out[p, q, k + max_lag] = sum_m x[p, m] y[q, m + k]`` for ``|k| <= max_lag`` (zero outside
    the signals). Overlap-save: FFTs of blocks of ``x`` (``block`` samples, zero-padded) and of the
    matching longer windows of ``y``, multiplied and summed over blocks at each frequency.
    Also returns the spectra of the first ``keep_blocks`` blocks of ``x``, as
    ``[(first block, (nb, P, F))]``, FFT size ``next_fast_len(block + 2 max_lag)``.
    """
    n = xs[0].shape[1]
    p = sum(x.shape[0] for x in xs)
    q = sum(y.shape[0] for y in ys)
    span = 2 * max_lag
    if block is None:
        nfft = _CORR_BLOCK_FFT
        while nfft < 4 * span:
            nfft *= 2
        if n + span <= nfft:  # short signals: one block
            nfft = _next_fast_len(n + span)
        block = nfft - span
    else:
        nfft = _next_fast_len(block + span)
    nblocks = -(-n // block)
    nfreq = nfft // 2 + 1
    acc = np.zeros((q, p, nfreq), dtype=np.complex128)  # sum over blocks of conj(Y) X
    kept: list[tuple[int, np.ndarray]] = []
    chunk = max(1, _CORR_CHUNK_BYTES // (8 * (nfft + 2 * nfreq) * (p + q) + 16 * nfreq * q))
    for b0 in range(0, nblocks, chunk):
        nb = min(nblocks, b0 + chunk) - b0
        xbuf = np.empty((nb, p, nfft))
        xbuf[:, :, block:] = 0
        _fill_windows(xbuf, xs, b0 * block, block, block)
        ybuf = np.empty((nb, q, nfft))  # y[start - max_lag : start + block + max_lag] for each block
        ybuf[:, :, block + span :] = 0
        _fill_windows(ybuf, ys, b0 * block - max_lag, block, block + span)
        xf = _rfft(xbuf)  # (nb, P, F)
        del xbuf
        yf = _rfft(ybuf)  # (nb, Q, F)
        del ybuf
        band = max(1, _SPECTRA_BAND_BYTES // (16 * nb * (p + q)))
        for f0 in range(0, nfreq, band):  # a band of frequencies at a time: (nb, Q)^H (nb, P) each
            f1 = min(nfreq, f0 + band)
            prod = np.matmul(yf[:, :, f0:f1].transpose(2, 1, 0).conj(), xf[:, :, f0:f1].transpose(2, 0, 1))
            acc[:, :, f0:f1] += prod.transpose(1, 2, 0)
        del yf
        if b0 < keep_blocks:
            kept.append((b0, xf[: keep_blocks - b0]))
        del xf
    corr = _irfft(acc.conj(), nfft)[..., : span + 1]  # (Q, P, 2 max_lag + 1)
    return np.ascontiguousarray(corr.transpose(1, 0, 2)), kept


def _fill_windows(out: np.ndarray, arrays: Sequence[np.ndarray], start: int, hop: int, width: int) -> None:
    """``out[b, :, :width]`` = the channels of ``arrays`` (``(P_i, n)``, stacked) over samples
    ``start + b hop ..`` (``width`` samples, zero outside the signals)."""
    nb = out.shape[0]
    n = arrays[0].shape[1]
    inside = [b for b in range(nb) if start + b * hop >= 0 and start + b * hop + width <= n]
    b1, b2 = (inside[0], inside[-1] + 1) if inside else (0, 0)
    row = 0
    for arr in arrays:
        rows = slice(row, row + arr.shape[0])
        row += arr.shape[0]
        if b2 > b1:  # windows inside the signal: one strided copy
            s0, s1 = arr.strides
            windows = np.lib.stride_tricks.as_strided(
                arr[:, start + b1 * hop :],
                shape=(b2 - b1, arr.shape[0], width),
                strides=(hop * s1, s0, s1),
                writeable=False,
            )
            out[b1:b2, rows, :width] = windows
        for b in [*range(b1), *range(b2, nb)]:  # windows over an end of the signal
            lo, hi = start + b * hop, start + b * hop + width
            out[b, rows, :width] = 0
            if hi > 0 and lo < n:
                out[b, rows, max(0, lo) - lo : min(n, hi) - lo] = arr[:, max(0, lo) : min(n, hi)]


def _solve_filters(blocks: np.ndarray, rhs: np.ndarray, nsrc: int) -> np.ndarray:
    """Distortion filters as one ``(L, P, 2P)`` array, from the references' correlations
    ``blocks (2L - 1, P, P)`` (``blocks[k + L - 1][p, q] = sum_m x_p[m] x_q[m + k]``) and the
    right-hand sides ``rhs (L, P, P_est)`` (``rhs[a, p, q] = sum_m x_p[m] y_q[m + a]``).

    ``P = nsrc * nchan`` (source-major). The Gram matrix of the delayed references is the
    block-Toeplitz ``G[(a, p), (b, q)] = R(a - b)``. Columns ``[:P]``: filters of each estimate
    channel on all reference channels (museval's ``C``); columns ``[P:]``: on its own source's
    channels only (museval's ``Cj``, zero off the diagonal source blocks).
    """
    big_l, p, _ = rhs.shape
    nchan = p // nsrc
    filters = np.zeros((big_l, p, 2 * p))
    filters[:, :, :p] = _solve_block_toeplitz(blocks[None], rhs[None])[0]
    own = [slice(j * nchan, (j + 1) * nchan) for j in range(nsrc)]
    own_c = _solve_block_toeplitz(
        np.stack([blocks[:, o, o] for o in own]), np.stack([rhs[:, o, o] for o in own])
    )  # (nsrc, L, nchan, nchan)
    for j, o in enumerate(own):
        filters[:, o, p + j * nchan : p + (j + 1) * nchan] = own_c[j]
    return filters


def _filters_from_signals(ref_cm: np.ndarray, est_cm: np.ndarray, nsrc: int, filters_len: int) -> np.ndarray:
    """``_solve_filters`` for channel-major ``ref_cm``/``est_cm`` ``(P, n)``."""
    p = ref_cm.shape[0]
    big_l = filters_len
    corr, _ = _correlations((ref_cm,), (ref_cm, est_cm), big_l - 1)  # (P, 2P, 2L - 1)
    blocks = corr[:, :p].transpose(2, 0, 1)
    rhs = corr[:, p:, big_l - 1 :].transpose(2, 0, 1)  # lags 0 .. L - 1 of reference vs estimate
    return _solve_filters(blocks, rhs, nsrc)


def _solve_block_toeplitz(blocks: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``(G + eps I) c = d`` for block-Toeplitz ``G[a, b] = R(a - b)``, a batch of systems.

    ``blocks (S, 2L - 1, P, P)`` with ``blocks[:, k + L - 1] = R(k)`` (``R(-k) = R(k)^T``),
    ``rhs (S, L, P, Q)`` -> ``c (S, L, P, Q)``. Fast solvers, O(L^2 P^3) instead of the
    O(L^3 P^3) of a dense factorisation; a solution is accepted when its residual is as small as a
    backward-stable solver's (``_accurate``):

    1. block Levinson recursion (``_block_levinson``), while its prediction-error covariances
       stay positive definite;
    2. else the generalized Schur algorithm (``_schur_solve``: a Cholesky factorisation, stable
       where Levinson is not) on the system scaled to a unit diagonal; where ``G + eps I`` is not
       numerically positive definite (the recursion breaks down: references without energy in
       whole bands, to below roundoff) with the next loading of ``_SCHUR_LOADINGS`` (relative to
       each channel's energy, a backward error below the accepted one) on the diagonal;
    3. else densely as museval does (``_solve_dense``: LU, then least squares if exactly singular).
    """
    big_l = (blocks.shape[1] + 1) // 2
    p = blocks.shape[2]
    loaded = blocks.copy()
    loaded[:, big_l - 1] += _EPS * np.eye(p)
    sol = np.full(rhs.shape, np.nan)
    todo = np.ones(len(blocks), dtype=bool)
    if _SOLVER == "fast":
        with np.errstate(all="ignore"):
            fast, alive = _block_levinson(loaded, rhs)
            good = alive & _accurate(loaded, rhs, fast)
            sol[good] = fast[good]
            todo &= ~good
            scale = np.sqrt(np.diagonal(loaded[:, big_l - 1], axis1=1, axis2=2))  # (S, P)
            todo_schur = todo & np.isfinite(scale).all(1) & (scale > 0).all(1)
            for loading in _SCHUR_LOADINGS:
                idx = np.flatnonzero(todo_schur)
                if not idx.size:
                    break
                sc = scale[idx]
                trial = loaded[idx] / (sc[:, None, :, None] * sc[:, None, None, :])
                trial[:, big_l - 1] += loading * np.eye(p)
                x, ok = _schur_solve(trial, rhs[idx] / sc[:, None, :, None])
                x /= sc[:, None, :, None]
                ok &= _accurate(loaded[idx], rhs[idx], x)
                sol[idx[ok]] = x[ok]
                todo_schur[idx[ok]] = todo[idx[ok]] = False
    for s in np.flatnonzero(todo):
        sol[s] = _solve_dense(blocks[s], rhs[s])
    return sol


def _accurate(blocks: np.ndarray, rhs: np.ndarray, sol: np.ndarray) -> np.ndarray:
    """Per system, whether ``sol`` has the small backward error of a stable direct solver."""
    with np.errstate(all="ignore"):
        residual = np.abs(rhs - _block_toeplitz_matvec(blocks, sol)).max((1, 2, 3))
        big_l = (blocks.shape[1] + 1) // 2
        scale = np.abs(blocks[:, big_l - 1]).max((1, 2)) * np.abs(sol).sum((1, 2)).max(1)
        scale += np.abs(rhs).max((1, 2, 3))
        return np.isfinite(sol).all((1, 2, 3)) & (residual <= _FAST_TOL * scale)


def _block_levinson(blocks: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block Levinson (Wiggins-Robinson) solve of ``G c = d``, ``G[a, b] = R(a - b)``, batched.

    ``blocks (S, 2L - 1, P, P)`` (``blocks[:, k + L - 1] = R(k)``), ``rhs (S, L, P, Q)`` ->
    ``(c (S, L, P, Q), alive (S,))``. Forward predictors ``A`` (``G_n A = [Vf; 0 ...]``) and
    backward ones ``B`` (``G_n B = [... 0; Vb]``) grow one lag at a time; the solution grows with
    the backward ones. ``alive`` is False for a system whose prediction-error covariances ``Vf``,
    ``Vb`` stopped being positive definite (checked every ``_LEVINSON_CHECK`` lags; the recursion
    is then unstable, and stops once every system is).
    """
    nbatch, nlags, p, _ = blocks.shape
    big_l = (nlags + 1) // 2
    q = rhs.shape[3]
    alive = np.ones(nbatch, dtype=bool)
    # row[:, :, j P : (j + 1) P] = R(L - 1 - j): runs of consecutive lags are contiguous slices
    row = np.ascontiguousarray(blocks[:, ::-1].transpose(0, 2, 1, 3).reshape(nbatch, p, nlags * p))
    eye = np.eye(p)
    fwd = np.zeros((nbatch, big_l * p, p))  # A_0 .. A_n stacked, A_0 = I
    fwd[:, :p] = eye
    bwd = np.zeros((nbatch, 2 * big_l * p, p))  # B_0 .. B_n stacked from row `off`, B_n = I
    off = big_l * p
    bwd[:, off : off + p] = eye
    sol = np.zeros((nbatch, big_l * p, q))
    r0 = blocks[:, big_l - 1]
    v_f = r0.copy()
    v_b = r0.copy()
    try:
        sol[:, :p] = np.linalg.solve(r0, rhs[:, 0])
        for n in range(big_l - 1):
            if n % _LEVINSON_CHECK == 0:
                cov = np.concatenate([v_f, v_b])
                alive &= (np.linalg.eigvalsh(cov)[:, 0] > 0).reshape(2, nbatch).all(0)
                if not alive.any():
                    break
            m = (n + 1) * p
            a = fwd[:, :m]
            b = bwd[:, off : off + m]
            lags_pos = row[:, :, (big_l - 2 - n) * p : (big_l - 1) * p]  # R(n + 1) ... R(1)
            lags_neg = row[:, :, big_l * p : (big_l + n + 1) * p]  # R(-1) ... R(-(n + 1))
            delta_f = lags_pos @ a
            delta_b = lags_neg @ b
            k_f = -np.linalg.solve(v_b, delta_f)
            k_b = -np.linalg.solve(v_f, delta_b)
            shift = b @ k_f
            off -= p  # B_new = [0; B] + [A; 0] k_b
            bwd[:, off : off + m] += a @ k_b
            fwd[:, p : m + p] += shift  # A_new = [A; 0] + [0; B] k_f
            v_f = v_f + delta_b @ k_f
            v_b = v_b + delta_f @ k_b
            err = rhs[:, n + 1] - lags_pos @ sol[:, :m]
            sol[:, : m + p] += bwd[:, off : off + m + p] @ np.linalg.solve(v_b, err)
        alive &= (np.linalg.eigvalsh(np.concatenate([v_f, v_b]))[:, 0] > 0).reshape(2, nbatch).all(0)
    except np.linalg.LinAlgError:
        alive[:] = False
    return sol.reshape(nbatch, big_l, p, q), alive


def _schur_solve(blocks: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``G c = d`` for symmetric positive definite block-Toeplitz ``G[a, b] = R(a - b)``, batched:
    ``blocks (S, 2L - 1, P, P)`` (``blocks[:, k + L - 1] = R(k)``), ``rhs (S, L, P, Q)``.

    Returns ``(c (S, L, P, Q), ok (S,))``; ``ok`` is False where the recursion broke down (``G``
    not numerically positive definite; ``c`` is then meaningless). The generalized Schur algorithm
    computes a block Cholesky factor ``G = R^T R`` (``R`` block upper triangular) block row by
    block row from the generator ``G - Z G Z^T = U^T U - V^T V`` (``Z`` the block shift). Each
    step's J-orthogonal rotation is applied in its hyperbolic CS form -- orthogonal transforms of
    the ``U`` and ``V`` rows around scalar hyperbolic rotations in mixed form -- which keeps the
    factorisation error at a Cholesky factorisation's level where Levinson recursion (or the block
    rotation in one piece) lets it grow. ``R^T z = d`` and ``R c = z`` are then solved by chunks of
    block rows.
    """
    nbatch, nlags, p, _ = blocks.shape
    big_l = (nlags + 1) // 2
    n = big_l * p
    q = rhs.shape[3]
    tr = (0, 2, 1)
    ok = np.ones(nbatch, dtype=bool)
    # first block row of G: G[0, m] = R(-m)
    first = np.ascontiguousarray(blocks[:, big_l - 1 :: -1].transpose(0, 2, 1, 3)).reshape(nbatch, p, n)
    r0 = first[:, :, :p]
    try:
        c = np.linalg.cholesky(r0)  # G[0, 0] = c c^T
    except np.linalg.LinAlgError:
        c = np.empty((nbatch, p, p))
        for s in range(nbatch):
            try:
                c[s] = np.linalg.cholesky(r0[s])
            except np.linalg.LinAlgError:
                c[s], ok[s] = np.eye(p), False
    # a pivot lost to roundoff (exactly dependent channels) is a breakdown too
    diag = np.diagonal(r0, axis1=1, axis2=2)
    ok &= np.diagonal(c, axis1=1, axis2=2).min(1) ** 2 > _SCHUR_MIN_PIVOT * diag.max(1)
    # block rows of R by chunks of about _SCHUR_CHUNK rows: chunk c holds block rows k0 .. k1, columns
    # k0 p .. (zero left of the block diagonal), for the triangular solves
    step = max(1, _SCHUR_CHUNK // p)
    chunks = [np.zeros((nbatch, (min(big_l, k + step) - k) * p, n - k * p)) for k in range(0, big_l, step)]

    def row(k: int) -> np.ndarray:  # block row k of R, columns k p ..: (S, p, n - k p)
        i = (k % step) * p
        return chunks[k // step][:, i : i + p, i:]

    u = row(0)
    u[:] = np.linalg.solve(c, first)  # the first block row of R: U = c^{-1} G[0, :]
    # the generator, shifted: rows [:p] U (shifted by one block), rows [p:] V (= U with its first
    # block zeroed, stored without it); step k reads columns [:n - k p]
    gen = np.empty((nbatch, 2 * p, n))
    gen[:, :p, : n - p] = u[:, :, : n - p]
    gen[:, p:, : n - p] = u[:, :, p:]
    coef = np.empty((nbatch, p, 2 * p))
    eye = np.eye(p)
    for k in range(1, big_l):
        w = n - k * p
        x = gen[:, :, :w]
        # rotate the generator so that the first block of V vanishes: with K = B A^{-1} = Uk S Vk^T
        # (A, B the first blocks of U, V), rotate the U rows by Vk^T and the V rows by Uk^T, then
        # row i of each by the hyperbolic rotation of tanh = S_i, in mixed form:
        # U' = (Vk^T U - S Uk^T V) / C, V' = C Uk^T V - S U' with C = sqrt(1 - S^2)
        kk = np.linalg.solve(x[:, :p, :p].transpose(tr), x[:, p:, :p].transpose(tr)).transpose(tr)
        uk, sig, vkt = np.linalg.svd(kk)
        cs2 = (1 - sig) * (1 + sig)
        if not cs2.min() > _SCHUR_MIN_PIVOT:
            bad = ~(cs2 > _SCHUR_MIN_PIVOT).all(1)
            ok &= ~bad
            if not ok.any():
                break
            gen[bad, p:] = 0  # the failed systems run on harmlessly (V = 0)
            uk[bad], sig[bad], vkt[bad] = eye, 0, eye
            cs2 = (1 - sig) * (1 + sig)
        cs = np.sqrt(cs2)[:, :, None]
        sig = sig[:, :, None]
        ukt = uk.transpose(tr)
        np.divide(vkt, cs, out=coef[:, :, :p])
        np.multiply(ukt, -sig / cs, out=coef[:, :, p:])
        y1 = row(k)
        _matmul(coef, x, out=y1)
        if k < big_l - 1:
            gen[:, :p, :w] = y1  # U' shifted for the next step; columns [p:w] now hold [U'; V]
            np.multiply(eye, -sig, out=coef[:, :, :p])
            np.multiply(ukt, cs, out=coef[:, :, p:])
            _matmul(coef, gen[:, :, p:w], out=gen[:, p:, : w - p])  # V' = C Uk^T V - S U'
    x = np.full((nbatch, n, q), np.nan)
    if ok.any():
        x[:] = _block_triangular_solve(chunks, rhs.reshape(nbatch, n, q))
    ok &= np.isfinite(x).all((1, 2))
    return x.reshape(rhs.shape), ok


def _block_triangular_solve(chunks: Sequence[np.ndarray], rhs: np.ndarray) -> np.ndarray:
    """``R^{-1} R^{-T} rhs`` for upper triangular ``R`` given by chunks of rows: chunk ``c``
    ``(S, m_c, n - r_c)`` holds rows ``r_c .. r_c + m_c``, columns ``r_c ..`` (its first ``m_c``
    columns upper triangular, or block upper triangular); ``rhs (S, n, Q)``."""
    z = rhs.copy()
    bounds = np.cumsum([0, *(c.shape[1] for c in chunks)])
    tr = (0, 2, 1)
    for c, r0, r1 in zip(chunks, bounds[:-1], bounds[1:]):  # R^T z = rhs, right-looking
        m = r1 - r0
        z[:, r0:r1] = np.linalg.solve(c[:, :, :m].transpose(tr), z[:, r0:r1])
        z[:, r1:] -= _matmul(c[:, :, m:].transpose(tr), z[:, r0:r1])
    for c, r0, r1 in zip(chunks[::-1], bounds[-2::-1], bounds[:0:-1]):  # R x = z
        m = r1 - r0
        z[:, r0:r1] = np.linalg.solve(c[:, :, :m], z[:, r0:r1] - _matmul(c[:, :, m:], z[:, r1:]))
    return z


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for stacked ``(S, M, K) @ (S, K, N)``, in pieces small enough that OpenBLAS runs each
    on one thread (``M K N <= _BLAS_ONE_THREAD``): on matrices this thin, threads only add
    synchronisation, and stall whenever the machine is busy."""
    m, k = a.shape[-2:]
    n = b.shape[-1]
    if out is None:
        out = np.empty((*a.shape[:-1], n), dtype=np.result_type(a, b))
    if m >= n:
        piece = max(1, _BLAS_ONE_THREAD // max(1, k * n))
        for i in range(0, m, piece):
            np.matmul(a[..., i : i + piece, :], b, out=out[..., i : i + piece, :])
    else:
        piece = max(1, _BLAS_ONE_THREAD // max(1, k * m))
        for j in range(0, n, piece):
            np.matmul(a, b[..., j : j + piece], out=out[..., j : j + piece])
    return out


def _block_toeplitz_matvec(blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``y[a] = sum_b R(a - b) x[b]`` for ``blocks (..., 2L - 1, P, P)``, ``x (..., L, P, Q)``, via FFT."""
    nlags = blocks.shape[-3]
    big_l = x.shape[-3]
    nfft = _next_fast_len(nlags + big_l - 1)
    spectra = np.matmul(scipy.fft.rfft(blocks, n=nfft, axis=-3), scipy.fft.rfft(x, n=nfft, axis=-3))
    return scipy.fft.irfft(spectra, n=nfft, axis=-3)[..., big_l - 1 : 2 * big_l - 1, :, :]


def _solve_dense(blocks: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """museval's ``numpy.linalg.solve(G + eps I, D)`` on the dense Gram matrix (LU with partial
    pivoting); least squares on ``G`` (museval's intended fallback) where that is exactly singular."""
    nlags, p, _ = blocks.shape
    big_l = (nlags + 1) // 2
    q = rhs.shape[2]
    gram = _toeplitz_gram(blocks, big_l)
    d = rhs.reshape(big_l * p, q)
    loaded = gram + _EPS * np.eye(big_l * p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        lu, piv = scipy.linalg.lu_factor(loaded, overwrite_a=True, check_finite=False)
    if np.all(np.diagonal(lu) != 0):
        sol = scipy.linalg.lu_solve((lu, piv), d, check_finite=False)
    else:
        sol = np.linalg.lstsq(gram, d, rcond=None)[0]
    return sol.reshape(big_l, p, q)


def _toeplitz_gram(blocks: np.ndarray, filters_len: int) -> np.ndarray:
    """The dense ``G[(a, p), (b, q)] = R(a - b)`` from ``blocks (2L - 1, P, P)``."""
    _, p, q = blocks.shape
    windows = np.lib.stride_tricks.sliding_window_view(blocks[::-1], filters_len, axis=0)
    # windows[i, p, q, b] = R(L - 1 - i - b); i = L - 1 - a gives R(a - b)
    gram = np.ascontiguousarray(windows[::-1].transpose(0, 1, 3, 2))  # (a, p, b, q)
    return gram.reshape(filters_len * p, filters_len * q)


def _frame_metrics(
    ref_cm: np.ndarray,
    est_cm: np.ndarray,
    nsrc: int,
    frames: list[tuple[int, int]],
    filter_spectra: tuple[int, np.ndarray],
    sources_version: bool,
) -> np.ndarray:
    """Metrics of equal-length ``frames`` of channel-major ``ref_cm``/``est_cm`` ``(P, nsamples)``
    -> ``(4, nsrc, len(frames))`` (SDR, ISR, SIR, SAR)."""
    nfft, _ = filter_spectra
    width = frames[0][1] - frames[0][0]
    idx = np.array([f[0] for f in frames])[:, None] + np.arange(width)[None, :]  # (T, W)
    s = ref_cm[:, idx]  # (P, T, W): (source, channel), frame, sample
    e = est_cm[:, idx]
    s_f = _rfft(s, nfft).transpose(1, 0, 2)  # (T, P, F)
    e_f = _rfft(e, nfft).transpose(1, 0, 2)
    return _spectra_metrics(s, e, s_f, e_f, filter_spectra, nsrc, sources_version)


def _spectra_metrics(
    s: np.ndarray,
    e: np.ndarray,
    s_f: np.ndarray,
    e_f: np.ndarray,
    filter_spectra: tuple[int, np.ndarray],
    nsrc: int,
    sources_version: bool,
) -> np.ndarray:
    """Metrics of frames ``s``/``e`` ``(P, T, W)`` with spectra ``s_f``/``e_f`` ``(T, P, F)``
    -> ``(4, nsrc, T)``.

    The projections (full convolutions of each reference frame with the filters, ``W + L - 1``
    samples) stay in the frequency domain, a band of frequencies at a time; their energies come
    from Parseval's identity.
    """
    nfft, filters_f = filter_spectra
    p, t, _ = s.shape
    nchan = p // nsrc
    nfreq = s_f.shape[2]
    # per channel: projection on all references, on the own source, interference, artifacts, and
    # own projection minus the reference (ISR) or estimate minus own projection (sources version)
    energies = np.zeros((t, 5, 2 * p))  # real and imaginary parts apart
    band = max(1, _SPECTRA_BAND_BYTES // (5 * 16 * t * p))
    z = np.empty((band, t, 5, p), dtype=np.complex128)
    for f0 in range(0, nfreq, band):
        f1 = min(nfreq, f0 + band)
        zc = z[: f1 - f0]
        sc = s_f[:, :, f0:f1].transpose(2, 0, 1)  # (band, T, P)
        ec = e_f[:, :, f0:f1].transpose(2, 0, 1)
        np.matmul(sc, filters_f[:, :, f0:f1].transpose(2, 0, 1), out=zc[:, :, :2].reshape(f1 - f0, t, 2 * p))
        np.subtract(zc[:, :, 0], zc[:, :, 1], out=zc[:, :, 2])
        np.subtract(ec, zc[:, :, 0], out=zc[:, :, 3])
        if sources_version:
            np.subtract(ec, zc[:, :, 1], out=zc[:, :, 4])
        else:
            np.subtract(zc[:, :, 1], sc, out=zc[:, :, 4])
        zr = zc.view(np.float64)
        np.multiply(zr, zr, out=zr)
        if f0 == 0:  # Parseval: the DC and Nyquist bins count once, the others twice
            zr[0] /= 2
        if f1 == nfreq and nfft % 2 == 0:
            zr[-1] /= 2
        energies += zr.sum(0)
    energies = energies.reshape(t, 5, p, 2).sum(3).transpose(1, 0, 2) * (2.0 / nfft)
    e_all, e_own, e_interf, e_artif, e_dist = energies.reshape(5, t, nsrc, nchan).sum(3)
    if sources_version:
        sdr = _db(e_own, e_dist)
        isr = np.full_like(sdr, np.nan)
    else:
        dist = e - s
        e_true = np.einsum("ptw,ptw->tp", s, s).reshape(t, nsrc, nchan).sum(2)
        sdr = _db(e_true, np.einsum("ptw,ptw->tp", dist, dist).reshape(t, nsrc, nchan).sum(2))
        isr = _db(e_true, e_dist)
    sir = _db(e_own, e_interf)
    sar = _db(e_all, e_artif)
    return np.stack([sdr, isr, sir, sar]).transpose(0, 2, 1)


def _db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``10 log10(num / den)``; ``+inf`` where ``den == 0`` (museval's ``_safe_db``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10 * np.log10(num / den)
    return np.where(den == 0, np.inf, out)


def _filter_spectra(filters: np.ndarray, width: int) -> tuple[int, np.ndarray]:
    """FFT size for frames of ``width`` samples (long enough for their full convolutions with the
    filters) and the spectra ``(P, 2P, F)`` of ``filters (L, P, 2P)`` at that size."""
    nfft = _next_fast_len(width + filters.shape[0] - 1)
    return nfft, _rfft(filters.transpose(1, 2, 0), nfft)


def _sq(z: np.ndarray) -> np.ndarray:
    return z * z


def _workers() -> int:
    return max(1, torch.get_num_threads())


def _rfft(x: np.ndarray, n: int | None = None) -> np.ndarray:
    """Real FFT along the last axis (zero-padded to ``n``)."""
    return scipy.fft.rfft(x, n=n, axis=-1, workers=_workers())


def _irfft(x: np.ndarray, n: int) -> np.ndarray:
    return scipy.fft.irfft(x, n=n, axis=-1, workers=_workers())


def _next_fast_len(n: int) -> int:
    return int(scipy.fft.next_fast_len(int(n), real=True))
