"""SSD scan (Dao & Gu 2024, §6): chunked fast path vs sequential reference vs quadratic form, gradients,
chunk/step invariances, the dt/D/z options, and (on CUDA) mamba-ssm's kernel."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from hybrids.kernels.ssd import DEFAULT_CHUNK_SIZE, segsum, ssd_scan, ssd_scan_chunked, ssd_step

F64 = torch.float64


def make_inputs(b=2, l=64, h=4, p=8, g=2, n=16, dtype=F64, seed=0, device="cpu", raw_dt=False):
    """Realistic Mamba2 statistics: unit-variance x, B, C; dt = softplus(N(-4, 1)) (≈ 0.005-0.1, or the
    raw N(-4, 1) values with ``raw_dt``), A uniform in -[1, 16]."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).to(device)

    x = randn(b, l, h, p)
    dt = randn(b, l, h) - 4.0
    if not raw_dt:
        dt = F.softplus(dt)
    A = -(1.0 + 15.0 * torch.rand(h, generator=gen, dtype=dtype)).to(device)
    return x, dt, A, randn(b, l, g, n), randn(b, l, g, n)


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


# -- the three forms agree ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("g", [1, 2])
def test_fast_equals_reference_and_quadratic(dtype, tol, g):
    # The acceptance case: L=1024, h=8, p=64, n=64.
    x, dt, A, B, C = make_inputs(b=1, l=1024, h=8, p=64, g=g, n=64, dtype=dtype, seed=g)
    y_fast, s_fast = ssd_scan(x, dt, A, B, C, return_final_states=True)  # impl="auto" -> chunked on CPU
    y_ref, s_ref = ssd_scan(x, dt, A, B, C, return_final_states=True, impl="reference")
    y_quad, s_quad = ssd_scan(x, dt, A, B, C, return_final_states=True, impl="quadratic")
    assert y_fast.dtype == dtype and s_fast.dtype == dtype
    assert y_ref.abs().max() > 1.0  # outputs are O(1-10): the tolerance is meaningful
    assert max_diff(y_fast, y_ref) <= tol
    assert max_diff(y_fast, y_quad) <= tol
    assert max_diff(y_ref, y_quad) <= tol
    assert max_diff(s_fast, s_ref) <= tol
    assert max_diff(s_fast, s_quad) <= tol


def test_float32_fast_path_is_as_accurate_as_the_reference():
    # Against the float64 truth, the float32 chunked path loses no more than the float32 recurrence
    # (no cancellation in the intra-chunk decays), whatever the chunk size.
    x, dt, A, B, C = make_inputs(b=1, l=512, h=8, p=64, g=1, n=64, seed=3)
    truth = ssd_scan(x, dt, A, B, C, impl="reference")
    args32 = [t.float() for t in (x, dt, A, B, C)]
    err_ref = max_diff(ssd_scan(*args32, impl="reference"), truth)
    for chunk_size in (32, 64, 128, 256):
        err_fast = max_diff(ssd_scan(*args32, chunk_size=chunk_size), truth)
        assert err_fast <= max(2.0 * err_ref, 1e-5), (chunk_size, err_fast, err_ref)


@pytest.mark.parametrize("D_shape", [None, "h", "hp"])
@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("dt_mode", ["plain", "bias_softplus", "bias_softplus_limit"])
def test_options_match_reference(D_shape, gate, dt_mode):
    b, l, h, p, g, n = 2, 77, 4, 8, 2, 16
    x, dt, A, B, C = make_inputs(b, l, h, p, g, n, raw_dt=dt_mode != "plain", seed=1)
    gen = torch.Generator().manual_seed(5)
    kwargs = {}
    if D_shape == "h":
        kwargs["D"] = torch.randn(h, generator=gen, dtype=F64)
    elif D_shape == "hp":
        kwargs["D"] = torch.randn(h, p, generator=gen, dtype=F64)
    if gate:
        kwargs["z"] = torch.randn(b, l, h, p, generator=gen, dtype=F64)
    if dt_mode != "plain":
        kwargs.update(dt_bias=torch.randn(h, generator=gen, dtype=F64) - 1.0, dt_softplus=True)
    if dt_mode == "bias_softplus_limit":
        kwargs["dt_limit"] = (0.01, 0.05)
    h0 = torch.randn(b, h, p, n, generator=gen, dtype=F64)
    out = {
        impl: ssd_scan(
            x, dt, A, B, C, chunk_size=16, initial_states=h0, return_final_states=True, impl=impl, **kwargs
        )
        for impl in ("chunked", "reference", "quadratic")
    }
    for impl in ("reference", "quadratic"):
        assert max_diff(out["chunked"][0], out[impl][0]) <= 1e-12
        assert max_diff(out["chunked"][1], out[impl][1]) <= 1e-12


