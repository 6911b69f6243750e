"""DINO's data: the 2-D slices of unlabeled volumes, loaded once, and random batches of them.

Slices (:func:`load_slices`): every image of an MSD folder's ``imagesTr`` (or of any folder of NIfTI
files, :func:`find_images`) is re-oriented, resampled and z-scored with
:mod:`hybrids.apps.medical.preprocessing` (an MSD folder gets ``hybrids medical train``'s defaults, so
DIAMANT sees the same grid), cut into slices along ``slice_axis`` and fitted to the ViT's square input by
:func:`fit_slice` (``"resize"``: bilinear to ``S x S``, the default; ``"pad"``: centred zero padding) --
the rule DIAMANT applies; it is recorded in the teacher's ``config.json``. Labels are never read.
Constant slices are dropped.

Batches (:class:`DINODataModule`): ``steps_per_epoch`` batches per epoch drawn at random (with
replacement) from the slices in memory; the draws depend on the seed, the process rank and the step, so
a resumed run continues with new ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from hybrids.apps.core.errors import InputError
from hybrids.apps.medical.dino_vit import VIT_INPUTS

__all__ = [
    "DINODataModule",
    "SliceSet",
    "default_dino_preprocessing",
    "find_images",
    "fit_slice",
    "load_slices",
    "preprocess_image",
    "volume_slices",
]


def fit_slice(image: Tensor, size: int, mode: str = "resize") -> Tensor:
    """A slice batch ``(b, C, h, w)`` as the ViT sees it: ``(b, C, size, size)``. ``"resize"``: bilinear
    (``align_corners=False``); ``"pad"``: centred zero padding (top/left get the smaller half; a slice
    larger than ``size`` is resized instead). DIAMANT applies the same rule."""
    if mode not in VIT_INPUTS:
        raise ValueError(f"fit_slice: mode must be one of {VIT_INPUTS}, got {mode!r}")
    h, w = image.shape[-2:]
    if mode == "pad" and h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(image, (left, size - w - left, top, size - h - top))
    return F.interpolate(image.float(), size=(size, size), mode="bilinear", align_corners=False)


def find_images(data: Path) -> tuple[list[tuple[str, tuple[Path, ...]]], Any]:
    """``([(case name, channel files)], MSD dataset or None)`` of ``data``: an MSD / nnU-Net folder
    (its ``imagesTr``) or a folder of NIfTI files (one channel each)."""
    from hybrids.datasets.medical import MedicalImageError, case_name, is_nifti_path
    from hybrids.datasets.msd import MSDError, read_msd_dataset

    data = Path(data)
    if not data.is_dir():
        raise InputError(f"{data}: no such folder (expected an MSD folder or a folder of NIfTI files)")
    if (data / "dataset.json").is_file():
        try:
            dataset = read_msd_dataset(data)
        except (MSDError, MedicalImageError) as exc:
            raise InputError(str(exc)) from None
        return [(c.name, tuple(c.images)) for c in dataset.cases], dataset
    files = sorted(p for p in data.iterdir() if p.is_file() and is_nifti_path(p))
    if not files:
        raise InputError(f"{data}: no NIfTI files and no dataset.json")
    return [(case_name(p), (p,)) for p in files], None


def default_dino_preprocessing(data: Path, images: Sequence[tuple[str, tuple[Path, ...]]], dataset: Any):
    """An MSD folder: ``hybrids medical train``'s choice (median spacing, z-score / CT scheme); a plain
    folder: RAS, the files' own spacing, z-score per volume."""
    from hybrids.apps.medical.preprocessing import Preprocessing

    if dataset is not None:
        from hybrids.apps.medical.training import default_preprocessing

        return default_preprocessing(dataset, dataset.cases)
    return Preprocessing(
        orientation="RAS", spacing=None, normalization="zscore", in_channels=len(images[0][1])
    )


def preprocess_image(files: Sequence[Path], prep: Any) -> Tensor:
    """Load one case's channel files and apply ``prep``: ``(C, X, Y, Z)`` float32."""
    from monai.data import MetaTensor

    from hybrids.apps.medical.preprocessing import normalize_intensity, spatial_transform
    from hybrids.datasets.medical import MedicalImageError, load_volume

    try:
        volumes = [load_volume(p) for p in files]
    except MedicalImageError as exc:
        raise InputError(str(exc)) from None
    for v in volumes[1:]:
        if v.spatial_shape != volumes[0].spatial_shape:
            raise InputError(f"{v.path}: shape {v.spatial_shape} differs from {volumes[0].path.name}'s")
    array = np.stack([v.array for v in volumes]).astype(np.float32)
    image = MetaTensor(torch.from_numpy(array), affine=torch.from_numpy(volumes[0].affine.copy()))
    image = spatial_transform(prep)(image)
    return normalize_intensity(image, prep).as_tensor().float().contiguous()


def volume_slices(volume: Tensor, slice_axis: int, size: int, mode: str) -> Tensor:
    """``(C, X, Y, Z) -> (n, C, size, size)``: every non-constant slice along ``slice_axis``, fitted."""
    slices = volume.movedim(1 + slice_axis, 0)  # (n, C, a, b)
    keep = slices.flatten(1).std(dim=1) > 1e-6
    return fit_slice(slices[keep], size, mode)


def load_slices(
    cases: Sequence[tuple[str, tuple[Path, ...]]], prep: Any, *, slice_axis: int, size: int, mode: str
) -> tuple[Tensor, list[int]]:
    """All fitted slices of ``cases``: ``((n, C, size, size) float32, slices per case)``."""
    parts, counts = [], []
    for _, files in cases:
        s = volume_slices(preprocess_image(files, prep), slice_axis, size, mode)
        parts.append(s)
        counts.append(int(s.shape[0]))
    if not parts or sum(counts) == 0:
        raise InputError("no usable (non-constant) slices in the data")
    return torch.cat(parts), counts


class SliceSet(Dataset):
    """``length`` slices ``(C, S, S)`` drawn at random (with replacement) from ``slices``; the draws come
    from ``seed`` (several ints), so a resumed run continues with new ones."""

    def __init__(self, slices: Tensor, length: int, seed: Sequence[int] = (0,)) -> None:
        self.slices, self.length = slices, int(length)
        self.order = np.random.default_rng(list(seed)).integers(len(slices), size=self.length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        return self.slices[int(self.order[index])]


class DINODataModule(L.LightningDataModule):
    """Preprocessed slices (in memory) and a loader of ``steps_per_epoch`` random batches per epoch."""

    def __init__(self, slices: Tensor, *, batch_size: int, steps_per_epoch: int, seed: int = 0) -> None:
        super().__init__()
        self.slices, self.batch_size, self.seed = slices, batch_size, seed
        self.steps_per_epoch = steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        step = trainer.global_step if trainer is not None else 0
        length = self.batch_size * world * self.steps_per_epoch
        dataset = SliceSet(self.slices, length, (self.seed, rank, step))  # a resumed run: new draws
        return DataLoader(dataset, self.batch_size, drop_last=True)
