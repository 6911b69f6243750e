"""``hybrids hsi denoise``: the real scene, every format, tiles, and bad inputs (exit 2, nothing written)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from hybrids.apps.cli import main
from hybrids.apps.hsi.denoise import tiled_apply
from hybrids.datasets.hsi import SALINAS_VISIBLE, read_cube


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny HSDT model folder (31 bands, random weights): fast, for format and flag tests."""
    from hybrids.apps.core.checkpoint import save_checkpoint
    from hybrids.apps.core.registry import create_model

    folder = tmp_path_factory.mktemp("tiny") / "model"
    save_checkpoint(create_model("hsi/hsdt_s", preset="tiny"), folder)
    return folder


@pytest.fixture
def visible(shared_data) -> np.ndarray:
    cube = read_cube(shared_data / "hsi" / "SalinasA_corrected.mat")
    return cube.data[:, :, SALINAS_VISIBLE]


def _psnr(clean: np.ndarray, estimate: np.ndarray) -> float:
    span = clean.max() - clean.min()
    return float(10 * np.log10(span**2 / np.mean((clean - estimate) ** 2)))


def test_builtin_model_denoises_the_real_scene(visible, tmp_path, capsys):
    clean = visible[:64, :64].astype(np.float32)  # one 64-pixel tile of the scene's 31 visible bands
    rng = np.random.default_rng(0)
    noisy = clean + rng.normal(0, 30 / 255 * (clean.max() - clean.min()), clean.shape).astype(np.float32)
    np.save(tmp_path / "noisy.npy", noisy)
    assert (
        main(["hsi", "denoise", str(tmp_path / "noisy.npy"), "-o", str(tmp_path / "out"), "--threads", "1"])
        == 0
    )
    out = np.load(tmp_path / "out" / "noisy.npy")
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert _psnr(clean, out) > _psnr(clean, noisy) + 8  # sigma 30: about 18.6 dB in, well over 26 out
    assert "noisy.npy ->" in capsys.readouterr().out


def test_the_204_band_scene_needs_flex(shared_data, tmp_path, tiny_model, capsys):
    scene = shared_data / "hsi" / "SalinasA_corrected.mat"
    assert main(["hsi", "denoise", str(scene), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(scene) in err and "204 bands" in err and "--flex" in err
    assert not (tmp_path / "out").exists()
    # --flex on all 204 bands of a 20 x 24 corner of the scene (the whole scene takes ~15 s here).
    corner = scipy.io.loadmat(scene)["salinasA_corrected"][:20, :24]
    scipy.io.savemat(tmp_path / "corner.mat", {"salinasA_corrected": corner})
    corner_path, out = tmp_path / "corner.mat", tmp_path / "out"
    assert main(["hsi", "denoise", str(corner_path), "-o", str(out), "-m", str(tiny_model), "--flex"]) == 0
    written = scipy.io.loadmat(tmp_path / "out" / "corner.mat")
    assert written["salinasA_corrected"].shape == (20, 24, 204)
    assert written["salinasA_corrected"].dtype == np.int16
    assert not np.array_equal(written["salinasA_corrected"], corner)  # it was denoised, not copied


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("flat.npy", lambda p: np.save(p, np.zeros((8, 8), np.float32)), "3-D"),
        ("nan.npy", lambda p: np.save(p, np.full((8, 8, 31), np.nan, np.float32)), "NaN"),
        ("cut.npy", lambda p: p.write_bytes(_npy_bytes()[:-500]), "cannot read"),
        ("cut.mat", lambda p: p.write_bytes(_mat_bytes()[:200]), "cannot read"),
        ("cube.txt", lambda p: p.write_text("1 2 3\n"), "unknown format"),
        ("wide.npy", lambda p: np.save(p, np.zeros((8, 8, 12), np.float32)), "12 bands"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, tiny_model, capsys, name, make, message):
    bad = tmp_path / name
    make(bad)
    good = tmp_path / "good.npy"
    np.save(good, np.random.default_rng(0).random((8, 8, 31)).astype(np.float32))
    out = tmp_path / "out"
    assert main(["hsi", "denoise", str(good), str(bad), "-o", str(out), "-m", str(tiny_model)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hybrids: error: ") and "\n" not in err
    assert str(bad) in err and message in err
    assert not out.exists()  # not even the good cube: every input is checked first


def _npy_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((8, 8, 31), np.float32))
    return buffer.getvalue()


def _mat_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"c": np.random.default_rng(0).random((8, 8, 31))})
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["envi", "tif", "mat73", "npy_bands_first"])
def test_every_format_is_written_back_in_its_own_layout(tmp_path, tiny_model, fmt):
    from hybrids.datasets.hsi import HSICube, write_cube

    rng = np.random.default_rng(1)
    data = rng.integers(0, 4000, (20, 12, 31)).astype(np.uint16)
    wl = np.linspace(400, 700, 31)
    suffix = {"envi": ".hdr", "tif": ".tif", "mat73": ".mat", "npy_bands_first": ".npy"}[fmt]
    kind = {"npy_bands_first": "npy"}.get(fmt, fmt)
    wavelengths = None if kind == "npy" else wl
    like = HSICube(data, tmp_path / f"in{suffix}", kind, wavelengths, kind in ("npy", "tif"),
                   "img", {"matlab_class": "uint16", "interleave": "bil"})  # fmt: skip
    source = write_cube(tmp_path / f"in{suffix}", data, like=like)
    argv = ["hsi", "denoise", str(source), "-o", str(tmp_path / "out"), "-m", str(tiny_model)]
    assert main([*argv, *(["--bands-first"] if fmt == "npy_bands_first" else [])]) == 0
    written = tmp_path / "out" / source.name
    back = read_cube(written, bands_first=fmt == "npy_bands_first")
    assert back.format == read_cube(source, bands_first=fmt == "npy_bands_first").format
    assert back.shape == data.shape and back.data.dtype == np.uint16
    if kind != "npy":
        np.testing.assert_allclose(back.wavelengths, wl)
    if fmt == "npy_bands_first":
        assert np.load(written).shape == (31, 20, 12)