def test_dt_processing_semantics():
    x, dt_raw, A, B, C = make_inputs(l=40, raw_dt=True)
    bias = torch.linspace(-1.0, 1.0, 4, dtype=F64)
    lo, hi = 0.02, 0.2
    expected_dt = F.softplus(dt_raw + bias).clamp(lo, hi)
    y = ssd_scan(x, dt_raw, A, B, C, dt_bias=bias, dt_softplus=True, dt_limit=(lo, hi))
    assert max_diff(y, ssd_scan(x, expected_dt, A, B, C)) <= 1e-13
    # Like mamba-ssm, the default limit (0, inf) does not clamp: a raw negative dt passes through.
    # (exp(dt A) > 1 then: the outputs grow, so the comparison is relative)
    y_neg = ssd_scan(x, -0.01 * dt_raw.abs(), A, B, C, impl="chunked")
    y_neg_ref = ssd_scan(x, -0.01 * dt_raw.abs(), A, B, C, impl="reference")
    assert y_neg_ref.abs().max() > 100.0
    assert max_diff(y_neg, y_neg_ref) <= 1e-12 * y_neg_ref.abs().max().item()


def test_strong_decay_matches_reference():
    # dt up to ~6 with A = -16: decays of e^-100 per step; the fast path flushes only decays far below
    # the resolution (float64: < e^-600) and must still equal the recurrence.
    x, dt, A, B, C = make_inputs(l=200, seed=7)
    dt = dt * 60.0
    A = torch.full_like(A, -16.0)
    y_fast, s_fast = ssd_scan(x, dt, A, B, C, chunk_size=64, return_final_states=True)
    y_ref, s_ref = ssd_scan(x, dt, A, B, C, impl="reference", return_final_states=True)
    assert max_diff(y_fast, y_ref) <= 1e-12 and max_diff(s_fast, s_ref) <= 1e-12
    args32 = [t.float() for t in (x, dt, A, B, C)]
    assert max_diff(ssd_scan(*args32), y_ref) <= 2e-6 * y_ref.abs().max().item()


# -- invariances -------------------------------------------------------------------------------------


def test_invariant_to_chunk_size():
    x, dt, A, B, C = make_inputs(l=150)
    y0, s0 = ssd_scan(x, dt, A, B, C, return_final_states=True)
    for chunk_size in (1, 7, 16, 64, 150, 256):
        y, s = ssd_scan(x, dt, A, B, C, chunk_size=chunk_size, return_final_states=True)
        assert max_diff(y, y0) <= 1e-12 and max_diff(s, s0) <= 1e-12, chunk_size


@pytest.mark.parametrize("l", [1, 5, 63, 64, 65, 127, 129, 200])
def test_odd_lengths_keep_exact_final_states(l):
    x, dt, A, B, C = make_inputs(l=l, seed=l)
    y, s = ssd_scan(x, dt, A, B, C, chunk_size=64, return_final_states=True)
    y_ref, s_ref = ssd_scan(x, dt, A, B, C, impl="reference", return_final_states=True)
    assert y.shape == x.shape and s.shape == (2, 4, 8, 16)
    assert max_diff(y, y_ref) <= 1e-12 and max_diff(s, s_ref) <= 1e-12


