"""``hybrids music bench``: our separation (engine + HT Demucs) beside demucs 4.1.0's, in one run.

Both implementations get the same weights and the same real audio:

* weights: one demucs ``.th`` package (the official layout, see ``weights.py``), either the file
  given with ``--weights`` or random weights written by :func:`random_demucs_package` (HT Demucs
  at a preset, with every branch made visible by :func:`randomize_`, rounded to float16 as the
  releases are). Both sides read the file with our restricted unpickler; demucs's model is then
  built from the package's ``kwargs`` and ``state`` by ``demucs.states.load_model`` (never
  ``torch.load(weights_only=False)`` on a user's file);
* audio: ``--track`` (default: ``kevin_macleod-vibe_ace.ogg`` from the project's shared data),
  optionally an excerpt, normalised as demucs's ``Separator`` does; both engines separate the
  same normalised mix with the same shift offset (``random.seed(seed)`` before demucs's
  ``apply_model``; ours draws the same offset from ``seed``).

Each case (demucs fp32, ours at each precision) runs in a fresh subprocess through
``hybrids.evaluation.bench.timing.measure_case``: one untimed warm-up call (which also saves
the stems for the parity check), then the best of ``repeats`` timed calls and the peak resident
memory above the baseline after the warm-up (model and input are in the baseline). Parity is
reported per stem as ``max |ours - demucs| / max |demucs|`` and, for bf16, as the SNR in dB
against our fp32 stems.

``--whole-process`` (:func:`bench_whole_process`) times the commands instead, as a user runs them:
each run is a fresh process, our ``separate`` console script or the demucs 4.1.0 CLI, both given
the same checkpoint as a demucs repository (``--repo DIR -n SIGNATURE``), the same track and the
same ``--shifts``/``--overlap``/``--segment``; start-up, imports, decoding, model loading, thread
set-up, the forwards and the encoding of the stems are all inside. Cases alternate run by run
(the order rotates each round), after one untimed warm-up run of each on a 2-second excerpt
(page cache, lazy initialisation); the table reports the median wall time, CPU time (user +
system, children included) and peak resident memory of each case's runs, and their ratios to
demucs's.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybrids.apps.core.errors import InputError
from hybrids.evaluation.bench.timing import machine_info

__all__ = [
    "DEFAULT_TRACK",
    "bench_music",
    "bench_whole_process",
    "default_track",
    "demucs_case",
    "format_table",
    "format_whole_process_table",
    "hybrids_case",
    "randomize_",
    "random_demucs_package",
    "run_music_benchmark",
    "run_whole_process_benchmark",
    "write_demucs_package",
]

DEFAULT_TRACK = "kevin_macleod-vibe_ace.ogg"
PRESETS = ("htdemucs", "htdemucs_6s", "tiny")


# -- inputs --------------------------------------------------------------------------------------
def default_track() -> Path:
    """``$HYBRIDS_SHARED_DATA/audio/<DEFAULT_TRACK>``, else ``../shared/data/audio/`` beside the
    repository root (a source checkout)."""
    env = os.environ.get("HYBRIDS_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return root / "audio" / DEFAULT_TRACK


def randomize_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Move HT Demucs's near-zero initial values away from zero (layer scales start at 1e-4/1e-3,
    norms at 1/0), so every branch contributes visibly to the output a parity check compares."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".scale"):
                param.copy_(torch.rand(param.shape, generator=gen) * 0.5 + 0.25)
            elif name.endswith("bias") or "norm" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


def write_demucs_package(
    folder: str | Path,
    kwargs: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    signature: str,
    klass: Any = None,
    training_args: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{klass, args, kwargs, state, training_args}`` as demucs's ``save_with_checksum``
    does: ``folder/<signature>-<first 8 hex of the file's sha256>.th``. ``state`` is stored as
    given (the releases hold float16 tensors); ``klass`` defaults to ``demucs.htdemucs.HTDemucs``
    when demucs is installed."""
    if klass is None:
        try:
            import demucs.htdemucs

            klass = demucs.htdemucs.HTDemucs
        except ImportError:  # a package without its class: our reader accepts it, demucs cannot
            klass = None
    package = {
        "klass": klass,
        "args": (),
        "kwargs": dict(kwargs),
        "state": dict(state),
        "training_args": dict(training_args or {}),
    }
    buffer = io.BytesIO()
    torch.save(package, buffer)
    data = buffer.getvalue()
    path = Path(folder) / f"{signature}-{hashlib.sha256(data).hexdigest()[:8]}.th"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def random_demucs_package(folder: str | Path, preset: str = "htdemucs", seed: int = 0) -> Path:
    """A demucs package of HT Demucs at ``preset`` with random weights (:func:`randomize_`),
    rounded to float16 as the released files are."""
    from hybrids.apps.music.htdemucs import HTDemucs, HTDemucsConfig

    config = HTDemucsConfig.from_preset(preset)
    torch.manual_seed(seed)
    model = randomize_(HTDemucs(config), seed + 1)
    state = {k: v.detach().to("cpu", torch.half) for k, v in model.state_dict().items()}
    signature = hashlib.sha1(f"{preset}:{seed}".encode()).hexdigest()[:8]
    return write_demucs_package(
        folder, config.to_demucs_kwargs(), state, signature=signature, training_args={"seed": seed}
    )


