"""``hybrids medical train``: patch sampling, loss, schedule, and end-to-end runs of a small
registered U-Net (MONAI's) on a few real hippocampus MRI cases from shared/data."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from hybrids.apps.cli import main
from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.registry import register_model, unregister_model

NAME = "medical/test_train_unet"


@dataclass
class SmallUNetConfig(ModelConfig):
    spatial_dims: int = 3
    in_channels: int = 1
    num_classes: int = 3
    width: int = 8
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {}, "tiny_2d": {"spatial_dims": 2}}


class SmallUNet(nn.Module):
    """The segmentation-model contract: ``forward(x (b, C, *spatial)) -> (b, classes, *spatial)``."""

    size_divisor = 4

    def __init__(self, cfg: SmallUNetConfig):
        super().__init__()
        from monai.networks.nets import UNet

        self.spatial_dims, self.in_channels, self.num_classes = (
            cfg.spatial_dims,
            cfg.in_channels,
            cfg.num_classes,
        )
        w = cfg.width
        self.net = UNet(
            cfg.spatial_dims, cfg.in_channels, cfg.num_classes, (w, 2 * w, 4 * w), (2, 2), num_res_units=1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def register() -> None:
    unregister_model(NAME)
    register_model(NAME, config=SmallUNetConfig, preset="tiny")(SmallUNet)


@pytest.fixture(autouse=True)
def small_unet():
    register()
    yield
    unregister_model(NAME)


@pytest.fixture(scope="module")
def cases(shared_data):
    from hybrids.apps.medical.training import default_preprocessing, preprocess_case
    from hybrids.datasets.msd import read_msd_dataset

    dataset = read_msd_dataset(shared_data / "hippocampus")
    chosen = dataset.cases[:3]
    prep = default_preprocessing(dataset, chosen)
    return [preprocess_case(c, prep) for c in chosen]


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-q",
        "medical",
        "train",
        "--data",
        str(data),
        "-m",
        "test_train_unet",
        "--train-cases",
        "3",
        "--val-cases",
        "2",
        "--batch-size",
        "2",
        "--steps-per-epoch",
        "3",
        "--threads",
        "1",
        "-o",
        str(out),
        *extra,
    ]


# -- preprocessing and sampling ------------------------------------------------------------------------
def test_preprocessing_matches_inference_transforms(shared_data, cases):
    """The cached training image equals what the inference-side transforms produce."""
    from hybrids.apps.medical.preprocessing import Preprocessing, normalize_intensity, spatial_transform
    from hybrids.datasets.medical import load_label_volume, load_volume

    prep = Preprocessing(orientation="RAS", spacing=(1.0, 1.0, 1.0), normalization="zscore")
    case = cases[0]
    volume = load_volume(shared_data / "hippocampus" / "imagesTr" / f"{case.name}.nii.gz")
    image = normalize_intensity(spatial_transform(prep)(volume.to_metatensor()), prep)
    torch.testing.assert_close(case.image, image.as_tensor(), rtol=0, atol=1e-6)
    label = load_label_volume(shared_data / "hippocampus" / "labelsTr" / f"{case.name}.nii.gz").array
    assert np.array_equal(case.label.numpy(), label) and case.label.dtype == torch.uint8
    assert set(case.classes) == {1, 2}
    assert all(np.all(case.label.reshape(-1).numpy()[idx] == c) for c, idx in case.classes.items())


def test_sample_patch_pads_and_forces_foreground(cases):
    from hybrids.apps.medical.training import sample_patch

    case = cases[0]
    rng = np.random.default_rng(0)
    big = (48, 64, 48)  # larger than the volume on every axis: the whole volume, zero padded
    image, label = sample_patch(case, big, rng, force_fg=False)
    assert image.shape == (1, *big) and label.shape == big
    assert int((label > 0).sum()) == int((case.label > 0).sum())
    assert math.isclose(float(image.sum()), float(case.image.sum()), abs_tol=1e-2)
    small = (16, 16, 16)
    for _ in range(20):
        image, label = sample_patch(case, small, rng, force_fg=True)
        assert label.shape == small and bool((label > 0).any())
    # a 2-D slice is a patch of size 1 along its axis; forced slices hold foreground
    for _ in range(10):
        image, label = sample_patch(case, (48, 64, 1), rng, force_fg=True)
        assert image.shape == (1, 48, 64, 1) and bool((label > 0).any())


def test_patch_dataset_2d_and_3d_shapes(cases):
    from hybrids.apps.medical.training import PatchDataset

    for dims, patch in ((3, (40, 56, 40)), (2, (48, 64))):
        dataset = PatchDataset(cases, patch, spatial_dims=dims, length=4, oversample_fg=1.0, seed=1)
        item = dataset[0]
        assert item["image"].shape == (1, *patch) and item["image"].dtype == torch.float32
        assert item["label"].shape == (1, *patch) and item["label"].dtype == torch.int64
        assert set(item["label"].unique().tolist()) <= {0, 1, 2}
        again = PatchDataset(cases, patch, spatial_dims=dims, length=4, oversample_fg=1.0, seed=1)[0]
        assert torch.equal(again["image"], item["image"])  # seeded


def test_loss_decreases_on_a_fixed_batch(cases):
    from hybrids.apps.medical.training import PatchDataset, SegmentationModule, build_model

    torch.manual_seed(0)
    model = build_model("test_train_unet", "tiny_2d", in_channels=1, num_classes=3)
    module = SegmentationModule(model)
    dataset = PatchDataset(cases, (48, 64), spatial_dims=2, length=8, oversample_fg=1.0, augment=False)
    batch = [dataset[i] for i in range(8)]
    image, label = torch.stack([b["image"] for b in batch]), torch.stack([b["label"] for b in batch])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = module.loss(model(image), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_lr_schedule_warms_up_then_decays_by_steps_or_time():
    from hybrids.apps.medical.training import SegmentationModule

    module = SegmentationModule(SmallUNet(SmallUNetConfig()), warmup_steps=10, total_steps=100)
    factors = {}
    for step in (0, 9, 10, 55, 99, 100):
        module.__dict__["_step"] = step
        type(module).global_step = property(lambda self: self.__dict__["_step"])
        factors[step] = module.lr_factor()
    assert factors[0] < factors[9] < 1 and math.isclose(factors[10], (1 - 0.1) ** 0.9)
    assert factors[55] < factors[10] and factors[100] == pytest.approx(1e-3)
    module.max_seconds, module.train_seconds = 100.0, 90.0  # time runs out before the steps
    module.__dict__["_step"] = 20
    assert module.lr_factor() == pytest.approx(0.1**0.9)
    del type(module).global_step


# -- end to end -------------------------------------------------------------------------------------------
def test_train_end_to_end_writes_a_model_folder(shared_data, tmp_path, capsys):
    from hybrids.apps.core.checkpoint import load_checkpoint, read_checkpoint_info
    from hybrids.datasets.msd import kfold_split, read_msd_dataset
    from hybrids.evaluation.segmentation import evaluate_folders

    out = tmp_path / "run"
    assert main(_args(shared_data / "hippocampus", out, "--epochs", "2", "--val-every", "1")) == 0
    printed = capsys.readouterr().out
    assert "best mean foreground Dice" in printed
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history] == [3, 6] and all(r["cases"] == 2 for r in history)
    assert set(history[0]["dice"]) == {"Anterior", "Posterior"}
    info = read_checkpoint_info(out / "best")
    assert info["model"] == NAME
    assert info["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert info["preprocessing"]["orientation"] == "RAS" and info["preprocessing"]["spacing"] == [
        1.0,
        1.0,
        1.0,
    ]
    assert info["preprocessing"]["normalization"] == "zscore"
    assert len(info["inference"]["roi_size"]) == 3 and info["inference"]["overlap"] == 0.5
    assert info["inference"]["mode"] == "gaussian"
    training = info["training"]
    dataset = read_msd_dataset(shared_data / "hippocampus")
    _, valid = kfold_split(dataset.case_names, 0, 5)
    assert training["validation_cases"] == valid[:2] and training["fold"] == 0 and training["folds"] == 5
    assert training["dataset_licence"] == "CC-BY-SA 4.0" and training["seed"] == 42
    best = max(history, key=lambda r: r["mean_dice"])
    assert training["validation_mean_dice"] == pytest.approx(best["mean_dice"])
    load_checkpoint(out / "best")
    # `hybrids medical segment -m OUT/best` on the validation images reproduces the recorded Dice:
    # training and inference preprocess and predict identically
    images = tmp_path / "images"
    images.mkdir()
    for name in valid[:2]:
        shutil.copy(dataset.case(name).images[0], images)
    assert (
        main(
            [
                "-q",
                "medical",
                "segment",
                "-i",
                str(images),
                "-o",
                str(tmp_path / "pred"),
                "-m",
                str(out / "best"),
            ]
        )
        == 0
    )
    scored = evaluate_folders(tmp_path / "pred", shared_data / "hippocampus" / "labelsTr", labels=[1, 2])
    for label, name in ((1, "Anterior"), (2, "Posterior")):
        dice = np.nanmean([case.metrics[label]["dice"] for case in scored.cases])
        assert dice == pytest.approx(training["validation_dice"][name], abs=1e-9), name


def test_train_2d_and_resume(shared_data, tmp_path):
    out = tmp_path / "run2d"
    argv = _args(shared_data / "hippocampus", out, "--preset", "tiny_2d", "--epochs", "1")
    assert main(argv) == 0
    info = json.loads((out / "best" / "config.json").read_text())
    assert len(info["inference"]["roi_size"]) == 2 and info["inference"]["slice_axis"] == 2
    assert main([*argv[:-2], "--epochs", "2", "--resume"]) == 0  # same flags, one more epoch
    history = json.loads((out / "history.json").read_text())
    assert [(r["epoch"], r["step"]) for r in history] == [(0, 3), (1, 6)]
    assert history[1]["seconds"] >= history[0]["seconds"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--fold", "5"], "--fold must be in 0..4"),
        (["--patch-size", "40x56"], "a 3-D model needs 3 sizes"),
        (["--patch-size", "42x56x40"], "multiples of 4"),
        (["--resume"], "nothing to resume"),
        (["-m", "no_such_model"], "unknown model"),
    ],
)
def test_bad_arguments_are_one_line(shared_data, tmp_path, capsys, flags, message):
    argv = _args(shared_data / "hippocampus", tmp_path / "bad", *flags)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_missing_dataset_is_one_line(tmp_path, capsys):
    assert main(_args(tmp_path / "absent", tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert "no such folder" in err and len(err.splitlines()) == 1


# -- slow: two-process DDP ----------------------------------------------------------------------------
@pytest.mark.slow
def test_two_process_cpu_ddp(shared_data, tmp_path):
    script = tmp_path / "run_train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import importlib.util, sys
            spec = importlib.util.spec_from_file_location("small_unet_test", {str(Path(__file__))!r})
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            module.register()
            from hybrids.apps.cli import main
            sys.exit(main(sys.argv[1:]))
            """
        )
    )
    out = tmp_path / "ddp"
    argv = _args(shared_data / "hippocampus", out, "--epochs", "1", "--devices", "2", "--strategy", "ddp")
    argv[0] = "-v"  # Lightning's banner names the backend and the number of processes
    argv[argv.index("--val-cases") + 1] = "3"  # odd: the distributed sampler repeats one case
    env = {**os.environ, "HYBRIDS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MASTER_PORT", None)
    done = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log, log[-3000:]
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history] == [3] and history[0]["cases"] == 3
    from hybrids.apps.core.checkpoint import load_checkpoint

    load_checkpoint(out / "best")