def test_long_sequence_spans_several_segments():
    # More tokens than one internal segment, a length that is not a multiple of the chunk size.
    x, dt, A, B, C = make_inputs(b=1, l=3000, h=2, p=4, g=1, n=8)
    y, s = ssd_scan(x, dt, A, B, C, chunk_size=32, return_final_states=True)
    y_ref, s_ref = ssd_scan(x, dt, A, B, C, impl="reference", return_final_states=True)
    assert max_diff(y, y_ref) <= 1e-12 and max_diff(s, s_ref) <= 1e-12


@pytest.mark.parametrize("split", [1, 30, 64, 100])
def test_prefill_then_continue_equals_one_pass(split):
    x, dt, A, B, C = make_inputs(l=130)
    D = torch.randn(4, dtype=F64)
    y_full, s_full = ssd_scan(x, dt, A, B, C, D=D, chunk_size=32, return_final_states=True)
    first = [t[:, :split] for t in (x, dt, B, C)]
    rest = [t[:, split:] for t in (x, dt, B, C)]
    y1, s1 = ssd_scan(first[0], first[1], A, first[2], first[3], D=D, chunk_size=32, return_final_states=True)
    y2, s2 = ssd_scan(
        rest[0], rest[1], A, rest[2], rest[3], D=D, chunk_size=32, initial_states=s1, return_final_states=True
    )
    assert max_diff(torch.cat([y1, y2], dim=1), y_full) <= 1e-12
    assert max_diff(s2, s_full) <= 1e-12


def test_step_after_prefill_equals_full_forward():
    b, l, h, p, g, n = 2, 50, 4, 8, 2, 16
    x, dt_raw, A, B, C = make_inputs(b, l, h, p, g, n, raw_dt=True)
    gen = torch.Generator().manual_seed(2)
    opts = {
        "D": torch.randn(h, p, generator=gen, dtype=F64),
        "dt_bias": torch.randn(h, generator=gen, dtype=F64),
        "dt_softplus": True,
        "dt_limit": (0.001, 0.3),
    }
    z = torch.randn(b, l, h, p, generator=gen, dtype=F64)
    y_full, s_full = ssd_scan(x, dt_raw, A, B, C, z=z, chunk_size=16, return_final_states=True, **opts)
    prefill = 21
    y_pre, state = ssd_scan(
        x[:, :prefill], dt_raw[:, :prefill], A, B[:, :prefill], C[:, :prefill], z=z[:, :prefill],
        chunk_size=16, return_final_states=True, **opts,
    )  # fmt: skip
    ys = [y_pre]
    for t in range(prefill, l):
        y_t, state = ssd_step(state, x[:, t], dt_raw[:, t], A, B[:, t], C[:, t], z=z[:, t], **opts)
        ys.append(y_t[:, None])
    assert max_diff(torch.cat(ys, dim=1), y_full) <= 1e-12
    assert max_diff(state, s_full) <= 1e-12


def test_step_from_zero_state_float32_and_keeps_state_dtype():
    x, dt, A, B, C = (t.float() for t in make_inputs(l=20))
    y_full = ssd_scan(x, dt, A, B, C)
    state = torch.zeros(2, 4, 8, 16)
    ys = []
    for t in range(20):
        y_t, new_state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        assert new_state.dtype == torch.float32 and not torch.equal(new_state, state)
        state = new_state
        ys.append(y_t)
    assert max_diff(torch.stack(ys, dim=1), y_full) <= 1e-5


def test_empty_sequence_returns_initial_state():
    x, dt, A, B, C = make_inputs(l=0)
    h0 = torch.randn(2, 4, 8, 16, dtype=F64)
    for impl in ("chunked", "reference", "quadratic"):
        y, s = ssd_scan(x, dt, A, B, C, initial_states=h0, return_final_states=True, impl=impl)
        assert y.shape == (2, 0, 4, 8) and torch.equal(s, h0)


