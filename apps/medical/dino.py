"""DINO self-supervised pretraining of a ViT on 2-D slices of medical volumes (Caron et al. 2021,
"Emerging Properties in Self-Supervised Vision Transformers"), the attention encoder of DIAMANT.

    slices (b, C, S, S) --multi-crop--> 2 global crops (S x S) + N local crops (L x L)
    teacher  = backbone + head (EMA of the student, global crops only)  -> softmax((t - center) / T_t)
    student  = backbone + head (all crops)                              -> log_softmax(s / 0.1)
    loss     = cross-entropy teacher(global i) -> student(crop v), every pair with v != i, averaged

Pieces (the official code's names, so its full checkpoints map onto ours key for key):

- :class:`DINOHead`: 3-layer MLP (``mlp.0``, ``mlp.2``, ``mlp.4``; GELU) to a 256-d bottleneck, L2
  normalisation, then a weight-normalised linear layer ``last_layer`` stored as ``last_layer.weight_g``
  ``(K, 1)`` and ``last_layer.weight_v`` ``(K, 256)`` -- the names ``torch.nn.utils.weight_norm`` gives and
  the official checkpoints hold (torch's newer parametrization would name them
  ``last_layer.parametrizations.weight.original0/1``). ``weight_g`` is fixed to 1 (``norm_last_layer``).
  ``use_bn=True`` is DINO's ``--use_bn_in_head`` (BatchNorm after each hidden linear: ``mlp.0``, ``mlp.1``
  (BN), ``mlp.3``, ``mlp.4`` (BN), ``mlp.6``). ``hybrids medical pretrain-dino`` turns it on by default:
  on small data and short runs the BN-free ViT head collapses to a uniform teacher (the loss sits at
  ``log K``; the official code does the same in our tests), while BN spreads the teacher's outputs.
- :class:`MultiCropWrapper` (``backbone``, ``head``): runs the backbone once per crop resolution.
- :class:`DINOLoss`: centering (EMA of the teacher outputs, momentum 0.9) and sharpening (student
  temperature 0.1, teacher temperature warmed up linearly 0.04 -> 0.07 over the first 30 % of training).
- :class:`MultiCrop`: DINO's augmentation for grey-level slices, batched in torch (no PIL/torchvision):
  random resized crops (global scale 0.4-1, local 0.05-0.4, aspect 3/4-4/3) with horizontal flips,
  intensity jitter (contrast x0.6-1.4 around the mean, shift of +-0.4 in z-score units; p 0.8), Gaussian
  blur (p 1.0 / 0.1 / 0.5 for global 1 / global 2 / local), solarisation (global 2, p 0.2).
- :class:`DINOModule` (Lightning): AdamW with weight decay on weights only (cosine 0.04 -> 0.4),
  learning rate linear warm-up over 10 % of training then cosine to ``min_lr``, per-parameter gradient
  clipping at 3.0, the last layer frozen for the first 1 %, teacher EMA momentum cosine 0.996 -> 1. The
  schedules follow training *progress*: the larger of steps done / total steps and time / ``--max-time``.

Slices (:func:`load_slices`): every image of an MSD folder's ``imagesTr`` (or of any folder of NIfTI
files) is re-oriented, resampled and z-scored with :mod:`hybrids.apps.medical.preprocessing` (an MSD
folder gets ``hybrids medical train``'s defaults, so DIAMANT sees the same grid), cut into slices along
``slice_axis`` and fitted to the ViT's square input by :func:`fit_slice` (``"resize"``: bilinear to
``S x S``, the default; ``"pad"``: centred zero padding) -- the rule DIAMANT applies; it is recorded in the
teacher's ``config.json`` (``image_size``, ``vit_input``, ``slice_axis``, ``preprocessing``). Labels are
never read. Constant slices are dropped.

Attention maps (:func:`attention_figure`): the last block's CLS-token attention ``[:, :, 0, 1:]``, one
map per head, reshaped to ``S/p x S/p`` and upsampled by ``p`` (nearest), as DINO's
``visualize_attention.py``, which also shows models trained at 224 on 480x480 inputs: the figure's slices
are fed at ``--figure-size`` (default twice the training size; position embeddings interpolated), whose
twice-as-fine patch grid resolves the anatomy an 8x8 grid of a 64x64 slice cannot.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.lightning_hooks import ThreadsHooks, TrainingClock
from hybrids.datasets.atomic import make_output_folder
from hybrids.shared_blocks.vit import VisionTransformer

logger = logging.getLogger("hybrids.medical.dino")

__all__ = [
    "DINODataModule",
    "DINOHead",
    "DINOLoss",
    "DINOModule",
    "MultiCrop",
    "MultiCropWrapper",
    "SliceSet",
    "WeightNormLinear",
    "attention_figure",
    "cosine_schedule",
    "fit_slice",
    "load_slices",
    "load_teacher",
    "local_crop_size",
    "save_teacher",
]

VIT_INPUTS = ("resize", "pad")


# -- networks ----------------------------------------------------------------------------------------------
class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation (Salimans & Kingma 2016): ``W = g * v / ||v||``
    per output row. ``(..., in) -> (..., out)``; parameters ``weight_g (out, 1)``, ``weight_v (out, in)``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(self.weight_v.detach().norm(dim=1, keepdim=True))

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINO's projection head: ``(b, in_dim) -> (b, out_dim)`` logits (see the module docstring)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1 or out_dim < 1:
            raise ValueError(f"DINOHead: nlayers and out_dim must be >= 1, got {nlayers}, {out_dim}")
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:

            def hidden(n_in: int) -> list[nn.Module]:
                norm = [nn.BatchNorm1d(hidden_dim)] if use_bn else []
                return [nn.Linear(n_in, hidden_dim), *norm, nn.GELU()]

            layers: list[nn.Module] = hidden(in_dim)
            for _ in range(nlayers - 2):
                layers += hidden(hidden_dim)
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        with torch.no_grad():
            self.last_layer.weight_g.fill_(1.0)
        self.last_layer.weight_g.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class MultiCropWrapper(nn.Module):
    """``backbone`` + ``head`` over a list of crops: the backbone runs once per run of equal-size
    crops (``[(b, C, S, S)] * 2 + [(b, C, L, L)] * n -> (b * (2 + n), out_dim)``, crop-major)."""

    def __init__(self, backbone: VisionTransformer, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: Sequence[Tensor] | Tensor) -> Tensor:
        if isinstance(crops, Tensor):
            crops = [crops]
        features, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features.append(self.backbone(torch.cat(list(crops[start:end]))))
            start = end
        return self.head(torch.cat(features))


# -- loss and schedules --------------------------------------------------------------------------------------
def cosine_schedule(start: float, end: float, progress: float) -> float:
    """Half-cosine from ``start`` (progress 0) to ``end`` (progress 1); progress is clipped to [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


class DINOLoss(nn.Module):
    """Cross-entropy of the student's crops against the centred, sharpened teacher's global crops.

    ``forward(student (ncrops * b, K), teacher (2 * b, K), progress) -> scalar``; also updates ``center``
    (``(1, K)`` buffer, EMA with ``center_momentum`` of the teacher's batch mean; all-reduced under DDP).
    """

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        *,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_fraction: float = 0.3,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if ncrops < 2:
            raise ValueError(f"DINOLoss: needs the 2 global crops at least, got ncrops={ncrops}")
        self.ncrops, self.student_temp, self.center_momentum = ncrops, student_temp, center_momentum
        self.teacher_temps = (warmup_teacher_temp, teacher_temp)
        self.warmup_fraction = warmup_fraction
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temp(self, progress: float) -> float:
        """Linear warm-up ``warmup_teacher_temp -> teacher_temp`` over ``warmup_fraction``, then constant."""
        start, end = self.teacher_temps
        if self.warmup_fraction <= 0 or progress >= self.warmup_fraction:
            return end
        return start + (end - start) * max(progress, 0.0) / self.warmup_fraction

    def forward(self, student_output: Tensor, teacher_output: Tensor, progress: float = 1.0) -> Tensor:
        student = F.log_softmax(student_output.float() / self.student_temp, dim=-1).chunk(self.ncrops)
        temp = self.teacher_temp(progress)
        teacher = F.softmax((teacher_output.float() - self.center) / temp, dim=-1).detach().chunk(2)
        total, terms = student_output.new_zeros((), dtype=torch.float32), 0
        for i, q in enumerate(teacher):
            for v, log_p in enumerate(student):
                if v == i:
                    continue  # the same view
                total = total + (-q * log_p).sum(dim=-1).mean()
                terms += 1
        self.update_center(teacher_output)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        batch_sum = teacher_output.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_output.shape[0]), device=teacher_output.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(count)
        m = self.center_momentum
        self.center.mul_(m).add_(batch_sum / count, alpha=1.0 - m)


