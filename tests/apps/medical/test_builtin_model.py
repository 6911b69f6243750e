"""The built-in ``hippocampus`` model shipped in ``apps/medical/pretrained/hippocampus``: it is what
``hybrids medical segment`` uses by default on a fresh clone. Checks the model card and the recorded
split (nnU-Net fold 0: it never trained on the validation cases), outputs in the input's own grid
(NIfTI, DICOM series, an LPS 1.5 mm volume), validation Dice, and per-volume inference time."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest

from hybrids.apps.cli import main
from hybrids.apps.medical.segment import PRETRAINED_DIR, Segmenter
from hybrids.datasets.medical import load_label_volume, load_volume
from hybrids.datasets.msd import kfold_split, names_digest, read_msd_dataset
from hybrids.evaluation.segmentation import dice_per_class

MODEL = PRETRAINED_DIR / "hippocampus"


@pytest.fixture(scope="module")
def info():
    return json.loads((MODEL / "config.json").read_text())


@pytest.fixture(scope="module")
def hippocampus(shared_data):
    return shared_data / "hippocampus"


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(MODEL, device="cpu")


def _dice(pred: np.ndarray, ref: np.ndarray) -> dict[int, float]:
    return dice_per_class(pred, ref, [1, 2])


def test_folder_is_complete_and_small(info):
    assert (MODEL / "model.safetensors").stat().st_size < 10 * 2**20
    card = (MODEL / "MODEL_CARD.md").read_text()
    for words in ("CC-BY-SA 4.0", "Dice", "fold 0", "hybrids medical train"):
        assert words in card
    assert info["labels"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert info["preprocessing"]["orientation"] == "RAS"


def test_validation_cases_are_nnunet_fold_0_and_were_not_trained_on(info, hippocampus):
    training = info["training"]
    names = read_msd_dataset(hippocampus).case_names
    train, valid = kfold_split(names, training["fold"], training["folds"])
    assert training["fold"] == 0 and training["folds"] == 5
    assert training["validation_cases_sha256"] == names_digest(valid)
    assert sorted(training["validation_cases"]) == sorted(valid)
    assert not set(train) & set(valid) and len(valid) == 44


def test_default_model_writes_the_input_grid(hippocampus, tmp_path, info):
    case = sorted(info["training"]["validation_cases"])[0]
    image = hippocampus / "imagesTr" / f"{case}.nii.gz"
    assert main(["-q", "medical", "segment", str(image), "-o", str(tmp_path / "out")]) == 0  # default model
    out = nib.load(str(tmp_path / "out" / f"{case}.nii.gz"))
    source = nib.load(str(image))
    assert out.shape == source.shape
    np.testing.assert_array_equal(out.affine, source.affine)
    pred = np.asarray(out.dataobj)
    ref = load_label_volume(hippocampus / "labelsTr" / f"{case}.nii.gz").array
    dice = _dice(pred, ref)
    assert min(dice.values()) > 0.7, dice


def test_dicom_series(shared_data, tmp_path):
    series = shared_data / "dicom" / "hippocampus_crop_series"
    assert main(["-q", "medical", "segment", str(series), "-o", str(tmp_path / "out")]) == 0
    out = nib.load(str(tmp_path / "out" / f"{series.name}.nii.gz"))
    volume = load_volume(series)
    assert out.shape == volume.spatial_shape
    np.testing.assert_allclose(out.affine, volume.affine, atol=1e-5)
    labels = np.asarray(out.dataobj)
    # the crop shows a hippocampus: both classes are found, in a plausible volume (1 mm voxels)
    assert {1, 2} <= set(np.unique(labels)) and 500 < (labels > 0).sum() < 20000


def test_lps_resampled_volume_lands_in_its_own_grid(hippocampus, tmp_path, info, segmenter):
    """A validation case re-oriented to LPS and resampled to 1.5 mm (image linear, labels nearest):
    the output has that volume's shape and affine and still matches its resampled labels."""
    from monai.transforms import Orientation, Spacing

    case = sorted(info["training"]["validation_cases"])[1]
    written = {}
    for kind, mode in (("imagesTr", "bilinear"), ("labelsTr", "nearest")):
        volume = load_volume(hippocampus / kind / f"{case}.nii.gz")
        data = Spacing(pixdim=(1.5, 1.5, 1.5), mode=mode)(
            Orientation(axcodes="LPS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(volume.to_metatensor())
        )
        path = tmp_path / f"{kind}_{case}.nii.gz"
        nib.save(nib.Nifti1Image(data[0].numpy().astype(np.float32), data.affine.numpy()), str(path))
        written[kind] = path
    image = nib.load(str(written["imagesTr"]))
    assert "".join(nib.aff2axcodes(image.affine)) == "LPS"
    assert main(["-q", "medical", "segment", str(written["imagesTr"]), "-o", str(tmp_path / "out")]) == 0
    out = nib.load(str(tmp_path / "out" / written["imagesTr"].name))
    assert out.shape == image.shape
    np.testing.assert_allclose(out.affine, image.affine, atol=1e-6)
    ref = np.rint(nib.load(str(written["labelsTr"])).get_fdata()).astype(np.uint8)
    dice = _dice(np.asarray(out.dataobj), ref)
    assert min(dice.values()) > 0.6, dice


def test_inference_under_two_seconds_per_volume(hippocampus, info, segmenter):
    cases = sorted(info["training"]["validation_cases"])[:4]
    volumes = [load_volume(hippocampus / "imagesTr" / f"{c}.nii.gz") for c in cases]
    segmenter.predict(volumes[0])  # warm-up
    seconds = []
    for volume in volumes:
        started = time.perf_counter()
        segmenter.predict(volume)
        seconds.append(time.perf_counter() - started)
    # The best of four, as timeit reports: other work on a shared 2-core machine only adds time.
    assert min(seconds) < 2.0, seconds


def _validation_dice(hippocampus, info, segmenter, cases):
    scores = []
    for case in cases:
        pred = segmenter.predict(load_volume(hippocampus / "imagesTr" / f"{case}.nii.gz")).labels
        ref = load_label_volume(hippocampus / "labelsTr" / f"{case}.nii.gz").array
        scores.append(_dice(pred, ref))
    return {c: float(np.mean([s[c] for s in scores])) for c in (1, 2)}


def test_validation_dice_on_eight_cases(hippocampus, info, segmenter):
    dice = _validation_dice(hippocampus, info, segmenter, sorted(info["training"]["validation_cases"])[:8])
    assert np.mean(list(dice.values())) >= 0.8, dice


@pytest.mark.slow
def test_validation_dice_on_the_whole_fold(hippocampus, info, segmenter):
    """The acceptance figure: mean foreground Dice >= 0.85 on all 44 validation cases, equal to what
    training recorded."""
    dice = _validation_dice(hippocampus, info, segmenter, info["training"]["validation_cases"])
    mean = float(np.mean(list(dice.values())))
    assert mean >= 0.85, dice
    assert abs(mean - info["training"]["validation_mean_dice"]) < 1e-3
