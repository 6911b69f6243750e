"""Hyperspectral cubes: readers and writers, the SalinasA layout, synthetic mixing scenes.

    cube = read_cube("scene.mat")                  # .mat v5 / v7.3, ENVI .hdr, .npy, .tif
    cube.data                                      # (H, W, bands), the file's dtype
    cube.wavelengths                               # nm per band, or None when the file has none
    write_cube("out.mat", denoised, like=cube)     # same format, variable, band order and dtype

**Layout.** ``HSICube.data`` is always ``(H, W, bands)``. Files that name their axes say where the
bands are: ENVI (``interleave`` bsq/bil/bip, read with the ``spectral`` package) and TIFF (a page
per band, ``tifffile`` axes ``...YX``, or samples per pixel, ``YXS``). Plain arrays (``.npy`` and
``.mat``) are read as ``(H, W, bands)`` -- MATLAB's and the remote-sensing scenes' convention --
unless ``bands_first=True`` says ``(bands, H, W)``. ``write_cube`` writes the same layout back.

**Formats.** ``.mat`` v5 (``scipy.io``) and v7.3 (HDF5, ``h5py``; MATLAB stores arrays
column-major, so the HDF5 dataset is the transpose); the cube is the file's one 3-D numeric
variable (or ``key``), wavelengths a 1-D variable named ``wavelength(s)``/``wavelength_nm``/
``bands``/``lambda`` with one value per band. ENVI: a ``.hdr`` beside its raw data file
(``.img``, ``.raw``, ``.dat``, ``.bsq``/``.bil``/``.bip`` or no suffix), wavelengths from the header.
``.npy`` (no pickles). ``.tif``/``.tiff``. Wavelengths are kept wherever the file has them
(``wavelength_units`` micrometres are converted to nm).

**Errors.** Anything wrong with a file raises ``HSIFormatError`` (a ``ValueError``) with one line
naming it: missing, unknown suffix, truncated or corrupt, not 3-D (a 2-D image, a 4-D array), no or
several candidate variables in a ``.mat``, NaN or infinite values, a wavelength list of the wrong
length. Writes are atomic (``hybrids.datasets.atomic``): an error leaves nothing behind.

**SalinasA** (AVIRIS, 83 x 86 pixels, 204 bands after the water-absorption bands 108-112, 154-167
and 224 were removed; ``../shared/data/hsi/SalinasA_corrected.mat``): ``SALINAS_VISIBLE`` lists the
31 bands nearest 400, 410, ..., 700 nm, HSDT's native setting, and ``salinas_split`` cuts the scene
into spatially disjoint blocks (``SALINAS_BLOCKS``). See ``salinas_visible_bands`` for the band table.

**Synthetic scenes** (``mixing_scenes``): linear mixtures of given spectra with spatially smooth
abundance maps, for training beside the real block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybrids.datasets.atomic import OutputError, atomic_write_path

__all__ = [
    "AVIRIS_1992_SPECTROMETER_A_NM",
    "CUBE_SUFFIXES",
    "HSICube",
    "HSIFormatError",
    "SALINAS_BLOCKS",
    "SALINAS_VISIBLE",
    "endmember_spectra",
    "minmax_normalize",
    "mixing_scenes",
    "read_cube",
    "salinas_split",
    "salinas_visible_bands",
    "write_cube",
]

CUBE_SUFFIXES = (".mat", ".hdr", ".npy", ".tif", ".tiff")
_ENVI_DATA_SUFFIXES = ("", ".img", ".raw", ".dat", ".bsq", ".bil", ".bip", ".IMG", ".RAW", ".DAT")
_WAVELENGTH_KEYS = ("wavelength", "wavelengths", "wavelength_nm", "wavelengths_nm", "bands", "lambda")
_MAT73_HEADER = b"MATLAB 7.3 MAT-file"


class HSIFormatError(ValueError):
    """A hyperspectral file that cannot be used; ``str()`` is one line naming the file."""


@dataclass
class HSICube:
    """A cube read from ``path``: ``data`` ``(H, W, bands)`` and how to write it back like the file."""

    data: np.ndarray
    path: Path
    format: str  # "mat5", "mat73", "envi", "npy", "tif"
    wavelengths: np.ndarray | None = None  # nm, one per band
    bands_first: bool = False  # the file's array is (bands, H, W)
    key: str | None = None  # .mat: the variable holding the cube
    extras: dict[str, Any] = field(default_factory=dict)  # format details a writer needs

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w, b = self.data.shape
        return h, w, b

    @property
    def bands(self) -> int:
        return int(self.data.shape[2])


# -- reading ------------------------------------------------------------------------------------------
def read_cube(path: str | Path, *, bands_first: bool = False, key: str | None = None) -> HSICube:
    """Read a cube (module docstring); ``HSIFormatError`` for anything unusable."""
    path = Path(path)
    if path.is_dir():
        raise HSIFormatError(f"{path}: is a folder, not a hyperspectral cube file")
    suffix = path.suffix.lower()
    if suffix not in CUBE_SUFFIXES:
        envi_header = _envi_header_for(path)
        if envi_header is None:
            raise HSIFormatError(
                f"{path}: unknown format {suffix or '(no suffix)'!r}; hyperspectral cubes are "
                f"{', '.join(CUBE_SUFFIXES)} (ENVI: the .hdr file)"
            )
        path, suffix = envi_header, ".hdr"
    if not path.is_file():
        raise HSIFormatError(f"{path}: no such file")
    try:
        if suffix == ".mat":
            cube = _read_mat(path, bands_first, key)
        elif suffix == ".hdr":
            cube = _read_envi(path)
        elif suffix == ".npy":
            cube = _read_npy(path, bands_first)
        else:
            cube = _read_tif(path)
    except HSIFormatError:
        raise
    except MemoryError:
        raise HSIFormatError(f"{path}: too large to read into memory") from None
    except Exception as exc:  # each reader's own failures: truncated, corrupt, not that format
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise HSIFormatError(f"{path}: cannot read ({reason[:200]})") from None
    _check_values(cube)
    return cube


def _envi_header_for(path: Path) -> Path | None:
    """The ``.hdr`` beside an ENVI data file (``x.img`` -> ``x.hdr`` or ``x.img.hdr``)."""
    for candidate in (path.with_suffix(".hdr"), path.with_name(path.name + ".hdr")):
        if candidate != path and candidate.is_file():
            return candidate
    return None


def _as_cube(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise HSIFormatError(
            f"{path}: {what} has shape {tuple(array.shape)}; a hyperspectral cube is 3-D (H, W, bands)"
        )
    if not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)) or array.dtype == np.bool_:
        raise HSIFormatError(f"{path}: {what} is of type {array.dtype}, not real numbers")
    if min(array.shape) < 1:
        raise HSIFormatError(f"{path}: {what} is empty (shape {tuple(array.shape)})")
    return array


def _check_values(cube: HSICube) -> None:
    data = cube.data
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = "NaN" if np.isnan(data).any() else "infinite"
        raise HSIFormatError(f"{cube.path}: the cube holds {bad} values; fill or mask them first")
    if cube.wavelengths is not None and len(cube.wavelengths) != cube.bands:
        raise HSIFormatError(f"{cube.path}: {len(cube.wavelengths)} wavelengths for {cube.bands} bands")


def _wavelengths(values: Any, units: str | None = None) -> np.ndarray | None:
    if values is None:
        return None
    try:
        wl = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if wl.size == 0 or not np.isfinite(wl).all():
        return None
    units = (units or "").strip().lower()
    if units in ("micrometers", "micrometer", "microns", "micron", "um", "µm") or (
        not units and wl.max() < 30
    ):
        wl = wl * 1000.0  # micrometres (ENVI's usual unit) to nm
    return wl


def _pick_variable(path: Path, variables: Mapping[str, Any], key: str | None) -> str:
    if key is not None:
        if key not in variables:
            raise HSIFormatError(f"{path}: no variable {key!r} (variables: {', '.join(variables) or 'none'})")
        return key
    cubes = [name for name, value in variables.items() if getattr(value, "ndim", 0) == 3]
    if len(cubes) == 1:
        return cubes[0]
    if not cubes:
        shapes = ", ".join(f"{n} {tuple(getattr(v, 'shape', ()))}" for n, v in variables.items())
        raise HSIFormatError(f"{path}: no 3-D variable to read as a cube ({shapes or 'no variables'})")
    raise HSIFormatError(f"{path}: several 3-D variables ({', '.join(cubes)}); name one (key=...)")


def _mat_wavelengths(variables: Mapping[str, Any], bands: int) -> np.ndarray | None:
    for name, value in variables.items():
        if name.lower() in _WAVELENGTH_KEYS:
            wl = _wavelengths(np.asarray(value))
            if wl is not None and wl.size == bands:
                return wl
    return None


def _is_mat73(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_MAT73_HEADER)) == _MAT73_HEADER


def _read_mat(path: Path, bands_first: bool, key: str | None) -> HSICube:
    if _is_mat73(path):
        return _read_mat73(path, bands_first, key)
    import scipy.io

    variables = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    name = _pick_variable(path, variables, key)
    array = _as_cube(path, variables[name], f"variable {name!r}")
    data = np.moveaxis(array, 0, -1) if bands_first else array
    wl = _mat_wavelengths({k: v for k, v in variables.items() if k != name}, data.shape[2])
    return HSICube(np.ascontiguousarray(data), path, "mat5", wl, bands_first, name)


def _read_mat73(path: Path, bands_first: bool, key: str | None) -> HSICube:
    import h5py

    with h5py.File(path, "r") as f:
        variables = {k: f[k] for k in f.keys() if isinstance(f[k], h5py.Dataset) and not k.startswith("#")}
        name = _pick_variable(path, variables, key)
        dataset = variables[name]
        array = _as_cube(path, dataset[()].transpose(), f"variable {name!r}")  # column-major on disk
        matlab_class = dataset.attrs.get("MATLAB_class", b"double")
        data = np.moveaxis(array, 0, -1) if bands_first else array
        others = {k: v[()].transpose() for k, v in variables.items() if k != name and v.ndim <= 2}
    wl = _mat_wavelengths(others, data.shape[2])
    extras = {"matlab_class": matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)}
    return HSICube(np.ascontiguousarray(data), path, "mat73", wl, bands_first, name, extras)


def _read_envi(path: Path) -> HSICube:
    from spectral.io import envi

    data_file = next(
        (path.with_suffix(s) for s in _ENVI_DATA_SUFFIXES if path.with_suffix(s).is_file()), None
    )
    if data_file is None:
        raise HSIFormatError(
            f"{path}: ENVI header without its data file (looked for {path.stem}.img/.raw/...)"
        )
    header = envi.read_envi_header(str(path))
    try:
        rows, cols, bands = int(header["lines"]), int(header["samples"]), int(header["bands"])
    except (KeyError, ValueError):
        raise HSIFormatError(f"{path}: ENVI header without lines/samples/bands") from None
    image = envi.open(str(path), str(data_file))
    expected = int(header.get("header offset", 0)) + rows * cols * bands * image.sample_size
    actual = data_file.stat().st_size
    if actual < expected:
        raise HSIFormatError(f"{data_file}: truncated ({actual} bytes, the header promises {expected})")
    data = _as_cube(path, np.array(image.load(dtype=image.dtype), copy=True), "the ENVI image")
    wl = _wavelengths(header.get("wavelength"), header.get("wavelength units"))
    extras = {
        "interleave": str(header.get("interleave", "bsq")).lower(),
        "byte_order": int(header.get("byte order", 0)),
        "data_suffix": data_file.suffix,
        "metadata": {k: v for k, v in header.items() if k not in _ENVI_LAYOUT_KEYS},
    }
    return HSICube(np.ascontiguousarray(data), path, "envi", wl, False, None, extras)


_ENVI_LAYOUT_KEYS = {
    "lines",
    "samples",
    "bands",
    "header offset",
    "data type",
    "interleave",
    "byte order",
    "file type",
}


def _read_npy(path: Path, bands_first: bool) -> HSICube:
    array = _as_cube(path, np.load(path, allow_pickle=False), "the array")
    data = np.moveaxis(array, 0, -1) if bands_first else array
    return HSICube(np.ascontiguousarray(data), path, "npy", None, bands_first)


class _Complaints(logging.Handler):
    """Collects what a library logs at WARNING or above (tifffile logs, rather than raises, on a
    truncated file and returns fewer pages or zero-filled strips)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_tif(path: Path) -> HSICube:
    import tifffile

    complaints = _Complaints()
    log = logging.getLogger("tifffile")
    log.addHandler(complaints)
    propagate, log.propagate = log.propagate, False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            array = _as_cube(path, series.asarray(), "the image")
            wl = _tif_wavelengths(tif)
    finally:
        log.removeHandler(complaints)
        log.propagate = propagate
    if complaints.messages:
        raise HSIFormatError(f"{path}: truncated or corrupt TIFF ({complaints.messages[0][:120]})")
    samples_last = axes.endswith("S") or not axes.endswith("YX")
    data = array if samples_last else np.moveaxis(array, 0, -1)
    wl = wl if wl is not None and wl.size == data.shape[2] else None
    return HSICube(np.ascontiguousarray(data), path, "tif", wl, not samples_last)