# -- multi-crop augmentation -------------------------------------------------------------------------------
def local_crop_size(image_size: int, patch_size: int) -> int:
    """DINO's local/global size ratio (96/224) at ``image_size``, rounded to whole patches (>= 1 patch)."""
    return patch_size * max(1, round(image_size * 96 / 224 / patch_size))


def _uniform(low: float, high: float, n: int, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


class MultiCrop:
    """DINO's multi-crop for grey-level (z-scored) images, batched: ``(b, C, S, S) -> [2 x (b, C, S, S),
    local_crops x (b, C, L, L)]``. Randomness comes from the ``torch.Generator`` passed in (CPU)."""

    def __init__(
        self,
        global_size: int,
        local_size: int,
        local_crops: int = 6,
        *,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter_p: float = 0.8,
        max_sigma: float = 1.0,
    ) -> None:
        if local_crops < 0:
            raise ValueError(f"MultiCrop: local_crops must be >= 0, got {local_crops}")
        self.global_size, self.local_size, self.local_crops = global_size, local_size, local_crops
        self.global_scale, self.local_scale, self.ratio = global_scale, local_scale, ratio
        self.jitter_p, self.max_sigma = jitter_p, max_sigma

    def __call__(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        g = generator
        crops = [
            self.view(images, self.global_size, self.global_scale, g, blur_p=1.0, solarize_p=0.0),
            self.view(images, self.global_size, self.global_scale, g, blur_p=0.1, solarize_p=0.2),
        ]
        for _ in range(self.local_crops):
            crops.append(self.view(images, self.local_size, self.local_scale, g, blur_p=0.5, solarize_p=0.0))
        return crops

    def view(
        self,
        images: Tensor,
        size: int,
        scale: tuple[float, float],
        g: torch.Generator,
        *,
        blur_p: float,
        solarize_p: float,
    ) -> Tensor:
        x = random_resized_crop(images, size, scale, self.ratio, g)
        b = x.shape[0]
        dims = (1, 2, 3)
        on = (torch.rand(b, generator=g) < self.jitter_p).float().view(b, 1, 1, 1)
        contrast = _uniform(0.6, 1.4, b, g).view(b, 1, 1, 1)
        shift = _uniform(-0.4, 0.4, b, g).view(b, 1, 1, 1)
        mean = x.mean(dim=dims, keepdim=True)
        jittered = (x - mean) * contrast + mean + shift
        x = on * jittered + (1 - on) * x
        if blur_p > 0:
            on = (torch.rand(b, generator=g) < blur_p).float().view(b, 1, 1, 1)
            sigma = _uniform(0.1, self.max_sigma, b, g)
            x = on * gaussian_blur(x, sigma) + (1 - on) * x
        if solarize_p > 0:
            on = (torch.rand(b, generator=g) < solarize_p).view(b, 1, 1, 1)
            low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
            x = torch.where(on & (x >= (low + high) / 2), low + high - x, x)
        return x.contiguous()


def random_resized_crop(
    images: Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    g: torch.Generator,
    flip_p: float = 0.5,
) -> Tensor:
    """A random box per image (area fraction in ``scale``, aspect ratio in ``ratio``, log-uniform),
    resampled bilinearly to ``size x size``, mirrored left-right with ``flip_p``: ``(b, C, H, W) ->
    (b, C, size, size)``."""
    b = images.shape[0]
    area = _uniform(scale[0], scale[1], b, g)
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), b, g))
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # width as a fraction of the image width
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)  # centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=g) < flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one ``sigma`` (pixels) per image: ``(b, C, H, W) -> same``."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma.to(x)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (b * c, k)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
    return y.reshape(b, c, h, w)


