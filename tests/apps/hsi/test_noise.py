"""The QRNN3D / HSDT noise protocol and the training schedule."""

from __future__ import annotations

import numpy as np
import pytest

from hybrids.apps.hsi.noise import NOISE_SETTINGS, add_noise
from hybrids.apps.hsi.training import PAPER_EPOCHS, paper_lr, stage_at, training_noise


@pytest.fixture
def clean() -> np.ndarray:
    return np.full((30, 40, 60), 0.5, dtype=np.float32)


@pytest.mark.parametrize("setting", NOISE_SETTINGS)
def test_every_setting_is_seeded_and_keeps_the_shape(clean, setting):
    a, b = add_noise(clean, setting, 7), add_noise(clean, setting, 7)
    assert a.shape == clean.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, add_noise(clean, setting, 8))
    assert (clean == 0.5).all()  # the input is never modified


@pytest.mark.parametrize("sigma", [10, 30, 50, 70])
def test_gaussian_sigma_is_on_the_255_scale(clean, sigma):
    noise = add_noise(clean, f"gaussian{sigma}", 0) - clean
    assert noise.std() == pytest.approx(sigma / 255, rel=0.02)


def test_noniid_draws_a_sigma_per_band_from_the_list(clean):
    per_band = (add_noise(clean, "noniid", 1) - clean).std(axis=(1, 2)) * 255
    nearest = np.array([10, 30, 50, 70])[np.abs(per_band[:, None] - [10, 30, 50, 70]).argmin(1)]
    np.testing.assert_allclose(per_band, nearest, rtol=0.06)
    assert len(set(nearest)) > 1


def test_structured_noise_hits_a_third_of_the_bands(clean):
    dead = add_noise(clean, "deadline", 2)
    zero_columns = (dead == 0).all(axis=1)  # (bands, W)
    hit = zero_columns.any(axis=1)
    assert hit.sum() == 10 and all(3 <= n < 9 for n in zero_columns[hit].sum(1))  # 5-15 % of 60 columns
    impulse = add_noise(clean, "impulse", 3)
    salt_pepper = ((impulse == 0) | (impulse == 1)).mean(axis=(1, 2))
    assert (salt_pepper > 0.05).sum() == 10
    stripes = add_noise(clean, "stripe", 4) - add_noise(clean, "noniid", 4)
    assert (np.abs(stripes).max(axis=(1, 2)) > 0).sum() <= 10
    mixture = add_noise(clean, "mixture", 5)
    assert (mixture == 0).all(axis=1).any(axis=1).sum() >= 10  # dead lines ...
    assert (((mixture == 0) | (mixture == 1)).mean(axis=(1, 2)) > 0.05).sum() >= 10  # ... and impulses


def test_unknown_setting_and_shape():
    with pytest.raises(ValueError, match="unknown noise setting"):
        add_noise(np.zeros((3, 4, 4)), "poisson", 0)
    with pytest.raises(ValueError, match="bands, H, W"):
        add_noise(np.zeros((4, 4)), "gaussian10", 0)


def test_the_papers_schedule_over_a_run():
    assert [stage_at(p) for p in (0.0, 0.2, 0.3, 0.6, 0.7, 1.0)] == [
        "gaussian50", "gaussian50", "blind", "blind", "complex", "complex",
    ]  # fmt: skip
    epoch = 1 / PAPER_EPOCHS
    assert paper_lr(0.0) == 1e-3 and paper_lr(25 * epoch) == pytest.approx(1e-4)
    assert paper_lr(30.5 * epoch) == pytest.approx(0.5e-3)  # warm-up into the blind stage
    assert paper_lr(78 * epoch) == pytest.approx(1e-6) and paper_lr(110 * epoch) == pytest.approx(1e-5)
    rng = np.random.default_rng(0)
    clean = np.full((6, 8, 8), 0.5)
    sigmas = [(training_noise(clean, "blind", step, rng) - clean).std() * 255 for step in range(4)]
    np.testing.assert_allclose(sigmas, [10, 30, 50, 70], rtol=0.25)
