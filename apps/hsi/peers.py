"""Classical hyperspectral denoisers, the peers HSDT is measured against: BM4D and FastHyDe.

Cubes are ``(bands, H, W)`` on the [0, 1] scale; sigmas on that scale too.

- **BM4D** (Maggioni et al. 2013) through the ``bm4d`` package (Tampere University's binaries; free
  for non-commercial use only, so it is a development dependency: ``pip install bm4d``). The cube is
  one volume ``(H, W, bands)``; BM4D takes one noise sigma: the known one, or ``estimate_sigma``'s
  per-band estimates pooled as their root mean square.
- **FastHyDe** (Zhuang and Bioucas-Dias, IGARSS 2016 / JSTARS 2018), written here from the paper: the
  noise of every band is estimated by multiple regression on the other bands (HySime's
  ``estNoise``), the cube is whitened band by band (the non-i.i.d. variant), HySime picks the
  signal subspace ``E`` (``k`` eigenvectors, at most ``max_subspace``), each eigen-image ``E^T y`` is
  denoised with BM3D (``bm3d`` package, same licence as bm4d) at its own noise level, and the cube is
  rebuilt and un-whitened. Blind by design: it needs no sigma.
- ``estimate_sigma``: per-band noise sigma from the median absolute finest-scale diagonal Haar
  wavelet coefficient (Donoho's MAD / 0.6745).
"""

from __future__ import annotations

import numpy as np

from hybrids.apps.core.errors import InputError

__all__ = ["PEERS", "bm4d_denoise", "estimate_sigma", "fasthyde_denoise", "hysime", "regression_noise"]

PEERS = ("bm4d", "fasthyde")


def _missing(package: str) -> InputError:
    return InputError(
        f"{package} is not installed: pip install {package} (Tampere University's BM3D/BM4D binaries, "
        "free for non-commercial use only)"
    )


def estimate_sigma(cube: np.ndarray) -> np.ndarray:
    """Per-band Gaussian noise sigma of ``cube`` ``(bands, H, W)``: ``median(|HH|) / 0.6745`` of the
    finest diagonal Haar coefficients ``(a - b - c + d) / 2`` over 2 x 2 blocks."""
    x = np.asarray(cube, dtype=np.float64)
    h, w = (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
    x = x[:, :h, :w]
    hh = (x[:, 0::2, 0::2] - x[:, 0::2, 1::2] - x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 2.0
    return np.median(np.abs(hh), axis=(1, 2)) / 0.6745


def bm4d_denoise(noisy: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """BM4D of ``noisy`` ``(bands, H, W)`` with noise ``sigma`` ([0, 1] scale; ``None``: estimated)."""
    try:
        import bm4d
    except ImportError:
        raise _missing("bm4d") from None
    if sigma is None:
        sigma = float(np.sqrt(np.mean(estimate_sigma(noisy) ** 2)))
    volume = np.ascontiguousarray(np.moveaxis(np.asarray(noisy, dtype=np.float64), 0, -1))
    out = bm4d.bm4d(volume, max(float(sigma), 1e-6))
    return np.ascontiguousarray(np.moveaxis(np.asarray(out), -1, 0)).astype(np.float32)


def regression_noise(y: np.ndarray, small: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """HySime's additive noise estimate of ``y`` ``(bands, pixels)``: each band minus its least-squares
    prediction from all the others; returns the noise ``(bands, pixels)`` and its diagonal covariance."""
    bands, pixels = y.shape
    rr = y @ y.T
    rri = np.linalg.inv(rr + small * np.eye(bands))
    noise = np.empty_like(y)
    for i in range(bands):
        xx = rri - np.outer(rri[:, i], rri[i, :]) / rri[i, i]
        rra = rr[:, i].copy()
        rra[i] = 0.0
        beta = xx @ rra
        beta[i] = 0.0
        noise[i] = y[i] - beta @ y
    return noise, np.diag(np.diag(noise @ noise.T / pixels))


def hysime(y: np.ndarray, noise: np.ndarray, noise_cov: np.ndarray) -> tuple[int, np.ndarray]:
    """HySime (Bioucas-Dias and Nascimento 2008): the subspace dimension and the eigenvectors of the
    signal correlation, sorted by HySime's cost (most useful first)."""
    bands, pixels = y.shape
    x = y - noise
    ry, rx = y @ y.T / pixels, x @ x.T / pixels
    e, _, _ = np.linalg.svd(rx)
    rn = noise_cov + np.trace(rx) / bands / 1e5 * np.eye(bands)
    py = np.diag(e.T @ ry @ e)
    pn = np.diag(e.T @ rn @ e)
    cost = -py + 2 * pn
    order = np.argsort(cost)
    return int((cost < 0).sum()), e[:, order]


def fasthyde_denoise(noisy: np.ndarray, max_subspace: int = 10) -> np.ndarray:
    """FastHyDe of ``noisy`` ``(bands, H, W)`` (non-i.i.d. additive Gaussian variant; module docstring)."""
    try:
        import bm3d
    except ImportError:
        raise _missing("bm3d") from None
    bands, h, w = noisy.shape
    y = np.asarray(noisy, dtype=np.float64).reshape(bands, -1)
    _, cov = regression_noise(y)
    scale = np.sqrt(np.maximum(np.diag(cov), 1e-12))
    y = y / scale[:, None]  # whitened: unit noise variance in every band
    noise, cov = regression_noise(y)
    k, e = hysime(y, noise, cov)
    e = e[:, : int(np.clip(k, 1, max_subspace))]
    eigen = e.T @ y
    denoised = np.empty_like(eigen)
    for i, image in enumerate(eigen):
        lo, span = image.min(), max(np.ptp(image), 1e-12)
        sigma = float(np.sqrt(e[:, i] @ cov @ e[:, i])) / span
        filtered = bm3d.bm3d(((image - lo) / span).reshape(h, w), sigma)
        denoised[i] = np.asarray(filtered).reshape(-1) * span + lo
    out = (e @ denoised) * scale[:, None]
    return out.reshape(bands, h, w).astype(np.float32)
