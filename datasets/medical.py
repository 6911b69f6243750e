"""Medical volumes for segmentation: NIfTI files, DICOM series folders, folders of NIfTIs.

    volume = load_volume("case.nii.gz")          # or a DICOM series folder
    labels = ...                                 # uint8, shape volume.spatial_shape
    save_label_volume("out/case.nii.gz", labels, volume, label_names={1: "Anterior"})

``load_volume`` returns a ``Volume``: the voxel array ``(X, Y, Z)`` float32 in the file's own
voxel order (nothing is re-oriented or resampled here), the affine ``(4, 4)`` from voxel indices
to RAS+ world millimetres (NIfTI's convention, also for DICOM, whose LPS coordinates are flipped),
the voxel spacing in mm (column norms of the affine), the orientation code (e.g. ``"RAS"``) and,
for NIfTI, a copy of the original header. ``save_label_volume`` writes a label volume back into
exactly that grid: same shape, same affine and, for NIfTI inputs, the input's header with only
these fields changed: data type (uint8), scaling (none; nibabel stores a NaN slope = unscaled),
``cal_min/cal_max`` (0 .. largest label), ``intent`` (NIFTI_INTENT_LABEL, name ``labels``),
``descrip`` (the label names, truncated to 80 bytes) and one NIfTI header extension of type
``comment`` holding the label names as JSON ``{"hybrids_labels": {"1": "Anterior", ...}}`` (read back with
``read_label_names``); sform/qform codes and matrices and every other field stay the input's. A
DICOM input has no NIfTI header: its label volume gets a fresh one with the series' affine as
sform and qform (code ``scanner``) and millimetre units.

DICOM series are read with pydicom: the image files of one series (one ``SeriesInstanceUID``;
other files such as DICOMDIR or notes are skipped) are sorted by their position along the slice
normal, ``RescaleSlope/Intercept`` applied; the array is ``(columns, rows, slices)`` as MONAI's
``PydicomReader`` returns it, with the same RAS affine. Slices must share orientation, size and
be evenly spaced; multi-frame (enhanced) DICOM is not supported.

Every problem a user's file can cause raises ``MedicalImageError`` (a ``ValueError``) with one
line naming the file and the problem: missing file, a non-image file, a truncated or corrupt
``.nii.gz``, a 4-D volume (more than one channel / time point; trailing singleton dimensions are
accepted), NaN or infinite voxels, an empty folder, a folder without DICOM images, several series
in one folder, inconsistent slices. Writes are atomic (``hybrids.datasets.atomic``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from hybrids.datasets.atomic import atomic_write_path

__all__ = [
    "MedicalImageError",
    "looks_like_label_map",
    "Volume",
    "MedicalCase",
    "list_cases",
    "load_volume",
    "load_label_volume",
    "save_label_volume",
    "read_label_names",
    "read_nifti_geometry",
    "read_msd_label_names",
    "is_nifti_path",
    "case_name",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABELS_JSON_KEY = "hybrids_labels"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class MedicalImageError(ValueError):
    """A medical image file or folder the user gave cannot be used; one line naming it."""


LABEL_MAP_MAX_VALUES = 10  # an image with at most this many small integer values looks like a label map


def looks_like_label_map(array: np.ndarray) -> bool:
    """Whether an image holds only a few small non-negative integers (``0, 1, 2, ...``), as a
    segmentation does and an MR/CT intensity image never does. Decided from at most ~1M voxels."""
    flat = np.asarray(array).reshape(-1)
    if flat.size == 0:
        return False
    sample = flat[:: max(1, flat.size // 1_000_000)]
    values = np.unique(sample)
    if values.size > LABEL_MAP_MAX_VALUES or values[0] < 0 or values[-1] > 255:
        return False
    return bool(np.all(values == np.round(values)))


@dataclass
class Volume:
    """One 3-D image in its own grid.

    ``array``: ``(X, Y, Z)`` float32 (labels: integer) in the file's voxel order; ``affine``:
    ``(4, 4)`` float64, voxel index -> RAS+ mm; ``shape``: the file's full shape (may carry trailing
    singleton dimensions, which ``save_label_volume`` restores); ``header``: a copy of the NIfTI
    header (``None`` for DICOM); ``source``: ``"nifti"`` or ``"dicom"``; ``meta``: extra facts
    (DICOM: series UID, modality, number of files).
    """

    path: Path
    array: np.ndarray
    affine: np.ndarray
    shape: tuple[int, ...]
    source: str
    header: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes (column norms of the affine)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes of the voxel axes in RAS+ world space, e.g. ``"RAS"`` or ``"LPS"``."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def name(self) -> str:
        return case_name(self.path)

    def to_metatensor(self):
        """The image as a MONAI ``MetaTensor`` ``(1, X, Y, Z)`` carrying the affine, ready for
        MONAI's ``Orientation``/``Spacing`` transforms and their inverses (imports torch/MONAI)."""
        import torch
        from monai.data import MetaTensor

        return MetaTensor(
            torch.from_numpy(np.ascontiguousarray(self.array))[None],
            affine=torch.from_numpy(self.affine.copy()),
            meta={"filename_or_obj": str(self.path), "spatial_shape": np.asarray(self.spatial_shape)},
        )


