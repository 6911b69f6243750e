"""The separation engine: parity with demucs 4.1.0's ``apply_model`` (chunking, overlap, shifts,
bags), bounded memory, options (batching, jobs, bf16, progress) and the ``Separator`` API."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from hybrids.apps.core.errors import InputError
from hybrids.apps.music.bag import BagOfModels
from hybrids.apps.music.separate import Separator, apply_model, draw_shift_offsets

SOURCES = ["drums", "bass", "other", "vocals"]


class StandIn(nn.Module):
    """Deterministic stand-in separator: per-source conv1d filters plus a term proportional to
    the mean of the whole input window, so the output depends on how chunks are padded. Each
    example goes through the conv alone, so the output does not depend on the batch size (CPU
    convolutions round differently for batches of 1 and more)."""

    def __init__(self, samplerate=100, segment=0.37, channels=2, kernel=9, seed=0, sources=SOURCES):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.sources, self.samplerate, self.segment, self.audio_channels = (
            list(sources),
            samplerate,
            segment,
            channels,
        )
        n = len(self.sources)
        self.conv = nn.Conv1d(channels, n * channels, kernel, padding=kernel // 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.3)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=gen) * 0.1)
        self.window_gain = nn.Parameter(torch.randn(n, channels, 1, generator=gen))

    def forward(self, x):
        b, c, t = x.shape
        y = torch.cat([self.conv(x[i : i + 1]) for i in range(b)]).view(b, len(self.sources), c, t)
        return y + self.window_gain * x.mean(-1, keepdim=True).unsqueeze(1)


class FixedStandIn(StandIn):
    """Like HT Demucs: every input is padded (with context) to the training segment."""

    def valid_length(self, length):
        training = int(self.segment * self.samplerate)
        if length > training:
            raise ValueError(f"Given length {length} is longer than training length {training}")
        return training


class TransformerLike(FixedStandIn):
    """Declares a fixed training segment as HT Demucs does (``use_train_segment``)."""

    use_train_segment = True


@pytest.fixture(scope="module")
def demucs_apply():
    pytest.importorskip("demucs")
    import demucs.apply

    return demucs.apply


def _demucs(demucs_apply, model, mix, seed, **kwargs):
    random.seed(seed)  # demucs draws its shifts from the global `random`
    return demucs_apply.apply_model(model, mix, **kwargs)


# -- parity with demucs -------------------------------------------------------------------------
PARITY_CASES = [
    # (model, samples, split, overlap, shifts, segment, batch_segments)
    ("free", 523, True, 0.25, 1, None, 1),
    ("free", 523, True, 0.5, 1, None, 3),
    ("free", 523, True, 0.25, 0, 0.23, 2),
    ("free", 523, True, 0.5, 2, 0.23, 4),
    ("free", 523, False, 0.25, 1, None, 1),
    ("free", 523, False, 0.25, 3, None, 1),
    ("free", 30, True, 0.25, 1, None, 2),
    ("fixed", 523, True, 0.25, 1, None, 1),
    ("fixed", 523, True, 0.5, 1, None, 4),
    ("fixed", 523, True, 0.25, 0, 0.23, 3),
    ("fixed", 523, True, 0.5, 2, 0.29, 2),
    ("fixed", 977, True, 0.0, 2, None, 5),
    ("fixed", 20, False, 0.25, 0, None, 1),
    ("fixed", 30, True, 0.25, 1, None, 1),
]


@pytest.mark.parametrize(("kind", "samples", "split", "overlap", "shifts", "segment", "batch"), PARITY_CASES)
def test_matches_demucs_apply_model(demucs_apply, kind, samples, split, overlap, shifts, segment, batch):
    model = (StandIn if kind == "free" else FixedStandIn)()
    mix = torch.randn(2, 2, samples, generator=torch.Generator().manual_seed(samples))
    options = dict(shifts=shifts, split=split, overlap=overlap, segment=segment)
    expected = _demucs(demucs_apply, model, mix, seed=7, **options)
    ours = apply_model(model, mix, seed=7, batch_segments=batch, **options)
    assert ours.shape == (2, 4, 2, samples) and ours.dtype == torch.float32
    # Same operations in the same order: bit-identical (the stand-in's batched conv is exact).
    assert torch.equal(ours, expected), float((ours - expected).abs().max())


def test_matches_demucs_with_explicit_offsets(demucs_apply, monkeypatch):
    """The brief's protocol: feed demucs the offsets we drew by patching its ``randint``."""
    model = StandIn()
    mix = torch.randn(1, 2, 700, generator=torch.Generator().manual_seed(1))
    offsets = [3, 50, 17]
    draws = iter(offsets)
    monkeypatch.setattr(demucs_apply.random, "randint", lambda a, b: next(draws))
    expected = demucs_apply.apply_model(model, mix, shifts=3, overlap=0.3)
    ours = apply_model(model, mix, shifts=3, overlap=0.3, shift_offsets=offsets)
    assert torch.equal(ours, expected)


