"""``hybrids medical segment`` end to end on the real hippocampus NIfTIs and DICOM series, with a
registered probe model whose prediction is known: ``logits_c = -scale * (x - c)**2``, so with
``normalization="none"`` the predicted label of a voxel is its intensity rounded to a class. Fed a
label volume as the image, the output must reproduce that label volume in the input's grid."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from hybrids.apps.cli import main
from hybrids.apps.core.checkpoint import save_checkpoint
from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.registry import register_model, unregister_model
from hybrids.apps.medical.preprocessing import Preprocessing
from hybrids.apps.medical.segment import Segmenter
from hybrids.datasets.medical import load_volume, read_label_names

PROBE = "medical/test_segment_probe"
LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}
CASE = "hippocampus_001"


@dataclasses.dataclass
class ProbeConfig(ModelConfig):
    spatial_dims: int = 3
    num_classes: int = 3
    size_divisor: int = 8
    scale: float = 10.0
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {}}


class Probe(nn.Module):
    def __init__(self, config: ProbeConfig):
        super().__init__()
        self.config = config
        self.spatial_dims, self.in_channels = config.spatial_dims, 1
        self.num_classes, self.size_divisor = config.num_classes, config.size_divisor
        self.bias = nn.Parameter(torch.zeros(config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 2 + self.spatial_dims and x.shape[1] == 1, x.shape
        assert all(d % self.size_divisor == 0 for d in x.shape[2:]), x.shape
        view = (1, -1, *[1] * self.spatial_dims)
        classes = torch.arange(self.num_classes, dtype=x.dtype).view(view)
        return -self.config.scale * (x - classes) ** 2 + self.bias.view(view)


@pytest.fixture(scope="module", autouse=True)
def _probe_registered():
    torch.set_num_threads(1)
    register_model(PROBE, config=ProbeConfig)(Probe)
    yield
    unregister_model(PROBE)


def make_model_folder(folder: Path, spatial_dims: int, *, normalization: str = "none") -> Path:
    config = ProbeConfig(spatial_dims=spatial_dims)
    roi = [32, 40, 32] if spatial_dims == 3 else [40, 56]
    inference = {"roi_size": roi, "overlap": 0.5, "mode": "gaussian"}
    if spatial_dims == 2:
        inference["slice_axis"] = 2
    prep = Preprocessing(orientation="RAS", spacing=(1.0, 1.0, 1.0), normalization=normalization)
    save_checkpoint(
        Probe(config),
        folder,
        model_name=PROBE,
        config=config,
        preprocessing=prep.to_dict(),
        extra={"labels": LABELS, "inference": inference, "training": {"note": "test probe"}},
    )
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("models")
    return {dims: make_model_folder(root / f"probe{dims}d", dims) for dims in (2, 3)}


@pytest.fixture(scope="module")
def hippo(shared_data) -> dict[str, Path]:
    return {
        "image": shared_data / "hippocampus" / "imagesTr" / f"{CASE}.nii.gz",
        "label": shared_data / "hippocampus" / "labelsTr" / f"{CASE}.nii.gz",
    }


def segment(*args: str | Path) -> int:
    return main(["medical", "segment", *(str(a) for a in args)])


def assert_same_grid(output: Path, reference: Path) -> None:
    out, ref = nib.load(str(output)), nib.load(str(reference))
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert out.get_data_dtype() == np.uint8
    for key in ("sform_code", "qform_code", "pixdim", "quatern_b", "quatern_c", "quatern_d", "srow_x"):
        np.testing.assert_array_equal(out.header[key], ref.header[key])


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# -- output grid and content ---------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [3, 2])
def test_nifti_output_in_input_grid_with_label_names(models, hippo, tmp_path, dims):
    out = tmp_path / "out"
    assert segment(hippo["image"], "-o", out, "-m", models[dims]) == 0
    assert files_in(out) == [f"{CASE}.nii.gz"]
    assert_same_grid(out / f"{CASE}.nii.gz", hippo["image"])
    assert read_label_names(out / f"{CASE}.nii.gz") == {1: "Anterior", 2: "Posterior"}


@pytest.mark.parametrize("dims", [3, 2])
def test_prediction_lands_on_the_input_voxels(models, hippo, tmp_path, dims):
    """The label volume used as the image: the probe predicts it back, voxel for voxel."""
    out = tmp_path / "out"
    assert segment(hippo["label"], "-o", out, "-m", models[dims]) == 0
    predicted = np.asarray(nib.load(str(out / f"{CASE}.nii.gz")).dataobj)
    np.testing.assert_array_equal(predicted, np.asarray(nib.load(str(hippo["label"])).dataobj))


def lps_version(source: Path, target: Path, spacing: float | None) -> Path:
    """``source`` re-oriented to LPS (voxel axes flipped) and, with ``spacing``, resampled to it
    (nearest neighbour, so a label volume stays one)."""
    from nibabel.orientations import axcodes2ornt, ornt_transform
    from nibabel.processing import resample_from_to

    image = nib.load(str(source))
    lps = image.as_reoriented(ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(("L", "P", "S"))))
    if spacing is not None:
        zooms = np.asarray(lps.header.get_zooms()[:3])
        shape = tuple(int(np.ceil(n * z / spacing)) for n, z in zip(lps.shape, zooms, strict=True))
        affine = lps.affine.copy()
        affine[:3, :3] = affine[:3, :3] / zooms * spacing
        lps = resample_from_to(lps, (shape, affine), order=0)
    out = nib.Nifti1Image(np.asarray(lps.dataobj).astype(np.float32), lps.affine)
    out.set_qform(lps.affine, code=1)
    nib.save(out, str(target))
    return target


def test_lps_flip_only_is_exact(models, hippo, tmp_path):
    lps = lps_version(hippo["label"], tmp_path / "lps.nii.gz", None)
    assert "".join(nib.aff2axcodes(nib.load(str(lps)).affine)) == "LPS"
    assert segment(lps, "-o", tmp_path / "out", "-m", models[3]) == 0
    result = tmp_path / "out" / "lps.nii.gz"
    assert_same_grid(result, lps)
    np.testing.assert_array_equal(np.asarray(nib.load(str(result)).dataobj), nib.load(str(lps)).get_fdata())


@pytest.mark.parametrize("dims", [3, 2])
def test_lps_resampled_volume_gets_its_own_grid_back(models, hippo, tmp_path, dims):
    """An LPS 1.5 mm volume: predicted in the RAS 1 mm model grid, written back into its own grid."""
    # the foreground mask as the image: linear resampling then blurs 0/1 edges only (a 0/2 edge
    # would pass through 1 and invent class-1 voxels)
    source = nib.load(str(hippo["label"]))
    mask = (np.asarray(source.dataobj) > 0).astype(np.float32)
    nib.save(nib.Nifti1Image(mask, source.affine, source.header), str(tmp_path / "mask.nii.gz"))
    lps = lps_version(tmp_path / "mask.nii.gz", tmp_path / "lps15.nii.gz", 1.5)
    image = nib.load(str(lps))
    assert "".join(nib.aff2axcodes(image.affine)) == "LPS" and image.shape == (24, 34, 24)
    assert segment(lps, "-o", tmp_path / "out", "-m", models[dims]) == 0
    result = tmp_path / "out" / "lps15.nii.gz"
    assert_same_grid(result, lps)
    predicted = np.asarray(nib.load(str(result)).dataobj)
    expected = image.get_fdata().astype(np.uint8)
    # 1.5 mm -> 1 mm (linear) -> 1.5 mm (nearest) moves only a few boundary voxels; a flipped or
    # shifted result would overlap far less
    assert set(np.unique(predicted)) <= {0, 1}
    assert (predicted == expected).mean() > 0.97
    dice = 2 * np.logical_and(predicted == 1, expected == 1).sum() / ((predicted == 1).sum() + expected.sum())
    assert dice > 0.9
    flipped = (
        2
        * np.logical_and(predicted[::-1] == 1, expected == 1).sum()
        / ((predicted == 1).sum() + expected.sum())
    )
    assert flipped < dice - 0.2


def test_dicom_series(models, shared_data, tmp_path):
    series = shared_data / "dicom" / "hippocampus_crop_series"
    assert segment(series, "-o", tmp_path / "out", "-m", models[3]) == 0
    result = tmp_path / "out" / f"{series.name}.nii.gz"
    volume = load_volume(series)
    image = nib.load(str(result))
    assert image.shape == volume.spatial_shape
    np.testing.assert_allclose(image.affine, volume.affine, atol=1e-5)
    assert read_label_names(result) == {1: "Anterior", 2: "Posterior"}


def test_folder_input_single_file_output_and_overwrite_guard(models, hippo, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"{CASE}_0000.nii.gz").write_bytes(hippo["image"].read_bytes())  # nnU-Net channel suffix
    (folder / "notes.txt").write_text("not an image")
    assert segment(folder, "-o", tmp_path / "out", "-m", models[3]) == 0
    assert files_in(tmp_path / "out") == [f"{CASE}.nii.gz"]
    assert segment(hippo["image"], "-o", tmp_path / "one" / "seg.nii.gz", "-m", models[3]) == 0
    assert_same_grid(tmp_path / "one" / "seg.nii.gz", hippo["image"])
    copy = tmp_path / "copy" / f"{CASE}.nii.gz"
    copy.parent.mkdir()
    copy.write_bytes(hippo["image"].read_bytes())
    assert segment(copy, "-o", copy.parent, "-m", models[3]) == 2
    # a training output folder stands for its best checkpoint
    run = tmp_path / "run"
    make_model_folder(run / "best", 3)
    assert segment(hippo["image"], "-o", tmp_path / "from_run", "-m", run) == 0
    assert files_in(tmp_path / "from_run") == [f"{CASE}.nii.gz"]


# -- TTA and probabilities -----------------------------------------------------------------------------
def test_tta_keeps_shape_and_is_deterministic(models, hippo, tmp_path):
    model = make_model_folder(tmp_path / "zscore", 3, normalization="zscore")
    results = []
    for run in ("a", "b"):
        assert segment(hippo["image"], "-o", tmp_path / run, "-m", model, "--tta") == 0
        results.append(np.asarray(nib.load(str(tmp_path / run / f"{CASE}.nii.gz")).dataobj))
    assert segment(hippo["image"], "-o", tmp_path / "plain", "-m", model) == 0
    plain = np.asarray(nib.load(str(tmp_path / "plain" / f"{CASE}.nii.gz")).dataobj)
    assert results[0].shape == plain.shape == (35, 51, 35)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], plain)  # the probe is mirror-equivariant


@pytest.mark.parametrize("dims", [3, 2])
def test_save_probabilities(models, hippo, tmp_path, dims):
    out = tmp_path / "out"
    assert segment(hippo["label"], "-o", out, "-m", models[dims], "--save-probabilities") == 0
    assert files_in(out) == [f"{CASE}.nii.gz", f"{CASE}.npz"]
    with np.load(out / f"{CASE}.npz") as data:
        probs, affine, names = data["probabilities"], data["affine"], list(data["labels"])
    assert probs.dtype == np.float16 and probs.shape == (3, 35, 51, 35)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-3)
    np.testing.assert_array_equal(affine, nib.load(str(hippo["label"])).affine)
    assert names == ["background", "Anterior", "Posterior"]
    labels = np.asarray(nib.load(str(out / f"{CASE}.nii.gz")).dataobj)
    np.testing.assert_array_equal(probs.argmax(0), labels)


def test_python_api(models, hippo):
    segmenter = Segmenter(models[2], device="cpu")
    prediction = segmenter.predict(load_volume(hippo["label"]), probabilities=True)
    assert prediction.labels.dtype == np.uint8 and prediction.labels.shape == (35, 51, 35)
    assert prediction.probabilities is not None and prediction.probabilities.dtype == np.float16


def test_batch_from_python_with_a_config(models, hippo, tmp_path):
    from hybrids.apps.medical.segment import SegmentConfig, segment

    config = SegmentConfig([hippo["label"]], tmp_path / "out", model=str(models[3]), device="cpu")
    assert segment(config) == 0
    written = nib.load(str(tmp_path / "out" / f"{CASE}.nii.gz")).get_fdata()
    np.testing.assert_array_equal(written, nib.load(str(hippo["label"])).get_fdata())


# -- bad inputs ---------------------------------------------------------------------------------------------
def _bad_inputs(root: Path, hippo: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    root.mkdir(parents=True, exist_ok=True)
    four_d = root / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), str(four_d))
    text = root / "notes.txt"
    text.write_text("hello")
    fake = root / "fake.nii.gz"
    fake.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    nan = root / "nan.nii.gz"
    data = np.ones((8, 8, 8), np.float32)
    data[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan))
    truncated = root / "truncated.nii.gz"
    raw = hippo["image"].read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    empty = root / "empty_dicom"
    empty.mkdir()
    return {
        "4-D": (four_d, "4-D"),
        "text": (text, "not a NIfTI"),
        "fake": (fake, "NIfTI"),
        "nan": (nan, "NaN"),
        "truncated": (truncated, "truncated or corrupt"),
        "empty": (empty, "empty folder"),
    }


@pytest.mark.parametrize("kind", ["4-D", "text", "fake", "nan", "truncated", "empty"])
def test_bad_input_one_line_exit_2_no_output(models, hippo, tmp_path, capsys, kind):
    path, words = _bad_inputs(tmp_path / "bad", hippo)[kind]
    out = tmp_path / "out"
    assert segment(path, "-o", out, "-m", models[3], "--save-probabilities") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(path) in err[0] and words in err[0]
    assert files_in(out) == []


def test_batch_with_bad_case_writes_the_others(models, hippo, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("case_a", "case_b"):
        (folder / f"{name}.nii.gz").write_bytes(hippo["image"].read_bytes())
    raw = hippo["image"].read_bytes()
    (folder / "case_bad.nii.gz").write_bytes(raw[: len(raw) // 3])
    out = tmp_path / "out"
    assert segment(folder, "-o", out, "-m", models[3]) == 2
    assert files_in(out) == ["case_a.nii.gz", "case_b.nii.gz"]
    err = capsys.readouterr().err
    assert "case_bad.nii.gz" in err and "1 of 3 inputs failed" in err


def test_unwritable_output_of_one_case_does_not_stop_the_batch(models, hippo, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("case_a", "case_b"):
        (folder / f"{name}.nii.gz").write_bytes(hippo["image"].read_bytes())
    out = tmp_path / "out"
    (out / "case_a.nii.gz").mkdir(parents=True)  # a folder where case_a's label volume must go
    assert segment(folder, "-o", out, "-m", models[3]) == 2
    assert files_in(out) == ["case_a.nii.gz", "case_b.nii.gz"] and (out / "case_b.nii.gz").is_file()
    err = capsys.readouterr().err
    assert "case_a.nii.gz: cannot write" in err and "1 of 2 inputs failed" in err
    assert "Traceback" not in err


def test_read_only_output_folder_as_an_unprivileged_user(hippo, unprivileged):
    prefix, folder = unprivileged
    read_only = folder / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    hybrids = Path(sys.executable).parent / "hybrids"
    env = {**os.environ, "HOME": str(folder), "HYBRIDS_CACHE": str(folder / "cache")}
    images = [hippo["image"], hippo["image"].with_name("hippocampus_003.nii.gz")]
    for output in (read_only, read_only / "case.nii.gz"):
        inputs = images if output == read_only else images[:1]
        command = [*prefix, str(hybrids), "medical", "segment", *map(str, inputs), "-o", str(output)]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == [f"hybrids: error: {read_only}: cannot write there ({read_only} is not writable)"]
        assert list(read_only.iterdir()) == []


def test_a_label_volume_given_as_the_image_gets_a_warning(models, hippo, tmp_path, capsys):
    assert segment(hippo["label"], "-o", tmp_path / "a", "-m", models[3]) == 0
    assert "looks like a label map" in capsys.readouterr().err
    assert segment(hippo["image"], "-o", tmp_path / "b", "-m", models[3]) == 0
    assert "label map" not in capsys.readouterr().err
    from hybrids.datasets.medical import looks_like_label_map

    assert not looks_like_label_map(np.array([0.0, 1.0, 2.5]))  # not integers
    assert not looks_like_label_map(np.arange(40.0))  # too many values
    assert not looks_like_label_map(np.array([-1.0, 0.0, 1.0]))  # negative


def test_model_errors_are_one_line(hippo, tmp_path, capsys, monkeypatch):
    import hybrids.apps.medical.segment as segment_module

    # a build without the built-in model (e.g. a wheel made without package data)
    monkeypatch.setattr(segment_module, "PRETRAINED_DIR", tmp_path / "no_pretrained")
    assert segment(hippo["image"], "-o", tmp_path / "out") == 2  # default -m hippocampus
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hippocampus" in err[0] and "--weights" in err[0]
    assert segment(hippo["image"], "-o", tmp_path / "out", "-m", tmp_path / "nowhere") == 2
    assert segment(hippo["image"], "-o", tmp_path / "out", "-m", "nosuchmodel") == 2
    no_inference = tmp_path / "noinf"
    make_model_folder(no_inference, 3)
    info = json.loads((no_inference / "config.json").read_text())
    del info["inference"]
    (no_inference / "config.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert segment(hippo["image"], "-o", tmp_path / "out", "--weights", no_inference) == 2
    assert "inference" in capsys.readouterr().err
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--overlap", "1"], "--overlap"),
        (["--batch-size", "0"], "--batch-size"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_options(models, hippo, tmp_path, capsys, flags, words):
    assert segment(hippo["image"], "-o", tmp_path / "out", "-m", models[3], *flags) == 2
    assert words in capsys.readouterr().err


# -- memory of a full-size 2-D model (slow) --------------------------------------------------------------
_MEMORY_SCRIPT = r"""
import dataclasses, resource, sys, time
from pathlib import Path
from typing import Any, ClassVar
import numpy as np, nibabel as nib, torch
from hybrids.apps.cli import main
from hybrids.apps.core.checkpoint import save_checkpoint
from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.registry import get_model_entry, register_model
from hybrids.apps.core.errors import UnknownModelError
from hybrids.apps.medical.preprocessing import Preprocessing

