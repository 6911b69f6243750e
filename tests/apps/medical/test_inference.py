"""The sliding-window engine (``hybrids.apps.medical.inference``) on small synthetic volumes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybrids.apps.core.errors import InputError
from hybrids.apps.medical.inference import (
    InferenceSettings,
    count_windows,
    default_batch_size,
    predict_probabilities,
    window_size,
)


@pytest.fixture(autouse=True)
def _one_thread(torch_threads):
    """Tiny models run hundreds of small ops: one intra-op thread avoids OpenMP waits on a busy CPU."""
    torch_threads(1)


class PointwiseModel(nn.Module):
    """A 1x1 convolution: each voxel's logits depend on that voxel only (padding and window
    boundaries cannot change them), with a record of the windows it saw."""

    def __init__(self, spatial_dims: int, num_classes: int = 3, size_divisor: int = 8):
        super().__init__()
        self.spatial_dims, self.in_channels, self.num_classes = spatial_dims, 1, num_classes
        self.size_divisor = size_divisor
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.conv = conv(1, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.linspace(-2, 2, num_classes).view(num_classes, 1, *[1] * spatial_dims)
            )
            self.conv.bias.copy_(torch.linspace(1, -1, num_classes))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 2 + self.spatial_dims, x.shape
        assert all(d % self.size_divisor == 0 for d in x.shape[2:]), x.shape
        self.seen.append(x.detach().clone())
        return self.conv(x)


class ConvModel(PointwiseModel):
    """A 3x3(x3) convolution: not mirror-equivariant, so mirroring TTA changes its output."""

    def __init__(self, spatial_dims: int, num_classes: int = 3):
        super().__init__(spatial_dims, num_classes)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        torch.manual_seed(0)
        self.conv = conv(1, num_classes, 3, padding=1)


def direct_softmax(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Softmax of a pointwise model applied to the whole volume at once, (K, X, Y, Z)."""
    weight = model.conv.weight.reshape(-1)
    logits = weight.view(-1, 1, 1, 1) * image + model.conv.bias.view(-1, 1, 1, 1)
    return torch.softmax(logits, dim=0)


# -- settings -----------------------------------------------------------------------------------------
def test_settings_round_trip_and_defaults():
    s2 = InferenceSettings(roi_size=[48, 64])
    assert s2.slice_axis == 2 and s2.spatial_dims == 2 and s2.roi_size == (48, 64)
    assert InferenceSettings.from_dict(s2.to_dict()) == s2
    s3 = InferenceSettings.from_dict({"roi_size": [32, 48, 32], "overlap": 0.25, "mode": "constant"})
    assert s3.slice_axis is None and "slice_axis" not in s3.to_dict()
    assert InferenceSettings.from_dict(s3.to_dict()) == s3
    # the training helper's dict (slice_axis None for 3-D) is accepted
    assert InferenceSettings.from_dict({"roi_size": [8, 8, 8], "slice_axis": None}).slice_axis is None


@pytest.mark.parametrize(
    "bad",
    [
        {"roi_size": [32]},
        {"roi_size": [32, 0]},
        {"roi_size": [32, 32], "overlap": 1.0},
        {"roi_size": [32, 32], "mode": "median"},
        {"roi_size": [32, 32], "slice_axis": 3},
        {"roi_size": [32, 32], "stride": 2},
        {"overlap": 0.5},
    ],
)
def test_settings_reject_bad_values(bad):
    with pytest.raises(InputError, match="inference"):
        InferenceSettings.from_dict(bad)


def test_window_size_rounds_up_and_inserts_slice_axis():
    assert window_size(InferenceSettings(roi_size=(35, 51, 20)), 16) == (48, 64, 32)
    assert window_size(InferenceSettings(roi_size=(40, 50), slice_axis=0), 16) == (1, 48, 64)
    assert default_batch_size(InferenceSettings(roi_size=(256, 256))) == 4
    assert default_batch_size(InferenceSettings(roi_size=(128, 128, 128))) == 1