def test_shift_offsets_are_demucs_draws_after_seeding():
    random.seed(11)
    expected = [random.randint(0, 22050) for _ in range(5)]
    assert draw_shift_offsets(5, 22050, seed=11) == expected
    model, mix = StandIn(), torch.randn(1, 2, 400)
    a = apply_model(model, mix, shifts=2, seed=11)
    b = apply_model(model, mix, shifts=2, shift_offsets=draw_shift_offsets(2, 50, seed=11))
    assert torch.equal(a, b)
    assert not torch.equal(a, apply_model(model, mix, shifts=2, seed=12))


@pytest.mark.parametrize("shifts", [0, 1, 2])
def test_bags_match_demucs(demucs_apply, shifts):
    members = [StandIn(seed=1), StandIn(seed=2, segment=0.5)]
    weights = [[1.0, 0.5, 2.0, 1.0], [0.5, 1.0, 1.0, 0.0]]
    mix = torch.randn(2, 2, 523, generator=torch.Generator().manual_seed(3))
    expected = _demucs(demucs_apply, demucs_apply.BagOfModels(members, weights), mix, seed=5, shifts=shifts)
    ours = apply_model(BagOfModels.from_models(members, weights), mix, seed=5, shifts=shifts)
    if shifts <= 1:
        assert torch.equal(ours, expected)
    else:  # 1/shifts folded into the bag weights: rounding only
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_registry_bag_is_run_as_a_bag():
    htdemucs = pytest.importorskip("hybrids.apps.music.bag")
    config = htdemucs.HTDemucsBagConfig.from_preset(
        "tiny", bag_weights=((1.0, 0.0, 1.0, 1.0), (1.0, 1.0, 0.0, 1.0))
    )
    torch.manual_seed(0)
    bag = htdemucs.BagOfModels(config).eval()
    mix = torch.randn(1, 2, 30000, generator=torch.Generator().manual_seed(0))
    ours = apply_model(bag, mix, shifts=0)
    members = [apply_model(m, mix, shifts=0) for m in bag.models]
    m0, m1 = members
    # weights rows are models: source 0 and 3 average both, source 1 is m1's, source 2 is m0's
    expected = torch.stack([(m0[:, 0] + m1[:, 0]) / 2, m1[:, 1], m0[:, 2], (m0[:, 3] + m1[:, 3]) / 2], 1)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_ht_demucs_tiny_matches_demucs_apply_model(demucs_apply, shared_data):
    """Our HT Demucs (tiny preset) through both engines, on real audio."""
    htdemucs = pytest.importorskip("hybrids.apps.music.htdemucs")
    from hybrids.datasets.audio import load_audio

    torch.manual_seed(0)
    model = htdemucs.HTDemucs(htdemucs.HTDemucsConfig.from_preset("tiny")).eval()
    wav, _ = load_audio(shared_data / "audio" / "kevin_macleod-vibe_ace.ogg", offset=20.0, duration=2.5)
    mix = ((wav - wav.mean()) / wav.std())[None]
    expected = _demucs(demucs_apply, model, mix, seed=0, shifts=1)
    assert torch.equal(apply_model(model, mix, seed=0, batch_segments=1), expected)
    batched = apply_model(model, mix, seed=0, batch_segments=4)
    torch.testing.assert_close(batched, expected, rtol=0, atol=1e-6)


