"""Hyperspectral denoising metrics against scikit-image's PSNR / SSIM and SAM's definition."""

from __future__ import annotations

import numpy as np
import pytest

from hybrids.evaluation.denoising import PAPERS_SSIM_DATA_RANGE, band_psnr, band_ssim, quality, sam


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    clean = rng.random((5, 24, 20))
    return clean, np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1)


def test_band_psnr_and_ssim_match_scikit_image(pair):
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is the reference implementation")
    clean, noisy = pair
    psnr = [metrics.peak_signal_noise_ratio(c, n, data_range=1) for c, n in zip(clean, noisy)]
    np.testing.assert_allclose(band_psnr(clean, noisy), psnr, rtol=1e-12)
    for data_range in (1.0, PAPERS_SSIM_DATA_RANGE):
        ssim = [metrics.structural_similarity(c, n, data_range=data_range) for c, n in zip(clean, noisy)]
        np.testing.assert_allclose(band_ssim(clean, noisy, data_range=data_range), ssim, rtol=1e-10)


def test_quality_is_the_mean_over_bands_and_the_papers_ssim_range(pair):
    clean, noisy = pair
    q = quality(clean, noisy)
    assert q.psnr == pytest.approx(np.mean(band_psnr(clean, noisy)))
    assert q.ssim == pytest.approx(np.mean(band_ssim(clean, noisy, data_range=2.0)))
    assert q.ssim > quality(clean, noisy, ssim_data_range=1.0).ssim  # the papers' range is the lenient one
    assert set(q.as_dict()) == {"psnr", "ssim", "sam"}


def test_sam_in_radians():
    x = np.zeros((2, 1, 2))
    x[0, 0, 0], x[1, 0, 1] = 1.0, 1.0  # pixel 0 spectrum (1, 0), pixel 1 (0, 1)
    assert sam(x, x) == pytest.approx(0.0, abs=1e-3)  # the papers' eps leaves ~1e-4
    y = x[::-1].copy()  # orthogonal spectra: pi / 2 each
    assert sam(x, y) == pytest.approx(np.pi / 2, rel=1e-6)
    assert sam(x, 3 * x) == pytest.approx(0.0, abs=1e-3)  # scale-invariant


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="one shape"):
        quality(np.zeros((3, 8, 8)), np.zeros((3, 8, 9)))
    with pytest.raises(ValueError, match="smaller than"):
        band_ssim(np.zeros((1, 5, 5)), np.zeros((1, 5, 5)))
    assert np.isinf(band_psnr(np.ones((1, 2, 2)), np.ones((1, 2, 2)))).all()
