"""The Kolmogorov-flow solver validated like a numerical code: budgets, order of accuracy, grid
convergence, an analytic solution, the forced spectrum, and an independent peer (jax-cfd)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hybrids.datasets.kolmogorov import (
    KolmogorovError,
    KolmogorovFlow,
    SimulationConfig,
    energy_spectrum,
    gaussian_random_field,
    read_dataset,
    simulate_dataset,
    taylor_green_vorticity,
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grf(n: int, seed: int, batch: int = 1) -> torch.Tensor:
    return gaussian_random_field(batch, n, generator=torch.Generator().manual_seed(seed))


def band_limit(w: torch.Tensor, kmax: float) -> torch.Tensor:
    n = w.shape[-1]
    kx = torch.fft.fftfreq(n, 1.0 / n, dtype=w.dtype)[:, None]
    ky = torch.fft.rfftfreq(n, 1.0 / n, dtype=w.dtype)[None, :]
    return torch.fft.irfft2(torch.fft.rfft2(w) * (kx**2 + ky**2 <= kmax**2), s=(n, n))


def upsample(w: torch.Tensor, m: int) -> torch.Tensor:
    """Spectral interpolation of ``(b, n, n)`` fields onto an ``m x m`` grid (exact when band-limited)."""
    n = w.shape[-1]
    h = torch.fft.rfft2(w)
    out = torch.zeros(w.shape[0], m, m // 2 + 1, dtype=h.dtype)
    out[:, : n // 2, : n // 2 + 1] = h[:, : n // 2, : n // 2 + 1]
    out[:, -n // 2 :, : n // 2 + 1] = h[:, -n // 2 :, : n // 2 + 1]
    return torch.fft.irfft2(out * (m / n) ** 2, s=(m, m))


def low_modes(w: torch.Tensor, kmax: float) -> torch.Tensor:
    n = w.shape[-1]
    kx = torch.fft.fftfreq(n, 1.0 / n, dtype=w.dtype)[:, None]
    ky = torch.fft.rfftfreq(n, 1.0 / n, dtype=w.dtype)[None, :]
    return (torch.fft.rfft2(w) / (n * n))[..., kx**2 + ky**2 <= kmax**2]


def test_sign_convention_forcing_and_velocity():
    flow = KolmogorovFlow(grf(32, 0), forcing_wavenumber=4)
    y = 2 * math.pi * torch.arange(32, dtype=torch.float64) / 32
    torch.testing.assert_close(flow.forcing(), (-4 * torch.cos(4 * y)).expand(32, 32), atol=1e-12, rtol=0)
    u, v = flow.velocity()
    # w = v_x - u_y (spectral derivatives), and div u = 0
    k = torch.fft.fftfreq(32, 1 / 32, dtype=torch.float64)
    dx = lambda f: torch.fft.ifft(1j * k[:, None] * torch.fft.fft(f, dim=-2), dim=-2).real  # noqa: E731
    dy = lambda f: torch.fft.ifft(1j * k[None, :] * torch.fft.fft(f, dim=-1), dim=-1).real  # noqa: E731
    torch.testing.assert_close(dx(v) - dy(u), flow.vorticity(), atol=1e-10, rtol=0)
    assert (dx(u) + dy(v)).abs().max() < 1e-10


def test_energy_and_enstrophy_budgets_close():
    """dE/dt = -2 nu Z - 2 alpha E + <u.F> and dZ/dt = -2 nu P - 2 alpha Z + <w f>, each step's change
    against the trapezoidal mean of the right-hand side: relative mismatch < 1e-5 (measured ~2e-6)."""
    dt = 2e-3
    flow = KolmogorovFlow(grf(64, 1, batch=2), dt=dt)
    flow.advance(0.5)  # leave the smooth initial condition
    records = []
    for _ in range(60):
        records.append(flow.diagnostics())
        flow.step(dt)
    records.append(flow.diagnostics())
    for value, rate in (("energy", "energy_rate"), ("enstrophy", "enstrophy_rate")):
        level = torch.stack([getattr(r, value) for r in records])
        rhs = torch.stack([getattr(r, rate) for r in records])
        change = (level[1:] - level[:-1]) / dt
        mean_rhs = 0.5 * (rhs[1:] + rhs[:-1])
        scale = max(float(rhs.abs().max()), float((2 * flow.drag * level).abs().max()))
        assert float((change - mean_rhs).abs().max()) / scale < 1e-5, value


def test_nonlinear_term_conserves_energy_and_enstrophy():
    flow = KolmogorovFlow(grf(64, 2), forcing_amplitude=0.0)
    adv = flow.explicit(flow.w_hat)  # -u.grad w without forcing
    n = flow.n
    psi = flow.w_hat * flow.inv_k2

    def inner(a, b):  # <a b> from rfft coefficients (Parseval, half spectrum doubled)
        weight = torch.full(a.shape[-1:], 2.0, dtype=torch.float64)
        weight[0] = 1.0
        if n % 2 == 0:
            weight[-1] = 1.0
        return ((a.conj() * b).real * weight).sum() / n**4

    scale = float(inner(adv, adv).sqrt() * inner(flow.w_hat, flow.w_hat).sqrt())
    assert abs(float(inner(flow.w_hat, adv))) < 1e-12 * scale  # enstrophy
    assert abs(float(inner(psi, adv))) < 1e-12 * scale  # energy


def test_second_order_in_time():
    w0 = grf(64, 2)

    def run(steps):
        flow = KolmogorovFlow(w0, dt=0.5 / steps)
        flow.advance(0.5)
        return flow.vorticity()

    reference = run(800)
    errors = [float((run(m) - reference).norm() / reference.norm()) for m in (25, 50, 100)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(1.9 < p < 2.2 for p in orders), (errors, orders)


def test_short_run_agrees_with_a_twice_finer_grid():
    """The data's solver grid (128) against 256 at Re 1000 after 0.5 time units: modes |k| <= 16 agree
    within 1e-3 and all resolved modes within 5% (measured 3e-4 and 1.9%)."""
    coarse = KolmogorovFlow(grf(128, 3), dt=2e-3)
    fine = KolmogorovFlow(upsample(coarse.vorticity(), 256), dt=2e-3)
    coarse.advance(0.5)
    fine.advance(0.5)
    for kmax, tolerance in ((16, 1e-3), (128 / 3, 0.05)):
        a, b = low_modes(coarse.vorticity(), kmax), low_modes(fine.vorticity(), kmax)
        assert float((a - b).abs().norm() / b.abs().norm()) < tolerance


@pytest.mark.parametrize("drag", [0.0, 0.1])
def test_taylor_green_decays_at_the_analytic_rate(drag):
    k, re, t = 2, 100.0, 1.0
    w0 = taylor_green_vorticity(32, k=k)
    flow = KolmogorovFlow(w0, re=re, drag=drag, forcing_amplitude=0.0, dt=0.01)
    assert float(flow.explicit(flow.w_hat).abs().max()) < 1e-9 * float(flow.w_hat.abs().max())  # steady Euler
    flow.advance(t)
    expected = w0 * math.exp(-(2 * k * k / re + drag) * t)
    torch.testing.assert_close(flow.vorticity()[0], expected, rtol=0, atol=1e-6 * float(w0.abs().max()))


def test_forced_spectrum_is_at_least_as_steep_as_k_minus_3():
    """The data configuration (Re 1000, 128^2, k_f = 8) after 4 time units of spin-up from a GRF: a
    least-squares slope of E(k) over 12 <= k <= 34 of at most -3 (measured about -4.5)."""
    flow = KolmogorovFlow(grf(128, 0))
    flow.advance(4.0)
    k, spectrum = energy_spectrum(flow.vorticity())
    sel = (k >= 12) & (k <= 34)
    slope = np.polyfit(np.log(k[sel].numpy()), np.log(spectrum[0, sel].numpy()), 1)[0]
    assert slope <= -3.0, slope


def test_agrees_with_jax_cfd():
    """An independent pseudo-spectral code (jax-cfd's NavierStokes2D, Kolmogorov forcing sin(8y) at
    the grid points, drag 0.1, Carpenter-Kennedy RK4 / Crank-Nicolson) on the same discretisation (its
    brick-wall 2/3 filter): relative L2 difference < 1e-4 after 0.5 time units (measured 3e-5)."""
    jax = pytest.importorskip("jax")
    cfd = pytest.importorskip("jax_cfd.base")
    spectral = pytest.importorskip("jax_cfd.spectral")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    n, t, dt = 64, 0.5, 2e-3
    w0 = band_limit(grf(n, 3), 16)
    grid = cfd.grids.Grid((n, n), domain=((0, 2 * np.pi), (0, 2 * np.pi)))

    def forcing(g):
        return cfd.forcings.kolmogorov_forcing(g, scale=1.0, k=8, offsets=((0.0, 0.0), (0.0, 0.0)))

    equation = spectral.equations.NavierStokes2D(1e-3, grid, drag=0.1, smooth=True, forcing_fn=forcing)
    step = spectral.time_stepping.crank_nicolson_rk4(equation, dt)
    w_hat = jax.jit(cfd.funcutils.repeated(step, round(t / dt)))(jnp.fft.rfftn(jnp.asarray(w0[0].numpy())))
    peer = np.asarray(jnp.fft.irfftn(w_hat))
    ours = KolmogorovFlow(w0, dt=dt, dealias="none")
    ours.mask = torch.tensor(np.array(spectral.utils.brick_wall_filter_2d(grid)), dtype=torch.float64)
    ours.mask[0, 0] = 0.0
    ours.advance(t)
    ours_w = ours.vorticity()[0].numpy()
    assert np.linalg.norm(ours_w - peer) / np.linalg.norm(peer) < 1e-4


def test_grf_statistics_and_determinism():
    a = grf(64, 5, batch=8)
    assert a.shape == (8, 64, 64)
    torch.testing.assert_close(a, grf(64, 5, batch=8))
    assert abs(float(a.mean())) < 1e-12
    # variance = sum over modes of (2 sigma^2)(|k|^2 + tau^2)^-alpha / 2 (complex normal: half per part)
    k = torch.fft.fftfreq(64, 1 / 64, dtype=torch.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    eig = 2 * (7.0**3) * (k2 + 49.0) ** (-2.5)
    eig[0, 0] = 0
    assert 0.7 < float(a.var()) / float(eig.sum()) < 1.3


def test_energy_spectrum_sums_to_the_energy():
    flow = KolmogorovFlow(grf(32, 6))  # dealiased: no energy in the corners |k| > n/2
    _, spectrum = energy_spectrum(flow.vorticity())
    torch.testing.assert_close(spectrum.sum(-1), flow.diagnostics().energy, rtol=1e-10, atol=0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="NaN"):
        KolmogorovFlow(torch.full((16, 16), float("nan")), forcing_wavenumber=4)
    with pytest.raises(ValueError, match="even"):
        KolmogorovFlow(torch.zeros(15, 15))
    with pytest.raises(ValueError, match="forcing wavenumber"):
        KolmogorovFlow(torch.zeros(16, 16), forcing_wavenumber=8)


def test_simulate_and_read_a_small_dataset(tmp_path):
    out = tmp_path / "kf"
    config = SimulationConfig(
        out,
        grid=16,
        solver_grid=32,
        trajectories=3,
        frames=4,
        spinup=0.1,
        forcing_wavenumber=4,
        batch=2,
        progress=False,
    )
    simulate_dataset(config)
    data = read_dataset(out)
    assert len(data) == 3 and data.grid == 16 and data.frames == 4
    traj = data.trajectory(2)
    assert traj.shape == (4, 16, 16) and traj.dtype == np.float32 and np.isfinite(traj).all()
    # trajectory i is reproducible alone (its own seed)
    again = SimulationConfig(
        tmp_path / "one",
        grid=16,
        solver_grid=32,
        trajectories=1,
        frames=4,
        spinup=0.1,
        forcing_wavenumber=4,
        progress=False,
    )
    simulate_dataset(again)
    np.testing.assert_allclose(read_dataset(tmp_path / "one").trajectory(0), data.trajectory(0), atol=1e-5)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["frame_dt"] == 1 / 32 and meta["solver_grid"] == 32
    with pytest.raises(KolmogorovError, match="already holds"):
        simulate_dataset(config)


def test_read_dataset_errors(tmp_path):
    with pytest.raises(KolmogorovError, match="no such"):
        read_dataset(tmp_path / "missing")
    with pytest.raises(KolmogorovError, match="incomplete"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(KolmogorovError, match="not valid JSON"):
        read_dataset(tmp_path)