tmp = Path(sys.argv[1])
try:
    get_model_entry("medical/hiformer_b")
    from hybrids.apps.core.registry import create_model
    model = create_model("medical/hiformer_b", in_channels=1, num_classes=9)
    name, roi, what = "medical/hiformer_b", 256, "HiFormer-B"
except (UnknownModelError, ImportError):
    from hybrids.apps.medical.inference import import_monai
    import_monai()
    from monai.networks.nets import SwinUNETR

    @dataclasses.dataclass
    class StandInConfig(ModelConfig):
        feature_size: int = 48
        PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"feature_size": 12}}

    class StandIn(torch.nn.Module):
        spatial_dims, in_channels, num_classes, size_divisor = 2, 1, 9, 32

        def __init__(self, cfg):
            super().__init__()
            self.config = cfg
            self.net = SwinUNETR(
                spatial_dims=2, in_channels=1, out_channels=9, feature_size=cfg.feature_size
            )

        def forward(self, x):
            return self.net(x)

    name, roi = "medical/test_standin_swinunetr2d", 256
    what = "stand-in MONAI SwinUNETR-2D (HiFormer-B absent)"
    register_model(name, config=StandInConfig)(StandIn)
    model = StandIn(StandInConfig())
params = sum(p.numel() for p in model.parameters())
save_checkpoint(model, tmp / "model", model_name=name,
    preprocessing=Preprocessing(normalization="zscore").to_dict(),
    extra={"labels": {str(i): f"class{i}" for i in range(9)},
           "inference": {"roi_size": [roi, roi], "overlap": 0.5, "mode": "gaussian", "slice_axis": 2}})
del model
rng = np.random.default_rng(0)
volume = rng.normal(size=(256, 256, 128)).astype(np.float32)
nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.0, 1.0])), str(tmp / "big.nii.gz"))
del volume
started = time.perf_counter()
rc = main(["-q", "medical", "segment", str(tmp / "big.nii.gz"), "-o", str(tmp / "out"),
           "-m", str(tmp / "model"), "--device", "cpu"])
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"RESULT rc={rc} model={what} params={params} seconds={seconds:.1f} peak_rss_mib={peak:.0f}")
"""


@pytest.mark.slow
def test_full_size_2d_model_on_256x256x128_stays_under_4gb(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    print(line)
    fields = dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)
    assert fields["rc"] == "0"
    assert float(fields["peak_rss_mib"]) <= 4096, line
    out = nib.load(str(tmp_path / "out" / "big.nii.gz"))
    assert out.shape == (256, 256, 128)
