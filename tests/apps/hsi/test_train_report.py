"""``hybrids hsi train-denoiser`` end to end on the real scene, the peers, and ``hybrids hsi report``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from hybrids.apps.cli import main
from hybrids.apps.hsi.noise import add_noise
from hybrids.evaluation.denoising import quality


def test_train_denoiser_runs_on_the_real_scene_and_its_model_denoises(shared_data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "hsi", "train-denoiser", "--data", str(shared_data / "hsi" / "SalinasA_corrected.mat"),
        "-m", "hsdt_s",
        "--steps", "2", "--steps-per-epoch", "1", "--batch-size", "2", "--synthetic-scenes", "2",
        "--threads", "1", "-o", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "best validation PSNR" in capsys.readouterr().out
    info = json.loads((out / "best" / "config.json").read_text())
    assert info["model"] == "hsi/hsdt_s" and info["denoising"]["bands"] == 31
    training = info["training"]
    assert training["test_block_never_seen"] == [[0, 83], [54, 86]] and training["band_indices"][0] == 4
    assert len(json.loads((out / "history.json").read_text())) == 2
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((16, 16, 31)).astype(np.float32))
    assert (
        main(["hsi", "denoise", str(tmp_path / "x.npy"), "-o", str(tmp_path / "d"), "-m", str(out / "best")])
        == 0
    )


def test_train_denoiser_refuses_bad_values(shared_data, tmp_path, capsys):
    data = str(shared_data / "hsi" / "SalinasA_corrected.mat")
    assert (
        main(["hsi", "train-denoiser", "--data", data, "--patch-size", "30", "-o", str(tmp_path / "r")]) == 2
    )
    assert "multiple of 4" in capsys.readouterr().err
    assert (
        main(
            ["hsi", "train-denoiser", "--data", data, "--synthetic-fraction", "2", "-o", str(tmp_path / "r")]
        )
        == 2
    )
    assert (
        main(
            [
                "hsi",
                "train-denoiser",
                "--data",
                str(shared_data / "hsi" / "SalinasA_gt.mat"),
                "-o",
                str(tmp_path),
            ]
        )
        == 2
    )


def _smooth_cube() -> np.ndarray:
    yy, xx = np.mgrid[0:16, 0:16] / 16.0
    return np.stack([0.3 + 0.4 * np.sin(3 * xx + k / 4) * np.cos(2 * yy) for k in range(6)]).astype(
        np.float32
    )


def test_sigma_estimate_and_fasthyde():
    pytest.importorskip("bm3d", reason="BM3D/BM4D are development dependencies")
    from hybrids.apps.hsi.peers import estimate_sigma, fasthyde_denoise

    clean = _smooth_cube()
    noisy = add_noise(clean, "gaussian30", 0)
    assert estimate_sigma(noisy).mean() * 255 == pytest.approx(30, rel=0.25)
    assert quality(clean, fasthyde_denoise(noisy)).psnr > quality(clean, noisy).psnr + 6


@pytest.mark.slow
def test_bm4d_denoises():
    """Slow: the bm4d binary spends ~6 s even on a 16 x 16 x 6 cube."""
    pytest.importorskip("bm4d", reason="BM3D/BM4D are development dependencies")
    from hybrids.apps.hsi.peers import bm4d_denoise

    clean = _smooth_cube()
    noisy = add_noise(clean, "gaussian30", 0)
    before = quality(clean, noisy).psnr
    assert quality(clean, bm4d_denoise(noisy, 30 / 255)).psnr > before + 6
    assert quality(clean, bm4d_denoise(noisy)).psnr > before + 6  # sigma estimated


def test_report_writes_the_table_the_figure_and_a_stamped_page(shared_data, tmp_path):
    from hybrids.apps.core.checkpoint import save_checkpoint
    from hybrids.apps.core.registry import create_model

    save_checkpoint(create_model("hsi/hsdt_s", preset="tiny"), tmp_path / "tiny")
    page = tmp_path / "docs" / "hsi.md"
    argv = [
        "hsi", "report", "-m", str(tmp_path / "tiny"),
        "--data", str(shared_data / "hsi" / "SalinasA_corrected.mat"),
        "--noise", "gaussian50", "mixture", "--peers", "-o", str(tmp_path / "rep"), "--page", str(page),
    ]  # fmt: skip
    assert main(argv) == 0
    text = page.read_text()
    assert text.startswith("# Hyperspectral denoising") and "Measured by `hybrids hsi report" in text
    assert "| noisy |" in text and "| σ=50 | noisy |" in text
    assert "Goal**: not assessed" in text  # no classical peer in this run
    assert "per cube\non this machine with 1 torch thread." in text  # the timings' thread count
    assert (page.parent / "hsi_denoising.png").stat().st_size > 1000
    payload = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert payload["noise_std_255"]["gaussian50"] == pytest.approx(50, rel=0.05)  # the draw, measured
    assert re.search(r"Realised noise, .*: σ=50 (49|50)\.\d, mixture \d+\.\d\.", text)
    rows = payload["rows"]
    methods = sorted({r["method"] for r in rows})
    assert len(rows) == 4 and methods[0].startswith("HSDT-S (") and methods[1] == "noisy"
    assert all(set(r) >= {"psnr", "ssim", "sam", "seconds"} for r in rows)


def test_the_goal_line_compares_the_best_of_each_side():
    from hybrids.apps.hsi.report import _goal, _Method

    methods = [_Method("BM4D", None), _Method("FastHyDe", None), _Method("HSDT-S", None, kind="hsdt")]
    rows = [
        {"noise": s, "method": m, "psnr": p}
        for s, values in {
            "gaussian50": (30, 31, 32),
            "gaussian70": (28, 29, 29.5),
            "mixture": (25, 26, 27),
        }.items()
        for m, p in zip(("BM4D", "FastHyDe", "HSDT-S"), values)
    ]
    goal = _goal(rows, methods)
    assert goal["met"] and goal["settings"]["gaussian70"]["best_peer"] == "FastHyDe"
    rows[-1]["psnr"] = 25.5
    assert not _goal(rows, methods)["met"]


def test_a_missing_peer_package_is_one_clear_error(monkeypatch):
    import sys

    from hybrids.apps.core.errors import InputError
    from hybrids.apps.hsi.peers import bm4d_denoise, fasthyde_denoise

    monkeypatch.setitem(sys.modules, "bm4d", None)  # import bm4d now raises ImportError
    monkeypatch.setitem(sys.modules, "bm3d", None)
    cube = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(InputError, match="bm4d is not installed: pip install bm4d"):
        bm4d_denoise(cube, 0.1)
    with pytest.raises(InputError, match="bm3d is not installed"):
        fasthyde_denoise(cube)