def _tif_wavelengths(tif: Any) -> np.ndarray | None:
    """Wavelengths from a TIFF's ImageDescription when it is our (or tifffile's) JSON metadata."""
    import json

    description = tif.pages[0].description or ""
    try:
        meta = json.loads(description)
    except ValueError:
        return None
    return _wavelengths(meta.get("wavelength_nm")) if isinstance(meta, dict) else None


# -- writing ------------------------------------------------------------------------------------------
def write_cube(path: str | Path, data: np.ndarray, *, like: HSICube) -> Path:
    """Write ``data`` ``(H, W, bands)`` to ``path`` in ``like``'s format, variable name, band order and
    wavelengths, atomically. ``data`` is cast to ``like``'s dtype (rounded and clipped to its range for
    integer types). ENVI writes ``path`` (``.hdr``) and its data file beside it."""
    path = Path(path)
    data = _cast_like(np.asarray(data), like.data.dtype)
    if data.ndim != 3:
        raise ValueError(f"write_cube: data must be (H, W, bands), got shape {data.shape}")
    wl = like.wavelengths if like.wavelengths is not None and len(like.wavelengths) == data.shape[2] else None
    array = np.moveaxis(data, -1, 0) if like.bands_first else data
    if like.format == "mat5":
        import scipy.io

        variables: dict[str, Any] = {like.key or "cube": array}
        if wl is not None:
            variables["wavelength_nm"] = wl
        with atomic_write_path(path) as tmp:
            scipy.io.savemat(tmp, variables, do_compression=True)
    elif like.format == "mat73":
        with atomic_write_path(path) as tmp:
            _write_mat73(tmp, like.key or "cube", array, wl, like.extras.get("matlab_class"))
    elif like.format == "npy":
        with atomic_write_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    elif like.format == "tif":
        import json

        import tifffile

        description = json.dumps({"wavelength_nm": wl.tolist()}) if wl is not None else None
        with atomic_write_path(path) as tmp:
            tifffile.imwrite(tmp, array, photometric="minisblack", description=description, metadata=None)
    elif like.format == "envi":
        _write_envi(path, data, like, wl)
    else:
        raise ValueError(f"write_cube: unknown format {like.format!r}")
    return path