# -- memory -------------------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from torch import nn

    class Linear(nn.Module):
        sources, samplerate, segment, audio_channels = ["a", "b", "c", "d"], 44100, 1.0, 2
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 8, 1)
        def forward(self, x):
            return self.conv(x).view(x.shape[0], 4, 2, -1)

    def status_mb(field):  # VmRSS: now; VmHWM: peak of this process image (reset below)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

    torch.set_num_threads(1)
    if sys.argv[1] == "demucs":
        from demucs.apply import apply_model
    else:
        from hybrids.apps.music.separate import apply_model
    model = Linear()
    apply_model(model, torch.randn(1, 2, 3 * 44100), shifts=1)  # warm up allocator and imports
    mix = torch.randn(1, 2, 40 * 44100)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak to the current RSS
    except OSError:
        pass
    before = status_mb("VmRSS")
    out = apply_model(model, mix, shifts=2)
    print(out.numel() * 4 / 2**20, status_mb("VmHWM") - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_is_bounded_by_the_output(tmp_path):
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)

    # A fixed mmap threshold makes glibc return freed buffers to the OS, so the peak RSS measures
    # live memory rather than allocator fragmentation.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, str(script), "ours"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    output_mb, growth_mb = map(float, result.stdout.split())
    assert output_mb > 50
    # Measured: the output + ~14 MB (one segment of sums, batches); demucs: ~3.5x the output.
    assert growth_mb < output_mb + 24, (output_mb, growth_mb)


# -- options ------------------------------------------------------------------------------------
def test_batching_and_jobs_do_not_change_the_result():
    model, mix = StandIn(), torch.randn(2, 2, 900)
    reference = apply_model(model, mix, shifts=2, batch_segments=1)
    for batch, jobs in ((2, 1), (5, 1), (1, 2), (3, 3)):
        assert torch.equal(apply_model(model, mix, shifts=2, batch_segments=batch, jobs=jobs), reference)


class AutocastProbe(StandIn):
    def forward(self, x):
        self.seen = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        return super().forward(x)


def test_bf16_autocasts_the_forward_only():
    model, mix = AutocastProbe(), torch.randn(1, 2, 600)
    full = apply_model(model, mix)
    assert model.seen[0] is False
    half = apply_model(model, mix, precision="bf16")
    assert model.seen == (True, torch.bfloat16)
    assert half.dtype == torch.float32
    assert float((half - full).norm() / full.norm()) < 2e-2
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        apply_model(model, mix, precision="fp16")


def test_progress_and_callback():
    model, mix = StandIn(), torch.randn(1, 2, 600)
    calls = []
    out = apply_model(
        model,
        mix,
        shifts=2,
        progress=True,
        desc="song",
        batch_segments=2,
        callback=lambda d, t: calls.append((d, t)),
    )
    assert calls and calls[-1][0] == calls[-1][1] and all(a[0] < b[0] for a, b in zip(calls, calls[1:]))
    assert torch.equal(out, apply_model(model, mix, shifts=2))