def test_no_grad_path_equals_autograd_path():
    # The fast path updates temporaries in place when no gradient is needed: same numbers either way.
    x, dt, A, B, C = make_inputs(l=90, raw_dt=True)
    gen = torch.Generator().manual_seed(3)
    extra = {
        "D": torch.randn(4, generator=gen, dtype=F64),
        "z": torch.randn(2, 90, 4, 8, generator=gen, dtype=F64),
        "dt_bias": torch.randn(4, generator=gen, dtype=F64),
        "dt_softplus": True,
        "initial_states": torch.randn(2, 4, 8, 16, generator=gen, dtype=F64),
    }
    for dtype, tol in ((F64, 1e-13), (torch.float32, 1e-6)):
        args = [t.to(dtype) for t in (x, dt, A, B, C)]
        kw = {k: v.to(dtype) if torch.is_tensor(v) else v for k, v in extra.items()}
        with torch.no_grad():
            y0, s0 = ssd_scan_chunked(*args, chunk_size=16, return_final_states=True, **kw)
        args[0].requires_grad_(True)
        y1, s1 = ssd_scan_chunked(*args, chunk_size=16, return_final_states=True, **kw)
        assert y1.requires_grad
        assert max_diff(y0, y1) <= tol and max_diff(s0, s1) <= tol


def test_low_precision_inputs_accumulate_in_float32():
    x, dt, A, B, C = make_inputs(l=70)
    y_ref, s_ref = ssd_scan(x.float(), dt.float(), A.float(), B.float(), C.float(), return_final_states=True)
    y, s = ssd_scan(
        x.bfloat16(),
        dt.float(),
        A.float(),
        B.bfloat16(),
        C.bfloat16(),
        chunk_size=32,
        return_final_states=True,
    )
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert max_diff(y, y_ref) <= 0.05 * y_ref.abs().max().item()


def test_segsum_is_the_masked_segment_sum():
    a = torch.randn(3, 6, dtype=F64)
    out = segsum(a)
    for i in range(6):
        for j in range(6):
            if j > i:
                assert out[:, i, j].eq(float("-inf")).all()
            else:
                assert torch.allclose(out[:, i, j], a[:, j + 1 : i + 1].sum(-1))


# -- gradients ---------------------------------------------------------------------------------------


def test_gradcheck_chunked_float64():
    b, l, h, p, g, n = 1, 9, 2, 3, 2, 2
    x, dt, A, B, C = make_inputs(b, l, h, p, g, n, raw_dt=True, seed=4)
    gen = torch.Generator().manual_seed(4)
    D = torch.randn(h, p, generator=gen, dtype=F64)
    z = torch.randn(b, l, h, p, generator=gen, dtype=F64)
    dt_bias = torch.randn(h, generator=gen, dtype=F64)
    h0 = torch.randn(b, h, p, n, generator=gen, dtype=F64)
    inputs = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C, D, z, dt_bias, h0)]

    def fn(x, dt, A, B, C, D, z, dt_bias, h0):
        return ssd_scan(
            x, dt, A, B, C, chunk_size=4, D=D, z=z, dt_bias=dt_bias, dt_softplus=True,
            initial_states=h0, return_final_states=True, impl="chunked",
        )  # fmt: skip

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_chunked_gradients_equal_reference_gradients(dtype, tol):
    b, l, h, p, g, n = 2, 100, 4, 8, 2, 16
    x, dt, A, B, C = make_inputs(b, l, h, p, g, n, raw_dt=True, seed=6)
    gen = torch.Generator().manual_seed(6)
    D = torch.randn(h, generator=gen, dtype=F64)
    dt_bias = torch.randn(h, generator=gen, dtype=F64) - 1.0
    h0 = torch.randn(b, h, p, n, generator=gen, dtype=F64)
    w_y = torch.randn(b, l, h, p, generator=gen, dtype=F64)
    w_s = torch.randn(b, h, p, n, generator=gen, dtype=F64)
    grads = {}
    for impl in ("chunked", "reference"):
        leaves = [t.to(dtype).requires_grad_(True) for t in (x, dt, A, B, C, D, dt_bias, h0)]
        y, s = ssd_scan(
            *leaves[:5], chunk_size=32, D=leaves[5], dt_bias=leaves[6], dt_softplus=True,
            initial_states=leaves[7], return_final_states=True, impl=impl,
        )  # fmt: skip
        ((y * w_y.to(dtype)).sum() + (s * w_s.to(dtype)).sum()).backward()
        grads[impl] = [leaf.grad for leaf in leaves]
    for name, g_fast, g_ref in zip("x dt A B C D dt_bias h0".split(), grads["chunked"], grads["reference"]):
        scale = max(1.0, g_ref.abs().max().item())
        assert max_diff(g_fast, g_ref) <= tol * scale, name


