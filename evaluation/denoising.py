"""Hyperspectral denoising quality: mean band-wise PSNR and SSIM, and SAM, as QRNN3D and HSDT compute
them (their ``utility/indexes.py``: ``MSIQA``).

Cubes are ``(bands, H, W)`` arrays on the [0, 1] scale of the clean cube.

- **PSNR**: per band ``10 log10(data_range^2 / MSE)`` with ``data_range = 1``
  (scikit-image's ``peak_signal_noise_ratio(x, y, data_range=1)``), averaged over bands.
- **SSIM**: per band scikit-image's ``structural_similarity`` with its defaults: a 7 x 7 uniform
  window, K1 = 0.01, K2 = 0.03, sample covariances, the mean over the map less a 3-pixel border;
  averaged over bands. The papers call it without ``data_range`` on float arrays, which scikit-image
  (up to 0.20) took as the float dtype's range, 1 - (-1) = 2: ``ssim_data_range`` defaults to 2
  so that the numbers compare with theirs (pass 1 for the stricter convention).
- **SAM**: the spectral angle ``arccos(<x, y> / (|x| |y|))`` per pixel (with their ``eps = 1e-8`` in
  numerator and denominators), averaged over pixels, in radians.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PAPERS_SSIM_DATA_RANGE", "Quality", "band_psnr", "band_ssim", "quality", "sam"]

PAPERS_SSIM_DATA_RANGE = 2.0


def _pair(clean: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(clean, dtype=np.float64)
    y = np.asarray(estimate, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 3:
        raise ValueError(f"expected two (bands, H, W) cubes of one shape, got {x.shape} and {y.shape}")
    return x, y


def band_psnr(clean: np.ndarray, estimate: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """PSNR of every band (dB); ``inf`` for a band reproduced exactly."""
    x, y = _pair(clean, estimate)
    mse = ((x - y) ** 2).mean(axis=(1, 2))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def band_ssim(
    clean: np.ndarray, estimate: np.ndarray, data_range: float = PAPERS_SSIM_DATA_RANGE, win_size: int = 7
) -> np.ndarray:
    """SSIM of every band (scikit-image's ``structural_similarity`` defaults; module docstring)."""
    from scipy.ndimage import uniform_filter

    x, y = _pair(clean, estimate)
    if min(x.shape[1:]) < win_size:
        raise ValueError(
            f"band_ssim: bands of {x.shape[1:]} pixels are smaller than the {win_size}-pixel window"
        )
    size = (1, win_size, win_size)
    n = win_size**2
    cov_norm = n / (n - 1)
    ux, uy = uniform_filter(x, size), uniform_filter(y, size)
    uxx, uyy, uxy = uniform_filter(x * x, size), uniform_filter(y * y, size), uniform_filter(x * y, size)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return s[:, pad : s.shape[1] - pad, pad : s.shape[2] - pad].mean(axis=(1, 2))


def sam(clean: np.ndarray, estimate: np.ndarray, eps: float = 1e-8) -> float:
    """Mean spectral angle (radians) between the pixels' spectra."""
    x, y = _pair(clean, estimate)
    cosine = ((x * y).sum(0) + eps) / (np.sqrt((x**2).sum(0)) + eps) / (np.sqrt((y**2).sum(0)) + eps)
    return float(np.mean(np.arccos(np.clip(cosine, -1.0, 1.0))))


@dataclass(frozen=True)
class Quality:
    psnr: float  # dB, mean over bands
    ssim: float  # mean over bands
    sam: float  # radians, mean over pixels

    def as_dict(self) -> dict[str, float]:
        return {"psnr": self.psnr, "ssim": self.ssim, "sam": self.sam}


def quality(
    clean: np.ndarray, estimate: np.ndarray, ssim_data_range: float = PAPERS_SSIM_DATA_RANGE
) -> Quality:
    """MPSNR, MSSIM and SAM of ``estimate`` against ``clean`` (QRNN3D's / HSDT's ``MSIQA``)."""
    return Quality(
        psnr=float(np.mean(band_psnr(clean, estimate))),
        ssim=float(np.mean(band_ssim(clean, estimate, data_range=ssim_data_range))),
        sam=sam(clean, estimate),
    )