def test_bad_arguments():
    fixed, free, mix = FixedStandIn(), StandIn(), torch.randn(1, 2, 600)
    with pytest.raises(InputError, match="segment 0.5 s is longer than the 0.37 s"):
        apply_model(TransformerLike(), mix, segment=0.5)
    with pytest.raises(
        InputError, match=r"without splitting, 6.00 s of audio do not fit the model's segment \(0.37 s\)"
    ):
        apply_model(fixed, mix, split=False, shifts=0)
    with pytest.raises(InputError, match=r"overlap must be in \[0, 1\)"):
        apply_model(free, mix, overlap=1.0)
    with pytest.raises(InputError, match="shifts must be >= 0"):
        apply_model(free, mix, shifts=-1)
    with pytest.raises(ValueError, match=r"mix must be \(batch, channels, samples\)"):
        apply_model(free, mix[0])
    with pytest.raises(ValueError, match="transition_power"):
        apply_model(free, mix, transition_power=0.5)
    with pytest.raises(TypeError, match="not a separation model"):
        apply_model(nn.Conv1d(2, 2, 1), mix)
    assert apply_model(free, mix[..., :0]).shape == (1, 4, 2, 0)


# -- the Separator API --------------------------------------------------------------------------
def test_separator_normalises_like_demucs(demucs_apply, shared_data):
    from hybrids.datasets.audio import load_audio

    model = StandIn(samplerate=44100, segment=0.2, kernel=5)
    wav, rate = load_audio(shared_data / "audio" / "sorohanro-solo_trumpet_06.ogg", duration=1.0)
    stems = Separator(model, shifts=1, seed=4).separate_tensor(wav, rate)
    assert list(stems) == SOURCES and all(s.shape == wav.shape for s in stems.values())
    ref = wav.mean(0)  # demucs.api.Separator.separate_tensor
    mean, std = ref.mean(), ref.std() + 1e-8
    expected = _demucs(demucs_apply, model, ((wav - mean) / std)[None], seed=4, shifts=1) * std + mean
    for k, name in enumerate(SOURCES):
        torch.testing.assert_close(stems[name], expected[0, k], rtol=0, atol=1e-6)


def test_separator_resamples_and_converts_channels_and_reads_files(tmp_path, shared_data):
    from hybrids.datasets.audio import load_audio, save_audio

    model = StandIn(samplerate=44100, segment=0.25, kernel=5)
    separator = Separator(model, shifts=0)
    assert (separator.samplerate, separator.audio_channels, separator.sources) == (44100, 2, SOURCES)
    wav, _ = load_audio(
        shared_data / "audio" / "sorohanro-solo_trumpet_06.ogg", duration=1.0, samplerate=22050
    )
    stems = separator.separate_tensor(wav[:1], 22050)  # mono at 22.05 kHz
    assert all(s.shape == (2, 44100) for s in stems.values())  # stereo, at the model's rate
    path = save_audio(wav, tmp_path / "clip.flac", 22050, bits=24)
    from_file, rate = separator.separate_file(path)
    assert rate == 44100 and list(from_file) == SOURCES and from_file["bass"].shape == (2, 44100)
    with pytest.raises(InputError, match="missing.wav: no such file"):
        separator.separate_file(tmp_path / "missing.wav")
    with pytest.raises(InputError, match="has 3 channels; cannot make 2|cannot make"):
        Separator(StandIn(samplerate=44100, channels=4, segment=0.25)).separate_tensor(torch.randn(3, 1000))


def test_separator_from_a_checkpoint_and_bad_options(tmp_path):
    pytest.importorskip("hybrids.apps.music.models")
    from hybrids.apps.core.checkpoint import save_checkpoint
    from hybrids.apps.core.registry import create_model

    torch.manual_seed(0)
    model = create_model("music/htdemucs", preset="tiny")
    folder = save_checkpoint(model, tmp_path / "tiny")
    separator = Separator(folder, shifts=0)
    assert separator.sources == SOURCES and separator.samplerate == 44100
    mix = torch.randn(2, 30000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        separator.separate_tensor(mix)["vocals"], Separator(model, shifts=0).separate_tensor(mix)["vocals"]
    )
    with pytest.raises(InputError, match="a checkpoint carries its own weights"):
        Separator(folder, weights="official")
    with pytest.raises(InputError, match="segment 2.0 s is longer than the 1 s"):
        Separator(folder, segment=2.0)
    with pytest.raises(InputError, match="precision must be one of"):
        Separator(folder, precision="int8")


