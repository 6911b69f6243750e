"""``hybrids music evaluate``: separate a MUSDB18 / MUSDB18-HQ subset (or any folder of stems) and
score it with BSS Eval v4, as the papers do; resumable, with the report tables and plots.

    hybrids music evaluate --musdb ~/data/musdb18hq -n htdemucs -o results/htdemucs
    hybrids music evaluate --musdb my_stems/ -n runs/exp1/best --tracks "Song A" "Song B"

For every track: the mixture goes through ``separate``'s engine (``Separator``: same chunking,
shifts and precision options), each estimate is scored against its reference with
``hybrids.evaluation.bsseval`` (museval's exact v4 metrics, 1 s frames) and the MDX/SDX uSDR, and
the scores are written at once, museval's way: ``OUT/museval/<subset>/<track>.json`` (readable by
museval's ``EvalStore``/``TrackStore`` tooling) plus ``OUT/usdr/<subset>/<track>.json``. A track whose
two files exist is not separated again, so an interrupted run resumes where it stopped. At the end
the report is (re)written from all scored tracks (``hybrids.evaluation.separation_report``):
``tracks.csv/.md``, ``summary.csv/.md`` (Table 1 of the HT Demucs paper: SDR "All" and per
source) and ``boxplot_<metric>.png``.

Sources: a model's estimate is scored against the reference of the same name. A model source the
dataset lacks (e.g. guitar and piano of ``htdemucs_6s`` on MUSDB) is added to the estimate of
"other", where MUSDB keeps those instruments; a dataset source the model cannot estimate is an error.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError

logger = logging.getLogger("hybrids.music")

DEFAULT_MODEL = "music/htdemucs"

__all__ = ["EvaluateConfig", "EvaluateResult", "evaluate", "evaluate_folder", "score_track"]


@dataclass
class EvaluateConfig:
    """What ``hybrids music evaluate`` scores: the tracks of ``musdb`` (a MUSDB18(-HQ) root's
    ``subset``, or a folder of track folders; ``tracks``: only these names), separated by the model
    ``name`` (with ``weights``/``repo``, as ``separate -n``) with ``Separator``'s options; the report
    goes to ``out`` (default ``evaluation/<model>``). ``precision``: ``fp32``/``bf16`` or Lightning's
    ``32-true``/``bf16-mixed``."""

    musdb: Path
    name: str = DEFAULT_MODEL
    weights: str | None = None
    repo: Path | None = None
    subset: str = "test"
    tracks: list[str] | None = None
    out: Path | None = None
    device: str = "cpu"
    shifts: int = 1
    overlap: float = 0.25
    precision: str = "fp32"
    jobs: int | None = None
    seed: int = 0
    plots: bool = True

    def __post_init__(self) -> None:
        self.musdb = Path(self.musdb)
        self.name = str(self.name)
        self.precision = {"32-true": "fp32", "32": "fp32", "bf16-mixed": "bf16", "bf16-true": "bf16"}.get(
            self.precision, self.precision
        )

    def check(self) -> None:
        if self.shifts < 0 or not 0 <= self.overlap < 1:
            raise InputError("--shifts must be >= 0 and --overlap in [0, 1)")
        if self.precision not in ("fp32", "bf16"):
            raise InputError(
                f"--precision must be fp32 or bf16 (or 32-true, bf16-mixed), got {self.precision!r}"
            )
        if self.subset not in ("train", "test"):
            raise InputError(f"--subset must be train or test, got {self.subset!r}")
        if self.jobs is not None and self.jobs < 1:
            raise InputError(f"--jobs must be >= 1, got {self.jobs}")


@dataclass
class EvaluateResult:
    out: Path  # the report folder
    summary: dict[str, Any]  # bsseval.aggregate_tracks of every scored track


def evaluate(config: EvaluateConfig) -> EvaluateResult:
    """Separate and score every track not yet scored in the report folder, then (re)write the
    report over all of them (module docstring)."""
    from hybrids.apps.music.names import model_folder_name
    from hybrids.apps.music.separate import Separator

    config.check()
    tracks = _open_tracks(config.musdb, config.subset, config.tracks)
    method = model_folder_name(config.name, weights=config.weights, repo=config.repo)
    out = Path(config.out) if config.out is not None else Path("evaluation") / method
    separator = Separator(
        config.name,
        weights=config.weights,
        repo=config.repo,
        device=config.device,
        shifts=config.shifts,
        overlap=config.overlap,
        precision=config.precision,
        seed=config.seed,
        jobs=config.jobs,
    )
    summary = evaluate_folder(tracks, separator, out, subset=config.subset, method=method, plots=config.plots)
    return EvaluateResult(out, summary)


def _open_tracks(root: Path, subset: str, names: Sequence[str] | None) -> list[Any]:
    from hybrids.datasets.musdb import MusdbError, open_musdb, open_stems_folder

    if not root.is_dir():
        raise InputError(f"{root}: no such folder (--musdb expects a MUSDB18 root or a folder of stems)")
    try:
        if (root / subset).is_dir() or (root / "train").is_dir() or (root / "test").is_dir():
            tracks = open_musdb(root, subset=subset)
        else:
            tracks = open_stems_folder(root)
    except MusdbError as exc:
        raise InputError(str(exc)) from None
    if names:
        known = {t.name: t for t in tracks}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InputError(f"{root}: no track named {', '.join(map(repr, unknown))} in {subset}")
        tracks = [known[n] for n in names]
    if not tracks:
        raise InputError(f"{root}: no tracks found in {subset}")
    return tracks


def evaluate_folder(
    tracks: Sequence[Any],
    separator: Any,
    out: Path,
    *,
    subset: str = "test",
    method: str = "model",
    plots: bool = True,
) -> dict[str, Any]:
    """Score every track not yet scored in ``out``, then write the report over all of them;
    returns the aggregate (``bsseval.aggregate_tracks``)."""
    import numpy as np

    from hybrids.apps.core.progress import progress_bar
    from hybrids.evaluation.bsseval import aggregate_tracks, load_museval_json, save_museval_json
    from hybrids.evaluation.separation_report import write_separation_report

    scores: dict[str, dict] = {}
    usdrs: dict[str, dict[str, float]] = {}
    bar = progress_bar(total=len(tracks), desc="tracks", unit="track")
    try:
        for track in tracks:
            json_path = out / "museval" / subset / f"{track.name}.json"
            usdr_path = out / "usdr" / subset / f"{track.name}.json"
            if json_path.exists() and usdr_path.exists():
                scores[track.name] = load_museval_json(json_path)
                usdrs[track.name] = json.loads(usdr_path.read_text())
                logger.debug("%s: already scored, skipped", track.name)
            else:
                metrics, usdr = score_track(track, separator)
                save_museval_json(json_path, track.name, metrics)
                _write_json(usdr_path, usdr)
                # the report is made from the files (museval's 1e-5 rounding), resumed or not
                scores[track.name], usdrs[track.name] = load_museval_json(json_path), usdr
                sdr = {
                    s: round(float(np.nanmedian(m["SDR"])), 2) for s, m in metrics.items() if _any(m["SDR"])
                }
                logger.info("%s: SDR %s", track.name, sdr)
            bar.update(1)
    finally:
        bar.close()
    write_separation_report(out, scores, usdrs, method=method, sources=separator.sources, plots=plots)
    return aggregate_tracks(scores, usdrs)


def _any(values: Sequence[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def _write_json(path: Path, data: Any) -> None:
    from hybrids.datasets.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def score_track(track: Any, separator: Any) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Separate ``track.load()["mixture"]`` and score every reference source: returns
    ``({source: {"SDR"|"SIR"|"SAR"|"ISR": frames}}, {source: uSDR})``."""
    import numpy as np
    import torch

    from hybrids.datasets.audio import resample
    from hybrids.evaluation.bsseval import evaluate, usdr

    audio = track.load()
    mixture = audio.pop("mixture")
    rate = int(track.samplerate)
    references = {name: wav for name, wav in audio.items()}
    try:
        stems = separator.separate_tensor(mixture, rate, desc=track.name)
    except InputError as exc:
        raise InputError(f"{track.name}: {exc}") from None
    if separator.samplerate != rate:
        stems = {name: resample(wav, separator.samplerate, rate) for name, wav in stems.items()}
    estimates = {}
    extra = [s for s in stems if s not in references]
    for source, reference in references.items():
        if source not in stems and not (source == "other" and extra):
            raise InputError(
                f"{track.name}: the model has no estimate for source {source!r} "
                f"(it separates {', '.join(separator.sources)})"
            )
        estimate = stems[source].clone() if source in stems else torch.zeros_like(reference)
        if source == "other":
            for name in extra:  # e.g. guitar and piano of htdemucs_6s: MUSDB keeps them in "other"
                estimate += stems[name]
        estimates[source] = estimate
    if extra and "other" not in references:
        logger.warning(
            "%s: estimates of %s have no reference and are not scored", track.name, ", ".join(extra)
        )
    names = list(references)
    length = min(w.shape[-1] for w in references.values())
    ref = np.stack([references[n][:, :length].T.double().numpy() for n in names])  # (nsrc, T, C)
    est = np.stack([_fit(estimates[n], length).T.double().numpy() for n in names])
    sdr, isr, sir, sar = evaluate(ref, est)
    metrics = {
        name: {"SDR": sdr[k].tolist(), "SIR": sir[k].tolist(), "SAR": sar[k].tolist(), "ISR": isr[k].tolist()}
        for k, name in enumerate(names)
    }
    return metrics, {name: float(v) for name, v in zip(names, usdr(ref, est))}


def _fit(wav: Any, length: int) -> Any:
    """``wav`` ``(channels, samples)`` cut or zero-padded to ``length`` samples."""
    import torch.nn.functional as F

    if wav.shape[-1] >= length:
        return wav[..., :length]
    return F.pad(wav, (0, length - wav.shape[-1]))