def _normalised_mix(
    track: str, offset: float, seconds: float | None, samplerate: int, channels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mix (1, C, T), mean, std)``: the excerpt normalised as demucs's ``Separator`` does."""
    from hybrids.datasets.audio import load_audio

    wav, _ = load_audio(track, samplerate=samplerate, channels=channels, offset=offset, duration=seconds)
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    return ((wav - mean) / std)[None], mean, std


def _saver(out: str | None, mean: torch.Tensor, std: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """Save the first call's stems (de-normalised, ``(sources, C, T)``) to ``out``; later calls
    (the timed ones) save nothing."""
    saved = [out is None]

    def save(y: torch.Tensor) -> None:
        if not saved[0]:
            torch.save((y[0] * std + mean).contiguous(), str(out))
            saved[0] = True

    return save


# -- cases (module level: measure_case imports them in a fresh process) -------------------------
def demucs_case(
    *,
    package: str,
    track: str,
    offset: float = 0.0,
    seconds: float | None = None,
    shifts: int = 1,
    overlap: float = 0.25,
    seed: int = 0,
    out: str | None = None,
) -> Callable[[], None]:
    """demucs 4.1.0: ``demucs.apply.apply_model(model, mix, shifts, split=True, overlap)``."""
    import random
    import warnings

    from hybrids.apps.music.weights import load_demucs_package

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import demucs.apply
        import demucs.htdemucs
        import demucs.states

        loaded = load_demucs_package(package)  # restricted unpickler; klass is a stub
        model = demucs.states.load_model({**loaded, "klass": demucs.htdemucs.HTDemucs}).eval()
    mix, mean, std = _normalised_mix(track, offset, seconds, model.samplerate, model.audio_channels)
    save = _saver(out, mean, std)

    def run() -> None:
        random.seed(seed)  # demucs draws its shift offsets from the global `random`
        with torch.no_grad():
            y = demucs.apply.apply_model(model, mix, shifts=shifts, split=True, overlap=overlap)
        save(y)

    return run


def hybrids_case(
    *,
    package: str,
    track: str,
    offset: float = 0.0,
    seconds: float | None = None,
    shifts: int = 1,
    overlap: float = 0.25,
    seed: int = 0,
    precision: str = "fp32",
    batch_segments: int | None = None,
    out: str | None = None,
) -> Callable[[], None]:
    """Ours: ``hybrids.apps.music.separate.apply_model`` on the package read by our loader."""
    from hybrids.apps.music.engine import apply_model
    from hybrids.apps.music.weights import model_from_demucs_package

    model = model_from_demucs_package(package)
    mix, mean, std = _normalised_mix(
        track, offset, seconds, model.config.samplerate, model.config.audio_channels
    )
    save = _saver(out, mean, std)

    def run() -> None:
        y = apply_model(
            model,
            mix,
            shifts=shifts,
            split=True,
            overlap=overlap,
            seed=seed,
            precision=precision,
            batch_segments=batch_segments,
        )
        save(y)

    return run


# -- the benchmark -------------------------------------------------------------------------------
def _max_rel_diff(ours: torch.Tensor, reference: torch.Tensor, sources: Sequence[str]) -> dict[str, float]:
    """Per stem ``max |ours - reference| / max |reference|``."""
    return {
        name: float((ours[k] - reference[k]).abs().max() / reference[k].abs().max().clamp_min(1e-12))
        for k, name in enumerate(sources)
    }


def _snr_db(estimate: torch.Tensor, reference: torch.Tensor, sources: Sequence[str]) -> dict[str, float]:
    """Per stem ``10 log10(sum reference^2 / sum (estimate - reference)^2)`` (inf when equal)."""
    result = {}
    for k, name in enumerate(sources):
        noise = float((estimate[k].double() - reference[k].double()).square().sum())
        signal = float(reference[k].double().square().sum())
        result[name] = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)
    return result


