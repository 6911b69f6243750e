"""Preprocessing recorded with medical models: round trip, validation, MONAI spatial transforms and
their inverse, intensity normalisation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from hybrids.apps.core.errors import InputError
from hybrids.apps.medical.preprocessing import (
    Preprocessing,
    normalize_intensity,
    spatial_transform,
    spatial_transforms_dict,
)
from hybrids.datasets.medical import load_volume


def test_round_trip_and_json_types():
    prep = Preprocessing(orientation="ras", spacing=(1, 1.5, 2), clip_percentiles=(0.5, 99.5))
    data = prep.to_dict()
    assert data["orientation"] == "RAS" and data["spacing"] == [1.0, 1.5, 2.0]
    assert Preprocessing.from_dict(data) == prep


@pytest.mark.parametrize(
    "fields",
    [
        {"orientation": "RAX"},
        {"orientation": "RRS"},
        {"spacing": (1.0, 0.0, 1.0)},
        {"spacing": (1.0, 1.0)},
        {"normalization": "minmax"},
        {"clip_percentiles": (99.0, 1.0)},
        {"normalization": "ct", "intensity_range": (-100, 200)},
        {"in_channels": 0},
    ],
)
def test_bad_fields_raise(fields):
    with pytest.raises(InputError, match="preprocessing"):
        Preprocessing(**fields)


def test_unknown_key_is_named():
    with pytest.raises(InputError, match="voxel_size"):
        Preprocessing.from_dict({"voxel_size": [1, 1, 1]})


def _lps_volume(tmp_path, shape=(10, 12, 8), spacing=(1.5, 1.5, 2.0)):
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (20.0, 30.0, -5.0)
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    path = tmp_path / "lps.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return load_volume(path)


def test_orientation_and_spacing_then_inverse(tmp_path):
    volume = _lps_volume(tmp_path)
    assert volume.orientation == "LPS"
    prep = Preprocessing(orientation="RAS", spacing=(0.75, 0.75, 1.0))
    transform = spatial_transform(prep, mode="nearest")
    out = transform(volume.to_metatensor())
    assert "".join(nib.aff2axcodes(out.affine.numpy())) == "RAS"
    np.testing.assert_allclose(np.sqrt((out.affine.numpy()[:3, :3] ** 2).sum(0)), (0.75, 0.75, 1.0))
    assert tuple(out.shape[1:]) == (19, 23, 15)  # (n - 1) * old / new + 1 voxels per axis
    back = transform.inverse(out)
    assert tuple(back.shape[1:]) == volume.spatial_shape
    np.testing.assert_allclose(back.affine.numpy(), volume.affine, atol=1e-6)
    np.testing.assert_array_equal(back[0].numpy(), volume.array)  # nearest: every voxel comes back


def test_dict_transforms_keep_image_and_label_aligned(tmp_path):
    volume = _lps_volume(tmp_path)
    prep = Preprocessing(spacing=(1.0, 1.0, 1.0))
    labels = volume.to_metatensor().clone()
    from monai.transforms import Compose

    out = Compose(spatial_transforms_dict(prep, ("image", "label"), ("nearest", "nearest")))(
        {"image": volume.to_metatensor(), "label": labels}
    )
    assert out["image"].shape == out["label"].shape
    torch.testing.assert_close(out["image"].as_tensor(), out["label"].as_tensor())


def test_zscore_and_nonzero_and_constant():
    image = torch.zeros(2, 4, 4, 4)
    image[0] = torch.arange(64.0).reshape(4, 4, 4)
    image[1, 1:3, 1:3, 1:3] = torch.tensor([1.0, 3.0]).repeat(4)[:8].reshape(2, 2, 2)
    z = normalize_intensity(image, Preprocessing(normalization="zscore"))
    assert abs(float(z[0].mean())) < 1e-6 and abs(float(z[0].std(unbiased=False)) - 1) < 1e-5
    assert torch.isfinite(z).all()
    nz = normalize_intensity(image, Preprocessing(normalization="zscore_nonzero"))
    inside = image[1] != 0
    assert (nz[1][~inside] == 0).all()
    assert abs(float(nz[1][inside].mean())) < 1e-6
    constant = normalize_intensity(torch.full((1, 3, 3, 3), 7.0), Preprocessing())
    assert (constant == 0).all()


def test_percentile_clip_tames_outliers():
    image = torch.randn(1, 20, 20, 20, generator=torch.Generator().manual_seed(0))
    image[0, 0, 0, 0] = 1e6
    clipped = normalize_intensity(image, Preprocessing(clip_percentiles=(0.5, 99.5)))
    plain = normalize_intensity(image, Preprocessing())
    assert float(clipped.abs().max()) < 5 < float(plain.abs().max())


def test_ct_window():
    prep = Preprocessing(
        normalization="ct", intensity_range=(-100, 300), intensity_mean=100.0, intensity_std=50
    )
    image = torch.tensor([[-1000.0, 100.0, 2000.0]])
    np.testing.assert_allclose(normalize_intensity(image, prep).numpy(), [[-4.0, 0.0, 4.0]])
