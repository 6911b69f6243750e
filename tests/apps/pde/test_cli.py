"""``hybrids pde simulate | train | rollout | report`` end to end on a tiny simulated dataset, the
training schedule, the built-in model, and bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hybrids.apps.cli import main
from hybrids.apps.pde.training import SurrogateModule, TrainWindows, one_cycle, validation_windows


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("pde") / "kf16"
    argv = ["-q", "pde", "simulate", "-o", str(out), "--grid", "16", "--trajectories", "4", "--frames", "64",
            "--forcing-wavenumber", "4", "--spinup", "0.5", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pde") / "run"
    argv = ["-q", "pde", "train", "--data", str(tiny_data), "-m", "factformer", "--preset", "tiny",
            "--test-trajectories", "1", "--steps", "4", "--batch-size", "2", "--val-every", "2",
            "--val-steps", "8", "--threads", "1", "--accelerator", "cpu", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


def test_train_writes_a_loadable_model(tiny_run):
    history = json.loads((tiny_run / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    assert len(history[-1]["rel_l2_per_step"]) == 8
    info = json.loads((tiny_run / "best" / "config.json").read_text())
    assert info["model"] == "pde/factformer" and info["config"]["grid"] == 16
    assert info["training"]["train_trajectories"] == 3 and info["training"]["test_trajectories"] == 1
    assert info["config"]["norm_std"] > 0


def test_rollout_and_report(tiny_data, tiny_run, tmp_path, capsys):
    initial = np.load(tiny_data / "trajectories" / "000003.npy")[::2][:12]
    np.save(tmp_path / "init.npy", initial)
    out = tmp_path / "pred.npy"
    argv = ["-q", "pde", "rollout", str(tiny_run / "best"), "--initial", str(tmp_path / "init.npy"),
            "--steps", "5", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    pred = np.load(out)
    assert pred.shape == (5, 16, 16) and np.isfinite(pred).all()
    # the raw trajectory (frames every 1/32) with --interval 2 gives the same input frames
    np.save(tmp_path / "raw.npy", np.load(tiny_data / "trajectories" / "000003.npy")[:23])
    argv_raw = [
        *argv[:5],
        str(tmp_path / "raw.npy"),
        "--steps",
        "5",
        "--interval",
        "2",
        "-o",
        str(tmp_path / "r.npy"),
    ]
    assert main(argv_raw) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), pred, atol=1e-6)
    np.save(tmp_path / "batch.npy", np.stack([initial, initial]))
    assert main([*argv[:5], str(tmp_path / "batch.npy"), "--steps", "3", "-o", str(tmp_path / "b.npy")]) == 0
    assert np.load(tmp_path / "b.npy").shape == (2, 3, 16, 16)

    report_dir, page = tmp_path / "report", tmp_path / "docs" / "pde.md"
    argv = ["-q", "pde", "report", "--data", str(tiny_data), "--equal-params", str(tiny_run / "best"),
            "--equal-time", str(tiny_run / "last"), "--test-trajectories", "1", "--steps", "8",
            "--windows", "2", "--no-scaling", "-o", str(report_dir), "--page", str(page)]  # fmt: skip
    assert main(argv) == 0
    text = page.read_text()
    assert (
        "## Rollout error at equal parameter count" in text and "## Rollout error at equal wall-clock" in text
    )
    assert "Measured by `hybrids" in text
    for name in ("rollout_error.png", "spectra.png", "snapshots.png"):
        assert (page.parent / f"pde-{name}").stat().st_size > 1000
    assert "](pde-rollout_error.png)" in text and "goal (FactFormer below FNO" not in text  # no FNO here
    result = json.loads((report_dir / "report.json").read_text())
    assert len(result["rel_l2_per_step"][str(tiny_run / "best")]) == 8


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hybrids: error:")
    return err[0]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((12, 32, 32), np.float32), "wrong grid"),
        (np.full((12, 16, 16), np.nan, np.float32), "NaN"),
        (np.zeros((4, 16, 16), np.float32), "input frames"),
        (np.zeros((12, 16, 16), np.int32), "expected float frames"),
    ],
)
def test_rollout_bad_input_exits_2_and_writes_nothing(tiny_run, tmp_path, capsys, array, message):
    np.save(tmp_path / "init.npy", array)
    out = tmp_path / "pred.npy"
    argv = ["pde", "rollout", str(tiny_run / "best"), "--initial", str(tmp_path / "init.npy"), "-o", str(out)]
    assert main(argv) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


def test_unknown_files_and_models_exit_2(tiny_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "pred.npy"
    assert main(["pde", "rollout", str(tiny_run / "best"), "--initial", str(tmp_path / "none.npy"),
                 "-o", str(out)]) == 2  # fmt: skip
    assert "no such file" in _error_line(capsys)
    assert (
        main(["pde", "rollout", "nonexistent_model", "--initial", str(tmp_path / "x.npy"), "-o", str(out)])
        == 2
    )
    assert "unknown model" in _error_line(capsys)
    assert main(["pde", "train", "--data", str(tmp_path / "missing"), "-m", "factformer",
                 "-o", str(tmp_path / "r")]) == 2  # fmt: skip
    assert "no such dataset" in _error_line(capsys)
    # trajectories too short for 10 input frames and 16 validation steps at stride 4
    assert main(["pde", "train", "--data", str(tiny_data), "-m", "factformer", "--preset", "tiny",
                 "--test-trajectories", "1", "--interval", "4", "-o", str(tmp_path / "r")]) == 2  # fmt: skip
    assert "too short" in _error_line(capsys)
    assert not (tmp_path / "r").exists() and not out.exists()


def test_builtin_model_rolls_out_offline(tmp_path):
    from hybrids.apps.core.catalog import get_builtin

    builtin = get_builtin("pde/kolmogorov64")
    if builtin is None:
        pytest.skip("no built-in PDE model in this checkout")
    frames = torch.randn(10, 64, 64).numpy().astype(np.float32)
    np.save(tmp_path / "init.npy", frames)
    out = tmp_path / "pred.npy"
    assert (
        main(
            ["-q", "pde", "rollout", "--initial", str(tmp_path / "init.npy"), "--steps", "4", "-o", str(out)]
        )
        == 0
    )
    assert np.load(out).shape == (4, 64, 64)


def test_schedule_curriculum_and_pushforward():
    assert one_cycle(0.0, 1.0) == pytest.approx(1e-4)
    assert one_cycle(0.2, 1.0) == pytest.approx(1.0)
    assert one_cycle(1.0, 1.0) == pytest.approx(1e-9)
    model = torch.nn.Linear(1, 1)
    model.max_steps = 4
    module = SurrogateModule(model, lr=1.0, weight_decay=0.0, total_steps=100, max_seconds=None,
                             curriculum=0.3, pushforward_after=0.4)  # fmt: skip
    assert [module.latent_steps(p) for p in (0.0, 0.1, 0.2, 0.3, 0.9)] == [1, 2, 3, 4, 4]
    assert not module.pushforward_now(0.39) and module.pushforward_now(
        0.5
    )  # global_step 0 is a multiple of 3


def test_windows():
    data = torch.arange(2 * 30 * 2 * 2, dtype=torch.float32).reshape(2, 30, 2, 2)
    x, y = next(iter(TrainWindows(data, 10, 6, seed=0)))
    assert x.shape == (10, 2, 2) and y.shape == (6, 2, 2)
    torch.testing.assert_close(y[0], x[-1] + 4)  # consecutive frames
    x, y = validation_windows(data, 10, 16, per_trajectory=3)
    assert x.shape == (6, 10, 2, 2) and y.shape == (6, 16, 2, 2)
