"""The preprocessing a segmentation model expects, recorded with its weights and applied the same way
in training and inference (one concept, one place).

A model folder's ``config.json`` carries it under ``"preprocessing"`` (see
``hybrids.apps.core.checkpoint``)::

    prep = Preprocessing(orientation="RAS", spacing=(1.0, 1.0, 1.0), normalization="zscore")
    spatial = spatial_transform(prep)            # MONAI Orientation + Spacing, invertible
    image = spatial(volume.to_metatensor())      # (1, X', Y', Z') in the model's grid
    image = normalize_intensity(image, prep)     # float32, same shape

Intensity normalisation follows nnU-Net's conventions: ``"zscore"`` (per volume, MRI),
``"zscore_nonzero"`` (statistics over non-zero voxels only, background stays 0; skull-stripped
MRI), ``"ct"`` (clip to ``intensity_range``, then ``(x - mean) / std`` with dataset-wide statistics
``intensity_mean`` / ``intensity_std``), ``"none"``. ``clip_percentiles`` (per volume, e.g.
``(0.5, 99.5)``) is applied before a z-score to tame MRI outliers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hybrids.apps.core.errors import InputError

if TYPE_CHECKING:
    from torch import Tensor

NORMALIZATIONS = ("zscore", "zscore_nonzero", "ct", "none")
# World axes of our MetaTensors (``Volume.to_metatensor``): RAS+, as NIfTI.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_AXES = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input volume.

    ``orientation``: axis codes the volume is re-oriented to (MONAI ``Orientation``, e.g. ``"RAS"``);
    ``spacing``: voxel size in mm it is resampled to (``None``: keep the input's);
    ``normalization``: one of ``NORMALIZATIONS``; ``clip_percentiles``: per-volume percentile clip
    before z-scoring; ``intensity_range`` / ``intensity_mean`` / ``intensity_std``: the ``"ct"`` scheme's
    dataset-wide values; ``in_channels``: number of image channels (modalities).
    """

    orientation: str = "RAS"
    spacing: tuple[float, float, float] | None = None
    normalization: str = "zscore"
    clip_percentiles: tuple[float, float] | None = None
    intensity_range: tuple[float, float] | None = None
    intensity_mean: float | None = None
    intensity_std: float | None = None
    in_channels: int = 1

    def __post_init__(self) -> None:
        codes = self.orientation.upper()
        if len(codes) != 3 or {_AXES.get(c, c) for c in codes} | set(codes) != set("LRAPSI"):
            raise InputError(
                f"preprocessing: orientation must be 3 axis codes such as 'RAS', got {self.orientation!r}"
            )
        object.__setattr__(self, "orientation", codes)
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if len(spacing) != 3 or any(not s > 0 for s in spacing):
                raise InputError(f"preprocessing: spacing must be 3 positive mm values, got {self.spacing!r}")
            object.__setattr__(self, "spacing", spacing)
        if self.normalization not in NORMALIZATIONS:
            raise InputError(
                f"preprocessing: normalization must be one of {', '.join(NORMALIZATIONS)}, "
                f"got {self.normalization!r}"
            )
        if self.clip_percentiles is not None:
            low, high = (float(p) for p in self.clip_percentiles)
            if not 0.0 <= low < high <= 100.0:
                raise InputError(
                    "preprocessing: clip_percentiles must be 0 <= low < high <= 100, "
                    f"got {self.clip_percentiles!r}"
                )
            object.__setattr__(self, "clip_percentiles", (low, high))
        if self.normalization == "ct":
            stats = (self.intensity_range, self.intensity_mean)
            if any(v is None for v in stats) or not (self.intensity_std or 0) > 0:
                raise InputError(
                    "preprocessing: 'ct' normalization needs intensity_range, intensity_mean "
                    "and intensity_std > 0"
                )
            object.__setattr__(self, "intensity_range", tuple(float(v) for v in self.intensity_range))
        if int(self.in_channels) < 1:
            raise InputError(f"preprocessing: in_channels must be >= 1, got {self.in_channels!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of ``to_dict``; unknown keys raise ``InputError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(
                f"preprocessing: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def spatial_transform(prep: Preprocessing, *, mode: str = "bilinear"):
    """MONAI ``Compose([Orientation, Spacing])`` (array transforms on a ``MetaTensor`` ``(C, X, Y, Z)``
    carrying its affine). Invertible: ``transform.inverse(output)`` maps back to the input grid (use
    ``mode="nearest"`` transforms, or MONAI's ``Invertd(nearest_interp=True)``, for label maps)."""
    from monai.transforms import Compose, Orientation, Spacing

    transforms = [Orientation(axcodes=prep.orientation, labels=RAS_LABELS)]
    if prep.spacing is not None:
        transforms.append(Spacing(pixdim=prep.spacing, mode=mode, padding_mode="border"))
    return Compose(transforms)


def spatial_transforms_dict(prep: Preprocessing, keys: Sequence[str], modes: Sequence[str]) -> list:
    """The same as ``spatial_transform`` for MONAI dictionary pipelines (training): one mode per key,
    e.g. ``keys=("image", "label"), modes=("bilinear", "nearest")``."""
    from monai.transforms import Orientationd, Spacingd

    transforms: list = [Orientationd(keys=list(keys), axcodes=prep.orientation, labels=RAS_LABELS)]
    if prep.spacing is not None:
        transforms.append(
            Spacingd(keys=list(keys), pixdim=prep.spacing, mode=list(modes), padding_mode="border")
        )
    return transforms


def normalize_intensity(image: Tensor, prep: Preprocessing) -> Tensor:
    """Normalise ``image`` ``(C, *spatial)`` channel by channel as ``prep`` says; returns float32 of the
    same shape (a ``MetaTensor`` stays one). Constant channels become zeros, never NaN."""
    import torch

    image = image.float()
    if prep.normalization == "none":
        return image
    out = image.clone()
    for c in range(image.shape[0]):
        x = image[c]
        if prep.normalization == "ct":
            low, high = prep.intensity_range  # type: ignore[misc]
            out[c] = (x.clamp(low, high) - prep.intensity_mean) / prep.intensity_std
            continue
        if prep.clip_percentiles is not None:
            flat = x.reshape(-1)
            q = torch.tensor([p / 100.0 for p in prep.clip_percentiles], dtype=torch.float64)
            low, high = _quantiles(flat, q)
            x = x.clamp(low, high)
        mask = x != 0 if prep.normalization == "zscore_nonzero" else None
        values = x[mask] if mask is not None else x.reshape(-1)
        if values.numel() == 0:
            out[c] = x
            continue
        values = values.double()
        mean, std = values.mean(), values.std(unbiased=False)
        normalised = ((x.double() - mean) / std.clamp_min(1e-8)).float()
        if mask is not None:
            normalised = torch.where(mask, normalised, torch.zeros_like(normalised))
        out[c] = normalised
    return out


def _quantiles(values: Tensor, q: Tensor) -> tuple[float, float]:
    """``torch.quantile`` refuses more than 2**24 elements; use numpy's (same linear rule) there."""
    import numpy as np

    result = np.quantile(values.detach().cpu().numpy(), q.numpy())
    return float(result[0]), float(result[1])