@dataclass(frozen=True)
class MedicalCase:
    """One input of a segmentation run: a NIfTI file or a DICOM series folder."""

    name: str
    path: Path


def is_nifti_path(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def case_name(path: str | Path) -> str:
    """``hippocampus_001`` for ``.../hippocampus_001.nii.gz``; nnU-Net's channel suffix ``_0000``
    is dropped (``case_0000.nii.gz`` -> ``case``); a DICOM folder's name as is."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            if name.endswith("_0000"):
                name = name[:-5]
            break
    return name


def list_cases(path: str | Path) -> list[MedicalCase]:
    """The cases an input path stands for: a NIfTI file -> itself; a folder holding NIfTI files
    -> each of them, sorted (other files ignored, not recursive); any other folder -> one DICOM
    series (checked when loaded). Missing paths and empty folders raise ``MedicalImageError``."""
    path = Path(path)
    if not path.exists():
        raise MedicalImageError(f"{path}: no such file or folder")
    if path.is_file():
        return [MedicalCase(case_name(path), path)]
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise MedicalImageError(f"{path}: empty folder (expected NIfTI files or one DICOM series)")
    niftis = sorted(p for p in entries if p.is_file() and is_nifti_path(p))
    if niftis:
        cases = [MedicalCase(case_name(p), p) for p in niftis]
        names = [c.name for c in cases]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise MedicalImageError(f"{path}: several files for case {duplicates[0]!r} (.nii and .nii.gz?)")
        return cases
    return [MedicalCase(path.name, path)]


def load_volume(path: str | Path) -> Volume:
    """Read a NIfTI file (``.nii``, ``.nii.gz``) or a DICOM series folder as a float32 ``Volume``."""
    path = Path(path)
    if not path.exists():
        raise MedicalImageError(f"{path}: no such file or folder")
    if path.is_dir():
        return _load_dicom_series(path)
    if is_nifti_path(path):
        return _load_nifti(path, labels=False)
    raise MedicalImageError(f"{path}: not a NIfTI file (.nii, .nii.gz) or a DICOM series folder")


def load_label_volume(path: str | Path) -> Volume:
    """Read a NIfTI label volume: ``array`` is ``(X, Y, Z)`` of non-negative integers, in the
    stored integer dtype (e.g. uint8), or int32 when stored as floats (as some MSD files are),
    which must then hold whole numbers."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a NIfTI label file" if path.is_dir() else "no such file"
        raise MedicalImageError(f"{path}: {what}")
    if not is_nifti_path(path):
        raise MedicalImageError(f"{path}: not a NIfTI file (.nii, .nii.gz)")
    return _load_nifti(path, labels=True)


def read_nifti_geometry(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(spatial_shape, affine)`` of a 3-D NIfTI file from its header alone (no voxel is read)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a NIfTI file" if path.is_dir() else "no such file"
        raise MedicalImageError(f"{path}: {what}")
    image = _open_nifti(path)
    shape = _check_3d(path, tuple(int(n) for n in image.shape))
    return shape[:3], np.asarray(image.affine, dtype=np.float64).copy()  # type: ignore[return-value]


def _open_nifti(path: Path) -> Any:
    try:
        image = nib.load(str(path))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise MedicalImageError(f"{path}: not a readable NIfTI file ({_one_line(exc)})") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise MedicalImageError(f"{path}: not a NIfTI-1/2 image ({type(image).__name__})")
    return image


def _check_3d(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) < 3:
        raise MedicalImageError(f"{path}: {len(shape)}-D image ({_dims(shape)}); expected a 3-D volume")
    if int(np.prod(shape[3:], dtype=np.int64)) > 1:
        raise MedicalImageError(
            f"{path}: {len(shape)}-D volume ({_dims(shape)}); "
            "expected a 3-D image (one channel, one time point)"
        )
    if min(shape[:3]) < 1:
        raise MedicalImageError(f"{path}: empty volume ({_dims(shape)})")
    return shape


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _load_nifti(path: Path, *, labels: bool) -> Volume:
    image = _open_nifti(path)
    shape = _check_3d(path, tuple(int(n) for n in image.shape))
    try:
        if labels:
            data = np.asanyarray(image.dataobj)
        else:
            data = image.get_fdata(dtype=np.float32)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise MedicalImageError(f"{path}: truncated or corrupt NIfTI data ({_one_line(exc)})") from None
    data = np.asarray(data).reshape(shape[:3])
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            n_nan = int(np.isnan(data).sum())
            what = f"{n_nan} NaN" + (f" and {int(bad.sum()) - n_nan} infinite" if bad.sum() > n_nan else "")
            raise MedicalImageError(f"{path}: contains {what} voxel(s); a volume must be finite")
    if labels:
        data = _as_labels(path, data)
    affine = np.asarray(image.affine, dtype=np.float64).copy()
    return Volume(path, data, affine, shape, "nifti", header=image.header.copy())


def _as_labels(path: Path, data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise MedicalImageError(f"{path}: not a label volume (non-integer values)")
    if data.dtype.kind not in "fiub":
        raise MedicalImageError(f"{path}: not a label volume (data type {data.dtype})")
    if data.size and data.min() < 0:
        raise MedicalImageError(f"{path}: not a label volume (negative values)")
    return data if data.dtype.kind in "iu" else data.astype(np.int32)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


# --- DICOM -----------------------------------------------------------------------------------


def _load_dicom_series(folder: Path) -> Volume:
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural)
    if not files:
        raise MedicalImageError(f"{folder}: empty folder (expected NIfTI files or one DICOM series)")
    slices = []
    for file in files:
        try:
            ds = pydicom.dcmread(file)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError):
            continue  # not a DICOM file (notes, thumbnails, ...)
        if "PixelData" in ds:
            slices.append((file, ds))
    if not slices:
        raise MedicalImageError(f"{folder}: no DICOM image files in the folder (and no NIfTI files)")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise MedicalImageError(
            f"{folder}: holds {len(series)} DICOM series; give one series folder per input"
        )
    for file, ds in slices:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise MedicalImageError(
                f"{file}: multi-frame (enhanced) DICOM is not supported; convert it to NIfTI"
            )
        for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
            if tag not in ds or ds.get(tag) is None:
                raise MedicalImageError(f"{file}: DICOM image without {tag}; cannot place it in space")

    first_file, first = slices[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    size = (int(first.Rows), int(first.Columns))
    spacing = np.asarray(first.PixelSpacing, dtype=np.float64)  # (between rows, between columns)
    for file, ds in slices[1:]:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=np.float64), orientation, atol=1e-4):
            raise MedicalImageError(f"{file}: slice orientation differs from {first_file.name}'s")
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise MedicalImageError(f"{file}: slice size differs from {first_file.name}'s")
        if not np.allclose(np.asarray(ds.PixelSpacing, dtype=np.float64), spacing, atol=1e-4):
            raise MedicalImageError(f"{file}: pixel spacing differs from {first_file.name}'s")

    positions = np.asarray([ds.ImagePositionPatient for _, ds in slices], dtype=np.float64)
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    heights = positions @ normal
    if len(slices) > 1:
        gaps = np.diff(heights)
        if np.any(gaps < 1e-4):
            raise MedicalImageError(f"{folder}: two slices at the same position (several echoes or series?)")
        if np.ptp(gaps) > max(1e-3, 0.01 * float(np.mean(gaps))):
            raise MedicalImageError(
                f"{folder}: uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm; missing slices?)"
            )
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        step = normal * thickness

    planes = []
    for file, ds in slices:
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for truncated / unsupported pixel data
            raise MedicalImageError(f"{file}: cannot decode DICOM pixel data ({_one_line(exc)})") from None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        planes.append(pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    array = np.stack([p.T for p in planes], axis=-1)  # (columns, rows, slices)

    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]  # along a row: column index i, spacing between columns
    lps[:3, 1] = col_dir * spacing[0]  # along a column: row index j
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = _LPS_TO_RAS @ lps
    meta = {
        "series_instance_uid": str(first.get("SeriesInstanceUID", "")),
        "modality": str(first.get("Modality", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "files": len(slices),
    }
    return Volume(folder, np.ascontiguousarray(array), affine, tuple(array.shape), "dicom", None, meta)


def _natural(path: Path) -> tuple:
    stem = path.stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, path.name)


# --- label volumes -----------------------------------------------------------------------------


def save_label_volume(
    path: str | Path,
    labels: np.ndarray,
    reference: Volume,
    label_names: Mapping[int, str] | None = None,
) -> Path:
    """Write ``labels`` ``(X, Y, Z)`` (integers 0..255) as a uint8 NIfTI in ``reference``'s grid.

    ``path`` must end in ``.nii`` or ``.nii.gz``; the file appears only once complete. See the
    module docstring for which header fields are changed. Returns ``path``.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"{path}: a label volume is written as NIfTI (.nii or .nii.gz)")
    labels = np.asarray(labels)
    if labels.shape != reference.spatial_shape:
        raise ValueError(
            f"{path}: labels of shape {labels.shape} do not fit the reference grid {reference.spatial_shape}"
        )
    if labels.dtype.kind not in "iub" or (labels.size and (labels.min() < 0 or labels.max() > 255)):
        raise ValueError(f"{path}: labels must be integers in 0..255, got {labels.dtype}")
    data = labels.astype(np.uint8).reshape(reference.shape)
    names = {int(k): str(v) for k, v in (label_names or {}).items() if int(k) != 0}

    if reference.header is not None:
        header = reference.header.copy()
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    else:
        header = nib.Nifti1Header()
        image_class = nib.Nifti1Image
        header.set_data_shape(reference.shape)
        header.set_qform(reference.affine, code="scanner")
        header.set_sform(reference.affine, code="scanner")
        header.set_xyzt_units("mm")
    header.set_data_dtype(np.uint8)
    if tuple(header.get_data_shape()) != tuple(reference.shape):
        header.set_data_shape(reference.shape)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"] = 0
    header["cal_max"] = int(data.max()) if data.size else 0
    header.set_intent("label", name="labels")
    descrip = ("labels: " + " ".join(f"{k}={v}" for k, v in sorted(names.items()))).encode("utf-8", "replace")
    header["descrip"] = descrip[:80] if names else b"labels"
    header.extensions[:] = [e for e in header.extensions if not _is_labels_extension(e)]
    if names:
        payload = json.dumps({LABELS_JSON_KEY: {str(k): v for k, v in sorted(names.items())}})
        header.extensions.append(nib.nifti1.Nifti1Extension("comment", payload.encode("utf-8")))
    # affine=None: nibabel keeps the header's own sform/qform (codes and matrices) untouched.
    image = image_class(data, None, header=header)
    with atomic_write_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def _is_labels_extension(extension: Any) -> bool:
    if extension.get_code() != 6:
        return False
    try:
        return LABELS_JSON_KEY in json.loads(bytes(extension.get_content()).decode("utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError):
        return False


def read_label_names(source: str | Path | Volume) -> dict[int, str]:
    """Label names stored by ``save_label_volume`` in a NIfTI file (or a loaded ``Volume``); ``{}``
    when there are none."""
    header = source.header if isinstance(source, Volume) else _load_nifti_header(Path(source))
    if header is None:
        return {}
    for extension in header.extensions:
        if _is_labels_extension(extension):
            content = json.loads(bytes(extension.get_content()).decode("utf-8"))[LABELS_JSON_KEY]
            return {int(k): str(v) for k, v in content.items()}
    return {}


def _load_nifti_header(path: Path) -> Any:
    return _open_nifti(path).header


def read_msd_label_names(dataset_json: str | Path) -> dict[int, str]:
    """Foreground label names of a Medical Segmentation Decathlon ``dataset.json``
    (``{"labels": {"0": "background", "1": "Anterior", ...}}``; nnU-Net v2's inverted
    ``{"background": 0, ...}`` is accepted too)."""
    path = Path(dataset_json)
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
        pairs = [(int(k), str(v)) if str(k).isdigit() else (int(v), str(k)) for k, v in labels.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MedicalImageError(f"{path}: not an MSD dataset.json with labels ({_one_line(exc)})") from None
    return {k: v for k, v in sorted(pairs) if k != 0}