# -- slices --------------------------------------------------------------------------------------------------
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


# -- data ----------------------------------------------------------------------------------------------------
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


# -- Lightning module --------------------------------------------------------------------------------------
class DINOModule(ThreadsHooks, TrainingClock, L.LightningModule):
    """Student, EMA teacher, DINO loss and schedules (see the module docstring).

    ``vit`` holds :class:`~hybrids.shared_blocks.vit.VisionTransformer`'s keyword arguments; ``img_size``
    is the global crop size.
    """

    def __init__(
        self,
        vit: dict[str, Any],
        *,
        out_dim: int = 4096,
        head_hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_bn: bool = False,
        local_crops: int = 6,
        local_size: int | None = None,
        lr: float = 5e-4,
        min_lr: float = 1e-6,
        weight_decay: tuple[float, float] = (0.04, 0.4),
        momentum: tuple[float, float] = (0.996, 1.0),
        teacher_temp: tuple[float, float] = (0.04, 0.07),
        warmup_teacher_temp_fraction: float = 0.3,
        warmup_fraction: float = 0.1,
        freeze_last_layer_fraction: float = 0.01,
        clip_grad: float = 3.0,
        drop_path_rate: float = 0.1,
        total_steps: int = 1000,
        max_seconds: float | None = None,
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.vit_kwargs = {k: v for k, v in vit.items() if k != "drop_path_rate"}
        dim = int(self.vit_kwargs.get("embed_dim", 384))
        student = VisionTransformer(**self.vit_kwargs, drop_path_rate=drop_path_rate)
        teacher = VisionTransformer(**self.vit_kwargs)
        head = {"hidden_dim": head_hidden_dim, "bottleneck_dim": bottleneck_dim, "use_bn": head_bn}
        self.student = MultiCropWrapper(student, DINOHead(dim, out_dim, **head))
        self.teacher = MultiCropWrapper(teacher, DINOHead(dim, out_dim, **head))
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.loss = DINOLoss(
            out_dim,
            2 + local_crops,
            warmup_teacher_temp=teacher_temp[0],
            teacher_temp=teacher_temp[1],
            warmup_fraction=warmup_teacher_temp_fraction,
        )
        size, patch = int(self.vit_kwargs.get("img_size", 224)), int(self.vit_kwargs.get("patch_size", 16))
        self.crops = MultiCrop(size, local_size or local_crop_size(size, patch), local_crops)
        self.lr, self.min_lr, self.weight_decay, self.momentum = lr, min_lr, weight_decay, momentum
        self.warmup_fraction, self.freeze_last_layer_fraction = warmup_fraction, freeze_last_layer_fraction
        self.clip_grad, self.total_steps, self.max_seconds = clip_grad, total_steps, max_seconds
        self.threads, self.seed = threads, seed
        self.train_seconds = 0.0
        self._start: float | None = None
        self._losses: list[float] = []
        self._threads_before: int | None = None

    def progress(self) -> float:
        """Training progress in [0, 1]: the larger of steps / total steps and time / ``max_seconds``."""
        p = self.global_step / max(1, self.total_steps)
        if self.max_seconds:
            p = max(p, self.elapsed() / self.max_seconds)
        return min(p, 1.0)

    # schedules --------------------------------------------------------------------------------------------
    def lr_at(self, progress: float) -> float:
        if progress < self.warmup_fraction:
            return self.lr * progress / self.warmup_fraction
        rest = (progress - self.warmup_fraction) / max(1e-8, 1.0 - self.warmup_fraction)
        return cosine_schedule(self.lr, self.min_lr, rest)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        p = self.progress()
        self._progress = p
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = self.lr_at(p)
            if group.get("regularized", False):
                group["weight_decay"] = cosine_schedule(*self.weight_decay, p)

    # training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.global_rank, self.global_step]).generate_state(1)[0])
        )
        crops = self.crops(batch, g)
        with torch.no_grad():
            teacher_out = self.teacher(crops[:2])
        student_out = self.student(crops)
        loss = self.loss(student_out, teacher_out, getattr(self, "_progress", self.progress()))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DINO loss is {float(loss)} at step {self.global_step}")
        self._losses.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.clip_grad:
            for p in self.student.parameters():  # DINO clips each parameter's gradient on its own
                if p.grad is not None:
                    norm = p.grad.norm()
                    p.grad.mul_(torch.clamp(self.clip_grad / (norm + 1e-6), max=1.0))
        if getattr(self, "_progress", 0.0) < self.freeze_last_layer_fraction:
            for p in self.student.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        m = cosine_schedule(*self.momentum, getattr(self, "_progress", self.progress()))
        for ps, pt in zip(self.student.parameters(), self.teacher.parameters(), strict=True):
            pt.mul_(m).add_(ps.detach(), alpha=1.0 - m)

    def on_train_epoch_start(self) -> None:
        self._losses = []

    def epoch_loss(self) -> float:
        return float(np.mean(self._losses)) if self._losses else math.nan

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
        return torch.optim.AdamW(
            [
                {"params": decay, "regularized": True, "weight_decay": self.weight_decay[0]},
                {"params": no_decay, "regularized": False, "weight_decay": 0.0},
            ],
            lr=self.lr,
        )


