"""Medical Segmentation Decathlon folders (dataset.json, nnU-Net v2 layout) and nnU-Net's k-fold split."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hybrids.datasets.msd import MSDError, kfold_split, names_digest, read_msd_dataset


def _nifti(path: Path, value: int = 0, shape=(4, 5, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, np.uint8), np.eye(4)), str(path))


def _msd(root: Path, names=("case_b", "case_a", "case_c"), labels=None, modality=None) -> Path:
    entries = []
    for name in names:
        _nifti(root / "imagesTr" / f"{name}.nii.gz", 7)
        _nifti(root / "labelsTr" / f"{name}.nii.gz", 1)
        entries.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    meta = {
        "name": "Toy",
        "licence": "CC0",
        "modality": modality or {"0": "MRI"},
        "labels": labels or {"0": "background", "1": "a", "2": "b"},
        "training": entries,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_hippocampus_dataset(shared_data):
    dataset = read_msd_dataset(shared_data / "hippocampus")
    assert dataset.name == "Hippocampus" and dataset.licence == "CC-BY-SA 4.0"
    assert dataset.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert dataset.labels_json() == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert dataset.num_classes == 3 and dataset.in_channels == 1
    assert len(dataset.cases) == 217 and dataset.case_names == sorted(dataset.case_names)
    first = dataset.case("hippocampus_001")
    assert first.images[0].name == "hippocampus_001.nii.gz" and first.images[0].is_file()
    assert first.label.parent.name == "labelsTr" and first.label.is_file()
    with pytest.raises(MSDError, match="no case 'nope'"):
        dataset.case("nope")


def test_kfold_split_is_nnunets(shared_data):
    """Sorted identifiers through KFold(5, shuffle=True, random_state=12345): the folds partition
    the cases, each split is disjoint, the order of the input does not matter, and fold 0 is pinned
    (a regression check of the exact split nnU-Net writes to splits_final.json)."""
    from sklearn.model_selection import KFold

    names = read_msd_dataset(shared_data / "hippocampus").case_names
    folds = [kfold_split(names, k, 5) for k in range(5)]
    validation = [v for _, v in folds]
    assert sorted(n for v in validation for n in v) == sorted(names)
    assert [len(v) for v in validation] == [44, 44, 43, 43, 43]
    for train, valid in folds:
        assert not set(train) & set(valid) and len(train) + len(valid) == 217
    assert kfold_split(list(reversed(names)), 0, 5) == folds[0]
    keys = np.sort(names)
    train_idx, valid_idx = next(iter(KFold(5, shuffle=True, random_state=12345).split(keys)))
    assert folds[0][1] == list(keys[valid_idx])
    assert folds[0][1][:4] == ["hippocampus_033", "hippocampus_036", "hippocampus_037", "hippocampus_039"]
    assert names_digest(folds[0][1]) == names_digest(list(reversed(folds[0][1])))
    with pytest.raises(MSDError, match="fold must be in 0..4"):
        kfold_split(names, 5, 5)
    with pytest.raises(MSDError, match="cannot be split"):
        kfold_split(names[:3], 0, 5)


def test_msd_folder_and_nnunet_v2_layout(tmp_path):
    dataset = read_msd_dataset(_msd(tmp_path / "msd"))
    assert dataset.case_names == ["case_a", "case_b", "case_c"]
    assert dataset.modalities == {0: "MRI"}
    # nnU-Net v2: no training list, one image file per channel, inverted labels
    root = tmp_path / "v2"
    for name in ("x1", "x2"):
        for channel in range(2):
            _nifti(root / "imagesTr" / f"{name}_{channel:04d}.nii.gz")
        _nifti(root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1", "1": "T2"},
                "labels": {"background": 0, "tumour": 1},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
    v2 = read_msd_dataset(root)
    assert v2.case_names == ["x1", "x2"] and v2.in_channels == 2
    assert v2.labels == {0: "background", 1: "tumour"}
    assert [p.name for p in v2.cases[0].images] == ["x1_0000.nii.gz", "x1_0001.nii.gz"]


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_folder", "no such folder"),
        ("no_json", "no dataset.json"),
        ("bad_json", "not valid JSON"),
        ("no_labels", "no 'labels'"),
        ("gap", "without gaps"),
        ("missing_label", "label file of training entry 0 is missing"),
        ("missing_image", "image file of training entry 1 is missing"),
        ("empty", "no training cases"),
    ],
)
def test_clear_errors(tmp_path, breakage, message):
    root = _msd(tmp_path / "d")
    meta = json.loads((root / "dataset.json").read_text())
    if breakage == "no_folder":
        root = tmp_path / "absent"
    elif breakage == "no_json":
        (root / "dataset.json").unlink()
    elif breakage == "bad_json":
        (root / "dataset.json").write_text("{not json")
    elif breakage == "no_labels":
        del meta["labels"]
    elif breakage == "gap":
        meta["labels"] = {"0": "background", "2": "b"}
    elif breakage == "missing_label":
        (root / meta["training"][0]["label"]).unlink()
    elif breakage == "missing_image":
        (root / meta["training"][1]["image"]).unlink()
    elif breakage == "empty":
        meta["training"] = []
    if breakage in ("no_labels", "gap", "empty"):
        (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(MSDError, match=message) as info:
        read_msd_dataset(root)
    assert len(str(info.value).splitlines()) == 1
