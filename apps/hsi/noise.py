"""The QRNN3D / HSDT noise protocol, seeded, on cubes in [0, 1] of shape ``(bands, H, W)``.

Settings (``add_noise(clean, setting, rng)``; sigmas on the 0-255 scale of the [0, 1] range):

- ``gaussian10`` / ``30`` / ``50`` / ``70``: i.i.d. Gaussian noise of that sigma;
- ``blind``: i.i.d. Gaussian, sigma drawn from {10, 30, 50, 70} per cube (unknown to the method);
- ``noniid``: Gaussian with its own sigma per band, drawn from {10, 30, 50, 70};
- ``stripe``: ``noniid`` + stripes on a random third of the bands: 5-15 % of the columns of each
  shifted by a value uniform in [-0.25, 0.25];
- ``deadline``: ``noniid`` + dead lines on a third of the bands: 5-15 % of the columns set to 0;
- ``impulse``: ``noniid`` + salt-and-pepper noise on a third of the bands, each with an amount drawn
  from {0.1, 0.3, 0.5, 0.7} (half salt 1, half pepper 0);
- ``mixture``: ``noniid`` + stripes, dead lines and impulse noise, each on its own third of the bands.

These are the official code's ``AddNoise``, ``AddNoiseBlind``, ``AddNoiseNoniid``, ``AddNoiseStripe``,
``AddNoiseDeadline``, ``AddNoiseImpulse`` and ``AddNoiseNoniid`` + ``AddNoiseComplex`` (the "mixture"
test set), drawing from a ``numpy.random.Generator`` so that every figure is reproducible.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BLIND_SIGMAS",
    "COMPLEX_SETTINGS",
    "GAUSSIAN_SETTINGS",
    "NOISE_SETTINGS",
    "add_noise",
    "complex_training_noise",
]

BLIND_SIGMAS = (10, 30, 50, 70)
GAUSSIAN_SETTINGS = ("gaussian10", "gaussian30", "gaussian50", "gaussian70", "blind")
COMPLEX_SETTINGS = ("noniid", "stripe", "deadline", "impulse", "mixture")
NOISE_SETTINGS = GAUSSIAN_SETTINGS + COMPLEX_SETTINGS
IMPULSE_AMOUNTS = (0.1, 0.3, 0.5, 0.7)


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def gaussian(cube: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """i.i.d. Gaussian noise, ``sigma`` on the 0-255 scale."""
    return cube + rng.standard_normal(cube.shape) * (sigma / 255.0)


def noniid(cube: np.ndarray, rng: np.random.Generator, sigmas: tuple[int, ...] = BLIND_SIGMAS) -> np.ndarray:
    """Gaussian noise whose sigma (0-255 scale) is drawn per band from ``sigmas``."""
    per_band = np.asarray(sigmas, dtype=np.float64)[rng.integers(0, len(sigmas), cube.shape[0])] / 255.0
    return cube + rng.standard_normal(cube.shape) * per_band[:, None, None]


def _thirds(bands: int, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``parts`` disjoint random sets of ``floor(bands / 3)`` bands each."""
    order = rng.permutation(bands)
    n = bands // 3
    return [order[i * n : (i + 1) * n] for i in range(parts)]


def stripes(cube: np.ndarray, bands: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, _, w = cube.shape
    counts = rng.integers(int(np.floor(0.05 * w)), int(np.floor(0.15 * w)), len(bands))
    for band, count in zip(bands, counts):
        columns = rng.permutation(w)[:count]
        cube[band][:, columns] -= rng.uniform(0, 1, size=len(columns)) * 0.5 - 0.25
    return cube


def deadlines(cube: np.ndarray, bands: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    _, _, w = cube.shape
    counts = rng.integers(int(np.ceil(0.05 * w)), int(np.ceil(0.15 * w)), len(bands))
    for band, count in zip(bands, counts):
        cube[band][:, rng.permutation(w)[:count]] = 0.0
    return cube


def impulse(cube: np.ndarray, bands: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    amounts = np.asarray(IMPULSE_AMOUNTS)[rng.integers(0, len(IMPULSE_AMOUNTS), len(bands))]
    for band, amount in zip(bands, amounts):
        flipped = rng.random(cube.shape[1:]) < amount
        salted = rng.random(cube.shape[1:]) < 0.5
        cube[band][flipped & salted] = 1.0
        cube[band][flipped & ~salted] = 0.0
    return cube


def add_noise(clean: np.ndarray, setting: str, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """``clean`` ``(bands, H, W)`` in [0, 1] plus the noise of ``setting`` (module docstring), float32."""
    rng = _rng(rng)
    cube = np.asarray(clean, dtype=np.float64)
    if cube.ndim != 3:
        raise ValueError(f"add_noise: expected (bands, H, W), got shape {cube.shape}")
    if setting.startswith("gaussian") and setting[len("gaussian") :].isdigit():
        return gaussian(cube, float(setting[len("gaussian") :]), rng).astype(np.float32)
    if setting == "blind":
        return gaussian(cube, float(rng.choice(BLIND_SIGMAS)), rng).astype(np.float32)
    if setting not in COMPLEX_SETTINGS:
        raise ValueError(f"unknown noise setting {setting!r}; choose one of {', '.join(NOISE_SETTINGS)}")
    noisy = noniid(cube, rng)
    if setting == "stripe":
        noisy = stripes(noisy, _thirds(len(noisy), 1, rng)[0], rng)
    elif setting == "deadline":
        noisy = deadlines(noisy, _thirds(len(noisy), 1, rng)[0], rng)
    elif setting == "impulse":
        noisy = impulse(noisy, _thirds(len(noisy), 1, rng)[0], rng)
    elif setting == "mixture":
        stripe_bands, dead_bands, impulse_bands = _thirds(len(noisy), 3, rng)
        noisy = impulse(deadlines(stripes(noisy, stripe_bands, rng), dead_bands, rng), impulse_bands, rng)
    return noisy.astype(np.float32)


def complex_training_noise(clean: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    """The official complex-noise training transform: non-i.i.d. Gaussian, then in turn (by ``step``)
    nothing, impulse, stripes or dead lines on a third of the bands."""
    return add_noise(clean, ("noniid", "impulse", "stripe", "deadline")[step % 4], rng)
