"""The separation engine: ``apply_model`` (chunking, overlap-add, shift trick) and ``stream_model``
(the same over a track read and written block by block), for any model or bag of models.

``apply_model`` reproduces demucs 4.1.0's ``demucs.apply.apply_model`` numerically: the same
chunk offsets, the same context padding of every chunk (``TensorChunk.padded``), the same
triangular cross-fade weights (``transition_power``), the same centre trimming and, for the
"shift trick", the same padding of ``0.5 s`` on each side and the same averaging, with every
floating-point operation in demucs's order. Given the same shift offsets and the same model
outputs, a single model (any ``shifts``) and a bag with ``shifts <= 1`` give bit-identical
results; a bag with several shifts folds ``1/shifts`` into the bag weights (~1e-7 relative).
Batching several chunks per forward can change a model's own rounding (~1e-8 for HT Demucs);
``batch_segments=1`` removes that difference too.

What differs, on purpose:

* Shift offsets come from ``random.Random(seed)`` instead of the global ``random`` module, so
  results are reproducible and independent of other code. The draws are the same as demucs's
  after ``random.seed(seed)`` (same generator, same ``randint(0, max_shift)`` calls, in the same
  order: model by model, shift by shift).
* Speed and memory: the output ``(batch, sources, channels, samples)`` is allocated once and
  completed samples are added into it in place, from a one-segment window of running sums
  (demucs keeps a full-size buffer per shift, another per model of a bag, and a padded copy of
  the track); up to ``batch_segments`` chunks go through the model in one forward; chunks that
  fall entirely into the discarded shift padding are skipped. Peak memory is the output plus
  one segment of sums plus the batches in flight.
* Long tracks: ``stream_model`` runs all passes (shifts, models of a bag) together through the
  track, reading the mix on demand and handing completed stems out block by block;
  ``Separator.stream_file`` (used by the command line) decodes the file once into a temporary
  float32 file and reads it back by chunk, so memory does not depend on the track's length
  (demucs holds the track, a padded copy, and a full-length buffer per shift and per model).
* ``jobs`` runs that many batches concurrently in threads (demucs: one chunk per thread), each
  with ``threads`` intra-op threads. On CPU the defaults run one single-threaded forward per core
  (``jobs = torch.get_num_threads()``, ``threads = 1``, ``batch_segments = 1``): HT Demucs is
  dominated by many mid-sized ops whose intra-op parallel regions synchronise the cores at every
  op, which costs much more than it gains on 2-4 cores (and collapses on a machine shared with
  other work), while independent segments need no synchronisation at all; a batch of one segment
  also keeps the activations small enough for the cache (batch 2 costs 2.2x batch 1 on one core).
  The forwards left over at the end (``chunks % jobs``) run one at a time on all cores, so no
  core idles through the last segment (61.5 s = 11 chunks on 2 cores: 0.55x -> 0.49x demucs).
  Measured on the project's 2-core machine, see ``apply_model``.
* ``precision="bf16"`` runs the model forward under ``torch.autocast`` with bfloat16; the
  accumulation stays in float32.

The Python API on top of it is ``hybrids.apps.music.separate.Separator``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hybrids.apps.core.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "music/htdemucs"
PRECISIONS = ("fp32", "bf16")
# Default cap on concurrent forwards on CPU: each HT Demucs forward of one segment peaks at
# ~340 MB (float32), so memory stays bounded on many-core machines (their jobs get more threads).
_MAX_AUTO_JOBS = 8


# -- models ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    sources: tuple[str, ...]
    samplerate: int
    audio_channels: int
    segment: float | None  # training segment in seconds (None: any length)


def _get(model: Any, name: str) -> Any:
    value = getattr(model, name, None)
    if value is None:
        value = getattr(getattr(model, "config", None), name, None)
    return value


def model_info(model: Any) -> ModelInfo:
    """Sources, sample rate, channels and segment of a separation model (from attributes, as
    demucs's models have them, or from ``model.config``)."""
    sources, samplerate = _get(model, "sources"), _get(model, "samplerate")
    if sources is None or samplerate is None:
        raise TypeError(
            f"{type(model).__name__} is not a separation model: it needs `sources` and `samplerate` "
            "attributes (or a config with them)"
        )
    channels = _get(model, "audio_channels") or 2
    return ModelInfo(tuple(sources), int(samplerate), int(channels), _get(model, "segment"))


def _is_bag(model: Any) -> bool:
    """A bag of models (``hybrids.apps.music.bag.BagOfModels``, demucs's): ``models`` and ``weights``."""
    return isinstance(getattr(model, "models", None), Sequence | nn.ModuleList) and hasattr(model, "weights")


def _fixed_segment(model: Any) -> bool:
    """Whether the model works on its training segment only (HT Demucs): demucs tests
    ``isinstance(model, HTDemucs)``; we test the class name or ``use_train_segment``."""
    if any(cls.__name__ == "HTDemucs" for cls in type(model).__mro__):
        return True
    return bool(_get(model, "use_train_segment"))


def _valid_length(model: Any, length: int, segment: float | None, samplerate: int) -> int:
    """The length a chunk of ``length`` samples is padded to (with context) before the model."""
    if segment is not None and _fixed_segment(model):
        valid = int(segment * samplerate)
    elif callable(getattr(model, "valid_length", None)):
        try:
            valid = int(model.valid_length(length))
        except ValueError as exc:
            raise InputError(f"{length} samples cannot go through the model in one piece ({exc})") from None
    elif _fixed_segment(model) and _get(model, "segment") is not None:
        valid = int(_get(model, "segment") * samplerate)
    else:
        valid = length
    if valid < length:
        raise InputError(
            f"{length} samples ({length / samplerate:.2f} s) are longer than the model's segment "
            f"({valid / samplerate:.2f} s); separate with split=True (drop --no-split)"
        )
    return valid


def draw_shift_offsets(count: int, max_shift: int, seed: int = 0) -> list[int]:
    """The shift offsets ``apply_model`` uses: ``random.Random(seed).randint(0, max_shift)``
    ``count`` times (equal to demucs's draws after ``random.seed(seed)``)."""
    rng = random.Random(seed)
    return [rng.randint(0, max_shift) for _ in range(count)]


# -- chunk planning -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Chunk:
    offset: int  # first sample in the pass's time axis (demucs's chunk offset)
    length: int  # samples this chunk's (centre-trimmed) output covers
    padded: int  # samples fed to the model (context on both sides, zeros outside the mix)
    start: int  # first sample fed to the model, in the mix's time axis (may be negative)


@dataclass
class _Pass:
    """One run of one model over the (shifted) mix.

    The pass's time axis ``q`` is the mix shifted right by ``shift`` samples (``q = t + shift``)
    and is ``shift + length`` long (demucs's ``length + max_shift - offset``).
    """

    model: nn.Module
    shift: int
    length: int  # samples of the mix
    split: bool
    chunks: list[_Chunk]
    weight: torch.Tensor  # (segment_length,) cross-fade triangle (split only)
    stride: int  # samples between chunk offsets (split only)
    scale: torch.Tensor | None  # (sources, 1, 1) per-source factor of a bag member, or None


def _window(mix: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """``mix[..., start:start + length]`` with zeros outside ``[0, T)`` (a copy)."""
    total = mix.shape[-1]
    lo, hi = max(0, start), min(total, start + length)
    if lo >= hi:
        return mix.new_zeros(*mix.shape[:-1], length)
    return F.pad(mix[..., lo:hi], (lo - start, start + length - hi))


def _plan_pass(
    model: nn.Module,
    length: int,
    *,
    shift: int,
    split: bool,
    overlap: float,
    segment: float | None,
    transition_power: float,
) -> tuple[list[_Chunk], torch.Tensor, int]:
    """Chunks, cross-fade weights and stride of one pass, laid out as demucs's ``apply_model``
    lays them out (offsets, context padding, triangle weights)."""
    info = model_info(model)
    total = length + shift
    if not split:
        try:
            padded = _valid_length(model, total, segment, info.samplerate)
        except InputError:
            pad = f" + {shift / info.samplerate:.2f} s of shift padding" if shift else ""
            limit = f" ({float(info.segment):g} s)" if info.segment is not None else ""
            raise InputError(
                f"without splitting, {length / info.samplerate:.2f} s of audio{pad} do not fit the "
                f"model's segment{limit}; separate with split=True (drop --no-split)"
            ) from None
        chunk = _Chunk(0, total, padded, -shift - (padded - total) // 2)
        return [chunk], torch.ones(0), 0
    seg = segment if segment is not None else info.segment
    if seg is None or seg <= 0:
        raise InputError(f"{type(model).__name__} has no segment length; pass segment=SECONDS or split=False")
    segment_length = int(info.samplerate * seg)
    stride = int((1 - overlap) * segment_length)
    if segment_length < 1 or stride < 1:
        raise InputError(f"segment {seg} s with overlap {overlap} leaves no samples to advance by")
    # demucs: a triangle peaking mid-segment, normalised, to the power `transition_power`.
    weight = torch.cat(
        [torch.arange(1, segment_length // 2 + 1), torch.arange(segment_length - segment_length // 2, 0, -1)]
    )
    weight = (weight / weight.max()) ** transition_power
    chunks = []
    for offset in range(0, total, stride):
        chunk_length = min(total - offset, segment_length)
        if offset + chunk_length <= shift:
            continue  # entirely in the discarded shift padding: its output is never used
        padded = _valid_length(model, chunk_length, segment, info.samplerate)
        start = offset - shift - (padded - chunk_length) // 2
        chunks.append(_Chunk(offset, chunk_length, padded, start))
    return chunks, weight, stride


class _OverlapAdd:
    """Adds one pass's chunk outputs into ``target`` in demucs's order of operations.

    demucs accumulates ``weight * chunk`` into a full-length buffer per pass, divides it by the
    weight sums, and adds the result into the total. Chunks arrive in increasing offset, so once
    a chunk at offset ``o`` arrives every sample before ``o`` is complete: we keep only a
    segment-long window of the pass's buffer, and move each completed sample (divided by its
    weight sum, scaled for bags) into the target. Same operations, same order, same rounding.
    ``frontier`` is the first mix sample this pass may still change.
    """

    def __init__(self, target: _Target, p: _Pass):
        self.target, self.p = target, p
        self.capacity = len(p.weight)
        self.acc: torch.Tensor | None = None
        self.base = 0  # pass sample held at acc[..., 0]
        self.frontier = 0

    def add(self, chunk: _Chunk, y: torch.Tensor) -> None:
        """``y``: the chunk's centre-trimmed output, ``(batch, sources, channels, chunk.length)``."""
        if not self.p.split:
            self._emit(chunk.offset, y, divide=False)
            return
        if self.acc is None:
            self.acc = torch.zeros(*y.shape[:3], self.capacity, dtype=y.dtype, device=y.device)
            self.base = chunk.offset
        step = chunk.offset - self.base
        if step > 0:
            self._flush(min(step, self.capacity))
            if step < self.capacity:
                kept = self.acc[..., step:].clone()
                self.acc.zero_()
                self.acc[..., : kept.shape[-1]] = kept
            else:
                self.acc.zero_()
            self.base = chunk.offset
        self.acc[..., : chunk.length] += self.p.weight[: chunk.length] * y
        self.frontier = max(self.frontier, min(self.p.length, self.base - self.p.shift))

    def finish(self) -> None:
        if self.acc is not None:
            self._flush(self.capacity)
            self.acc = None
        self.frontier = self.p.length

    def _flush(self, count: int) -> None:
        assert self.acc is not None
        self._emit(self.base, self.acc[..., :count], divide=True)

    def _sum_weight(self, lo: int, hi: int) -> torch.Tensor:
        """demucs's ``sum_weight[lo:hi]``: the weights of every chunk added in offset order
        (computed for the window only, not kept for the whole track)."""
        p, size = self.p, self.capacity
        total = p.shift + p.length
        sums = torch.zeros(hi - lo, dtype=p.weight.dtype)
        first = max(0, (lo - size) // p.stride + 1) * p.stride  # first offset with o + size > lo
        for offset in range(first, min(hi, total), p.stride):
            chunk_length = min(total - offset, size)
            a, b = max(lo, offset), min(hi, offset + chunk_length)
            if a < b:
                sums[a - lo : b - lo] += p.weight[a - offset : b - offset]
        return sums

    def _emit(self, q0: int, values: torch.Tensor, *, divide: bool) -> None:
        """Add ``values`` (pass samples ``q0 ...``) into the target, dropping the shift padding."""
        p = self.p
        lo, hi = max(q0, p.shift), min(q0 + values.shape[-1], p.shift + p.length)
        if lo >= hi:
            return
        values = values[..., lo - q0 : hi - q0]
        if divide:
            values = values / self._sum_weight(lo, hi).to(values.device)
        if p.scale is not None:
            values = values * p.scale
        self.target.add(lo - p.shift, values)


class _Target:
    """Where the passes' completed samples go: ``add(start, values (batch, S, C, n))`` in mix
    time; ``release(upto)`` once no pass will change samples before ``upto``; ``finish()``."""

    def __init__(self, normalise: Callable[[torch.Tensor], None]):
        self.normalise = normalise  # in place: the final division by shifts / bag weights

    def add(self, start: int, values: torch.Tensor) -> None:
        raise NotImplementedError

    def release(self, upto: int) -> None:
        pass

    def finish(self) -> None:
        pass


class _TensorTarget(_Target):
    """The whole output in memory (``apply_model``)."""

    def __init__(self, out: torch.Tensor, normalise: Callable[[torch.Tensor], None]):
        super().__init__(normalise)
        self.out = out

    def add(self, start: int, values: torch.Tensor) -> None:
        self.out[..., start : start + values.shape[-1]] += values

    def finish(self) -> None:
        self.normalise(self.out)


class _StreamTarget(_Target):
    """A sliding window of running sums; completed samples go to ``sink(start, block)`` in order,
    normalised, and leave memory (``stream_model``). The window grows to the spread of the
    passes in flight (about two segments plus the largest shift)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        dtype: torch.dtype,
        length: int,
        sink: Callable[[int, torch.Tensor], None],
        normalise: Callable[[torch.Tensor], None],
    ):
        super().__init__(normalise)
        self.shape, self.dtype, self.length, self.sink = shape, dtype, length, sink
        self.buf = torch.zeros(*shape, 0, dtype=dtype)
        self.base = 0  # mix sample held at buf[..., 0]

    def add(self, start: int, values: torch.Tensor) -> None:
        end = start + values.shape[-1]
        if start < self.base:
            raise RuntimeError(f"sample {start} was already released (window starts at {self.base})")
        if end - self.base > self.buf.shape[-1]:
            grown = torch.zeros(*self.shape, max(end - self.base, 2 * self.buf.shape[-1]), dtype=self.dtype)
            grown[..., : self.buf.shape[-1]] = self.buf
            self.buf = grown
        self.buf[..., start - self.base : end - self.base] += values.to(self.dtype)

    def release(self, upto: int) -> None:
        count = min(upto, self.length) - self.base
        if count <= 0:
            return
        if count > self.buf.shape[-1]:  # nothing was added there (cannot happen with real passes)
            self.add(self.base, torch.zeros(*self.shape, count, dtype=self.dtype))
        block = self.buf[..., :count].clone()
        kept = self.buf.shape[-1] - count
        self.buf[..., :kept] = self.buf[..., count:].clone()
        self.buf[..., kept:] = 0
        self.normalise(block)
        self.sink(self.base, block)
        self.base += count

    def finish(self) -> None:
        self.release(self.length)


# -- the engine ---------------------------------------------------------------------------------
@dataclass
class _Plan:
    passes: list[_Pass]
    n_sources: int
    dtype: torch.dtype  # of the overlap-add and the output
    normalise: Callable[[torch.Tensor], None]


def _plan(
    model: nn.Module,
    length: int,
    dtype: torch.dtype,
    *,
    shifts: int,
    split: bool,
    overlap: float,
    segment: float | None,
    transition_power: float,
    seed: int,
    shift_offsets: Sequence[int] | None,
) -> _Plan:
    """Check the options and lay out every pass (model of a bag x shift) over ``length`` samples."""
    if transition_power < 1:
        raise ValueError("transition_power < 1 leads to weird behaviour (as in demucs)")
    if not 0 <= overlap < 1:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    if shifts < 0:
        raise InputError(f"shifts must be >= 0, got {shifts}")
    if segment is not None and segment <= 0:
        raise InputError(f"segment must be > 0 seconds, got {segment}")
    bag = _is_bag(model)
    members = list(zip(model.models, model.weights)) if bag else [(model, None)]
    if bag and segment is None:
        segment = getattr(model, "segment", None)
    n_sources = len(model_info(members[0][0]).sources)
    for sub, _ in members:
        _check_segment(sub, segment)

    n_shifts = max(shifts, 1)
    offsets = iter(shift_offsets) if shift_offsets is not None else None
    rng = random.Random(seed)
    passes: list[_Pass] = []
    for sub, source_weights in members:
        max_shift = int(0.5 * model_info(sub).samplerate)
        for _ in range(n_shifts):
            shift = 0
            if shifts:
                offset = next(offsets) if offsets is not None else rng.randint(0, max_shift)
                if not 0 <= offset <= max_shift:
                    raise ValueError(f"shift offset {offset} outside [0, {max_shift}]")
                shift = max_shift - offset
            chunks, weight, stride = _plan_pass(
                sub,
                length,
                shift=shift,
                split=split,
                overlap=overlap,
                segment=segment,
                transition_power=transition_power,
            )
            scale = None
            if source_weights is not None:  # demucs: estimate *= weight (after /= shifts)
                factors = torch.tensor([float(w) for w in source_weights], dtype=dtype)
                scale = (factors / n_shifts if n_shifts > 1 else factors).view(n_sources, 1, 1)
            weight = weight.to(dtype, copy=False)
            passes.append(_Pass(sub, shift, length, split, chunks, weight, stride, scale))

    if bag:
        totals = torch.tensor([sum(w[k] for _, w in members) for k in range(n_sources)], dtype=dtype)

        def normalise(x: torch.Tensor) -> None:
            x /= totals.view(n_sources, 1, 1).to(x.device)

    elif n_shifts > 1:

        def normalise(x: torch.Tensor) -> None:
            x /= n_shifts

    else:

        def normalise(x: torch.Tensor) -> None:
            pass

    return _Plan(passes, n_sources, dtype, normalise)


def apply_model(
    model: nn.Module,
    mix: torch.Tensor,
    *,
    shifts: int = 1,
    split: bool = True,
    overlap: float = 0.25,
    segment: float | None = None,
    transition_power: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    batch_segments: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    jobs: int | None = None,
    threads: int | None = None,
    shift_offsets: Sequence[int] | None = None,
    desc: str | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Separate ``mix`` ``(batch, channels, samples)`` into ``(batch, sources, channels, samples)``.

    Args mirror demucs's ``apply_model``: ``shifts`` random shifts of up to 0.5 s averaged (0: no
    shift trick), ``split`` into ``segment``-second chunks (default: the model's) cross-faded
    over ``overlap``, with triangular weights sharpened by ``transition_power``. ``model`` may be
    a bag (``ModelBag``, the registry's ``BagOfModels``, demucs's, or any object with ``models``
    and per-source ``weights``), run as demucs runs bags: member by member, each with its shifts.

    ``seed`` seeds the shift offsets (see ``draw_shift_offsets``; ``shift_offsets`` gives them
    explicitly, one per model and shift), ``batch_segments`` chunks share one forward, ``jobs``
    forwards run in parallel threads with ``threads`` intra-op threads each (set with
    ``torch.set_num_threads`` for the duration of the call, then restored), ``device`` runs the
    model there (the output stays on ``mix.device``), ``precision`` is ``"fp32"`` or ``"bf16"``
    (autocast around the forward only). ``progress`` shows a bar (``desc`` labels it);
    ``callback(done, total)`` is called after every batch of chunks.

    Defaults (``None``): on CPU one single-threaded forward per core (``jobs`` =
    ``torch.get_num_threads()``, at most 8 and at most the number of forwards, ``threads`` = the
    cores left per job, 1 on up to 8 cores) of one segment each (``batch_segments = 1``); on other
    devices ``batch_segments = 4``, ``jobs = 1`` and torch's thread setting untouched. ``jobs=0``
    means 1 (demucs's ``-j 0``). The result does not depend on ``jobs`` or ``threads`` beyond the
    float rounding of the model.
    """
    if mix.ndim != 3:
        raise ValueError(f"mix must be (batch, channels, samples), got shape {tuple(mix.shape)}")
    batch, channels, length = mix.shape
    out_dtype = mix.dtype if mix.dtype in (torch.float32, torch.float64) else torch.float32
    plan = _plan(
        model,
        length,
        out_dtype,
        shifts=shifts,
        split=split,
        overlap=overlap,
        segment=segment,
        transition_power=transition_power,
        seed=seed,
        shift_offsets=shift_offsets,
    )
    out = torch.zeros(batch, plan.n_sources, channels, length, dtype=out_dtype, device=mix.device)
    if length == 0:
        return out
    _run(
        plan,
        lambda start, size: _window(mix, start, size),
        (batch, channels),
        _TensorTarget(out, plan.normalise),
        output_device=mix.device,
        lockstep=False,
        batch_segments=batch_segments,
        device=device if device is not None else mix.device,
        precision=precision,
        jobs=jobs,
        threads=threads,
        progress=progress,
        desc=desc,
        callback=callback,
    )
    return out


def stream_model(
    model: nn.Module,
    read: Callable[[int, int], torch.Tensor],
    length: int,
    sink: Callable[[int, torch.Tensor], None],
    *,
    channels: int,
    batch: int = 1,
    shifts: int = 1,
    split: bool = True,
    overlap: float = 0.25,
    segment: float | None = None,
    transition_power: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    batch_segments: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    jobs: int | None = None,
    threads: int | None = None,
    shift_offsets: Sequence[int] | None = None,
    desc: str | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> None:
    """``apply_model`` with memory independent of the track's length: the mix is read on demand
    and the stems are handed out as they complete.

    ``read(start, size)`` returns mix samples ``[start, start + size)`` as ``(batch, channels,
    size)`` float32, zeros outside ``[0, length)`` (it may be called from worker threads);
    ``sink(start, block)`` receives ``(batch, sources, channels, n)`` float32 blocks in order,
    covering ``[0, length)`` exactly once. The other arguments are ``apply_model``'s. All passes
    (shifts, models of a bag) advance together through the track, so memory holds a window of
    about two segments instead of the whole output. Results equal ``apply_model``'s bit for bit
    for up to two passes (one model with ``shifts <= 2``); with more passes, samples are summed
    in another order (float rounding, ~1e-7 relative).
    """
    plan = _plan(
        model,
        length,
        torch.float32,
        shifts=shifts,
        split=split,
        overlap=overlap,
        segment=segment,
        transition_power=transition_power,
        seed=seed,
        shift_offsets=shift_offsets,
    )
    if length == 0:
        return
    _run(
        plan,
        read,
        (batch, channels),
        _StreamTarget((batch, plan.n_sources, channels), torch.float32, length, sink, plan.normalise),
        output_device=torch.device("cpu"),
        lockstep=True,
        batch_segments=batch_segments,
        device=device,
        precision=precision,
        jobs=jobs,
        threads=threads,
        progress=progress,
        desc=desc,
        callback=callback,
    )


def _run(
    plan: _Plan,
    read: Callable[[int, int], torch.Tensor],
    shape: tuple[int, int],
    target: _Target,
    *,
    output_device: torch.device,
    lockstep: bool,
    batch_segments: int | None,
    device: str | torch.device,
    precision: str,
    jobs: int | None,
    threads: int | None,
    progress: bool,
    desc: str | None,
    callback: Callable[[int, int], None] | None,
) -> None:
    """Run every pass of ``plan`` (one after the other, or all together with ``lockstep``) and
    overlap-add their outputs into ``target``."""
    run_device = torch.device(device)
    on_cpu = run_device.type == "cpu"
    if batch_segments is None:
        batch_segments = 1 if on_cpu else 4
    if batch_segments < 1:
        raise ValueError(f"batch_segments must be >= 1, got {batch_segments}")
    if jobs is not None and jobs < 0:
        raise ValueError(f"jobs must be >= 0, got {jobs}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")

    if precision == "bf16" and run_device.type == "cpu":
        _warn_if_bf16_emulated()
    batch, channels = shape
    work = _schedule(plan.passes, batch_segments, lockstep)
    total_chunks = sum(len(p.chunks) for p in plan.passes)
    auto_jobs = jobs is None
    if jobs is None:  # one forward per core on CPU (at most _MAX_AUTO_JOBS in memory at once)
        jobs = min(torch.get_num_threads(), _MAX_AUTO_JOBS) if on_cpu else 1
        jobs = max(1, min(jobs, len(work)))  # no idle workers
    jobs = max(jobs, 1)  # 0 = no extra thread, as demucs's -j 0
    tail_threads = None
    if threads is None and on_cpu and (jobs > 1 or auto_jobs):
        threads = max(1, torch.get_num_threads() // jobs)
        if jobs > 1:  # the last len(work) % jobs forwards would leave cores idle: give them all
            tail_threads = torch.get_num_threads()
    bar = None
    if progress:
        from hybrids.apps.core.progress import progress_bar

        bar = progress_bar(total=total_chunks, desc=desc, unit="chunk")
    done = 0
    autocast = (
        (lambda: torch.autocast(run_device.type, dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )
    saved_threads = torch.get_num_threads()
    if threads is not None and threads != saved_threads:
        torch.set_num_threads(threads)
    adders = {id(p): _OverlapAdd(target, p) for p in plan.passes}
    remaining = {id(p): len(p.chunks) for p in plan.passes}
    try:
        for p in plan.passes:
            p.model.to(run_device)
            p.model.eval()
        with torch.no_grad():
            for p, chunks, y in _forward_batches(
                work, read, run_device, autocast, jobs, batch, plan.n_sources, channels, tail_threads
            ):
                adder = adders[id(p)]
                for i, chunk in enumerate(chunks):
                    adder.add(chunk, _centre_trim(y[i], chunk).to(output_device, plan.dtype))
                remaining[id(p)] -= len(chunks)
                if remaining[id(p)] == 0:
                    adder.finish()
                target.release(min(a.frontier for a in adders.values()))
                done += len(chunks)
                if bar is not None:
                    bar.update(len(chunks))
                if callback is not None:
                    callback(done, total_chunks)
        for adder in adders.values():
            adder.finish()
        target.finish()
    finally:
        if torch.get_num_threads() != saved_threads:
            torch.set_num_threads(saved_threads)
        if bar is not None:
            bar.close()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (see ``hybrids.kernels.linear.cpu_native_bf16``)."""
    from hybrids.kernels.linear import cpu_native_bf16

    return cpu_native_bf16()


@functools.cache
def _warn_if_bf16_emulated() -> None:
    """Once per process: bf16 on a CPU without bfloat16 hardware is slower than fp32, not faster."""
    if not cpu_has_native_bf16():
        logger.warning(
            "precision bf16: this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX), so bf16 is "
            "emulated and slower than fp32; use fp32 here"
        )


def _schedule(
    passes: Sequence[_Pass], batch_segments: int, lockstep: bool
) -> list[tuple[_Pass, list[_Chunk]]]:
    """Batches of ``batch_segments`` chunks (of one pass, equal padded length) in the order they
    run: pass after pass, or with ``lockstep`` all passes merged by their position in the mix
    (each pass keeps its own order, so its overlap-add sees increasing offsets)."""
    work: list[tuple[int, int, _Pass, list[_Chunk]]] = []
    for index, p in enumerate(passes):
        groups: list[list[_Chunk]] = []
        for chunk in p.chunks:
            if groups and len(groups[-1]) < batch_segments and groups[-1][0].padded == chunk.padded:
                groups[-1].append(chunk)
            else:
                groups.append([chunk])
        work.extend((group[0].start if lockstep else 0, index, p, group) for group in groups)
    if lockstep:
        work.sort(key=lambda item: (item[0], item[1]))  # stable: a pass's groups stay in order
    return [(p, group) for _, _, p, group in work]


def _check_segment(model: nn.Module, segment: float | None) -> None:
    if segment is None or not _fixed_segment(model):
        return
    trained = model_info(model).segment
    if trained is not None and segment > float(trained):
        raise InputError(
            f"segment {segment} s is longer than the {float(trained):g} s the transformer model was "
            f"trained on; use at most {float(trained):g}"
        )


def _centre_trim(y: torch.Tensor, chunk: _Chunk) -> torch.Tensor:
    """The middle ``chunk.length`` samples of a model output (demucs's ``center_trim``)."""
    delta = y.shape[-1] - chunk.length
    if delta < 0:
        raise RuntimeError(f"the model returned {y.shape[-1]} samples for an input of {chunk.padded}")
    return y[..., delta // 2 : delta // 2 + chunk.length]


def _forward_batches(
    work: Sequence[tuple[_Pass, list[_Chunk]]],
    read: Callable[[int, int], torch.Tensor],
    device: torch.device,
    autocast: Callable[[], Any],
    jobs: int,
    batch: int,
    n_sources: int,
    channels: int,
    tail_threads: int | None = None,
) -> Iterator[tuple[_Pass, list[_Chunk], torch.Tensor]]:
    """Yield ``(pass, chunks, outputs (n, batch, S, C, t))`` in the order of ``work``, with up
    to ``jobs`` forwards in flight. With ``tail_threads``, the last ``len(work) % jobs``
    forwards (which would run beside idle workers) run one at a time with that many intra-op
    threads once the others are done: 11 segments on 2 cores take 5.6 instead of 6 rounds."""

    def run(p: _Pass, group: list[_Chunk]) -> torch.Tensor:
        x = torch.cat([read(c.start, c.padded) for c in group]).to(device)
        # inference_mode and autocast are per thread; inference_mode also skips the version
        # counters and view tracking that no_grad keeps.
        with torch.inference_mode(), autocast():
            y = p.model(x)
        if y.ndim != 4 or y.shape[1] != n_sources or y.shape[2] != channels or y.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"the model returned shape {tuple(y.shape)} for input {tuple(x.shape)}; expected "
                f"({x.shape[0]}, {n_sources}, {channels}, samples)"
            )
        return y.float().reshape(len(group), batch, *y.shape[1:])

    if jobs <= 1:
        for p, group in work:
            yield p, group, run(p, group)
        return
    tail = len(work) % jobs if tail_threads else 0
    with ThreadPoolExecutor(jobs) as pool:
        pending: deque = deque()
        try:
            for p, group in work[: len(work) - tail]:
                pending.append((p, group, pool.submit(run, p, group)))
                if len(pending) >= jobs:
                    done_p, done_group, future = pending.popleft()
                    yield done_p, done_group, future.result()
            while pending:
                done_p, done_group, future = pending.popleft()
                yield done_p, done_group, future.result()
        finally:
            for _, _, future in pending:
                future.cancel()
    if tail:
        assert tail_threads is not None
        threads = torch.get_num_threads()
        torch.set_num_threads(tail_threads)
        try:
            for p, group in work[len(work) - tail :]:
                yield p, group, run(p, group)
        finally:
            torch.set_num_threads(threads)