# -- streaming ----------------------------------------------------------------------------------
STREAM_CASES = [
    # (model, samples, split, overlap, shifts, segment, batch_segments, jobs)
    ("free", 523, True, 0.25, 1, None, 1, 1),
    ("fixed", 977, True, 0.5, 1, None, 2, 2),
    ("fixed", 977, True, 0.25, 2, 0.29, 1, 2),
    ("fixed", 20, False, 0.25, 0, None, 1, 1),
    ("free", 523, False, 0.25, 2, None, 1, 1),
]


def _streamed(model, mix, **kwargs):
    """``stream_model`` on an in-memory mix; checks the blocks are consecutive and returns them
    concatenated."""
    from hybrids.apps.music.engine import _window, stream_model

    blocks, position = [], 0

    def sink(start, block):
        nonlocal position
        assert start == position and block.shape[:3] == (mix.shape[0], len(SOURCES), mix.shape[1])
        blocks.append(block.clone())
        position += block.shape[-1]

    stream_model(
        model,
        lambda s, n: _window(mix, s, n),
        mix.shape[-1],
        sink,
        channels=mix.shape[1],
        batch=mix.shape[0],
        **kwargs,
    )
    assert position == mix.shape[-1]
    return torch.cat(blocks, dim=-1), len(blocks)


@pytest.mark.parametrize(
    ("kind", "samples", "split", "overlap", "shifts", "segment", "batch", "jobs"), STREAM_CASES
)
def test_stream_model_equals_apply_model_bit_for_bit(
    kind, samples, split, overlap, shifts, segment, batch, jobs
):
    """Up to two passes, the streamed stems are apply_model's exactly (same sums, same order)."""
    model = (FixedStandIn if kind == "fixed" else StandIn)(seed=3)
    mix = torch.randn(2, 2, samples, generator=torch.Generator().manual_seed(samples))
    options = dict(
        split=split, overlap=overlap, shifts=shifts, segment=segment, batch_segments=batch, jobs=jobs
    )
    expected = apply_model(model, mix, **options)
    got, n_blocks = _streamed(model, mix, **options)
    assert torch.equal(got, expected)
    if split and samples > 500:
        assert n_blocks > 3  # really released as it went, not at the end


def test_stream_model_with_many_passes_and_bags():
    """Three shifts, or a bag of two models with two shifts each: the passes advance together
    (memory: a window, not the track), equal to apply_model up to the order of the float sums."""
    mix = torch.randn(1, 2, 3000, generator=torch.Generator().manual_seed(0))
    model = FixedStandIn(seed=1)
    bag = BagOfModels.from_models(
        [FixedStandIn(seed=1), FixedStandIn(seed=2)], weights=[[1, 2, 0.5, 1], [1, 1, 1, 3]]
    )
    for candidate, shifts in ((model, 3), (bag, 2)):
        expected = apply_model(candidate, mix, shifts=shifts, seed=5)
        got, n_blocks = _streamed(candidate, mix, shifts=shifts, seed=5)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        assert n_blocks > 10


def test_stream_target_keeps_a_window_not_the_track():
    """The running-sum window stays about two segments long, however long the track."""
    from hybrids.apps.music import engine

    sizes = []
    real_release = engine._StreamTarget.release

    def release(self, upto):
        sizes.append(self.buf.shape[-1])
        real_release(self, upto)

    model = FixedStandIn(seed=0)  # 37-sample segment
    mix = torch.randn(1, 2, 20_000)
    original = engine._StreamTarget.release
    engine._StreamTarget.release = release
    try:
        _streamed(model, mix, shifts=2)
    finally:
        engine._StreamTarget.release = original
    assert max(sizes) <= 4 * 37 + 50 + 1  # segments plus the largest shift (0.5 s = 50 samples)