def bench_music(
    track: str | Path | None = None,
    seconds: float | None = None,
    repeats: int = 1,
    precision: Sequence[str] = ("fp32", "bf16"),
    threads: int | None = None,
    *,
    weights: str | Path | None = None,
    preset: str = "htdemucs",
    offset: float = 0.0,
    shifts: int = 1,
    overlap: float = 0.25,
    seed: int = 0,
    batch_segments: int | None = None,
    timeout_s: float | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time and compare demucs 4.1.0 and our separation of ``track`` on the same weights.

    ``weights``: a demucs ``.th`` package (default: random weights at ``preset``). ``seconds``
    (from ``offset``) limits the audio; ``None`` is the whole track. ``precision``: ours runs at
    each; demucs at fp32. ``threads``: torch threads per case (default: all cores). Returns one
    row per case: ``impl``, ``precision``, ``time_s`` (best of ``repeats``), ``realtime_x``
    (audio seconds per second), ``time_vs_demucs`` and ``peak_vs_demucs`` (ours / demucs),
    ``peak_mib``, ``max_abs_diff_rel`` (per stem, vs demucs), ``snr_db`` (bf16 rows: per stem vs
    our fp32), or ``error`` when a case failed.
    """
    from hybrids.apps.music.weights import config_from_demucs_package, load_demucs_package
    from hybrids.evaluation.bench.timing import measure_case

    say = log or (lambda message: None)
    precisions = list(dict.fromkeys(precision))
    bad = [p for p in precisions if p not in ("fp32", "bf16")]
    if bad or not precisions:
        raise InputError(f"precision must be among fp32, bf16, got {', '.join(bad) or 'none'}")
    if repeats < 1:
        raise InputError(f"repeats must be >= 1, got {repeats}")
    if seconds is not None and seconds <= 0:
        raise InputError(f"seconds must be > 0, got {seconds}")
    if offset < 0:
        raise InputError(f"offset must be >= 0, got {offset}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    if weights is None and preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    track_path, audio_s = _check_track(track, offset, seconds)

    with tempfile.TemporaryDirectory(prefix="hybrids-music-bench-", dir=workdir) as tmp:
        folder = Path(tmp)
        if weights is None:
            package = random_demucs_package(folder, preset, seed)
            model_label = f"{preset} (random weights)"
        else:
            package = Path(weights)
            if not package.is_file():
                raise InputError(f"{package}: no such weights file")
            model_label = package.name
        # Read here first: unsafe or foreign files are refused before any subprocess starts.
        sources = list(config_from_demucs_package(load_demucs_package(package)).sources)
        common = dict(
            package=str(package),
            track=str(track_path),
            offset=float(offset),
            seconds=seconds,
            shifts=shifts,
            overlap=overlap,
            seed=seed,
        )
        batch = batch_segments
        cases: list[tuple[str, str, str, dict[str, Any]]] = [
            ("demucs", "fp32", "hybrids.apps.music.bench:demucs_case", {})
        ]
        cases += [
            ("hybrids", p, "hybrids.apps.music.bench:hybrids_case", {"precision": p, "batch_segments": batch})
            for p in precisions
        ]
        rows: list[dict[str, Any]] = []
        outputs: dict[tuple[str, str], torch.Tensor] = {}
        for impl, prec, target, extra in cases:
            out = folder / f"{impl}-{prec}.pt"
            say(f"measuring {impl} {prec} ({audio_s:.1f} s of audio, {model_label}) ...")
            started = time.perf_counter()
            measured = measure_case(
                target,
                {**common, **extra, "out": str(out)},
                repeats=repeats,
                threads=threads,
                timeout_s=timeout_s,
            )
            row: dict[str, Any] = {
                "impl": impl,
                "version": _version(impl),
                "precision": prec,
                "model": model_label,
                "track": track_path.name,
                "offset_s": float(offset),
                "audio_s": audio_s,
                "threads": threads or os.cpu_count(),
                "repeats": repeats,
                "wall_s": time.perf_counter() - started,
                **measured,
            }
            if "error" not in measured:
                row["realtime_x"] = audio_s / measured["time_s"] if measured["time_s"] > 0 else None
                if out.is_file():
                    outputs[(impl, prec)] = torch.load(out, weights_only=True)
            rows.append(row)

    base = rows[0] if "error" not in rows[0] else None
    reference = outputs.get(("demucs", "fp32"))
    our_fp32 = outputs.get(("hybrids", "fp32"))
    for row in rows:
        if "error" in row:
            continue
        if base is not None:
            row["time_vs_demucs"] = row["time_s"] / base["time_s"] if base["time_s"] > 0 else None
            if row.get("peak_mib") is not None and base.get("peak_mib"):
                row["peak_vs_demucs"] = row["peak_mib"] / base["peak_mib"]
        mine = outputs.get((row["impl"], row["precision"]))
        if mine is None:
            continue
        if reference is not None and row["impl"] != "demucs":
            row["max_abs_diff_rel"] = _max_rel_diff(mine, reference, sources)
        if our_fp32 is not None and row["impl"] == "hybrids" and row["precision"] != "fp32":
            row["snr_db"] = _snr_db(mine, our_fp32, sources)
    return rows


def _check_track(track: str | Path | None, offset: float, seconds: float | None) -> tuple[Path, float]:
    """``(path, seconds of audio benchmarked)``; one-line ``InputError`` for a missing or unreadable
    track or an offset past its end."""
    from hybrids.datasets.audio import AudioError, audio_info

    track_path = Path(track) if track is not None else default_track()
    if not track_path.is_file():
        hint = "" if track is not None else " (the default track; pass --track PATH)"
        raise InputError(f"{track_path}: no such audio file{hint}")
    try:
        info = audio_info(track_path)
    except AudioError as exc:
        raise InputError(str(exc)) from None
    duration = info.frames / info.samplerate
    if offset >= duration:
        raise InputError(f"{track_path}: offset {offset} s is past its end ({duration:.1f} s)")
    audio_s = min(seconds, duration - offset) if seconds is not None else duration - offset
    return track_path, audio_s


def _version(impl: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("demucs" if impl == "demucs" else "hybrids")
    except PackageNotFoundError:
        return None


def run_music_benchmark(**kwargs: Any) -> dict[str, Any]:
    """:func:`bench_music` with the machine and settings: ``{"machine", "settings", "rows"}``."""
    started = time.perf_counter()
    rows = bench_music(**kwargs)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items() if k not in ("log",)}
    if settings.get("track") is None:
        settings["track"] = str(default_track())
    if isinstance(settings.get("precision"), tuple):
        settings["precision"] = list(settings["precision"])
    return {
        "benchmark": "music",
        "machine": machine_info(),
        "settings": settings,
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _worst_parity(row: Mapping[str, Any]) -> tuple[str, str]:
    """The worst stem's ``max|diff|/peak`` and SNR against demucs, formatted (``-`` when not measured)."""
    diffs = row.get("max_abs_diff_rel") or {}
    snrs = row.get("snr_db") or {}
    worst_diff = max(diffs.values()) if diffs else None
    return _fmt(worst_diff, ".1e"), _fmt(min(snrs.values()) if snrs else None, ".1f")


def _aligned(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> list[str]:
    """Fixed-width rows: the two name columns left-aligned, numbers right-aligned, an error (one more
    field than the header) after them."""
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        + (f"  {r[len(header)]}" if len(r) > len(header) and r[len(header)] else "")
        for r in [header, *lines]
    ]


def format_table(result: Mapping[str, Any]) -> str:
    """A fixed-width text table: one line per case, parity as the worst stem."""
    header = ("impl", "precision", "time s", "x realtime", "x demucs", "peak MiB")
    header += ("max|diff|/peak", "min SNR dB")
    lines = []
    for row in result["rows"]:
        lines.append(
            (
                row["impl"],
                row["precision"],
                _fmt(row.get("time_s"), ".2f"),
                _fmt(row.get("realtime_x"), ".2f"),
                _fmt(row.get("time_vs_demucs"), ".2f"),
                _fmt(row.get("peak_mib"), ".0f"),
                *_worst_parity(row),
                row.get("error", ""),
            )
        )
    text = _aligned(header, lines)
    rows = result["rows"]
    if rows:
        first = rows[0]
        machine = result.get("machine", {})
        text.append(
            f"({first['model']}; {first['track']}, {first['audio_s']:.1f} s from {first['offset_s']:g} s; "
            f"{first['threads']} threads of {machine.get('cpu_count', '?')} cores; "
            f"best of {first['repeats']}; peak = RSS above the post-warm-up baseline)"
        )
        parity = [r for r in rows if r.get("max_abs_diff_rel")]
        for row in parity:
            per_stem = ", ".join(f"{k} {v:.1e}" for k, v in row["max_abs_diff_rel"].items())
            text.append(f"  {row['impl']} {row['precision']} max|diff|/peak vs demucs: {per_stem}")
            if row.get("snr_db"):
                snr = ", ".join(f"{k} {v:.1f}" for k, v in row["snr_db"].items())
                text.append(f"  {row['impl']} {row['precision']} SNR vs our fp32 (dB): {snr}")
    return "\n".join(text)


def save_result(result: Mapping[str, Any], path: str | Path) -> None:
    """Write ``result`` as JSON, atomically (non-finite numbers as strings)."""
    from hybrids.datasets.atomic import atomic_write_text

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    atomic_write_text(Path(path), json.dumps(clean(result), indent=2) + "\n")


# -- whole process: the commands as a user runs them ------------------------------------------------
WARMUP_SECONDS = 2.0


def _script(name: str, module_fallback: list[str]) -> list[str]:
    """The console script ``name`` installed beside this interpreter (a virtual environment's
    ``bin``), else this interpreter running ``module_fallback``."""
    import sys

    folder = Path(sys.executable).parent
    for candidate in (folder / name, folder / f"{name}.exe"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    return [sys.executable, *module_fallback]


def whole_process_command(
    impl: str,
    *,
    repo: str | Path,
    name: str,
    track: str | Path,
    out: str | Path,
    shifts: int = 1,
    overlap: float = 0.25,
    segment: float | None = None,
    precision: str = "fp32",
) -> list[str]:
    """The command line of one run: our ``separate`` (``impl="hybrids"``) or demucs's CLI, with the
    checkpoint given as a demucs repository (``--repo DIR -n NAME``) and the same options."""
    if impl == "demucs":
        argv = _script("demucs", ["-m", "demucs"])
    elif impl == "hybrids":
        entry = "import sys; from hybrids.apps.music.cli import separate_main; sys.exit(separate_main())"
        argv = _script("separate", ["-c", entry])
    else:
        raise ValueError(f"impl must be hybrids or demucs, got {impl!r}")
    argv += [
        "--repo",
        str(repo),
        "-n",
        name,
        "-o",
        str(out),
        "--shifts",
        str(shifts),
        "--overlap",
        str(overlap),
    ]
    if segment is not None:
        argv += ["--segment", str(segment)]
    if impl == "hybrids":
        argv += ["--precision", precision]
    elif precision != "fp32":
        raise ValueError("the demucs CLI runs in fp32 only")
    return [*argv, str(track)]


def run_measured(
    argv: Sequence[str],
    *,
    log: str | Path,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``argv`` to completion; ``{"wall_s", "cpu_s", "peak_mib"}`` (CPU: user + system of the
    process and the children it waited for; peak: the program's own high-water resident set, read
    from ``/proc`` every 10 ms, else ``ru_maxrss``; both ``None`` where ``os.wait4`` is missing), or
    ``{"error": ...}`` on a non-zero exit or the timeout. Its stdout and stderr go to ``log``."""
    import subprocess
    import sys

    with open(log, "wb") as output:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), stdout=output, stderr=subprocess.STDOUT, env=env)
        usage = None
        high_water_kib = None
        try:
            if hasattr(os, "wait4"):
                while True:  # wait4: this child's own resource usage, not the sum over all children
                    high_water_kib = _high_water_kib(process.pid) or high_water_kib
                    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                    if pid:
                        process.returncode = os.waitstatus_to_exitcode(status)
                        break
                    if timeout_s is not None and time.perf_counter() - started > timeout_s:
                        raise subprocess.TimeoutExpired(list(argv), timeout_s)
                    time.sleep(0.01)
            else:
                process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return {"error": f"timed out after {timeout_s:g} s"}
        except BaseException:  # e.g. Ctrl-C: the command must not outlive the benchmark
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - started
    if process.returncode != 0:
        lines = [line for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
        return {"error": f"exit {process.returncode}: {lines[-1].strip()[:200] if lines else 'no output'}"}
    result: dict[str, Any] = {"wall_s": wall, "cpu_s": None, "peak_mib": None}
    if usage is not None:
        result["cpu_s"] = usage.ru_utime + usage.ru_stime
        result["peak_mib"] = usage.ru_maxrss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)
    if high_water_kib is not None:  # Linux: ru_maxrss also counts the forking parent's resident set
        result["peak_mib"] = high_water_kib / 1024.0
    return result


def _high_water_kib(pid: int) -> int | None:
    """The peak resident set (``VmHWM``, KiB) of ``pid``'s current program, or ``None`` (no
    ``/proc``, or the process has exited). Unlike ``ru_maxrss``, which Linux carries over from the
    memory of the process that forked it (here the benchmark, or pytest), it starts afresh at exec."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _median(values: Sequence[float | None]) -> float | None:
    import statistics

    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _read_stems(folder: Path, sources: Sequence[str]) -> torch.Tensor | None:
    """``(sources, channels, samples)`` of the WAV stems under ``folder`` (``None`` if any is missing)."""
    from hybrids.datasets.audio import load_audio

    stems = []
    for name in sources:
        found = sorted(folder.rglob(f"{name}.wav"))
        if not found:
            return None
        stems.append(load_audio(found[0])[0])
    return torch.stack(stems)


def bench_whole_process(
    track: str | Path | None = None,
    *,
    runs: int = 3,
    precision: Sequence[str] = ("fp32", "bf16"),
    weights: str | Path | None = None,
    preset: str = "htdemucs",
    offset: float = 0.0,
    seconds: float | None = None,
    shifts: int = 1,
    overlap: float = 0.25,
    segment: float | None = None,
    seed: int = 0,
    warmup: bool = True,
    timeout_s: float | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time our ``separate`` command and the demucs 4.1.0 CLI, each run a fresh process, on the same
    checkpoint and track (see the module docstring).

    ``weights``: a demucs ``.th`` package (default: random weights at ``preset``), handed to both
    commands as a demucs repository. ``seconds``/``offset`` cut an excerpt of the track first (a
    float WAV in the work folder); by default both commands read the track itself. ``precision``:
    ours runs at each, demucs at fp32. ``runs`` timed runs per case, alternating. Returns one row
    per case: ``impl``, ``precision``, ``runs`` (each ``wall_s``, ``cpu_s``, ``peak_mib``), their
    medians ``wall_s``, ``cpu_s``, ``peak_mib``, ``wall_vs_demucs``, ``cpu_vs_demucs``,
    ``peak_vs_demucs`` (ours / demucs), ``realtime_x``, ``max_abs_diff_rel`` (per stem, our
    written stems vs demucs's; only with ``shifts=0``, as the demucs CLI draws its shift offsets
    unseeded), ``snr_db`` (bf16 rows, vs our fp32 stems), or ``error``.
    """
    import shutil

    from hybrids.apps.music.weights import config_from_demucs_package, load_demucs_package
    from hybrids.datasets.audio import load_audio, save_audio

    say = log or (lambda message: None)
    precisions = list(dict.fromkeys(precision))
    bad = [p for p in precisions if p not in ("fp32", "bf16")]
    if bad or not precisions:
        raise InputError(f"precision must be among fp32, bf16, got {', '.join(bad) or 'none'}")
    if runs < 1:
        raise InputError(f"runs must be >= 1, got {runs}")
    if seconds is not None and seconds <= 0:
        raise InputError(f"seconds must be > 0, got {seconds}")
    if offset < 0:
        raise InputError(f"offset must be >= 0, got {offset}")
    if shifts < 0:
        raise InputError(f"shifts must be >= 0, got {shifts}")
    if weights is None and preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    track_path, audio_s = _check_track(track, offset, seconds)

    with tempfile.TemporaryDirectory(prefix="hybrids-music-bench-", dir=workdir) as tmp:
        folder = Path(tmp)
        repo = folder / "repo"
        repo.mkdir()
        if weights is None:
            package = random_demucs_package(repo, preset, seed)
            model_label = f"{preset} (random weights)"
        else:
            source = Path(weights)
            if not source.is_file():
                raise InputError(f"{source}: no such weights file")
            model_label = source.name
            # linked as model-<sha256 prefix>.th: a name both tools parse alike and check the file by
            digest = hashlib.sha256()
            with open(source, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            package = repo / f"model-{digest.hexdigest()[:8]}.th"
            try:
                package.symlink_to(source.resolve())
            except OSError:
                shutil.copyfile(source, package)
        # Read here first: unsafe or foreign files are refused before any command runs.
        sources = list(config_from_demucs_package(load_demucs_package(package)).sources)
        name = package.stem.split("-", 1)[0]

        audio = track_path
        if seconds is not None or offset > 0:  # an excerpt, read by both as the same WAV file
            wav, rate = load_audio(track_path, offset=offset, duration=seconds)
            audio = save_audio(wav, folder / f"{track_path.stem}.wav", rate, bits=32, clip="none")
        common = dict(repo=repo, name=name, shifts=shifts, overlap=overlap, segment=segment)
        cases = [("demucs", "fp32")] + [("hybrids", p) for p in precisions]

        if warmup:
            wav, rate = load_audio(audio, duration=WARMUP_SECONDS)
            excerpt = save_audio(
                wav, folder / "warmup" / f"{track_path.stem}.wav", rate, bits=32, clip="none"
            )
            for impl, prec in cases:
                say(f"warm-up: {impl} {prec} on {WARMUP_SECONDS:g} s ...")
                out = folder / "out-warmup"
                run_measured(
                    whole_process_command(impl, track=excerpt, out=out, precision=prec, **common),
                    log=folder / "warmup.log",
                    timeout_s=timeout_s,
                )
                shutil.rmtree(out, ignore_errors=True)

        measured: dict[tuple[str, str], list[dict[str, Any]]] = {case: [] for case in cases}
        errors: dict[tuple[str, str], str] = {}
        stems: dict[tuple[str, str], torch.Tensor] = {}
        for round_index in range(runs):
            shift = round_index % len(cases)
            for impl, prec in cases[shift:] + cases[:shift]:  # alternate: every case leads in turn
                if (impl, prec) in errors:
                    continue
                out = folder / f"out-{impl}-{prec}"
                argv = whole_process_command(impl, track=audio, out=out, precision=prec, **common)
                say(f"run {round_index + 1}/{runs}: {impl} {prec} ({audio_s:.1f} s, {model_label}) ...")
                result = run_measured(argv, log=folder / f"{impl}-{prec}.log", timeout_s=timeout_s)
                if "error" in result:
                    errors[(impl, prec)] = result["error"]
                    continue
                measured[(impl, prec)].append(result)
                if (impl, prec) not in stems:
                    found = _read_stems(out, sources)
                    if found is not None:
                        stems[(impl, prec)] = found
                shutil.rmtree(out, ignore_errors=True)

    rows: list[dict[str, Any]] = []
    for impl, prec in cases:
        row: dict[str, Any] = {
            "impl": impl,
            "version": _version(impl),
            "precision": prec,
            "model": model_label,
            "track": track_path.name,
            "offset_s": float(offset),
            "audio_s": audio_s,
            "command": [
                Path(a).name if i == 0 else a
                for i, a in enumerate(
                    whole_process_command(
                        impl, track=track_path.name, out="OUT", precision=prec, **{**common, "repo": "REPO"}
                    )
                )
            ],
            "runs": measured[(impl, prec)],
        }
        if (impl, prec) in errors:
            row["error"] = errors[(impl, prec)]
        else:
            for key in ("wall_s", "cpu_s", "peak_mib"):
                row[key] = _median([r[key] for r in row["runs"]])
            row["realtime_x"] = audio_s / row["wall_s"] if row["wall_s"] else None
        rows.append(row)
    base = rows[0]
    reference, our_fp32 = stems.get(("demucs", "fp32")), stems.get(("hybrids", "fp32"))
    for row in rows:
        if "error" in row:
            continue
        if "error" not in base:
            for key in ("wall_s", "cpu_s", "peak_mib"):
                ours, theirs = row.get(key), base.get(key)
                row[key.replace("_s", "").replace("_mib", "") + "_vs_demucs"] = (
                    ours / theirs if ours is not None and theirs else None
                )
        mine = stems.get((row["impl"], row["precision"]))
        if mine is None:
            continue
        # the demucs CLI draws its shift offsets unseeded: the stems compare only without shifts
        if reference is not None and row["impl"] != "demucs" and mine.shape == reference.shape and not shifts:
            row["max_abs_diff_rel"] = _max_rel_diff(mine, reference, sources)
        if our_fp32 is not None and row["impl"] == "hybrids" and row["precision"] != "fp32":
            if mine.shape == our_fp32.shape:
                row["snr_db"] = _snr_db(mine, our_fp32, sources)
    return rows


def run_whole_process_benchmark(**kwargs: Any) -> dict[str, Any]:
    """:func:`bench_whole_process` with the machine and settings: ``{"machine", "settings", "rows"}``."""
    started = time.perf_counter()
    rows = bench_whole_process(**kwargs)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items() if k != "log"}
    if settings.get("track") is None:
        settings["track"] = str(default_track())
    if isinstance(settings.get("precision"), tuple):
        settings["precision"] = list(settings["precision"])
    settings["PYTHONDONTWRITEBYTECODE"] = os.environ.get("PYTHONDONTWRITEBYTECODE")
    return {
        "benchmark": "music-whole-process",
        "machine": machine_info(cpu=_cpu_model(), native_bf16=_native_bf16()),
        "settings": settings,
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _native_bf16() -> bool:
    from hybrids.apps.music.engine import cpu_has_native_bf16

    return cpu_has_native_bf16()


def format_whole_process_table(result: Mapping[str, Any]) -> str:
    """A fixed-width text table: one line per case (medians, ratios to demucs), then every run."""
    header = ("impl", "precision", "wall s", "CPU s", "peak MiB", "x demucs wall", "x demucs CPU")
    header += ("x demucs peak", "max|diff|/peak", "min SNR dB")
    lines = []
    for row in result["rows"]:
        lines.append(
            (
                row["impl"],
                row["precision"],
                _fmt(row.get("wall_s"), ".2f"),
                _fmt(row.get("cpu_s"), ".2f"),
                _fmt(row.get("peak_mib"), ".0f"),
                _fmt(row.get("wall_vs_demucs"), ".3f"),
                _fmt(row.get("cpu_vs_demucs"), ".3f"),
                _fmt(row.get("peak_vs_demucs"), ".3f"),
                *_worst_parity(row),
                row.get("error", ""),
            )
        )
    text = _aligned(header, lines)
    rows = result["rows"]
    if rows:
        first = rows[0]
        machine = result.get("machine", {})
        count = max(len(r["runs"]) for r in rows)
        cpu = machine.get("cpu") or machine.get("processor", "?")
        bf16 = "yes" if machine.get("native_bf16") else "no"
        text.append(
            f"(whole process, medians of {count} alternating run{'s' if count != 1 else ''}; "
            f"{first['model']}; {first['track']}, {first['audio_s']:.1f} s; {cpu}, "
            f"{machine.get('cpu_count', '?')} cores, native bf16: {bf16})"
        )
        if result.get("settings", {}).get("shifts", 1):
            text.append("  (no max|diff| vs demucs with shifts: the demucs CLI draws its shifts unseeded)")
        for row in rows:
            walls = ", ".join(f"{r['wall_s']:.2f}" for r in row["runs"])
            text.append(f"  {row['impl']} {row['precision']} wall s per run: {walls or '-'}")
            text.append(f"    {' '.join(row['command'])}")
    return "\n".join(text)
