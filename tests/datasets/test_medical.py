"""Reading NIfTI / DICOM volumes and writing label volumes back into the input's own grid."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform
from nibabel.processing import resample_to_output

from hybrids.datasets import medical
from hybrids.datasets.medical import (
    MedicalImageError,
    list_cases,
    load_label_volume,
    load_volume,
    read_label_names,
    read_msd_label_names,
    save_label_volume,
)

NAMES = {1: "Anterior", 2: "Posterior"}
# Header fields save_label_volume may change (module docstring); every other field stays the input's.
CHANGED_FIELDS = {
    "datatype",
    "bitpix",
    "scl_slope",
    "scl_inter",
    "cal_min",
    "cal_max",
    "intent_code",
    "intent_name",
    "descrip",
    "vox_offset",
}


@pytest.fixture(scope="module")
def hippo(shared_data):
    return shared_data / "hippocampus"


@pytest.fixture(scope="module")
def dicom_series(shared_data):
    return shared_data / "dicom" / "hippocampus_crop_series"


def _header_differences(a, b) -> set[str]:
    different = set()
    for key in a.keys():
        x, y = np.asarray(a[key]), np.asarray(b[key])
        same = np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)
        if not same:
            different.add(key)
    return different


def _assert_same_grid_and_header(written: nib.Nifti1Image, reference: nib.Nifti1Image) -> None:
    assert written.shape == reference.shape
    assert np.array_equal(written.affine, reference.affine)
    for code in ("sform_code", "qform_code"):
        assert written.header[code] == reference.header[code]
    assert np.array_equal(written.header.get_sform(), reference.header.get_sform())
    assert np.array_equal(written.header.get_qform(), reference.header.get_qform())
    assert _header_differences(written.header, reference.header) <= CHANGED_FIELDS


def _one_line_naming(excinfo, name: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and name in message, message
    return message


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["hippocampus_001", "hippocampus_003"])  # uint8 and float32 on disk
def test_hippocampus_nifti(hippo, case):
    path = hippo / "imagesTr" / f"{case}.nii.gz"
    image = nib.load(path)
    volume = load_volume(path)
    assert volume.array.shape == image.shape == volume.spatial_shape
    assert volume.array.dtype == np.float32
    assert np.array_equal(volume.array, image.get_fdata(dtype=np.float32))
    assert np.array_equal(volume.affine, image.affine)
    assert volume.spacing == (1.0, 1.0, 1.0)
    assert volume.orientation == "RAS"
    assert volume.source == "nifti" and volume.name == case
    labels = load_label_volume(hippo / "labelsTr" / f"{case}.nii.gz")
    assert labels.array.shape == volume.array.shape
    assert labels.array.dtype == (np.uint8 if case == "hippocampus_001" else np.int32)  # float32 on disk
    assert set(np.unique(labels.array)) == {0, 1, 2}


def test_dicom_series_geometry_matches_monai_pydicom_reader(dicom_series):
    volume = load_volume(dicom_series)
    assert volume.source == "dicom" and volume.header is None
    assert volume.array.shape == (35, 51, 32)  # (columns, rows, slices)
    assert volume.meta["files"] == 32 and volume.meta["modality"] == "MR"
    expected = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 1.0, 1.0], [0, 0, 0, 1.0]])
    assert np.array_equal(volume.affine, expected)  # DICOM LPS flipped to NIfTI's RAS+
    assert volume.spacing == (1.0, 1.0, 1.0)
    from monai.data import PydicomReader

    reader = PydicomReader()
    array, meta = reader.get_data(reader.read(str(dicom_series)))
    assert np.array_equal(volume.array, np.asarray(array, dtype=np.float32))
    assert np.allclose(volume.affine, np.asarray(meta["affine"]))


def test_dicom_slices_are_sorted_by_position_not_file_name(dicom_series, tmp_path):
    reference = load_volume(dicom_series)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    files = sorted(dicom_series.glob("*.dcm"))
    for i, file in enumerate(files):  # reverse names and instance numbers against position
        ds = pydicom.dcmread(file)
        ds.InstanceNumber = len(files) - int(ds.InstanceNumber) + 1
        ds.save_as(shuffled / f"{len(files) - i:03d}.dcm")
    (shuffled / "README.txt").write_text("not a DICOM file")  # skipped
    volume = load_volume(shuffled)
    assert np.array_equal(volume.array, reference.array)
    assert np.array_equal(volume.affine, reference.affine)


def test_to_metatensor_carries_the_affine(hippo):
    volume = load_volume(hippo / "imagesTr" / "hippocampus_001.nii.gz")
    tensor = volume.to_metatensor()
    assert tuple(tensor.shape) == (1, *volume.spatial_shape)
    assert np.array_equal(tensor.affine.numpy(), volume.affine)


def test_list_cases(hippo, dicom_series, tmp_path):
    cases = list_cases(hippo / "imagesTr")
    assert len(cases) == 217 and cases[0].name == "hippocampus_001"
    assert list_cases(dicom_series)[0].name == "hippocampus_crop_series"
    single = list_cases(hippo / "imagesTr" / "hippocampus_001.nii.gz")
    assert [c.name for c in single] == ["hippocampus_001"]
    shutil.copy(hippo / "imagesTr" / "hippocampus_001.nii.gz", tmp_path / "case_0000.nii.gz")
    assert [c.name for c in list_cases(tmp_path)] == ["case"]  # nnU-Net channel suffix dropped
    assert read_msd_label_names(hippo / "dataset.json") == NAMES


# --- writing back ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["hippocampus_001", "hippocampus_003"])
def test_label_round_trip_keeps_shape_affine_and_header(hippo, tmp_path, case):
    path = hippo / "imagesTr" / f"{case}.nii.gz"
    volume = load_volume(path)
    labels = load_label_volume(hippo / "labelsTr" / f"{case}.nii.gz").array.astype(np.uint8)
    out = save_label_volume(tmp_path / "out" / f"{case}.nii.gz", labels, volume, NAMES)
    written = nib.load(out)
    _assert_same_grid_and_header(written, nib.load(path))
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(written.dataobj), labels)
    assert written.header.get_intent()[0] == "label"
    assert written.header["descrip"].tobytes().startswith(b"labels: 1=Anterior 2=Posterior")
    assert read_label_names(out) == NAMES
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left


def test_dicom_label_volume_lands_in_the_series_grid(dicom_series, tmp_path):
    volume = load_volume(dicom_series)
    labels = (volume.array > np.median(volume.array)).astype(np.uint8)
    written = nib.load(save_label_volume(tmp_path / "series.nii", labels, volume, {1: "bright"}))
    assert written.shape == volume.spatial_shape
    assert np.array_equal(written.affine, volume.affine)
    assert written.header["sform_code"] == 1 and written.header["qform_code"] == 1
    assert np.array_equal(np.asanyarray(written.dataobj), labels)
    assert read_label_names(tmp_path / "series.nii") == {1: "bright"}


def _lps(image: nib.Nifti1Image) -> nib.Nifti1Image:
    return image.as_reoriented(
        ornt_transform(axcodes2ornt(nib.aff2axcodes(image.affine)), axcodes2ornt("LPS"))
    )


@pytest.mark.parametrize("variant", ["lps", "1.5mm"])
def test_reoriented_and_resampled_inputs_keep_their_own_grid(hippo, tmp_path, variant):
    original = nib.load(hippo / "imagesTr" / "hippocampus_003.nii.gz")
    if variant == "lps":
        image = _lps(original)
    else:
        image = resample_to_output(original, voxel_sizes=1.5, order=1)
        image.header.set_qform(image.affine, code="scanner")
    path = tmp_path / f"{variant}.nii.gz"
    nib.save(image, path)
    volume = load_volume(path)
    if variant == "lps":
        assert volume.orientation == "LPS" and volume.spatial_shape == original.shape
        assert not np.array_equal(volume.affine, original.affine)
    else:
        assert np.allclose(volume.spacing, 1.5)
        assert volume.spatial_shape != original.shape
    labels = (volume.array > np.percentile(volume.array, 90)).astype(np.uint8)
    written = nib.load(save_label_volume(tmp_path / "out" / path.name, labels, volume))
    _assert_same_grid_and_header(written, nib.load(path))
    assert np.array_equal(np.asanyarray(written.dataobj), labels)


def test_trailing_singleton_dimension_is_accepted_and_restored(hippo, tmp_path):
    original = nib.load(hippo / "imagesTr" / "hippocampus_001.nii.gz")
    data = np.asanyarray(original.dataobj)[..., None]
    path = tmp_path / "x4d1.nii.gz"
    nib.save(nib.Nifti1Image(data, original.affine, original.header), path)
    volume = load_volume(path)
    assert volume.array.shape == original.shape and volume.shape == (*original.shape, 1)
    written = nib.load(save_label_volume(tmp_path / "out.nii.gz", np.zeros(original.shape, np.uint8), volume))
    assert written.shape == (*original.shape, 1)


def test_save_rejects_wrong_shape_and_leaves_nothing(hippo, tmp_path, monkeypatch):
    volume = load_volume(hippo / "imagesTr" / "hippocampus_001.nii.gz")
    with pytest.raises(ValueError, match="do not fit"):
        save_label_volume(tmp_path / "a.nii.gz", np.zeros((3, 3, 3), np.uint8), volume)
    with pytest.raises(ValueError, match="0..255"):
        save_label_volume(tmp_path / "a.nii.gz", np.full(volume.spatial_shape, 300), volume)

    def broken_save(image, filename):  # a crash half-way through writing
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(medical.nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_label_volume(tmp_path / "a.nii.gz", np.zeros(volume.spatial_shape, np.uint8), volume)
    assert list(tmp_path.iterdir()) == []


# --- bad inputs: one line naming the file ----------------------------------------------------


def _write_bad_input(kind: str, hippo, tmp_path):
    source = hippo / "imagesTr" / "hippocampus_003.nii.gz"
    image = nib.load(source)
    if kind == "4-D":
        data = np.stack([image.get_fdata(dtype=np.float32)] * 2, axis=-1)
        path = tmp_path / "fourd.nii.gz"
        nib.save(nib.Nifti1Image(data, image.affine), path)
        return path, "4-D volume"
    if kind == "non-image":
        path = tmp_path / "notes.txt"
        path.write_text("hello")
        return path, "not a NIfTI file"
    if kind == "text-as-nifti":
        path = tmp_path / "fake.nii.gz"
        path.write_text("hello")
        return path, "not a readable NIfTI file"
    if kind == "nan":
        data = image.get_fdata(dtype=np.float32)
        data[3, 4, 5] = np.nan
        path = tmp_path / "nan.nii.gz"
        nib.save(nib.Nifti1Image(data, image.affine), path)
        return path, "1 NaN voxel"
    if kind == "truncated":
        raw = source.read_bytes()
        path = tmp_path / "truncated.nii.gz"
        path.write_bytes(raw[: len(raw) // 2])
        return path, "truncated or corrupt"
    if kind == "empty-folder":
        path = tmp_path / "empty_series"
        path.mkdir()
        return path, "empty folder"
    if kind == "folder-without-dicom":
        path = tmp_path / "not_dicom"
        path.mkdir()
        (path / "a.dcm").write_bytes(b"\0" * 300)
        return path, "no DICOM image files"
    if kind == "missing":
        return tmp_path / "missing.nii.gz", "no such file"
    raise AssertionError(kind)


BAD_INPUTS = [
    "4-D",
    "non-image",
    "text-as-nifti",
    "nan",
    "truncated",
    "empty-folder",
    "folder-without-dicom",
    "missing",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_file(hippo, tmp_path, kind):
    path, problem = _write_bad_input(kind, hippo, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(MedicalImageError) as excinfo:
        load_volume(path)
    message = _one_line_naming(excinfo, path.name)
    assert problem in message
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_two_series_in_one_folder_is_refused(dicom_series, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(dicom_series, folder)
    ds = pydicom.dcmread(folder / "1.dcm")
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.save_as(folder / "1.dcm")
    with pytest.raises(MedicalImageError, match="2 DICOM series") as excinfo:
        load_volume(folder)
    _one_line_naming(excinfo, "mixed")


def test_missing_slice_is_refused(dicom_series, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(dicom_series, folder)
    (folder / "10.dcm").unlink()
    with pytest.raises(MedicalImageError, match="uneven slice spacing"):
        load_volume(folder)


def test_label_volume_must_hold_whole_numbers(hippo, tmp_path):
    image = nib.load(hippo / "imagesTr" / "hippocampus_003.nii.gz")
    path = tmp_path / "soft.nii.gz"
    nib.save(nib.Nifti1Image(image.get_fdata(dtype=np.float32) / 7.0, image.affine), path)
    with pytest.raises(MedicalImageError, match="non-integer") as excinfo:
        load_label_volume(path)
    _one_line_naming(excinfo, "soft.nii.gz")
