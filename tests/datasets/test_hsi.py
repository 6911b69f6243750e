"""Hyperspectral readers and writers, the SalinasA layout and the synthetic mixing scenes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from hybrids.datasets.hsi import (
    AVIRIS_1992_SPECTROMETER_A_NM,
    SALINAS_BLOCKS,
    SALINAS_VISIBLE,
    HSIFormatError,
    endmember_spectra,
    minmax_normalize,
    mixing_scenes,
    read_cube,
    salinas_split,
    salinas_visible_bands,
    write_cube,
)

WAVELENGTHS = np.linspace(400.0, 700.0, 7)


@pytest.fixture
def cube() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-50, 9000, size=(6, 5, 7)).astype(np.int16)  # (H, W, bands)


def _write_envi(path, data, interleave="bil", wavelengths=WAVELENGTHS):
    from spectral.io import envi

    metadata = {"wavelength": [str(w) for w in wavelengths], "wavelength units": "Nanometers"}
    envi.save_image(str(path), data, interleave=interleave, metadata=metadata, ext=".img", force=True)


def test_mat_v5_reads_h_w_bands_and_its_wavelengths(tmp_path, cube):
    scipy.io.savemat(tmp_path / "a.mat", {"scene": cube, "wavelength": WAVELENGTHS})
    read = read_cube(tmp_path / "a.mat")
    assert read.format == "mat5" and read.key == "scene" and read.shape == (6, 5, 7)
    np.testing.assert_array_equal(read.data, cube)
    np.testing.assert_allclose(read.wavelengths, WAVELENGTHS)
    first = read_cube(tmp_path / "a.mat", bands_first=True)  # (6, 5, 7) read as (bands=6, H=5, W=7)
    assert first.shape == (5, 7, 6)


def test_mat_v73_round_trips_column_major(tmp_path, cube):
    from hybrids.datasets.hsi import HSICube

    like = HSICube(
        cube, tmp_path / "x.mat", "mat73", WAVELENGTHS, key="img", extras={"matlab_class": "int16"}
    )
    write_cube(tmp_path / "b.mat", cube, like=like)
    assert (tmp_path / "b.mat").read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    import h5py

    with h5py.File(tmp_path / "b.mat") as f:
        assert f["img"].shape == (7, 5, 6)  # MATLAB's column-major order on disk
    read = read_cube(tmp_path / "b.mat")
    assert read.format == "mat73" and read.key == "img"
    np.testing.assert_array_equal(read.data, cube)
    np.testing.assert_allclose(read.wavelengths, WAVELENGTHS)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_reads_every_interleave_and_writes_the_same_layout(tmp_path, cube, interleave):
    _write_envi(tmp_path / "s.hdr", cube, interleave)
    read = read_cube(tmp_path / "s.hdr")
    assert read.format == "envi"
    np.testing.assert_array_equal(read.data, cube)
    np.testing.assert_allclose(read.wavelengths, WAVELENGTHS)
    assert read_cube(tmp_path / "s.img").format == "envi"  # the data file finds its header
    write_cube(tmp_path / "out" / "t.hdr", cube + 1, like=read)
    again = read_cube(tmp_path / "out" / "t.hdr")
    assert again.extras["interleave"] == interleave and again.data.dtype == np.int16
    np.testing.assert_array_equal(again.data, cube + 1)
    np.testing.assert_allclose(again.wavelengths, WAVELENGTHS)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t.hdr", "t.img"]


def test_npy_and_tif_keep_their_band_order(tmp_path, cube):
    np.save(tmp_path / "c.npy", np.moveaxis(cube, -1, 0))
    read = read_cube(tmp_path / "c.npy", bands_first=True)
    np.testing.assert_array_equal(read.data, cube)
    write_cube(tmp_path / "d.npy", cube.astype(np.float32) + 0.4, like=read)
    stored = np.load(tmp_path / "d.npy")
    assert stored.shape == (7, 6, 5) and stored.dtype == np.int16  # bands first, the input's type
    import tifffile

    tifffile.imwrite(tmp_path / "e.tif", np.moveaxis(cube, -1, 0), photometric="minisblack")
    tif = read_cube(tmp_path / "e.tif")
    assert tif.bands_first and tif.shape == (6, 5, 7)
    np.testing.assert_array_equal(tif.data, cube)
    tif.wavelengths = WAVELENGTHS
    write_cube(tmp_path / "f.tif", cube, like=tif)
    back = read_cube(tmp_path / "f.tif")
    np.testing.assert_array_equal(back.data, cube)
    np.testing.assert_allclose(back.wavelengths, WAVELENGTHS)


def test_integer_output_is_rounded_and_clipped(tmp_path):
    from hybrids.datasets.hsi import HSICube

    like = HSICube(np.zeros((2, 2, 2), np.uint8), tmp_path / "x.npy", "npy")
    write_cube(tmp_path / "y.npy", np.array([[[-3.0, 2.6], [300.0, 7.4]]] * 2), like=like)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy")[0], [[0, 3], [255, 7]])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: np.save(p / "x.npy", np.zeros((4, 4))), "3-D"),
        (lambda p: np.save(p / "x.npy", np.zeros((2, 4, 4, 3))), "3-D"),
        (lambda p: np.save(p / "x.npy", np.full((4, 4, 3), np.nan)), "NaN"),
        (lambda p: np.save(p / "x.npy", np.full((4, 4, 3), np.inf)), "infinite"),
        (lambda p: np.save(p / "x.npy", np.zeros((4, 4, 3), complex)), "not real"),
        (lambda p: (p / "x.txt").write_text("1 2 3"), "unknown format"),
        (
            lambda p: scipy.io.savemat(p / "x.mat", {"a": np.zeros((3, 3)), "b": np.ones(4)}),
            "no 3-D variable",
        ),
        (
            lambda p: scipy.io.savemat(p / "x.mat", {"a": np.zeros((3, 3, 2)), "b": np.ones((2, 2, 2))}),
            "several",
        ),
    ],
)
def test_bad_files_are_one_line_naming_the_file(tmp_path, make, message):
    make(tmp_path)
    (path,) = list(tmp_path.iterdir())
    with pytest.raises(HSIFormatError, match=message) as error:
        read_cube(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("suffix", [".npy", ".mat", ".tif", ".hdr"])
def test_truncated_files_are_refused(tmp_path, cube, suffix):
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".npy":
        np.save(whole, cube)
    elif suffix == ".mat":
        scipy.io.savemat(whole, {"c": cube})
    elif suffix == ".tif":
        import tifffile

        tifffile.imwrite(whole, np.moveaxis(cube, -1, 0))
    else:
        _write_envi(whole, cube)
    victim = whole.with_suffix(".img") if suffix == ".hdr" else whole
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(HSIFormatError) as error:
        read_cube(whole)
    assert "\n" not in str(error.value) and whole.stem in str(error.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(HSIFormatError, match="no such file"):
        read_cube(tmp_path / "nope.mat")
    with pytest.raises(HSIFormatError, match="folder"):
        read_cube(tmp_path)


def test_salinas_visible_bands_are_the_nearest_of_spectrometer_a():
    indices, centres = salinas_visible_bands()
    assert indices == list(range(4, 35)) == SALINAS_VISIBLE
    assert len(centres) == 31 and centres[0] == 400.02 and centres[-1] == 696.50
    assert max(abs(c - t) for c, t in zip(centres, range(400, 701, 10))) < 4
    assert list(AVIRIS_1992_SPECTROMETER_A_NM) == sorted(AVIRIS_1992_SPECTROMETER_A_NM)


def test_salinas_blocks_are_disjoint_with_guard_strips():
    mask = np.zeros((83, 86), int)
    for rows, cols in SALINAS_BLOCKS.values():
        mask[rows, cols] += 1
    assert mask.max() == 1
    (tr, tc), (vr, _), (_, sc) = SALINAS_BLOCKS["train"], SALINAS_BLOCKS["validation"], SALINAS_BLOCKS["test"]
    assert sc.start - tc.stop >= 4 and vr.start - tr.stop >= 4
    split = salinas_split(np.zeros((83, 86, 3)), np.zeros((83, 86), int))
    assert split["test"].shape == (83, 32, 3) and split["train"].shape == (63, 48, 3)
    assert split["validation_labels"].shape == (16, 48)


def test_the_real_scene_reads(shared_data):
    cube = read_cube(shared_data / "hsi" / "SalinasA_corrected.mat")
    assert cube.shape == (83, 86, 204) and cube.data.dtype == np.int16 and cube.wavelengths is None
    visible = cube.data[:, :, SALINAS_VISIBLE].astype(float).reshape(-1, 31).mean(0)
    assert np.argmax(visible[10:22]) + 10 in (14, 15, 16)  # the green peak of vegetation near 550 nm


def test_mixing_scenes_mix_the_given_spectra_smoothly():
    spectra = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    scenes = mixing_scenes(spectra, 2, 32, seed=3, shading=0.0)
    assert scenes.shape == (2, 32, 32, 3) and scenes.dtype == np.float32
    np.testing.assert_allclose(scenes.sum(-1), 1.0, atol=1e-5)  # abundances sum to one
    assert scenes.min() >= 0
    assert np.abs(np.diff(scenes[0], axis=0)).mean() < 0.2  # smooth, not white noise
    np.testing.assert_array_equal(scenes, mixing_scenes(spectra, 2, 32, seed=3, shading=0.0))
    block = np.random.default_rng(0).random((6, 5, 3))
    labels = np.array([[1] * 5, [2] * 5, [0] * 5, [1] * 5, [2] * 5, [0] * 5])
    assert endmember_spectra(block, labels, extra=4).shape == (3 + 4, 3)


def test_minmax_normalize():
    out = minmax_normalize(np.array([[[2.0, 4.0], [6.0, 10.0]]]))
    assert out.min() == 0 and out.max() == 1 and out.dtype == np.float32
    assert minmax_normalize(np.ones((2, 2, 2))).max() == 0
