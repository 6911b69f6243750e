"""The Lightning side of ``hybrids medical train``: preprocessing cache, patch sampling,
augmentations, the losses, the ``SegmentationModule`` and the ``MedicalDataModule``. The run itself is
``hybrids.apps.medical.train.train`` (its docstring gives the recipe) on the shared training core.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.lightning_hooks import TrainingClock
from hybrids.apps.medical.preprocessing import Preprocessing, normalize_intensity, spatial_transforms_dict
from hybrids.datasets.medical import MedicalImageError, load_label_volume, load_volume, read_nifti_geometry
from hybrids.datasets.msd import (
    MSDCase,
    MSDDataset,
)

logger = logging.getLogger("hybrids.medical.train")


# -- preprocessing, once per case ------------------------------------------------------------------
@dataclass
class CaseData:
    """One preprocessed case in the model's grid: ``image`` ``(C, X, Y, Z)`` float32, ``label``
    ``(X, Y, Z)`` uint8, and ``classes``: for each foreground class present, the flat indices of
    its voxels (int32), for foreground oversampling."""

    name: str
    image: torch.Tensor
    label: torch.Tensor
    classes: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.label.shape)


def default_preprocessing(dataset: MSDDataset, cases: Sequence[MSDCase], spacing=None) -> Preprocessing:
    """nnU-Net's choices: RAS, the median voxel spacing of ``cases`` along each RAS axis (or
    ``spacing``), z-score per volume for MRI and other modalities, the CT scheme (foreground
    0.5-99.5 percentile clip, dataset mean and std) when the first channel is CT."""
    if spacing is None:
        import nibabel as nib

        spacings = []
        for case in cases:
            try:
                _, affine = read_nifti_geometry(case.images[0])
            except MedicalImageError as exc:
                raise InputError(str(exc)) from None
            voxel = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
            ras = np.empty(3)
            ras[nib.orientations.io_orientation(affine)[:, 0].astype(int)] = voxel  # file axis -> RAS axis
            spacings.append(ras)
        spacing = tuple(round(float(s), 4) for s in np.median(np.asarray(spacings), axis=0))
    modality = dataset.modalities.get(0, "").upper()
    channels = len(cases[0].images) if cases else 1
    if modality == "CT":
        return _ct_preprocessing(cases, tuple(spacing), channels)
    return Preprocessing(
        orientation="RAS", spacing=tuple(spacing), normalization="zscore", in_channels=channels
    )


def _ct_preprocessing(cases: Sequence[MSDCase], spacing: tuple, channels: int) -> Preprocessing:
    rng = np.random.default_rng(0)
    samples = []
    for case in cases:
        image, label = _load(case.images[0], image=True).array, _load(case.label, image=False).array
        values = image[label > 0]
        if values.size:
            samples.append(rng.choice(values, size=min(values.size, 10000), replace=False))
    values = np.concatenate(samples) if samples else np.zeros(1, np.float32)
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    return Preprocessing(
        orientation="RAS",
        spacing=spacing,
        normalization="ct",
        intensity_range=(float(low), float(high)),
        intensity_mean=float(clipped.mean()),
        intensity_std=float(max(clipped.std(), 1e-6)),
        in_channels=channels,
    )


def _load(path: Path, *, image: bool):
    try:
        return load_volume(path) if image else load_label_volume(path)
    except MedicalImageError as exc:
        raise InputError(str(exc)) from None


def preprocess_case(case: MSDCase, prep: Preprocessing) -> CaseData:
    """Load, re-orient, resample and normalise one case (the transforms inference applies)."""
    from monai.data import MetaTensor
    from monai.transforms import Compose

    volumes = [_load(path, image=True) for path in case.images]
    label = _load(case.label, image=False)
    for volume in volumes[1:] + [label]:
        if volume.spatial_shape != volumes[0].spatial_shape:
            raise InputError(
                f"{volume.path}: shape {volume.spatial_shape} differs from {volumes[0].path.name}'s "
                f"{volumes[0].spatial_shape}"
            )
    affine = torch.from_numpy(volumes[0].affine.copy())
    image = MetaTensor(
        torch.from_numpy(np.stack([v.array for v in volumes]).astype(np.float32)), affine=affine
    )
    target = MetaTensor(torch.from_numpy(label.array.astype(np.float32))[None], affine=affine.clone())
    spatial = Compose(spatial_transforms_dict(prep, ("image", "label"), ("bilinear", "nearest")))
    out = spatial({"image": image, "label": target})
    image = normalize_intensity(out["image"], prep).as_tensor().contiguous()
    labels = out["label"].as_tensor()[0].round().to(torch.uint8).contiguous()
    flat = labels.reshape(-1).numpy()
    classes = {int(c): np.flatnonzero(flat == c).astype(np.int64) for c in np.unique(flat) if c > 0}
    return CaseData(case.name, image, labels, classes)


# -- patch sampling ---------------------------------------------------------------------------------
def sample_patch(
    case: CaseData, patch: Sequence[int], rng: np.random.Generator, *, force_fg: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``patch``-sized crop ``(C, *patch)``, ``(*patch)`` of a case (3 sizes; a 2-D slice is a
    patch of size 1 along its axis). ``force_fg``: centred (up to the volume's bounds) on a voxel of
    a random foreground class present in the case (nnU-Net's oversampling); otherwise uniform.
    Axes shorter than the patch are padded (image 0 = the normalised mean, label 0)."""
    shape = case.shape
    centre = None
    if force_fg and case.classes:
        voxels = case.classes[list(case.classes)[rng.integers(len(case.classes))]]
        centre = np.unravel_index(int(voxels[rng.integers(len(voxels))]), shape)
    starts = []
    for axis, (size, p) in enumerate(zip(shape, patch)):
        low, high = min(0, size - p), max(0, size - p)  # start range; negative = padding before
        if centre is not None:
            start = int(np.clip(centre[axis] - p // 2, low, high))
        elif low < 0:  # the patch covers the axis: random placement of the volume in it
            start = int(rng.integers(low, 1))
        else:
            start = int(rng.integers(low, high + 1))
        starts.append(start)
    src = tuple(slice(max(s, 0), min(s + p, n)) for s, p, n in zip(starts, patch, shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, starts))
    image = case.image.new_zeros((case.image.shape[0], *patch))
    label = case.label.new_zeros(tuple(patch))
    image[(slice(None), *dst)] = case.image[(slice(None), *src)]
    label[dst] = case.label[src]
    return image, label


def make_augmentation(spatial_dims: int):
    """nnU-Net-like augmentations with MONAI dictionary transforms on ``{"image": (C, *patch),
    "label": (1, *patch)}``: rotation (3-D: +-30 degrees about each axis, 2-D: +-180) and scaling
    (0.7-1.4) each with probability 0.2, Gaussian noise (0.1), intensity scale (0.75-1.25, 0.15),
    gamma (0.7-1.5, 0.3) and a flip on every axis (0.5 each)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
    )

    rotate = (math.pi,) if spatial_dims == 2 else (math.pi / 6,) * 3
    keys = ["image", "label"]
    return Compose(
        [
            RandAffined(
                keys, prob=0.2, rotate_range=rotate, mode=("bilinear", "nearest"), padding_mode="zeros"
            ),
            RandAffined(
                keys,
                prob=0.2,
                scale_range=(0.3,) * spatial_dims,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandGaussianNoised("image", prob=0.1, std=0.1),
            RandScaleIntensityd("image", prob=0.15, factors=0.25),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
            *[RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)],
        ]
    )


class PatchDataset(Dataset):
    """``length`` random training patches: ``{"image": (C, *patch), "label": (1, *patch) int64}``
    (2-D: slices along ``slice_axis``). Draws come from ``self.rng`` (see ``reseed``), so the index
    does not matter; a fraction ``oversample_fg`` of the patches is forced to hold foreground."""

    def __init__(
        self,
        cases: Sequence[CaseData],
        patch: Sequence[int],
        *,
        spatial_dims: int,
        length: int,
        slice_axis: int = 2,
        oversample_fg: float = 1 / 3,
        augment: bool = True,
        seed: int | Sequence[int] = 0,
    ):
        self.cases = list(cases)
        self.spatial_dims, self.slice_axis = spatial_dims, slice_axis
        self.patch = tuple(int(p) for p in patch)
        if spatial_dims == 2:
            full = list(self.patch)
            full.insert(slice_axis, 1)
            self.patch3 = tuple(full)
        else:
            self.patch3 = self.patch
        self.length, self.oversample_fg = int(length), float(oversample_fg)
        self.augmentation = make_augmentation(spatial_dims) if augment else None
        self.seed_parts = (int(seed),) if isinstance(seed, int) else tuple(int(s) for s in seed)
        self.reseed(*self.seed_parts)

    def reseed(self, *seed: int) -> None:
        """Restart the draws from ``seed`` (several ints: e.g. seed, rank, step, worker)."""
        self.rng = np.random.default_rng(list(seed))
        if self.augmentation is not None:
            self.augmentation.set_random_state(seed=int(self.rng.integers(2**31)))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from monai.data import get_track_meta, set_track_meta

        case = self.cases[self.rng.integers(len(self.cases))]
        force = self.rng.random() < self.oversample_fg
        image, label = sample_patch(case, self.patch3, self.rng, force_fg=force)
        if self.spatial_dims == 2:
            image, label = image.squeeze(1 + self.slice_axis), label.squeeze(self.slice_axis)
        item = {"image": image, "label": label[None].float()}
        if self.augmentation is not None:
            tracking = get_track_meta()
            set_track_meta(False)
            try:
                item = self.augmentation(item)
            finally:
                set_track_meta(tracking)
        return {
            "image": torch.as_tensor(item["image"]).float(),
            "label": torch.as_tensor(item["label"]).long(),
        }


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset
    dataset.reseed(*dataset.seed_parts, 1000 + worker_id)


class CaseIndexDataset(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class MedicalDataModule(L.LightningDataModule):
    """Preprocessed training and validation cases (in memory) and their loaders."""

    def __init__(
        self,
        train_cases: Sequence[CaseData],
        valid_cases: Sequence[CaseData],
        *,
        patch: Sequence[int],
        spatial_dims: int,
        batch_size: int,
        steps_per_epoch: int,
        slice_axis: int = 2,
        oversample_fg: float = 1 / 3,
        augment: bool = True,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.train_cases, self.valid_cases = list(train_cases), list(valid_cases)
        self.patch, self.spatial_dims, self.slice_axis = tuple(patch), spatial_dims, slice_axis
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.oversample_fg, self.augment = oversample_fg, augment
        self.num_workers, self.seed = num_workers, seed

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        step = trainer.global_step if trainer is not None else 0
        dataset = PatchDataset(
            self.train_cases,
            self.patch,
            spatial_dims=self.spatial_dims,
            length=self.batch_size * world * self.steps_per_epoch,
            slice_axis=self.slice_axis,
            oversample_fg=self.oversample_fg,
            augment=self.augment,
            seed=(self.seed, rank, step),  # each process its own draws; a resumed run new ones
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(CaseIndexDataset(len(self.valid_cases)), batch_size=1)


# -- inference on a whole case ------------------------------------------------------------------------
def inference_settings(spatial_dims: int, roi: Sequence[int], slice_axis: int = 2) -> dict[str, Any]:
    """The ``"inference"`` entry of a model folder (``InferenceSettings`` of the inference engine)."""
    settings = {"roi_size": [int(r) for r in roi], "overlap": 0.5, "mode": "gaussian"}
    if spatial_dims == 2:
        settings["slice_axis"] = int(slice_axis)
    from hybrids.apps.medical.inference import InferenceSettings

    return InferenceSettings.from_dict(settings).to_dict()


@torch.no_grad()
def predict_case(
    model: nn.Module, image: torch.Tensor, settings: dict[str, Any], *, batch_size: int | None = None
) -> torch.Tensor:
    """Softmax ``(num_classes, X, Y, Z)`` of a preprocessed image ``(C, X, Y, Z)`` (whole volume),
    by the shared engine ``hybrids.apps.medical.inference`` (the one ``segment`` uses)."""
    from hybrids.apps.medical.inference import predict_probabilities

    return predict_probabilities(model, image, settings, batch_size=batch_size)


# -- losses ------------------------------------------------------------------------------------------------
def make_loss(name: str) -> nn.Module:
    """``dice_ce`` (nnU-Net's: soft Dice over the batch on the foreground classes + cross-entropy
    over all classes), ``dice`` or ``ce``; each takes logits ``(B, K, *spatial)`` and labels
    ``(B, 1, *spatial)``."""
    from monai.losses import DiceCELoss, DiceLoss

    if name == "dice_ce":
        return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    if name == "dice":
        return DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    if name == "ce":
        return _CrossEntropy()
    raise InputError(f"unknown segmentation loss {name!r} (dice_ce, dice or ce)")


class _CrossEntropy(nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, labels[:, 0].long())


# -- the Lightning module -------------------------------------------------------------------------------
class SegmentationModule(TrainingClock, L.LightningModule):
    """Wraps a segmentation model (``self.model``, a plain ``nn.Module``) for training."""

    def __init__(
        self,
        model: nn.Module,
        *,
        valid_cases: Sequence[CaseData] = (),
        inference: dict[str, Any] | None = None,
        label_names: dict[int, str] | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        warmup_steps: int = 50,
        total_steps: int = 1000,
        max_seconds: float | None = None,
        loss: str = "dice_ce",
    ):
        super().__init__()
        self.model = model
        self.valid_cases = list(valid_cases)
        self.inference = dict(inference or {})
        self.label_names = dict(label_names or {c: f"label {c}" for c in range(1, model.num_classes)})
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.warmup_steps, self.total_steps, self.max_seconds = warmup_steps, total_steps, max_seconds
        self.loss = make_loss(loss)
        self.train_seconds = 0.0  # training time of earlier runs (restored on --resume)
        self._start: float | None = None
        self._losses: list[float] = []
        self._rows: list[torch.Tensor] = []

    # training ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def lr_factor(self) -> float:
        """Linear warm-up, then nnU-Net's polynomial decay ``(1 - progress) ** 0.9``; progress is
        the larger of steps done / total steps and time spent / ``max_seconds``."""
        step = self.global_step
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = step / max(1, self.total_steps)
        if self.max_seconds:
            progress = max(progress, self.elapsed() / self.max_seconds)
        return max(1e-3, (1.0 - min(progress, 1.0)) ** 0.9)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        factor = self.lr_factor()
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = self.lr * factor

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["image"])
        loss = self.loss(logits, batch["label"])
        self._losses.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_train_epoch_start(self) -> None:
        self._losses = []

    def epoch_loss(self) -> float:
        """Mean training loss of the current epoch so far (this process)."""
        return float(np.mean(self._losses)) if self._losses else math.nan

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(
                self.model.parameters(),
                lr=self.lr,
                momentum=0.99,
                nesterov=True,
                weight_decay=self.weight_decay,
            )
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # validation ---------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._rows = []

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        from hybrids.evaluation.segmentation import dice_per_class

        index = int(batch.reshape(-1)[0])
        case = self.valid_cases[index]
        probabilities = predict_case(self.model, case.image, self.inference)
        prediction = probabilities.argmax(0).to(torch.uint8).numpy()
        labels = list(range(1, self.model.num_classes))
        dice = dice_per_class(prediction, case.label.numpy(), labels)
        self._rows.append(torch.tensor([index, *(dice[c] for c in labels)], dtype=torch.float64))

    def validation_scores(self) -> dict[str, Any] | None:
        """Per-class Dice (mean over validation cases, NaN-skipping) and their mean, gathered
        from every process; ``None`` before any validation step ran."""
        width = self.model.num_classes
        rows = torch.stack(self._rows) if self._rows else torch.zeros((0, width), dtype=torch.float64)
        if self.trainer is not None and self.trainer.world_size > 1:
            rows = self.all_gather(rows.to(self.device)).reshape(-1, width).cpu()
        if rows.shape[0] == 0:
            return None
        unique: dict[int, torch.Tensor] = {}
        for row in rows:  # distributed samplers repeat cases to even out the processes
            unique[int(row[0])] = row[1:]
        table = torch.stack(list(unique.values())).numpy()
        per_class = {}
        for i, c in enumerate(range(1, width)):
            values = table[:, i][~np.isnan(table[:, i])]
            per_class[self.label_names.get(c, f"label {c}")] = (
                float(values.mean()) if values.size else math.nan
            )
        finite = [v for v in per_class.values() if not math.isnan(v)]
        return {
            "dice": per_class,
            "mean_dice": float(np.mean(finite)) if finite else math.nan,
            "cases": len(unique),
        }


# -- building the model -----------------------------------------------------------------------------
def build_model(name: str, preset: str | None, *, in_channels: int, num_classes: int) -> nn.Module:
    """``create_model`` of a medical model with the dataset's channels and classes."""
    import dataclasses

    from hybrids.apps.core.registry import create_model, get_model_entry

    name = name if "/" in name else f"medical/{name}"
    entry = get_model_entry(name)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    overrides = {}
    for key, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if key in fields:
            overrides[key] = value
    model = create_model(name, preset=preset, **overrides)
    for attribute in ("spatial_dims", "in_channels", "num_classes"):
        if not hasattr(model, attribute):
            raise InputError(f"{name}: not a segmentation model (no '{attribute}' attribute)")
    if model.num_classes != num_classes or model.in_channels != in_channels:
        raise InputError(
            f"{name}: model has {model.in_channels} channels / {model.num_classes} classes, the data "
            f"{in_channels} / {num_classes}"
        )
    return model.train()


def _round_up(value: int, divisor: int) -> int:
    return int(math.ceil(value / divisor) * divisor)


def default_patch(
    shapes: Sequence[Sequence[int]], spatial_dims: int, divisor: int, slice_axis: int = 2
) -> tuple:
    """The largest extent of the cases along each axis (capped at 128 voxels), rounded up to the
    model's size divisor; 2-D: the in-plane axes."""
    largest = [min(128, int(max(s[a] for s in shapes))) for a in range(3)]
    if spatial_dims == 2:
        largest = [n for a, n in enumerate(largest) if a != slice_axis]
    return tuple(_round_up(n, divisor) for n in largest)