# -- 3-D ------------------------------------------------------------------------------------------------
def test_3d_probabilities_shape_sum_and_windows():
    torch.manual_seed(0)
    model = PointwiseModel(3)
    image = torch.randn(1, 35, 51, 20)
    settings = InferenceSettings(roi_size=(24, 24, 24), overlap=0.5)
    done = []
    probs = predict_probabilities(model, image, settings, batch_size=3, progress=done.append)
    assert probs.shape == (3, 35, 51, 20) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(0), torch.ones(35, 51, 20), atol=1e-5, rtol=0)
    # blending the same pointwise logits from overlapping windows gives the plain softmax back
    torch.testing.assert_close(probs, direct_softmax(model, image[0]), atol=1e-5, rtol=0)
    assert sum(done) == count_windows(image.shape[1:], settings, model.size_divisor)
    assert all(tuple(w.shape[2:]) == (24, 24, 24) for w in model.seen)
    assert max(w.shape[0] for w in model.seen) == 3


def test_3d_volume_smaller_than_window_is_padded_and_cropped():
    model = PointwiseModel(3)
    image = torch.randn(1, 10, 7, 5)
    probs = predict_probabilities(model, image, {"roi_size": [16, 16, 16]})
    assert probs.shape == (3, 10, 7, 5)
    torch.testing.assert_close(probs, direct_softmax(model, image[0]), atol=1e-5, rtol=0)


# -- 2-D slice-wise ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_2d_model_runs_slice_wise_along_slice_axis(axis):
    model = PointwiseModel(2)
    shape = [12, 17, 9]
    # every slice along ``axis`` is constant (its index): a window cut along another axis would not be
    index = torch.arange(shape[axis], dtype=torch.float32).view(*[-1 if d == axis else 1 for d in range(3)])
    image = (index / shape[axis]).expand(*shape).clone()[None]
    in_plane = [n for d, n in enumerate(shape) if d != axis]
    settings = InferenceSettings(roi_size=[8, 8], slice_axis=axis, overlap=0.5)
    done = []
    probs = predict_probabilities(model, image, settings, batch_size=5, progress=done.append)
    assert probs.shape == (3, *shape)
    torch.testing.assert_close(probs, direct_softmax(model, image[0]), atol=1e-5, rtol=0)
    assert sum(done) == count_windows(shape, settings, model.size_divisor)
    for window in model.seen:
        assert window.ndim == 4 and tuple(window.shape[2:]) == (8, 8)
        flat = window.reshape(window.shape[0], -1)
        assert torch.all(flat.max(1).values == flat.min(1).values)  # one slice per window
    assert in_plane  # (documentation of intent: in-plane dims are the model's H, W)


def test_model_and_settings_dimensions_must_agree():
    with pytest.raises(InputError, match="2-D but the model is 3-D"):
        predict_probabilities(PointwiseModel(3), torch.zeros(1, 8, 8, 8), {"roi_size": [8, 8]})
    with pytest.raises(InputError, match="channel"):
        predict_probabilities(PointwiseModel(3), torch.zeros(2, 8, 8, 8), {"roi_size": [8, 8, 8]})


# -- test-time augmentation --------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
def test_tta_is_deterministic_and_mirrors_every_axis_combination(dims):
    image = torch.randn(1, 16, 20, 12, generator=torch.Generator().manual_seed(1))
    roi = [16, 16] if dims == 2 else [16, 16, 16]
    model = ConvModel(dims)
    plain = predict_probabilities(model, image, {"roi_size": roi})
    windows = len(model.seen)
    model.seen.clear()
    tta = predict_probabilities(model, image, {"roi_size": roi}, tta=True)
    assert len(model.seen) == windows * (4 if dims == 2 else 8)
    assert tta.shape == plain.shape
    torch.testing.assert_close(tta.sum(0), torch.ones(tta.shape[1:]), atol=1e-5, rtol=0)
    assert not torch.allclose(tta, plain, atol=1e-4)  # the mirrored passes count
    again = predict_probabilities(model, image, {"roi_size": roi}, tta=True)
    assert torch.equal(tta, again)
    # a mirror-equivariant (pointwise) model gives the same result with and without TTA
    point = PointwiseModel(dims)
    torch.testing.assert_close(
        predict_probabilities(point, image, {"roi_size": roi}, tta=True),
        predict_probabilities(point, image, {"roi_size": roi}),
        atol=1e-5,
        rtol=0,
    )


def test_model_mode_is_restored():
    model = PointwiseModel(3).train()
    predict_probabilities(model, torch.zeros(1, 8, 8, 8), {"roi_size": [8, 8, 8]})
    assert model.training