# -- dispatch, arguments, import hygiene -------------------------------------------------------------


def test_auto_dispatch_on_cpu_is_the_chunked_path():
    x, dt, A, B, C = make_inputs(l=33, dtype=torch.float32)
    assert DEFAULT_CHUNK_SIZE > 0
    assert torch.equal(ssd_scan(x, dt, A, B, C), ssd_scan(x, dt, A, B, C, impl="chunked"))
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        ssd_scan(x, dt, A, B, C, impl="mamba_ssm")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"impl": "triton"}, "unknown impl"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"A": torch.ones(3)}, "A must be"),
        ({"D": torch.ones(4, 3)}, "D must be"),
        ({"z": torch.ones(2, 10, 4, 3)}, "z"),
        ({"dt_bias": torch.ones(2)}, "dt_bias"),
        ({"initial_states": torch.ones(2, 4, 8, 15)}, "initial_states"),
        ({"B": torch.ones(2, 10, 3, 16), "C": torch.ones(2, 10, 3, 16)}, "multiple of the number of groups"),
        ({"C": torch.ones(2, 10, 2, 15)}, "C"),
        ({"dt": torch.ones(2, 10)}, "dt must be"),
        ({"x": torch.ones(2, 10, 32)}, "x must be"),
    ],
)
def test_bad_arguments_raise(change, match):
    x, dt, A, B, C = make_inputs(l=10, dtype=torch.float32)
    kwargs = {"x": x, "dt": dt, "A": A, "B": B, "C": C, **change}
    with pytest.raises(ValueError, match=match):
        ssd_scan(**kwargs)


