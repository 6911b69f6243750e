"""Dice / HD95 / NSD: parity with MONAI's metric classes on real hippocampus labels, and the
empty-mask rules (nnU-Net's Dice convention)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from hybrids.datasets.medical import load_label_volume
from hybrids.evaluation.segmentation import (
    dice_per_class,
    evaluate_case,
    hd95_per_class,
    surface_dice_per_class,
)

LABELS = [1, 2]
CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
# MONAI's own HausdorffDistanceMetric passes an argument it deprecated itself.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")


@pytest.fixture(scope="module")
def references(shared_data):
    return {
        c: load_label_volume(shared_data / "hippocampus" / "labelsTr" / f"{c}.nii.gz").array for c in CASES
    }


def _perturb(ref: np.ndarray, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "erode":
        return np.where(ndimage.binary_erosion(ref > 0), ref, 0)
    if kind == "dilate":
        grown = ndimage.grey_dilation(ref, size=(3, 3, 3))
        return np.where(ref > 0, ref, grown)
    if kind == "shift":
        return np.roll(ref, (1, -2, 1), axis=(0, 1, 2))
    if kind == "noise":  # flip 5 % of the voxels near the structure to random labels
        pred = ref.copy()
        near = ndimage.binary_dilation(ref > 0, iterations=2)
        flip = near & (rng.random(ref.shape) < 0.05)
        pred[flip] = rng.integers(0, 3, flip.sum())
        return pred
    if kind == "swap":  # part of class 1 predicted as class 2
        pred = ref.copy()
        pred[(ref == 1) & (rng.random(ref.shape) < 0.3)] = 2
        return pred
    raise AssertionError(kind)


def _one_hot(labels: np.ndarray, classes: int = 3) -> torch.Tensor:
    return (
        torch.nn.functional.one_hot(torch.from_numpy(labels).long(), classes)
        .permute(3, 0, 1, 2)[None]
        .float()
    )


PERTURBATIONS = ["erode", "dilate", "shift", "noise", "swap"]


@pytest.mark.parametrize("kind", PERTURBATIONS)
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.2, 2.5)])
def test_dice_and_hd95_equal_monai_metric_classes(references, kind, spacing):
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    for seed, (case, ref) in enumerate(references.items()):
        pred = _perturb(ref, kind, seed)
        dice_metric = DiceMetric(include_background=False, reduction="none")
        hd_metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        expected_dice = dice_metric(_one_hot(pred), _one_hot(ref))[0].double().numpy()
        expected_hd = hd_metric(_one_hot(pred), _one_hot(ref), spacing=list(spacing))[0].double().numpy()
        dice = dice_per_class(pred, ref, LABELS)
        hd95 = hd95_per_class(pred, ref, LABELS, spacing)
        for i, c in enumerate(LABELS):
            assert (pred == c).any() and (ref == c).any(), case  # non-empty cases only
            assert abs(dice[c] - expected_dice[i]) <= 1e-6, (case, c, dice[c], expected_dice[i])
            assert abs(hd95[c] - expected_hd[i]) <= 1e-6, (case, c, hd95[c], expected_hd[i])
        assert all(0 < dice[c] < 1 for c in LABELS) and all(hd95[c] > 0 for c in LABELS)


def test_hd95_is_in_millimetres(references):
    ref = references["hippocampus_003"]
    pred = _perturb(ref, "shift", 0)
    unit = hd95_per_class(pred, ref, LABELS, (1.0, 1.0, 1.0))
    double = hd95_per_class(pred, ref, LABELS, (2.0, 2.0, 2.0))
    for c in LABELS:
        assert double[c] == pytest.approx(2 * unit[c], abs=1e-9)
    assert hd95_per_class(ref, ref, LABELS, (1.0, 1.0, 1.0)) == {1: 0.0, 2: 0.0}


def test_empty_rules(references):
    ref = references["hippocampus_001"]
    empty = np.zeros_like(ref)
    spacing = (1.0, 1.0, 1.0)
    # both empty: NaN for every metric
    both = evaluate_case(empty, empty, LABELS, spacing)
    assert all(math.isnan(both[c][m]) for c in LABELS for m in ("dice", "hd95_mm", "nsd"))
    # empty reference, non-empty prediction: Dice 0 (nnU-Net), HD95 inf, NSD 0
    false_positive = evaluate_case(ref, empty, LABELS, spacing)
    for c in LABELS:
        assert false_positive[c]["dice"] == 0.0
        assert false_positive[c]["hd95_mm"] == math.inf
        assert false_positive[c]["nsd"] == 0.0
        assert false_positive[c]["ref_voxels"] == 0 and false_positive[c]["pred_voxels"] > 0
    # non-empty reference, empty prediction: the same
    missed = evaluate_case(empty, ref, LABELS, spacing)
    assert all(missed[c]["dice"] == 0.0 and missed[c]["hd95_mm"] == math.inf for c in LABELS)
    # one class absent from both, the other scored normally
    only_one = np.where(ref == 2, 0, ref)
    mixed = dice_per_class(only_one, only_one, LABELS)
    assert mixed[1] == 1.0 and math.isnan(mixed[2])
    # MONAI's DiceMetric (ignore_empty=True) differs exactly here: NaN for an empty reference
    from monai.metrics import DiceMetric

    monai_fp = DiceMetric(include_background=False, reduction="none")(_one_hot(ref), _one_hot(empty))
    assert torch.isnan(monai_fp).all()


def test_surface_dice_sanity(references):
    ref = references["hippocampus_004"]
    spacing = (1.0, 1.0, 1.0)
    assert surface_dice_per_class(ref, ref, LABELS, spacing, 1.0) == {1: 1.0, 2: 1.0}
    shifted = np.roll(ref, 1, axis=0)  # every surface moves by exactly 1 mm
    within = surface_dice_per_class(shifted, ref, LABELS, spacing, 1.0)
    assert within == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}
    tight = surface_dice_per_class(shifted, ref, LABELS, spacing, 0.5)
    assert all(0.0 < tight[c] < 1.0 for c in LABELS)
    # anisotropic voxels: a 1-voxel shift along a 2 mm axis is outside a 1 mm tolerance
    coarse = surface_dice_per_class(shifted, ref, LABELS, (2.0, 1.0, 1.0), 1.0)
    assert all(coarse[c] < within[c] for c in LABELS)
    noisy = _perturb(ref, "noise", 3)
    values = [surface_dice_per_class(noisy, ref, LABELS, spacing, t) for t in (0.5, 1.0, 2.0, 4.0)]
    for c in LABELS:
        series = [v[c] for v in values]
        assert series == sorted(series) and 0 < series[0] < 1


def test_mismatched_shapes_raise(references):
    ref = references["hippocampus_001"]
    with pytest.raises(ValueError, match="differs from reference shape"):
        dice_per_class(ref[:-1], ref, LABELS)