def test_separator_stream_file_matches_separate_file(shared_data, tmp_path):
    """Decoded once to a temporary file and read back by chunk: the stems equal the in-memory
    ones up to the rounding of the mix statistics; the temporary files are gone afterwards."""
    from hybrids.apps.music.htdemucs import HTDemucs, HTDemucsConfig
    from hybrids.datasets.audio import load_audio, save_audio

    torch.manual_seed(0)
    separator = Separator(HTDemucs(HTDemucsConfig.from_preset("tiny")).eval(), shifts=1)
    song, rate = load_audio(shared_data / "audio" / "kevin_macleod-vibe_ace.ogg", offset=5.0, duration=6.0)
    track = save_audio(song, tmp_path / "jazz.flac", rate, bits=24, clip="none")
    expected, _ = separator.separate_file(track)
    blocks, mixes = {s: [] for s in separator.sources}, []

    def on_block(start, stems, mix):
        for source, value in stems.items():
            blocks[source].append(value.clone())
        mixes.append(mix.clone())

    spool = tmp_path / "spool"
    spool.mkdir()
    assert separator.stream_file(track, on_block, tmp_dir=spool) == song.shape[1]
    assert list(spool.iterdir()) == []
    assert torch.equal(torch.cat(mixes, -1), load_audio(track)[0])
    for source, value in expected.items():
        got = torch.cat(blocks[source], -1)
        assert got.shape == value.shape
        assert float((got - value).abs().max()) <= 1e-5 * float(value.abs().max())
    with pytest.raises(InputError, match="missing.wav: no such file"):
        separator.stream_file(tmp_path / "missing.wav", on_block)


class ThreadProbe(FixedStandIn):
    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        return super().forward(x)


def test_the_last_odd_forward_gets_every_core():
    """Defaults on a 2-core CPU: one single-threaded forward per core, and the forward left over
    at the end (chunks % jobs) runs alone with both threads instead of beside an idle core."""
    model = ThreadProbe(seed=0)
    model.seen = []
    mix = torch.randn(1, 2, 60)  # 37-sample segments, stride 27: chunks at 0, 27 and 54
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = apply_model(model, mix, shifts=0, jobs=1, threads=1)
        model.seen.clear()
        got = apply_model(model, mix, shifts=0)  # auto: 2 jobs x 1 thread
        chunks = len(model.seen)
        assert chunks % 2 == 1 and model.seen[:-1] == [1] * (chunks - 1) and model.seen[-1] == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(got, expected)


def test_one_bag_class_for_registry_bags_and_any_models():
    """``BagOfModels`` is the registry's bag (from a config) and demucs's bag of any models
    (``from_models``); mismatched members or weights are refused."""
    members = [StandIn(seed=1), StandIn(seed=2)]
    bag = BagOfModels.from_models(members, [[1.0, 0.5, 2.0, 1.0], [0.5, 1.0, 1.0, 1.0]], segment=0.3)
    assert bag.sources == list(members[0].sources) and bag.segment == 0.3 and bag.config is None
    assert bag.totals == [1.5, 1.5, 3.0, 2.0] and len(list(bag.parameters())) == sum(
        len(list(m.parameters())) for m in members
    )
    mix = torch.randn(1, 2, 300)
    expected = sum(m(mix) * torch.tensor(w)[None, :, None, None] for m, w in zip(members, bag.weights))
    torch.testing.assert_close(bag(mix), expected / torch.tensor(bag.totals)[None, :, None, None])
    with pytest.raises(ValueError, match="at least one model"):
        BagOfModels.from_models([])
    with pytest.raises(ValueError, match="lists of 4 numbers"):
        BagOfModels.from_models(members, [[1.0] * 4])
