"""2-D Kolmogorov flow: a pseudo-spectral Navier-Stokes solver, Gaussian random initial fields, and the
trajectory dataset that ``hybrids pde simulate`` writes and training reads.

The equation (vorticity form on the periodic square ``[0, 2 pi)^2``)::

    w_t + u . grad w = nu lap w - alpha w + f,      nu = 1 / Re,  alpha = 0.1 (drag),
    f(x, y) = -A k_f cos(k_f y)                      (k_f = 8, A = 1: f = -8 cos(8 y))

Conventions: ``x`` is the first grid axis, ``y`` the second (``indexing="ij"``), points at ``2 pi i / n``.
Vorticity ``w = v_x - u_y``; stream function ``lap psi = -w``; velocity ``u = psi_y``, ``v = -psi_x``. The
vorticity forcing is the curl of the body force ``F = (A sin(k_f y), 0)``: ``f = -d/dy (A sin(k_f y))``.
This is the data generator of FactFormer (Li, Shu & Barati Farimani 2023, ``dataset/kolmogorov.py``,
itself after the physics-informed neural operator's solver): Re 1000, drag 0.1 (Kochkov et al. 2021),
forcing number 8, GRF initial vorticity (alpha 2.5, tau 7), spin-up of 2 time units, frames every 1/32.

Numerics: Fourier (``rfft2``) in space with the circular 2/3 rule (modes with ``|k| > n / 3`` are zeroed,
as in the reference solver), Crank-Nicolson for the linear part ``-(nu |k|^2 + alpha) w`` and Heun's
method (explicit trapezoidal) for advection and forcing: second order in time. Time steps adapt to the
flow (``cfl``) and divide each frame interval exactly. Everything runs in float64 by default.

Budgets (``Diagnostics``; ``<.>`` the domain mean, ``E = <|u|^2> / 2``, ``Z = <w^2> / 2``,
``P = <|grad w|^2> / 2``)::

    dE/dt = -2 nu Z - 2 alpha E + <u . F>
    dZ/dt = -2 nu P - 2 alpha Z + <w f>

Dataset layout (one folder): ``dataset.json`` (everything needed to regenerate it, the frame spacing and
the list of trajectory files; written last, so a folder without it is incomplete) and
``trajectories/NNNNNN.npy`` (float32 ``(frames, n, n)`` vorticity, each written atomically).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hybrids.datasets.atomic import atomic_write_path, atomic_write_text, make_output_folder

__all__ = [
    "DATASET_FILE",
    "Diagnostics",
    "KolmogorovDataset",
    "KolmogorovError",
    "KolmogorovFlow",
    "SimulationConfig",
    "energy_spectrum",
    "gaussian_random_field",
    "read_dataset",
    "simulate_dataset",
    "taylor_green_vorticity",
]

DATASET_FILE = "dataset.json"
TRAJECTORY_DIR = "trajectories"
DEALIAS = ("circular", "square", "none")
FORMAT = "hybrids.kolmogorov/1"


class KolmogorovError(ValueError):
    """A dataset folder or file that cannot be used; ``str()`` is one line naming it."""


# -- the solver -----------------------------------------------------------------------------------------
@dataclass
class Diagnostics:
    """Domain means of one state (per trajectory, each a ``(batch,)`` tensor)."""

    energy: Tensor  # E = <|u|^2> / 2
    enstrophy: Tensor  # Z = <w^2> / 2
    palinstrophy: Tensor  # P = <|grad w|^2> / 2
    energy_injection: Tensor  # <u . F>
    enstrophy_injection: Tensor  # <w f>
    energy_rate: Tensor  # right-hand side of dE/dt
    enstrophy_rate: Tensor  # right-hand side of dZ/dt


class KolmogorovFlow:
    """Pseudo-spectral solver of the module's equation on an ``n x n`` grid, for a batch of fields.

    ``w0 (batch, n, n)`` or ``(n, n)`` real vorticity. ``advance(t)`` integrates by ``t`` time units;
    ``vorticity()`` gives the physical field. ``dt``: a fixed step (``None``: adaptive, ``cfl`` times the
    grid spacing over the largest speed, capped at ``max_dt``); every call to ``advance`` ends exactly at
    its end time. ``forcing_amplitude=0`` removes the forcing, ``drag=0`` the drag. ``dealias``:
    ``"circular"`` (``|k| <= n/3``, the reference solver's), ``"square"`` (``|k_x|, |k_y| <= n/3``,
    Orszag's) or ``"none"``.
    """

    def __init__(
        self,
        w0: Tensor,
        *,
        re: float = 1000.0,
        drag: float = 0.1,
        forcing_wavenumber: int = 8,
        forcing_amplitude: float = 1.0,
        dt: float | None = None,
        cfl: float = 0.25,
        max_dt: float = 0.01,
        dealias: str = "circular",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if w0.dim() == 2:
            w0 = w0.unsqueeze(0)
        if w0.dim() != 3 or w0.shape[-1] != w0.shape[-2]:
            raise ValueError(f"KolmogorovFlow: w0 must be (batch, n, n), got {tuple(w0.shape)}")
        n = w0.shape[-1]
        if n < 8 or n % 2:
            raise ValueError(f"KolmogorovFlow: the grid must be even and >= 8, got {n}")
        if not re > 0 or drag < 0 or (dt is not None and not dt > 0) or not 0 < cfl <= 1:
            raise ValueError(f"KolmogorovFlow: bad parameters re={re}, drag={drag}, dt={dt}, cfl={cfl}")
        if forcing_amplitude and not 0 < forcing_wavenumber < n / 3:
            raise ValueError(f"KolmogorovFlow: forcing wavenumber {forcing_wavenumber} outside (0, n/3)")
        if dealias not in DEALIAS:
            raise ValueError(f"KolmogorovFlow: dealias must be one of {DEALIAS}, got {dealias!r}")
        if not torch.isfinite(w0).all():
            raise ValueError("KolmogorovFlow: the initial vorticity has NaN or infinite values")
        self.n, self.re, self.nu, self.drag = n, float(re), 1.0 / float(re), float(drag)
        self.kf, self.amplitude = int(forcing_wavenumber), float(forcing_amplitude)
        self.fixed_dt, self.cfl, self.max_dt = dt, float(cfl), float(max_dt)
        self.dtype, self.device = dtype, w0.device
        self.time = 0.0
        self.steps = 0
        kx = torch.fft.fftfreq(n, 1.0 / n, dtype=dtype, device=self.device)  # integer wavenumbers
        ky = torch.fft.rfftfreq(n, 1.0 / n, dtype=dtype, device=self.device)
        self.kx, self.ky = kx[:, None], ky[None, :]
        self.k2 = self.kx**2 + self.ky**2
        inv = self.k2.clone()
        inv[0, 0] = 1.0
        self.inv_k2 = 1.0 / inv
        self.inv_k2[0, 0] = 0.0  # the mean vorticity carries no velocity
        self.linear = self.nu * self.k2 + self.drag  # w_t = -linear w + ...
        if dealias == "circular":
            self.mask = (self.k2 <= (n / 3.0) ** 2).to(dtype)
        elif dealias == "square":
            self.mask = ((self.kx.abs() <= n / 3.0) & (self.ky <= n / 3.0)).to(dtype)
        else:
            self.mask = torch.ones_like(self.k2)
        self.mask[0, 0] = 0.0  # the mean vorticity is zero on a periodic domain
        self.forcing_hat = torch.zeros_like(self.k2, dtype=_complex(dtype))
        if self.amplitude:
            self.forcing_hat[0, self.kf] = -self.amplitude * self.kf / 2.0 * n * n
        self.w_hat = torch.fft.rfft2(w0.to(dtype)) * self.mask

    # -- fields --------------------------------------------------------------------------------------
    def vorticity(self) -> Tensor:
        """The vorticity ``(batch, n, n)`` in physical space."""
        return torch.fft.irfft2(self.w_hat, s=(self.n, self.n))

    def velocity_hat(self, w_hat: Tensor) -> tuple[Tensor, Tensor]:
        psi = w_hat * self.inv_k2
        return 1j * self.ky * psi, -1j * self.kx * psi

    def velocity(self) -> tuple[Tensor, Tensor]:
        """``(u, v)``, each ``(batch, n, n)``."""
        u_hat, v_hat = self.velocity_hat(self.w_hat)
        s = (self.n, self.n)
        return torch.fft.irfft2(u_hat, s=s), torch.fft.irfft2(v_hat, s=s)

    def forcing(self) -> Tensor:
        """The vorticity forcing ``f`` on the grid ``(n, n)``."""
        return torch.fft.irfft2(self.forcing_hat, s=(self.n, self.n))

    # -- time stepping --------------------------------------------------------------------------------
    def explicit(self, w_hat: Tensor) -> Tensor:
        """``-u . grad w + f`` in Fourier space (dealiased)."""
        s = (self.n, self.n)
        u_hat, v_hat = self.velocity_hat(w_hat)
        u, v, w = (torch.fft.irfft2(t, s=s) for t in (u_hat, v_hat, w_hat))
        # u . grad w = div(u w) for a divergence-free u
        adv = 1j * self.kx * torch.fft.rfft2(u * w) + 1j * self.ky * torch.fft.rfft2(v * w)
        return (self.forcing_hat - adv) * self.mask

    def step(self, dt: float) -> None:
        """One Crank-Nicolson / Heun step of length ``dt``."""
        half = 0.5 * dt * self.linear
        explicit_0 = self.explicit(self.w_hat)
        rhs = self.w_hat * (1.0 - half)
        w_tilde = (rhs + dt * explicit_0) / (1.0 + half)
        explicit_1 = self.explicit(w_tilde)
        self.w_hat = (rhs + 0.5 * dt * (explicit_0 + explicit_1)) / (1.0 + half) * self.mask
        self.time += dt
        self.steps += 1

    def stable_dt(self) -> float:
        """``cfl`` times the grid spacing over the largest speed, at most ``max_dt``."""
        u, v = self.velocity()
        speed = float(torch.sqrt(u * u + v * v).max())
        dx = 2.0 * math.pi / self.n
        return min(self.max_dt, self.cfl * dx / max(speed, 1e-12))

    def advance(self, t: float) -> None:
        """Integrate by ``t`` time units in equal steps (a fixed ``dt`` is shortened to divide ``t``)."""
        if t <= 0:
            return
        dt = self.fixed_dt if self.fixed_dt is not None else self.stable_dt()
        steps = max(1, math.ceil(t / dt - 1e-9))
        for _ in range(steps):
            self.step(t / steps)
        if not torch.isfinite(self.w_hat).all():
            raise FloatingPointError(f"KolmogorovFlow: the solution blew up at t={self.time:.4g}")

    # -- diagnostics ----------------------------------------------------------------------------------
    def diagnostics(self, w_hat: Tensor | None = None) -> Diagnostics:
        """Energy and enstrophy and the right-hand sides of their budgets (module docstring)."""
        w_hat = self.w_hat if w_hat is None else w_hat
        s = (self.n, self.n)
        u_hat, v_hat = self.velocity_hat(w_hat)
        u, v, w = (torch.fft.irfft2(t, s=s) for t in (u_hat, v_hat, w_hat))
        wx = torch.fft.irfft2(1j * self.kx * w_hat, s=s)
        wy = torch.fft.irfft2(1j * self.ky * w_hat, s=s)
        dims = (-2, -1)
        energy = 0.5 * (u * u + v * v).mean(dims)
        enstrophy = 0.5 * (w * w).mean(dims)
        palinstrophy = 0.5 * (wx * wx + wy * wy).mean(dims)
        y = 2.0 * math.pi * torch.arange(self.n, dtype=self.dtype, device=self.device) / self.n
        force_x = self.amplitude * torch.sin(self.kf * y)[None, None, :]  # F = (A sin(k_f y), 0)
        energy_injection = (u * force_x).mean(dims)
        enstrophy_injection = (w * self.forcing()).mean(dims)
        return Diagnostics(
            energy=energy,
            enstrophy=enstrophy,
            palinstrophy=palinstrophy,
            energy_injection=energy_injection,
            enstrophy_injection=enstrophy_injection,
            energy_rate=-2 * self.nu * enstrophy - 2 * self.drag * energy + energy_injection,
            enstrophy_rate=-2 * self.nu * palinstrophy - 2 * self.drag * enstrophy + enstrophy_injection,
        )


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


# -- fields -----------------------------------------------------------------------------------------------
def gaussian_random_field(
    batch: int,
    n: int,
    *,
    alpha: float = 2.5,
    tau: float = 7.0,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Periodic Gaussian random fields on ``[0, 2 pi)^2``, ``(batch, n, n)``, mean zero.

    The covariance of FactFormer's (and the neural-operator papers') ``GaussianRF``:
    ``sigma^2 (-lap + tau^2)^(-alpha)`` with ``sigma = tau^(alpha - 1)`` by default; the Fourier
    coefficient of wavenumber ``k`` has standard deviation ``n^2 sqrt(2) sigma (|k|^2 + tau^2)^(-alpha/2)``
    (backward-normalised inverse FFT), so point values do not depend on ``n``.
    """
    sigma = tau ** (0.5 * (2 * alpha - 2)) if sigma is None else sigma
    kx = torch.fft.fftfreq(n, 1.0 / n, dtype=dtype)[:, None]
    ky = torch.fft.rfftfreq(n, 1.0 / n, dtype=dtype)[None, :]
    sqrt_eig = n * n * math.sqrt(2.0) * sigma * (kx**2 + ky**2 + tau**2) ** (-alpha / 2.0)
    sqrt_eig[0, 0] = 0.0
    coeff = torch.randn(batch, n, n // 2 + 1, dtype=_complex(dtype), generator=generator)
    return torch.fft.irfft2(sqrt_eig * coeff, s=(n, n))


def taylor_green_vorticity(
    n: int, k: int = 1, amplitude: float = 1.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """``w = 2 k A cos(k x) cos(k y)`` on the ``n x n`` grid (the curl of ``u = A (cos kx sin ky,
    -sin kx cos ky)``): a steady solution of the Euler equations that decays at ``2 nu k^2 + alpha``."""
    x = 2.0 * math.pi * torch.arange(n, dtype=dtype) / n
    return 2.0 * k * amplitude * torch.cos(k * x)[:, None] * torch.cos(k * x)[None, :]


def energy_spectrum(w: Tensor) -> tuple[Tensor, Tensor]:
    """Shell-summed kinetic energy spectrum of vorticity fields ``(..., n, n)``.

    Returns ``(k, E)`` with ``k = 0 .. n/2`` and ``E[..., k]`` the energy ``|u_hat|^2 / 2`` (normalised so
    that ``E.sum(-1)`` is the mean energy ``<|u|^2> / 2`` of a field without energy beyond ``|k| = n/2``,
    e.g. a dealiased one) of the modes with ``round(|k|) == k``; the corners ``|k| > n/2`` are left out.
    """
    n = w.shape[-1]
    w_hat = torch.fft.fft2(w.to(torch.float64)) / (n * n)
    kx = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)[:, None]
    ky = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)[None, :]
    k2 = kx**2 + ky**2
    inv = torch.where(k2 > 0, 1.0 / k2.clamp_min(1.0), torch.zeros_like(k2))
    density = 0.5 * (w_hat.abs() ** 2) * inv  # |u_hat|^2 = |w_hat|^2 / |k|^2
    shells = torch.sqrt(k2).round().long()
    kmax = n // 2
    flat = density.reshape(*density.shape[:-2], -1)
    index = shells.reshape(-1).clamp_max(kmax + 1)
    out = torch.zeros(*density.shape[:-2], kmax + 2, dtype=torch.float64)
    out.index_add_(-1, index, flat)
    return torch.arange(kmax + 1, dtype=torch.float64), out[..., : kmax + 1]


# -- the dataset ----------------------------------------------------------------------------------------
@dataclass
class SimulationConfig:
    """What ``hybrids pde simulate`` simulates (FactFormer's data generator, scaled by ``grid``).

    ``grid``: the stored resolution; ``solver_grid``: the resolution solved on (default ``2 * grid``;
    frames are subsampled to ``grid`` as FactFormer subsamples 2048 to 256). Frames every ``frame_dt``
    time units after ``spinup`` time units, ``frames`` per trajectory. Trajectory ``i`` starts from a GRF
    drawn with seed ``seed * 1_000_003 + i`` (so any trajectory can be regenerated alone).
    """

    out: Path
    grid: int = 64
    trajectories: int = 16
    solver_grid: int | None = None
    frames: int = 320
    frame_dt: float = 1.0 / 32.0
    spinup: float = 2.0
    re: float = 1000.0
    drag: float = 0.1
    forcing_wavenumber: int = 8
    alpha: float = 2.5
    tau: float = 7.0
    cfl: float = 0.25
    batch: int = 4  # trajectories solved together
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    @property
    def solver(self) -> int:
        return self.solver_grid or 2 * self.grid

    def check(self) -> None:
        if self.grid < 16 or self.grid & (self.grid - 1):
            raise KolmogorovError(f"--grid must be a power of two >= 16, got {self.grid}")
        if self.solver % self.grid or self.solver & (self.solver - 1):
            raise KolmogorovError(
                f"--solver-grid must be a power-of-two multiple of --grid {self.grid}, got {self.solver}"
            )
        for name in ("trajectories", "frames", "batch"):
            if getattr(self, name) < 1:
                raise KolmogorovError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.frame_dt > 0 or self.spinup < 0 or not self.re > 0 or self.drag < 0:
            raise KolmogorovError("--frame-dt and --re must be > 0, --spinup and --drag >= 0")
        if not 0 < self.forcing_wavenumber < self.solver / 3:
            raise KolmogorovError(f"--forcing-wavenumber must be in (0, {self.solver / 3:.0f})")
        if self.threads is not None and self.threads < 1:
            raise KolmogorovError(f"--threads must be >= 1, got {self.threads}")
        if (self.out / DATASET_FILE).exists():
            raise KolmogorovError(f"{self.out}: already holds a dataset ({DATASET_FILE}); choose another -o")


def _trajectory_name(index: int) -> str:
    return f"{TRAJECTORY_DIR}/{index:06d}.npy"


def simulate_dataset(config: SimulationConfig, log: Callable[[str], None] | None = None) -> Path:
    """Simulate ``config.trajectories`` trajectories into ``config.out`` (module docstring: layout).

    Trajectories are solved ``batch`` at a time and each is written as soon as it is complete; the
    ``dataset.json`` written last makes the folder a dataset.
    """
    from tqdm import tqdm

    config.check()
    make_output_folder(config.out / TRAJECTORY_DIR)
    before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.monotonic()
    sub = config.solver // config.grid
    names = []
    bar = tqdm(
        total=config.trajectories * config.frames,
        desc="simulating",
        unit="frame",
        disable=None if config.progress else True,  # None: shown on a terminal only
        dynamic_ncols=True,
        file=sys.stderr,
    )
    try:
        for first in range(0, config.trajectories, config.batch):
            indices = list(range(first, min(first + config.batch, config.trajectories)))
            w0 = torch.cat(
                [
                    gaussian_random_field(
                        1,
                        config.solver,
                        alpha=config.alpha,
                        tau=config.tau,
                        generator=torch.Generator().manual_seed(config.seed * 1_000_003 + i),
                    )
                    for i in indices
                ]
            )
            flow = KolmogorovFlow(
                w0,
                re=config.re,
                drag=config.drag,
                forcing_wavenumber=config.forcing_wavenumber,
                cfl=config.cfl,
            )
            flow.advance(config.spinup)
            frames = np.empty((len(indices), config.frames, config.grid, config.grid), dtype=np.float32)
            for f in range(config.frames):
                flow.advance(config.frame_dt)
                frames[:, f] = flow.vorticity()[:, ::sub, ::sub].numpy()
                bar.update(len(indices))
            for j, i in enumerate(indices):
                with atomic_write_path(config.out / _trajectory_name(i)) as tmp:
                    np.save(tmp, frames[j])
                names.append(_trajectory_name(i))
            if log is not None:
                log(f"trajectories {indices[0]}-{indices[-1]} done ({time.monotonic() - started:.0f} s)")
    finally:
        bar.close()
        torch.set_num_threads(before)
    meta = {
        "format": FORMAT,
        "equation": "w_t + u.grad w = (1/Re) lap w - drag w - k_f cos(k_f y), periodic [0, 2pi)^2",
        "simulation": {k: v for k, v in asdict(config).items() if k not in ("out", "progress", "threads")},
        "solver_grid": config.solver,
        "grid": config.grid,
        "frames": config.frames,
        "frame_dt": config.frame_dt,
        "trajectories": names,
        "seconds": round(time.monotonic() - started, 1),
    }
    atomic_write_text(config.out / DATASET_FILE, json.dumps(meta, indent=2) + "\n")
    return config.out


@dataclass
class KolmogorovDataset:
    """A dataset folder: its metadata and lazily loaded trajectories ``(frames, n, n)`` float32."""

    folder: Path
    meta: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    @property
    def grid(self) -> int:
        return int(self.meta["grid"])

    @property
    def frame_dt(self) -> float:
        return float(self.meta["frame_dt"])

    @property
    def frames(self) -> int:
        return int(self.meta["frames"])

    def __len__(self) -> int:
        return len(self.files)

    def trajectory(self, index: int, *, mmap: bool = True) -> np.ndarray:
        path = self.files[index]
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise KolmogorovError(f"{path}: not a readable trajectory ({exc})") from None
        expected = (self.frames, self.grid, self.grid)
        if array.shape != expected:
            raise KolmogorovError(f"{path}: shape {array.shape}, expected {expected}")
        return array

    def trajectories(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        for i in indices:
            yield self.trajectory(i)


def read_dataset(folder: str | Path) -> KolmogorovDataset:
    """Open a folder written by :func:`simulate_dataset`; ``KolmogorovError`` (one line) otherwise."""
    folder = Path(folder)
    meta_path = folder / DATASET_FILE
    if not folder.is_dir():
        raise KolmogorovError(f"{folder}: no such dataset folder")
    if not meta_path.is_file():
        raise KolmogorovError(f"{folder}: not a Kolmogorov dataset (no {DATASET_FILE}; incomplete?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KolmogorovError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise KolmogorovError(f"{meta_path}: not a {FORMAT} dataset description")
    files = [folder / name for name in meta.get("trajectories", [])]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise KolmogorovError(f"{missing[0]}: listed in {meta_path} but missing")
    if not files:
        raise KolmogorovError(f"{meta_path}: lists no trajectories")
    return KolmogorovDataset(folder, meta, files)