def test_step_bad_arguments_raise():
    x, dt, A, B, C = make_inputs(l=1, dtype=torch.float32)
    state = torch.zeros(2, 4, 8, 16)
    with pytest.raises(ValueError, match="state"):
        ssd_step(state[..., :3], x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    with pytest.raises(ValueError, match="dt"):
        ssd_step(state, x[:, 0], dt[:, 0, :2], A, B[:, 0], C[:, 0])


def test_importing_the_kernel_does_not_import_triton_or_mamba_ssm():
    code = (
        "import sys, hybrids.kernels.ssd, hybrids.kernels.ssd.scan; "
        "bad = [m for m in ('triton', 'mamba_ssm') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# -- peers -------------------------------------------------------------------------------------------


def test_transformers_pure_torch_scan_agrees():
    # The benchmark's peer computes the same function (transformers is optional, not a dependency).
    modeling = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
    scan = getattr(modeling, "mamba2_chunk_scan", None)
    if scan is None:
        pytest.skip("this transformers version has no module-level mamba2_chunk_scan")
    scan = getattr(scan, "__wrapped__", scan)
    x, dt_raw, A, B, C = make_inputs(b=1, l=100, raw_dt=True, dtype=torch.float32)
    D, bias = torch.rand(4), torch.rand(4)
    y_peer, s_peer = scan(
        x, dt_raw, A, B, C, 32, D=D, dt_bias=bias, dt_softplus=True, return_final_states=True
    )
    y, s = ssd_scan(x, dt_raw, A, B, C, D=D, dt_bias=bias, dt_softplus=True, return_final_states=True)
    assert max_diff(y, y_peer) <= 1e-5 and max_diff(s, s_peer) <= 1e-5


def test_bench_factories_run_small_cases():
    from hybrids.evaluation.bench import ssd as bench

    fast = bench.ssd_fast_case(L=100, h=2, p=4, n=8)()
    ref = bench.ssd_reference_case(L=100, h=2, p=4, n=8)()
    assert fast.shape == (1, 100, 2, 4) and max_diff(fast, ref) <= 1e-5


def test_bench_rows_skips_and_ratios(monkeypatch):
    from hybrids.evaluation.bench import ssd as bench

    calls = []

    def fake_measure(target, kwargs, *, repeats, timeout_s):
        calls.append((target.rsplit(":", 1)[1], kwargs.get("L")))
        if target.endswith("ssd_reference_case"):
            return {"error": "timed out after 120 s"}
        scale = 10.0 if target.endswith("transformers_case") else 1.0
        return {"time_s": 1e-6 * scale * kwargs["L"], "peak_mib": 10.0 * scale}

    monkeypatch.setattr(bench, "measure_case", fake_measure)
    rows = bench.bench_ssd(lengths=(4096, 1024), block_length=1000)
    assert [(r["case"], r["impl"]) for r in rows[:3]] == [
        ("L=1024", i) for i in ("fast", "reference", "transformers")
    ]
    assert rows[0]["note"].startswith("transformers: 10.0x the time, 10.0x the peak memory")
    assert rows[3]["note"].endswith("4.00x the time of L=1024")
    assert rows[4]["note"] == "skipped: failed at L=1024" and rows[4]["time_s"] is None
    assert rows[-1]["case"] == "mamba2 block L=1000" and "< 4096 MiB" in rows[-1]["note"]
    assert ("ssd_reference_case", 4096) not in calls
    assert {"group", "case", "impl", "time_s", "peak_mib", "note"} == set(rows[0])


@pytest.mark.gpu
@pytest.mark.parametrize("g", [1, 2])
def test_mamba_ssm_kernel_matches_the_chunked_path(g):
    pytest.importorskip("mamba_ssm")
    x, dt_raw, A, B, C = make_inputs(b=2, l=1000, h=8, p=64, g=g, n=64, dtype=torch.float32, raw_dt=True)
    gen = torch.Generator().manual_seed(9)
    kw = {
        "D": torch.randn(8, generator=gen),
        "z": torch.randn(2, 1000, 8, 64, generator=gen),
        "dt_bias": torch.randn(8, generator=gen),
        "dt_softplus": True,
        "dt_limit": (0.001, 0.2),
        "initial_states": torch.randn(2, 8, 64, 64, generator=gen),
    }
    y_cpu, s_cpu = ssd_scan(x, dt_raw, A, B, C, return_final_states=True, impl="reference", **kw)
    cuda = [t.cuda() for t in (x, dt_raw, A, B, C)]
    kw_cuda = {k: v.cuda() if torch.is_tensor(v) else v for k, v in kw.items()}
    y_gpu, s_gpu = ssd_scan(*cuda, return_final_states=True, impl="auto", **kw_cuda)
    y_fast, s_fast = ssd_scan(*cuda, return_final_states=True, impl="chunked", **kw_cuda)
    scale = y_cpu.abs().max().item()
    assert max_diff(y_gpu.cpu(), y_cpu) <= 1e-3 * scale and max_diff(s_gpu.cpu(), s_cpu) <= 1e-3 * scale
    assert max_diff(y_fast.cpu(), y_cpu) <= 1e-4 * scale  # the pure-torch path also runs on CUDA


def test_training_after_inference_mode_in_one_process():
    """The cached chunk mask must not be an inference tensor (it would break a later backward)."""
    torch.manual_seed(0)
    b, length, h, p, n = 1, 24, 2, 4, 8
    x = torch.randn(b, length, h, p)
    dt = torch.rand(b, length, h) * 0.5 + 0.1
    A = -torch.rand(h) - 0.5
    B = torch.randn(b, length, 1, n)
    C = torch.randn(b, length, 1, n)
    chunk = 7  # a chunk size no other test uses, so the mask is first built right here
    with torch.inference_mode():
        ssd_scan_chunked(x, dt, A, B, C, chunk_size=chunk)
    for tensor in (x, dt, A, B, C):
        tensor.requires_grad_(True)
    out = ssd_scan_chunked(x, dt, A, B, C, chunk_size=chunk)
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    assert B.grad is not None and C.grad is not None