def test_single_output_file_keeps_the_format(tmp_path, tiny_model, capsys):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((8, 8, 31)).astype(np.float32))
    base = ["hsi", "denoise", str(tmp_path / "a.npy"), "-m", str(tiny_model), "-o"]
    assert main([*base, str(tmp_path / "clean.npy")]) == 0 and (tmp_path / "clean.npy").is_file()
    assert main([*base, str(tmp_path / "clean.mat")]) == 2
    assert "keeps the input's format" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "a.npy")]) == 2  # never over the input


def test_tiles_cover_the_cube_with_bounded_pieces():
    cube = np.random.default_rng(0).random((3, 150, 70)).astype(np.float32)
    seen = []

    def double(patch):
        seen.append(patch.shape)
        return patch * 2

    out = tiled_apply(double, cube, tile=64, overlap=16, divisor=4, progress=False)
    np.testing.assert_allclose(out, cube * 2, rtol=1e-6)
    assert max(s[1] for s in seen) <= 64 and max(s[2] for s in seen) <= 64 and len(seen) == 3 * 2
    small = tiled_apply(lambda p: p, cube[:, :10, :7], tile=64, overlap=16, divisor=4, progress=False)
    np.testing.assert_allclose(small, cube[:, :10, :7])  # padded to 12 x 8 and cropped back


def test_sigma_and_blind_exclude_each_other(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((16, 16, 6)).astype(np.float32))
    base = ["hsi", "denoise", str(tmp_path / "a.npy"), "-o", str(tmp_path / "out"), "-m", "bm4d"]
    assert main([*base, "--sigma", "30", "--blind"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main([*base, "--sigma", "-1"]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_512_square_cube_stays_under_2_gb(tmp_path):
    """The built-in HSDT-S on 512 x 512 x 31 (64-pixel tiles): peak resident memory of the process."""
    np.save(tmp_path / "big.npy", np.random.default_rng(0).random((512, 512, 31)).astype(np.float32))
    code = (
        "import resource, sys; from hybrids.apps.cli import main; "
        f"rc = main(['hsi', 'denoise', r'{tmp_path / 'big.npy'}', '-o', r'{tmp_path / 'out'}', "
        "'--threads', '1']); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) * 1024 < 2 * 1024**3