# -- output --------------------------------------------------------------------------------------------------
TEACHER_MODEL = "dino/vit"


def save_teacher(backbone: VisionTransformer, directory: Path, info: dict[str, Any]) -> Path:
    """``directory/model.safetensors`` (the backbone, DINO's key names) + ``config.json`` (``info``)."""
    from safetensors.torch import save_file

    from hybrids.datasets.atomic import atomic_write_path, atomic_write_text

    make_output_folder(directory)
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    with atomic_write_path(directory / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "hybrids.model": TEACHER_MODEL})
    atomic_write_text(directory / "config.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return directory


def vit_from_config(info: dict[str, Any]) -> VisionTransformer:
    """An untrained ViT shaped as a teacher ``config.json`` says (``info["config"]``)."""
    return VisionTransformer(**info["config"])


def load_teacher(directory: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """``(ViT in eval mode, config.json)`` of a ``pretrain-dino`` teacher folder."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights = directory / "config.json", directory / "model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise InputError(f"{directory}: not a DINO teacher folder (config.json + model.safetensors)")
    info = json.loads(config_path.read_text(encoding="utf-8"))
    model = vit_from_config(info)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval(), info


@torch.no_grad()
def attention_figure(
    backbone: VisionTransformer, slices: Tensor, path: Path, *, title: str = "", names: Sequence[str] = ()
) -> Path:
    """A PNG: one row per slice ``(n, C, S, S)``: the image, then each head's CLS attention map (last
    block, nearest-upsampled by the patch size), then the mean over heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbone = backbone.eval()
    maps = backbone.attention_maps(slices.float()).cpu().numpy()  # (n, heads, S, S)
    n, heads = maps.shape[:2]
    fig, axes = plt.subplots(n, heads + 2, figsize=(1.6 * (heads + 2), 1.6 * n + 0.4), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(slices[i, 0].cpu().numpy(), cmap="gray")
        axes[i, 0].set_ylabel(names[i] if i < len(names) else f"slice {i}", fontsize=7)
        for h in range(heads):
            axes[i, 1 + h].imshow(maps[i, h], cmap="inferno")
            if i == 0:
                axes[i, 1 + h].set_title(f"head {h}", fontsize=8)
        axes[i, heads + 1].imshow(maps[i].mean(axis=0), cmap="inferno")
        if i == 0:
            axes[i, 0].set_title("slice", fontsize=8)
            axes[i, heads + 1].set_title("mean", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the command -------------------------------------------------------------------------------------------
def figure_slices(slices: Tensor, counts: Sequence[int], per_case: int = 2, limit: int = 4) -> list[int]:
    """Indices of a few slices for the figure: ``per_case`` evenly spread over the middle half of each
    case's slices, at most ``limit`` in all."""
    out, start = [], 0
    for n in counts:
        if n:
            picks = np.linspace(start + n // 4, start + (3 * n) // 4, per_case + 2)[1:-1]
            out += sorted({int(round(i)) for i in picks})
        start += n
    return out[:limit]


class DINOCheckpoint(L.Callback):
    """After each epoch: ``OUT/teacher`` (backbone + config), ``OUT/attention_maps.png``,
    ``OUT/history.json``, ``OUT/resume.ckpt`` and one printed line."""

    def __init__(self, out: Path, info: dict[str, Any], figure: Tensor, names: Sequence[str], quiet=False):
        self.out, self.info, self.figure, self.names, self.quiet = Path(out), info, figure, list(names), quiet
        self.history: list[dict[str, Any]] = []
        self._epoch_start = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        return {"history": json.dumps(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = json.loads(state_dict.get("history", "[]"))

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, module: DINOModule) -> None:
        from hybrids.apps.medical.pretrain_dino import RESUME_NAME
        from hybrids.datasets.atomic import atomic_write_text

        record = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "loss": module.epoch_loss(),
            "teacher_temp": module.loss.teacher_temp(module.progress()),
            "lr": module.lr_at(module.progress()),
            "seconds": round(module.elapsed(), 1),
        }
        self.history.append(record)
        path = self.out / RESUME_NAME
        tmp = path.with_name(path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if not trainer.is_global_zero:
            return
        import os

        os.replace(tmp, path)
        self.write(module, record)
        atomic_write_text(self.out / "history.json", json.dumps(self.history, indent=2) + "\n")
        if not self.quiet:
            print(
                f"epoch {record['epoch']:>3} step {record['step']:>6}: DINO loss {record['loss']:.4f}, "
                f"epoch {time.monotonic() - self._epoch_start:.0f} s, total {record['seconds'] / 60:.1f} min",
                flush=True,
            )

    def write(self, module: DINOModule, record: dict[str, Any]) -> None:
        training = {**self.info.get("training", {}), **{k: record[k] for k in ("epoch", "step", "loss")}}
        training["train_seconds"] = record["seconds"]
        save_teacher(module.teacher.backbone, self.out / "teacher", {**self.info, "training": training})
        if len(self.figure):
            was = module.teacher.backbone.training
            attention_figure(
                module.teacher.backbone,
                self.figure.to(module.device),
                self.out / "attention_maps.png",
                title=f"DINO teacher, last block CLS attention per head at {self.figure.shape[-1]}x"
                f"{self.figure.shape[-1]} (epoch {record['epoch']}, step {record['step']}, "
                f"loss {record['loss']:.3f})",
                names=self.names,
            )
            module.teacher.backbone.train(was)


def _vit_kwargs(args: Any, in_chans: int) -> dict[str, Any]:
    from hybrids.shared_blocks.vit import VIT_CONFIGS

    dim, depth, heads = VIT_CONFIGS[args.arch]
    vit = {
        "img_size": args.image_size,
        "patch_size": args.patch_size,
        "in_chans": in_chans,
        "embed_dim": args.embed_dim or dim,
        "depth": args.depth or depth,
        "num_heads": args.heads or heads,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
    }
    if vit["embed_dim"] % vit["num_heads"]:
        raise InputError(
            f"--embed-dim {vit['embed_dim']} must be a multiple of the heads ({vit['num_heads']})"
        )
    return vit


def pretrain(args: Any) -> dict[str, Any]:
    """Run ``hybrids medical pretrain-dino`` (see ``hybrids.apps.medical.pretrain_dino``)."""
    import sys
    import warnings

    from lightning.pytorch.loggers import CSVLogger

    from hybrids.apps.medical.pretrain_dino import RESUME_NAME, check_args
    from hybrids.datasets.msd import NNUNET_SPLIT

    check_args(args)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO if getattr(args, "verbose", 0) else logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
    L.seed_everything(args.seed, workers=True, verbose=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases, dataset = find_images(args.data)
    if args.cases:
        cases = cases[: args.cases]
    if len(cases) <= args.val_cases:
        raise InputError(f"{args.data}: {len(cases)} case(s), need more than --val-cases {args.val_cases}")
    prep = default_dino_preprocessing(args.data, cases, dataset)
    fold = args.fold
    if fold is None:
        train_cases = cases[: len(cases) - args.val_cases]
        val_cases = cases[len(cases) - args.val_cases :]
    else:  # only the fold's training cases; the figure from its validation cases
        from hybrids.datasets.msd import MSDError, kfold_split

        try:
            train_names, valid_names = kfold_split([name for name, _ in cases], fold, args.folds)
        except MSDError as exc:
            raise InputError(f"{args.data}: {exc}") from None
        train_names, valid_names = set(train_names), set(valid_names)
        train_cases = [c for c in cases if c[0] in train_names]
        valid = [c for c in cases if c[0] in valid_names]
        val_cases = valid[len(valid) - min(args.val_cases, len(valid)) :]
    started = time.monotonic()
    slices, _ = load_slices(
        train_cases, prep, slice_axis=args.slice_axis, size=args.image_size, mode=args.vit_input
    )
    figure, names = torch.zeros(0), []
    figure_size = args.figure_size or 2 * args.image_size
    if val_cases:
        val, counts = load_slices(
            val_cases, prep, slice_axis=args.slice_axis, size=figure_size, mode=args.vit_input
        )
        picks = figure_slices(val, counts)
        figure = val[picks]
        owner = np.repeat(np.arange(len(counts)), counts)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        names = [f"{val_cases[owner[i]][0]} #{i - offsets[owner[i]]}" for i in picks]
    logger.info(
        "%d training slices (%s) in %.1f s",
        len(slices),
        "x".join(map(str, slices.shape[1:])),
        time.monotonic() - started,
    )
    vit = _vit_kwargs(args, int(slices.shape[1]))
    devices: Any = int(args.devices) if str(args.devices).isdigit() else args.devices
    world = devices if isinstance(devices, int) else 1
    lr = args.lr or 5e-4 * args.batch_size * world / 256
    module = DINOModule(
        vit,
        out_dim=args.out_dim,
        head_hidden_dim=args.head_hidden_dim,
        head_bn=args.head_bn,
        teacher_temp=(args.warmup_teacher_temp, args.teacher_temp),
        local_crops=args.local_crops,
        lr=lr,
        drop_path_rate=args.drop_path,
        momentum=(args.momentum_teacher, 1.0),
        total_steps=args.epochs * args.steps_per_epoch,
        max_seconds=args.max_time * 60 if args.max_time else None,
        threads=args.threads,
        seed=args.seed,
    )
    info = {
        "model": TEACHER_MODEL,
        "architecture": args.arch,
        "config": vit,
        "image_size": args.image_size,
        "vit_input": args.vit_input,
        "slice_axis": args.slice_axis,
        "preprocessing": prep.to_dict(),
        "attention_figure_size": figure_size,
        "attention_maps": "last block, CLS query [:, :, 0, 1:], heads x S/p x S/p, nearest-upsampled by p",
        "training": {
            "method": "DINO (Caron et al. 2021)",
            "data": Path(args.data).name,
            "dataset": getattr(dataset, "name", None),
            "dataset_licence": getattr(dataset, "licence", None),
            "cases": len(train_cases),
            "held_out_cases": [name for name, _ in val_cases],
            "fold": None if fold is None else {"fold": fold, "folds": args.folds, "split": NNUNET_SPLIT},
            "slices": int(slices.shape[0]),
            "epochs": args.epochs,
            "steps_per_epoch": args.steps_per_epoch,
            "batch_size": args.batch_size,
            "global_crop": args.image_size,
            "local_crop": module.crops.local_size,
            "local_crops": args.local_crops,
            "out_dim": args.out_dim,
            "head_hidden_dim": args.head_hidden_dim,
            "head_batchnorm": args.head_bn,
            "teacher_temp": [args.warmup_teacher_temp, args.teacher_temp],
            "momentum_teacher": [args.momentum_teacher, 1.0],
            "lr": lr,
            "max_time_minutes": args.max_time,
            "seed": args.seed,
            "command": " ".join(["hybrids", *sys.argv[1:]]) if sys.argv else "",
        },
    }
    out = Path(args.out)
    make_output_folder(out)
    quiet = getattr(args, "quiet", 0) > 0
    callback = DINOCheckpoint(out, info, figure, names, quiet=quiet)
    version = ""
    if args.resume:
        n = 1
        while (out / f"resumed_{n}").exists():
            n += 1
        version = f"resumed_{n}"
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=devices,
        strategy=args.strategy,
        precision=args.precision,
        max_epochs=args.epochs,
        max_time={"seconds": args.max_time * 60} if args.max_time else None,
        limit_train_batches=args.steps_per_epoch,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[callback],
        logger=CSVLogger(out, name="", version=version),
        enable_checkpointing=False,
        enable_progress_bar=not quiet and sys.stderr.isatty(),
        enable_model_summary=False,
        sync_batchnorm=bool(args.head_bn and world > 1),
        log_every_n_steps=min(10, args.steps_per_epoch),
        default_root_dir=out,
    )
    logger.info(
        "DINO %s/%d (%d parameters) on %d slices, batch %d, %d local crops of %d",
        args.arch,
        args.patch_size,
        sum(p.numel() for p in module.student.backbone.parameters()),
        len(slices),
        args.batch_size,
        args.local_crops,
        module.crops.local_size,
    )
    data = DINODataModule(
        slices, batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch, seed=args.seed
    )
    ckpt = out / RESUME_NAME if args.resume else None
    trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=True if ckpt else None)
    if trainer.is_global_zero and (
        not callback.history or callback.history[-1]["step"] != trainer.global_step
    ):
        record = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "loss": module.epoch_loss(),
            "seconds": round(module.elapsed(), 1),
        }
        callback.write(module, record)  # stopped inside an epoch (--max-time)
    return {
        "teacher": out / "teacher",
        "figure": out / "attention_maps.png",
        "history": callback.history,
        "module": module,
        "is_global_zero": trainer.is_global_zero,
    }
