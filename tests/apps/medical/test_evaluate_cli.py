"""``hybrids medical evaluate`` end to end: real hippocampus labels against perturbed copies."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from hybrids.apps.cli import main
from hybrids.datasets.medical import load_label_volume, save_label_volume
from hybrids.evaluation.segmentation import dice_per_class

CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")


@pytest.fixture(scope="module")
def labels_dir(shared_data):
    return shared_data / "hippocampus" / "labelsTr"


@pytest.fixture(scope="module")
def predictions(labels_dir, tmp_path_factory):
    """Perturbed copies of four real label volumes (eroded, shifted, one class dropped)."""
    folder = tmp_path_factory.mktemp("pred")
    for i, case in enumerate(CASES):
        ref = load_label_volume(labels_dir / f"{case}.nii.gz")
        pred = ref.array.copy()
        if i == 0:
            pred = np.where(ndimage.binary_erosion(pred > 0), pred, 0)
        elif i == 1:
            pred = np.roll(pred, 1, axis=1)
        elif i == 2:
            pred[pred == 2] = 0  # posterior missed entirely
        save_label_volume(folder / f"{case}.nii.gz", pred.astype(np.uint8), ref)
    return folder


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_writes_csv_markdown_png(predictions, labels_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["medical", "evaluate", "--pred", str(predictions), "--ref", str(labels_dir), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "cases.csv",
        "contours.png",
        "report.md",
        "summary.csv",
        "summary.json",
    ]
    rows = _read_csv(out / "cases.csv")
    assert [(r["case"], r["label"], r["name"]) for r in rows] == [
        (case, str(c), name) for case in CASES for c, name in ((1, "Anterior"), (2, "Posterior"))
    ]
    for case in CASES:  # the CSV holds what the metric functions compute on the same files
        ref = load_label_volume(labels_dir / f"{case}.nii.gz").array
        pred = load_label_volume(predictions / f"{case}.nii.gz").array
        expected = dice_per_class(pred, ref, [1, 2])
        for r in (r for r in rows if r["case"] == case):
            assert float(r["dice"]) == pytest.approx(expected[int(r["label"])], abs=1e-5)
    by_key = {(r["case"], r["label"]): r for r in rows}
    assert float(by_key[("hippocampus_006", "1")]["dice"]) == 1.0
    assert float(by_key[("hippocampus_006", "2")]["hd95_mm"]) == 0.0
    assert float(by_key[("hippocampus_004", "2")]["dice"]) == 0.0
    assert by_key[("hippocampus_004", "2")]["hd95_mm"] == "inf"
    assert by_key[("hippocampus_004", "2")]["nsd"] == "0"

    summary = _read_csv(out / "summary.csv")
    dice_1 = next(r for r in summary if r["label"] == "1" and r["metric"] == "dice")
    values = [float(by_key[(case, "1")]["dice"]) for case in CASES]
    assert float(dice_1["mean"]) == pytest.approx(np.mean(values), abs=1e-5)
    assert float(dice_1["median"]) == pytest.approx(np.median(values), abs=1e-5)
    assert float(dice_1["std"]) == pytest.approx(np.std(values), abs=1e-5)
    hd_2 = next(r for r in summary if r["label"] == "2" and r["metric"] == "hd95_mm")
    assert hd_2["n"] == "3" and hd_2["n_inf"] == "1"
    assert {r["label"] for r in summary} == {"1", "2", "mean"}

    payload = json.loads((out / "summary.json").read_text())
    assert payload["labels"] == {"1": "Anterior", "2": "Posterior"}
    assert payload["cases"]["hippocampus_004"]["2"]["hd95_mm"] == "inf"
    markdown = (out / "report.md").read_text()
    assert "| 1 Anterior | dice |" in markdown and "![" in markdown and "hippocampus_003" in markdown
    png = (out / "contours.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert "Anterior" in captured.out and "4 cases" in captured.out
    assert not list(out.glob(".*"))  # no temporary files left


def test_default_output_and_options(predictions, labels_dir, shared_data, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in CASES[:2]:
        (pred / f"{case}.nii.gz").write_bytes((predictions / f"{case}.nii.gz").read_bytes())
    images = shared_data / "hippocampus" / "imagesTr"
    argv = ["-q", "medical", "evaluate", "--pred", str(pred), "--ref", str(labels_dir)]
    assert main([*argv, "--labels", "2", "--tolerance", "2", "--images", str(images)]) == 0
    rows = _read_csv(pred / "evaluation" / "cases.csv")
    assert [r["label"] for r in rows] == ["2", "2"]
    assert (pred / "evaluation" / "report.md").read_text().count("NSD tolerance: 2 mm") == 1
    capsys.readouterr()


def _expect_input_error(argv, capsys, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hybrids: error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_bad_inputs_exit_2_with_one_line_and_no_report(predictions, labels_dir, tmp_path, capsys):
    out = tmp_path / "report"
    base = ["medical", "evaluate", "--ref", str(labels_dir), "-o", str(out)]

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "case_999.nii.gz").write_bytes((predictions / "hippocampus_001.nii.gz").read_bytes())
    _expect_input_error([*base, "--pred", str(unknown)], capsys, "case_999", "no reference")

    wrong_shape = tmp_path / "wrong_shape"
    wrong_shape.mkdir()
    ref = load_label_volume(labels_dir / "hippocampus_003.nii.gz")
    other = load_label_volume(labels_dir / "hippocampus_001.nii.gz")
    save_label_volume(wrong_shape / "hippocampus_003.nii.gz", other.array.astype(np.uint8), other)
    _expect_input_error([*base, "--pred", str(wrong_shape)], capsys, "hippocampus_003", "shape")
    assert ref.spatial_shape != other.spatial_shape

    moved = tmp_path / "moved"
    moved.mkdir()
    shifted = nib.load(predictions / "hippocampus_003.nii.gz")
    affine = shifted.affine.copy()
    affine[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(shifted.dataobj), affine), moved / "hippocampus_003.nii.gz")
    _expect_input_error([*base, "--pred", str(moved)], capsys, "hippocampus_003", "different grids")

    with_nan = tmp_path / "with_nan"
    with_nan.mkdir()
    data = ref.array.astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, ref.affine), with_nan / "hippocampus_003.nii.gz")
    _expect_input_error([*base, "--pred", str(with_nan)], capsys, "hippocampus_003", "NaN")

    not_image = tmp_path / "not_image"
    not_image.mkdir()
    (not_image / "hippocampus_001.nii.gz").write_text("not a volume")
    _expect_input_error([*base, "--pred", str(not_image)], capsys, "hippocampus_001", "not a readable NIfTI")

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    raw = (predictions / "hippocampus_001.nii.gz").read_bytes()
    (truncated / "hippocampus_001.nii.gz").write_bytes(raw[: len(raw) // 2])
    _expect_input_error([*base, "--pred", str(truncated)], capsys, "hippocampus_001", "truncated")

    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_input_error([*base, "--pred", str(empty)], capsys, "empty", "no NIfTI label files")
    _expect_input_error([*base, "--pred", str(tmp_path / "missing")], capsys, "missing", "no such folder")
    _expect_input_error([*base, "--pred", str(predictions), "--tolerance", "0"], capsys, "--tolerance")
    _expect_input_error([*base, "--pred", str(predictions), "--labels", "0"], capsys, "--labels")
    assert not out.exists()  # nothing written by any failed run


def test_cli_module_imports_no_heavy_packages():
    code = (
        "import sys; from hybrids.apps.cli import build_parser; build_parser(); "
        "import hybrids.apps.medical.cli; "
        "print(sorted(m for m in ('torch', 'monai', 'numpy', 'nibabel', 'pydicom') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_medical_group_is_registered(capsys):
    assert main(["medical", "--help"]) == 0
    assert "evaluate" in capsys.readouterr().out