def _cast_like(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(data), info.min, info.max).astype(dtype)
    return data.astype(dtype, copy=False)


_MATLAB_CLASSES = {
    "float64": "double",
    "float32": "single",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "uint16": "uint16",
    "int32": "int32",
    "uint32": "uint32",
    "int64": "int64",
    "uint64": "uint64",
}


def _write_mat73(path: Path, name: str, array: np.ndarray, wl: np.ndarray | None, matlab_class: Any) -> None:
    """A MATLAB v7.3 file: HDF5 behind MATLAB's 512-byte header, arrays stored column-major."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for var, value in ((name, array), ("wavelength_nm", wl)):
            if value is None:
                continue
            dataset = f.create_dataset(var, data=np.ascontiguousarray(np.asarray(value).transpose()))
            dataset.attrs["MATLAB_class"] = np.bytes_(_MATLAB_CLASSES.get(str(dataset.dtype), "double"))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: hybrids HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM" + b"\x00" * (512 - 128))


def _write_envi(path: Path, data: np.ndarray, like: HSICube, wl: np.ndarray | None) -> None:
    from spectral.io import envi

    if path.suffix.lower() != ".hdr":
        path = path.with_name(path.name + ".hdr")
    data_path = path.with_suffix(like.extras.get("data_suffix", ".img") or ".img")
    metadata = dict(like.extras.get("metadata") or {})
    metadata["interleave"] = like.extras.get("interleave", "bsq")
    metadata["byte order"] = like.extras.get("byte_order", 0)
    if wl is not None:
        metadata["wavelength"] = [f"{v:g}" for v in wl]
        metadata["wavelength units"] = "Nanometers"
    else:
        metadata.pop("wavelength", None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        tmp_hdr = tmpdir / "cube.hdr"
        envi.save_image(
            str(tmp_hdr),
            data,
            dtype=data.dtype,
            interleave=metadata["interleave"],
            byteorder=metadata["byte order"],
            metadata=metadata,
            ext=data_path.suffix,
            force=True,
        )
        try:
            os.replace(tmpdir / f"cube{data_path.suffix}", data_path)  # the data first, the header last
            os.replace(tmp_hdr, path)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmpdir)


# -- normalisation ---------------------------------------------------------------------------------------
def minmax_normalize(cube: np.ndarray) -> np.ndarray:
    """``(cube - min) / (max - min)`` in float32 over the whole cube (QRNN3D's and HSDT's scaling of
    each clean image to [0, 1]); a constant cube becomes zeros."""
    cube = np.asarray(cube, dtype=np.float64)
    lo, hi = float(cube.min()), float(cube.max())
    return ((cube - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


# -- SalinasA ---------------------------------------------------------------------------------------------
# AVIRIS band centres (nm) of spectrometer A (its channels 1-31 as numbered in the 1992 Indian Pines
# calibration file 92AV3C.spc, distributed with Purdue's MultiSpec Indian Pines scene and Spectral
# Python's sample data). The corrected Salinas cubes keep the 224-channel numbering whose removed
# water bands (108-112, 154-167, 224) are Indian Pines' (104-108, 150-163, 220) shifted by four, so
# 92AV3C channel k is Salinas channel k + 4, i.e. index k + 3 (0-based) of the 204-band cube.
AVIRIS_1992_SPECTROMETER_A_NM = (
    400.02, 409.82, 419.62, 429.43, 439.25, 449.07, 458.90, 468.73, 478.57, 488.41, 498.26,
    508.12, 517.98, 527.85, 537.72, 547.60, 557.49, 567.38, 577.28, 587.18, 597.09, 607.01,
    616.93, 626.85, 636.78, 646.72, 656.67, 666.61, 676.57, 686.53, 696.50,
)  # fmt: skip
_SALINAS_FIRST_VISIBLE = 4  # 0-based index of 92AV3C channel 1 in the 204-band SalinasA cube


def salinas_visible_bands(
    targets_nm: Sequence[float] = tuple(range(400, 701, 10)),
) -> tuple[list[int], list[float]]:
    """``(indices into the 204-band cube, centres in nm)`` of the band nearest each target wavelength,
    among AVIRIS spectrometer A's channels (one detector, contiguous, no overlap with spectrometer B
    near 690 nm). The default targets 400, 410, ..., 700 nm pick indices 4..34."""
    centres = np.asarray(AVIRIS_1992_SPECTROMETER_A_NM)
    picked = [int(np.argmin(np.abs(centres - t))) for t in targets_nm]
    if len(set(picked)) != len(picked):
        raise ValueError("salinas_visible_bands: two targets share their nearest band")
    return [_SALINAS_FIRST_VISIBLE + i for i in picked], [float(centres[i]) for i in picked]


SALINAS_VISIBLE = salinas_visible_bands()[0]

# Spatially disjoint blocks of the 83 x 86 scene, (rows, columns) as slices. "test" is never seen in
# training (every reported figure comes from it); "train" gives the training patches and the spectra of
# the synthetic scenes; "validation" picks the best checkpoint. Guard strips (rows 63-66 and columns
# 48-53) separate them, so that no training patch touches a validation or test pixel.
SALINAS_BLOCKS: dict[str, tuple[slice, slice]] = {
    "train": (slice(0, 63), slice(0, 48)),
    "validation": (slice(67, 83), slice(0, 48)),
    "test": (slice(0, 83), slice(54, 86)),
}


def salinas_split(cube: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """``{block: cube[rows, cols]}`` (and ``{block + "_labels": ...}`` with ``labels``) of an
    ``(83, 86, bands)`` SalinasA cube."""
    if cube.shape[:2] != (83, 86):
        raise ValueError(f"salinas_split: expected an 83 x 86 SalinasA cube, got {cube.shape[:2]}")
    out: dict[str, Any] = {}
    for name, (rows, cols) in SALINAS_BLOCKS.items():
        out[name] = cube[rows, cols]
        if labels is not None:
            out[f"{name}_labels"] = labels[rows, cols]
    return out


# -- synthetic scenes ------------------------------------------------------------------------------------
def endmember_spectra(
    block: np.ndarray, labels: np.ndarray | None = None, *, extra: int = 8, seed: int = 0
) -> np.ndarray:
    """Spectra ``(n, bands)`` of one block to mix: the mean spectrum of every labelled class present
    (``labels`` > 0), the mean of the unlabelled pixels, and ``extra`` pixels drawn at random."""
    pixels = block.reshape(-1, block.shape[-1]).astype(np.float64)
    spectra = []
    if labels is not None:
        flat = labels.reshape(-1)
        spectra += [pixels[flat == c].mean(0) for c in np.unique(flat) if (flat == c).any()]
    rng = np.random.default_rng(seed)
    spectra += list(pixels[rng.choice(len(pixels), size=min(extra, len(pixels)), replace=False)])
    return np.stack(spectra)


def mixing_scenes(
    spectra: np.ndarray,
    count: int,
    size: int = 64,
    *,
    seed: int = 0,
    smoothness: tuple[float, float] = (2.0, 10.0),
    sharpness: tuple[float, float] = (2.0, 12.0),
    shading: float = 0.15,
) -> np.ndarray:
    """``count`` synthetic scenes ``(count, size, size, bands)``, float32, by linear mixing.

    Per scene and per spectrum, a white-noise field is smoothed with a Gaussian of a random width in
    ``smoothness`` (pixels) and standardised; a softmax over the spectra with a random temperature
    1 / ``sharpness`` turns the fields into abundances (non-negative, summing to one: sharp fields give
    near-pure regions with soft borders). The scene is ``abundances @ spectra`` times a smooth
    shading field ``1 + shading * g`` (g smooth, in [-1, 1]).
    """
    from scipy.ndimage import gaussian_filter

    spectra = np.asarray(spectra, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = spectra.shape[0]
    scenes = np.empty((count, size, size, spectra.shape[1]), dtype=np.float32)
    for i in range(count):
        width = rng.uniform(*smoothness)
        fields = np.stack(
            [gaussian_filter(rng.standard_normal((size, size)), width, mode="wrap") for _ in range(n)]
        )
        fields = (fields - fields.mean(axis=(1, 2), keepdims=True)) / (
            fields.std(axis=(1, 2), keepdims=True) + 1e-12
        )
        logits = fields * rng.uniform(*sharpness)
        logits -= logits.max(axis=0, keepdims=True)
        abundances = np.exp(logits)
        abundances /= abundances.sum(axis=0, keepdims=True)
        light = gaussian_filter(rng.standard_normal((size, size)), size / 4, mode="wrap")
        light = 1.0 + shading * light / (np.abs(light).max() + 1e-12)
        scenes[i] = np.einsum("nhw,nb->hwb", abundances, spectra) * light[..., None]
    return scenes
