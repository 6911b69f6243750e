"""The segmentation inference engine: MONAI sliding windows over a preprocessed volume.

    settings = InferenceSettings.from_dict(config["inference"])     # recorded with the weights
    probs = predict_probabilities(model, image, settings)           # image (C, X, Y, Z) in the model grid
    labels = probs.argmax(0).to(torch.uint8)                        # (X, Y, Z)

One engine for 2-D and 3-D models. A 3-D model sees ``roi_size`` windows; a 2-D model
(``spatial_dims == 2``) runs slice by slice along ``slice_axis`` with the *same* MONAI
``sliding_window_inference``: the window is ``roi_size`` with a 1 inserted at the slice axis, and a
wrapper squeezes that axis before the model and restores it after, so windows of several slices are
batched together (``batch_size`` windows per forward) and blended in-plane with the same Gaussian.
Windows are rounded up to the model's ``size_divisor``; volumes smaller than a window are padded
with zeros (the mean after z-scoring) and cropped back by MONAI.

Each window's logits become a softmax before blending, so the result is a probability map that sums
to 1 at every voxel. ``tta=True`` mirrors each window along every combination of its spatial axes
(nnU-Net's mirroring: 8 passes in 3-D, 4 in-plane in 2-D) and averages the softmax; it happens window
by window, so memory does not grow with it. The output buffer is ``(num_classes, *spatial)`` float32
on ``output_device`` (the CPU by default, so a large volume does not fill an accelerator).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hybrids.apps.core.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

__all__ = [
    "InferenceSettings",
    "predict_probabilities",
    "predict_case_probabilities",
    "count_windows",
    "default_batch_size",
    "import_monai",
]

BLEND_MODES = ("gaussian", "constant")


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How a model is applied to a whole volume (the ``"inference"`` entry of a model folder).

    ``roi_size``: window size in model-grid voxels, 2 ints for a 2-D model, 3 for a 3-D one;
    ``overlap``: fraction of a window shared with its neighbour (0 <= overlap < 1); ``mode``:
    ``"gaussian"`` (nnU-Net's centre weighting) or ``"constant"`` blending; ``sigma_scale``: the
    Gaussian's sigma as a fraction of the window; ``slice_axis``: for 2-D models, the axis (0, 1, 2)
    of the re-oriented volume that is sliced (default 2, axial slices of a RAS volume).
    """

    roi_size: tuple[int, ...]
    overlap: float = 0.5
    mode: str = "gaussian"
    slice_axis: int | None = None
    sigma_scale: float = 0.125

    def __post_init__(self) -> None:
        roi = tuple(int(r) for r in self.roi_size)
        if len(roi) not in (2, 3) or any(r < 1 for r in roi):
            raise InputError(f"inference: roi_size must be 2 or 3 positive ints, got {list(self.roi_size)}")
        object.__setattr__(self, "roi_size", roi)
        if not 0.0 <= float(self.overlap) < 1.0:
            raise InputError(f"inference: overlap must be in [0, 1), got {self.overlap}")
        object.__setattr__(self, "overlap", float(self.overlap))
        if self.mode not in BLEND_MODES:
            raise InputError(f"inference: mode must be one of {', '.join(BLEND_MODES)}, got {self.mode!r}")
        if len(roi) == 2:
            axis = 2 if self.slice_axis is None else int(self.slice_axis)
            if axis not in (0, 1, 2):
                raise InputError(f"inference: slice_axis must be 0, 1 or 2, got {self.slice_axis!r}")
            object.__setattr__(self, "slice_axis", axis)
        else:
            object.__setattr__(self, "slice_axis", None)
        if not float(self.sigma_scale) > 0:
            raise InputError(f"inference: sigma_scale must be > 0, got {self.sigma_scale}")
        object.__setattr__(self, "sigma_scale", float(self.sigma_scale))

    @property
    def spatial_dims(self) -> int:
        return len(self.roi_size)

    def replace(self, **changes: Any) -> InferenceSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible; ``slice_axis`` only for 2-D models."""
        out: dict[str, Any] = {"roi_size": list(self.roi_size), "overlap": self.overlap, "mode": self.mode}
        if self.slice_axis is not None:
            out["slice_axis"] = self.slice_axis
        if self.sigma_scale != 0.125:
            out["sigma_scale"] = self.sigma_scale
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceSettings:
        """Inverse of ``to_dict``; unknown keys raise ``InputError`` naming them."""
        if not isinstance(data, Mapping) or "roi_size" not in data:
            raise InputError(f"inference: settings need at least 'roi_size', got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(
                f"inference: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
            )
        values = {k: v for k, v in data.items() if v is not None}
        try:
            values["roi_size"] = tuple(values["roi_size"])
        except TypeError:
            raise InputError(
                f"inference: roi_size must be a list of ints, got {data['roi_size']!r}"
            ) from None
        return cls(**values)

    @classmethod
    def coerce(cls, settings: InferenceSettings | Mapping[str, Any]) -> InferenceSettings:
        return settings if isinstance(settings, cls) else cls.from_dict(settings)


# Optional packages MONAI imports at package import time only for features we never use: HuggingFace
# transformers (its Transchex network; seconds to import) and matplotlib.pyplot (its plotting helpers).
_MONAI_SKIPPED_IMPORTS = ("transformers", "matplotlib")


def import_monai() -> None:
    """Import MONAI (its package import loads every submodule) without the optional packages in
    ``_MONAI_SKIPPED_IMPORTS``: while ``import monai`` runs they are made unimportable, so MONAI keeps
    its own "not installed" stubs for them; afterwards they import normally again. A no-op once MONAI
    (or those packages) are imported. Cuts ``hybrids medical segment``'s start-up by seconds."""
    import sys

    if "monai" in sys.modules:
        return
    blocked = [name for name in _MONAI_SKIPPED_IMPORTS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import monai  # noqa: F401
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _round_up(n: int, divisor: int) -> int:
    return int(math.ceil(n / divisor) * divisor)


def window_size(settings: InferenceSettings, size_divisor: int = 1) -> tuple[int, int, int]:
    """The 3-D window MONAI slides: ``roi_size`` rounded up to ``size_divisor``; for 2-D models with
    a 1 at the slice axis."""
    roi = [_round_up(r, max(1, int(size_divisor))) for r in settings.roi_size]
    if settings.spatial_dims == 2:
        roi.insert(int(settings.slice_axis), 1)  # type: ignore[arg-type]
    return tuple(roi)  # type: ignore[return-value]


def count_windows(spatial_shape: Sequence[int], settings: InferenceSettings, size_divisor: int = 1) -> int:
    """Number of windows MONAI evaluates on a volume of ``spatial_shape`` (for progress bars)."""
    roi = window_size(settings, size_divisor)
    total = 1
    for size, r in zip(spatial_shape, roi, strict=True):
        size = max(size, r)  # MONAI pads smaller volumes up to the window
        if size == r:
            continue
        step = max(1, int(r * (1 - settings.overlap)))
        n = next((d for d in range(math.ceil(size / step)) if d * step + r >= size), 0)
        total *= n + 1
    return total


def default_batch_size(settings: InferenceSettings, size_divisor: int = 1) -> int:
    """Windows per forward: about 256x256x4 voxels for 2-D models (at most 64 slices), 2**21 voxels
    for 3-D models (at most 8 windows)."""
    voxels = math.prod(window_size(settings, size_divisor))
    if settings.spatial_dims == 2:
        return max(1, min(64, (1 << 18) // voxels))
    return max(1, min(8, (1 << 21) // voxels))


class _Predictor:
    """``window (b, C, *roi3) -> softmax (b, K, *roi3)``: squeezes a 2-D model's slice axis and
    averages the mirrored passes when ``tta``; counts windows for the progress callback."""

    def __init__(self, model: nn.Module, slice_axis: int | None, tta: bool, progress: Callable | None):
        self.model = model
        self.slice_dim = None if slice_axis is None else 2 + int(slice_axis)
        self.progress = progress
        spatial = [d for d in (2, 3, 4) if d != self.slice_dim]
        self.flips: list[tuple[int, ...]] = (
            [combo for n in range(len(spatial) + 1) for combo in itertools.combinations(spatial, n)]
            if tta
            else [()]
        )

    def _softmax(self, x: Tensor) -> Tensor:
        import torch

        if self.slice_dim is not None:
            logits = self.model(x.squeeze(self.slice_dim)).unsqueeze(self.slice_dim)
        else:
            logits = self.model(x)
        return torch.softmax(logits.float(), dim=1)

    def __call__(self, x: Tensor) -> Tensor:
        out = None
        for dims in self.flips:
            if dims:
                p = self._softmax(x.flip(dims)).flip(dims)
            else:
                p = self._softmax(x)
            out = p if out is None else out.add_(p)
        if len(self.flips) > 1:
            out = out.div_(len(self.flips))  # type: ignore[union-attr]
        if self.progress is not None:
            self.progress(int(x.shape[0]))
        return out  # type: ignore[return-value]


def predict_probabilities(
    model: nn.Module,
    image: Tensor,
    settings: InferenceSettings | Mapping[str, Any],
    *,
    batch_size: int | None = None,
    tta: bool = False,
    progress: Callable[[int], None] | None = None,
    device: str | torch.device | None = None,
    output_device: str | torch.device | None = "auto",
) -> Tensor:
    """Softmax ``(num_classes, X, Y, Z)`` float32 of a preprocessed image ``(C, X, Y, Z)``.

    ``image`` is already in the model's grid (re-oriented, resampled, normalised; a ``MetaTensor``
    is accepted). ``settings`` an ``InferenceSettings`` or its dict; ``batch_size`` windows per
    forward (default ``default_batch_size``); ``tta`` mirroring test-time augmentation;
    ``progress(n)`` is called after each forward with the number of windows it covered (the total is
    ``count_windows``); ``device`` where the model runs (default: where its parameters are);
    ``output_device`` where the blended result is accumulated and returned: ``"auto"`` keeps it on
    ``device`` when that is the CPU, or a CUDA device with room to spare (a quarter of its free
    memory), else the CPU; ``None``: ``device``.
    """
    import torch

    import_monai()
    from monai.inferers.utils import sliding_window_inference

    settings = InferenceSettings.coerce(settings)
    dims = int(getattr(model, "spatial_dims", settings.spatial_dims))
    if dims != settings.spatial_dims:
        raise InputError(
            f"inference: roi_size {list(settings.roi_size)} is {settings.spatial_dims}-D "
            f"but the model is {dims}-D"
        )
    if image.ndim != 4:
        raise ValueError(
            f"predict_probabilities expects an image (C, X, Y, Z), got shape {tuple(image.shape)}"
        )
    in_channels = getattr(model, "in_channels", None)
    if in_channels is not None and int(in_channels) != image.shape[0]:
        raise InputError(f"the model expects {in_channels} image channel(s), got {image.shape[0]}")
    if hasattr(image, "as_tensor"):
        image = image.as_tensor()
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if output_device is None:
        out_device = device
    elif str(output_device) == "auto":
        out_device = _output_device(device, image.shape[1:], int(getattr(model, "num_classes", 0) or 0))
    else:
        out_device = torch.device(output_device)
    divisor = int(getattr(model, "size_divisor", 1) or 1)
    roi = window_size(settings, divisor)
    sw_batch = int(batch_size) if batch_size else default_batch_size(settings, divisor)
    predictor = _Predictor(model, settings.slice_axis, tta, progress)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = sliding_window_inference(
                image.float()[None].to(device),
                roi,
                sw_batch,
                predictor,
                overlap=settings.overlap,
                mode=settings.mode,
                sigma_scale=settings.sigma_scale,
                padding_mode="constant",
                cval=0.0,
                sw_device=device,
                device=out_device,
            )
    finally:
        model.train(was_training)
    return out[0]


def _output_device(device: torch.device, spatial: Sequence[int], num_classes: int) -> torch.device:
    import torch

    if device.type == "cpu":
        return device
    if device.type == "cuda" and num_classes > 0:
        needed = 4 * (num_classes + 1) * math.prod(int(n) for n in spatial)
        free, _ = torch.cuda.mem_get_info(device)
        if needed < free // 4:
            return device
    return torch.device("cpu")


def predict_case_probabilities(
    model: nn.Module, image: Tensor, settings: InferenceSettings | Mapping[str, Any], **kwargs: Any
) -> Tensor:
    """``predict_probabilities`` under the name training's validation looks for."""
    return predict_probabilities(model, image, settings, **kwargs)
