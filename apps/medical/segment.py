"""``hybrids medical segment``: label volumes for NIfTI files and DICOM series.

    hybrids medical segment case.nii.gz -o out/                  # out/case.nii.gz
    hybrids medical segment imagesTs/ dicom_series/ -o out/ -m runs/hippo/best --tta
    hybrids medical segment case.nii.gz -o seg.nii.gz --save-probabilities

Per case: read the volume (``hybrids.datasets.medical.load_volume``), re-orient and resample it to
the model's grid and normalise its intensities exactly as recorded with the weights
(``apps.medical.preprocessing``), predict softmax probabilities with MONAI's sliding windows
(``apps.medical.inference``; 2-D models slice by slice), take the argmax as uint8 *in the model grid*
and only then map it back to the input's own grid (nearest neighbour; an exact index copy when the
two grids differ by axis flips and permutations only), and write it with the input's shape, affine
and header plus the label names (``save_label_volume``, atomic). ``--save-probabilities`` also writes
``<case>.npz`` (as nnU-Net does) holding ``probabilities`` ``(num_classes, X, Y, Z)`` float16 in the
input's voxel order (linear resampling back), ``affine`` and ``labels`` (the class names).

Output names follow nnU-Net: ``OUT/<case>.nii.gz`` where ``<case>`` is the file name without
``.nii.gz`` and without nnU-Net's channel suffix ``_0000``, or the DICOM folder's name. ``-o FILE.nii.gz``
with a single input writes that file. A failing case does not stop a batch: the others are written,
each failure is one line, and the exit status is 2 with a summary.

Models: ``-m hippocampus`` (default) is the built-in model in ``apps/medical/pretrained/hippocampus``;
``-m DIR`` / ``--weights PATH`` a model folder (``model.safetensors`` + ``config.json``, as written by
``hybrids medical train``) or its ``model.safetensors``; a training output folder ``OUT`` means ``OUT/best``.

From Python::

    segmenter = Segmenter("runs/hippo/best", device="cpu", tta=False)
    prediction = segmenter.predict(load_volume("case.nii.gz"))   # .labels (X, Y, Z) uint8
    segmenter.segment_file("case.nii.gz", "out/case.nii.gz")
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrids.apps.core.catalog import builtin_models
from hybrids.apps.core.errors import HybridsError, InputError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from hybrids.datasets.medical import Volume

logger = logging.getLogger("hybrids.medical")

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL = "hippocampus"
# Built-in models (folders under pretrained/); listed here so a missing folder gets a clear error.
BUILTIN_MODELS = {b.name.split("/", 1)[1]: b.description for b in builtin_models("medical")}
PROBABILITIES_SUFFIX = ".npz"


# -- the model ----------------------------------------------------------------------------------------
def resolve_model_path(model: str | Path | None = None, weights: str | Path | None = None) -> Path:
    """The model folder (or ``model.safetensors``) that ``-m`` / ``--weights`` stand for."""
    if weights is not None:
        path = Path(weights)
        if not path.exists():
            raise InputError(f"{path}: no such model folder or weights file (--weights)")
        return path
    name = str(model if model is not None else DEFAULT_MODEL)
    path = Path(name)
    if path.exists():
        best = path / "best"  # a `hybrids medical train` output folder stands for its best checkpoint
        if path.is_dir() and not (path / "config.json").exists() and (best / "config.json").is_file():
            return best
        return path
    if name in BUILTIN_MODELS:
        folder = PRETRAINED_DIR / name
        if (folder / "config.json").is_file():
            return folder
        raise InputError(
            f"built-in model {name!r} is not installed in this build ({folder} is missing); "
            "pass a model folder with -m DIR or --weights PATH"
        )
    if "/" in name or "\\" in name or name.startswith("."):
        raise InputError(f"{path}: no such model folder (-m)")
    raise InputError(
        f"unknown model {name!r}: use a built-in model ({', '.join(sorted(BUILTIN_MODELS))}) "
        "or a model folder path"
    )


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda``/``gpu``, ``cuda:N``/``gpu:N``, ``mps``."""
    import torch

    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text.startswith("gpu"):
        text = "cuda" + text[3:]
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"--device: unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device: unsupported device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device


@dataclass
class Prediction:
    """``labels`` ``(X, Y, Z)`` uint8 in the input's grid; ``probabilities`` ``(K, X, Y, Z)`` float16
    (only when asked for)."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


class Segmenter:
    """A loaded segmentation model with the preprocessing and inference settings of its folder."""

    def __init__(
        self,
        model: str | Path | None = DEFAULT_MODEL,
        *,
        weights: str | Path | None = None,
        device: str | None = "auto",
        tta: bool = False,
        overlap: float | None = None,
        batch_size: int | None = None,
    ) -> None:
        from hybrids.apps.core.checkpoint import load_checkpoint, read_checkpoint_info
        from hybrids.apps.medical.inference import InferenceSettings, import_monai
        from hybrids.apps.medical.preprocessing import Preprocessing

        import_monai()

        self.path = resolve_model_path(model, weights)
        self.device = resolve_device(device)
        info = read_checkpoint_info(self.path)
        if info is None:
            raise InputError(f"{self.path}: not a model folder (needs model.safetensors and config.json)")
        where = self.path if self.path.is_dir() else self.path.parent
        if not info.get("inference"):
            raise InputError(f"{where}: config.json has no 'inference' settings (roi_size, overlap, ...)")
        try:
            self.preprocessing = Preprocessing.from_dict(info.get("preprocessing") or {})
            settings = InferenceSettings.from_dict(info["inference"])
        except InputError as exc:
            raise InputError(f"{where}/config.json: {exc}") from None
        if overlap is not None:
            settings = settings.replace(overlap=overlap)
        self.settings = settings
        self.model = load_checkpoint(self.path, device=self.device).eval()
        self.model_name = str(info["model"])
        self.num_classes = int(getattr(self.model, "num_classes", 0) or 0) or None
        self.label_names = _label_names(info.get("labels"))
        self.tta = bool(tta)
        self.batch_size = batch_size
        in_channels = int(getattr(self.model, "in_channels", self.preprocessing.in_channels))
        if in_channels != 1:
            raise InputError(
                f"{where}: the model takes {in_channels} image channels; segment reads one image per case"
            )

    def predict(
        self, volume: Volume, *, probabilities: bool = False, progress: Callable[[int], None] | None = None
    ) -> Prediction:
        """Labels (and optionally probabilities) of ``volume`` in its own grid."""
        import numpy as np
        import torch

        from hybrids.apps.medical.inference import predict_probabilities
        from hybrids.apps.medical.preprocessing import normalize_intensity, spatial_transform

        image = spatial_transform(self.preprocessing)(volume.to_metatensor())
        model_affine = np.asarray(image.affine, dtype=np.float64)
        image = normalize_intensity(image, self.preprocessing).as_tensor()
        probs = predict_probabilities(
            self.model,
            image,
            self.settings,
            batch_size=self.batch_size,
            tta=self.tta,
            progress=progress,
            device=self.device,
        )
        del image
        labels_model = probs.argmax(0).to(torch.uint8).numpy()
        probs16 = probs.half().numpy() if probabilities else None
        del probs
        to_input = _Resampler(model_affine, labels_model.shape, volume.affine, volume.spatial_shape)
        labels = to_input.labels(labels_model)
        del labels_model
        out = None
        if probs16 is not None:
            out = np.empty((probs16.shape[0], *volume.spatial_shape), dtype=np.float16)
            for k in range(probs16.shape[0]):
                out[k] = to_input.values(probs16[k])
            del probs16
        return Prediction(labels, out)

    def segment_file(
        self,
        path: str | Path,
        output: str | Path,
        *,
        save_probabilities: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Segment one NIfTI file or DICOM series folder into ``output`` (a ``.nii.gz`` path); returns
        the files written (labels, then probabilities)."""
        from hybrids.datasets.medical import MedicalImageError, load_volume

        try:
            volume = load_volume(path)
        except MedicalImageError as exc:
            raise InputError(str(exc)) from None
        return self.segment_volume(volume, output, save_probabilities=save_probabilities, progress=progress)

    def segment_volume(
        self,
        volume: Volume,
        output: str | Path,
        *,
        save_probabilities: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        from hybrids.datasets.medical import looks_like_label_map, save_label_volume

        if looks_like_label_map(volume.array):
            logger.warning(
                "%s: holds only a few small integer values; it looks like a label map, not an image "
                "(its segmentation will be meaningless)",
                volume.path,
            )
        output = Path(output)
        prediction = self.predict(volume, probabilities=save_probabilities, progress=progress)
        written: list[Path] = []
        try:
            if prediction.probabilities is not None:
                target = probabilities_path(output)
                write_probabilities(target, prediction.probabilities, volume.affine, self.label_names)
                written.append(target)
            save_label_volume(output, prediction.labels, volume, label_names=self.label_names)
        except BaseException:
            for path in written:  # never leave half of a case behind
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return [output, *written]

    def windows(self, volume: Volume) -> int:
        """Number of sliding windows for ``volume`` (progress bar total), from its model-grid shape."""
        from hybrids.apps.medical.inference import count_windows

        shape = _model_grid_shape(volume, self.preprocessing)
        return count_windows(shape, self.settings, int(getattr(self.model, "size_divisor", 1) or 1))


def _label_names(labels: Any) -> dict[int, str]:
    if not isinstance(labels, Mapping):
        return {}
    names = {}
    for key, value in labels.items():
        if str(key).isdigit():
            names[int(key)] = str(value)
        elif str(value).isdigit():  # nnU-Net v2's {"background": 0, ...}
            names[int(value)] = str(key)
    return names


def _model_grid_shape(volume: Volume, prep: Any) -> tuple[int, ...]:
    """Shape of ``volume`` after re-orientation and resampling to ``prep.spacing`` (MONAI's rule)."""
    import nibabel as nib
    import numpy as np

    ornt = nib.orientations.io_orientation(volume.affine)
    shape = [volume.spatial_shape[int(axis)] for axis, _ in ornt]
    spacing = [volume.spacing[int(axis)] for axis, _ in ornt]
    if prep.spacing is None:
        return tuple(shape)
    return tuple(
        max(1, int(np.round(n * s / t))) for n, s, t in zip(shape, spacing, prep.spacing, strict=True)
    )


class _Resampler:
    """Maps arrays from the model grid ``(src_affine, src_shape)`` to the input grid. An exact index
    copy when the grids differ by axis flips/permutations (same spacing, aligned voxels); otherwise
    MONAI's ``SpatialResample`` (nearest for labels, linear for probabilities)."""

    def __init__(
        self, src_affine: Any, src_shape: tuple[int, ...], dst_affine: Any, dst_shape: tuple[int, ...]
    ):
        import numpy as np

        self.src_affine = np.asarray(src_affine, dtype=np.float64)
        self.dst_affine = np.asarray(dst_affine, dtype=np.float64)
        self.src_shape = tuple(int(n) for n in src_shape)
        self.dst_shape = tuple(int(n) for n in dst_shape)
        self.exact = self._exact_indexing()

    def _exact_indexing(self) -> tuple[tuple[slice, ...], tuple[int, ...]] | None:
        import numpy as np

        t = np.linalg.inv(self.src_affine) @ self.dst_affine  # input voxel -> model voxel
        rot, offset = t[:3, :3], t[:3, 3]
        if not np.allclose(np.abs(rot), np.round(np.abs(rot)), atol=1e-4) or not np.allclose(
            np.abs(rot).sum(0), 1.0, atol=1e-4
        ):
            return None
        if not np.allclose(offset, np.round(offset), atol=1e-3):
            return None
        slices: list[slice] = [slice(None)] * 3
        source_axis = [0, 0, 0]
        for i in range(3):
            j = int(np.argmax(np.abs(rot[:, i])))
            sign, start, n = int(np.sign(rot[j, i])), int(np.round(offset[j])), self.dst_shape[i]
            last = start + sign * (n - 1)
            if min(start, last) < 0 or max(start, last) >= self.src_shape[j]:
                return None
            slices[j] = (
                slice(start, start + n) if sign > 0 else slice(start, (last - 1) if last > 0 else None, -1)
            )
            source_axis[i] = j
        if sorted(source_axis) != [0, 1, 2]:
            return None
        return tuple(slices), tuple(source_axis)

    def _resample(self, array: np.ndarray, mode: str) -> np.ndarray:
        import numpy as np
        import torch
        from monai.data import MetaTensor
        from monai.transforms import SpatialResample

        image = MetaTensor(
            torch.from_numpy(array.astype(np.float32))[None], affine=torch.from_numpy(self.src_affine)
        )
        out = SpatialResample(mode=mode, padding_mode="border", dtype=torch.float64)(
            image, dst_affine=torch.from_numpy(self.dst_affine), spatial_size=self.dst_shape
        )
        return out.as_tensor()[0].numpy()

    def labels(self, labels: np.ndarray) -> np.ndarray:
        import numpy as np

        if self.exact is not None:
            slices, axes = self.exact
            return np.ascontiguousarray(labels[slices].transpose(axes))
        return np.rint(self._resample(labels, "nearest")).astype(np.uint8)

    def values(self, values: np.ndarray) -> np.ndarray:
        import numpy as np

        if self.exact is not None:
            slices, axes = self.exact
            return np.ascontiguousarray(values[slices].transpose(axes))
        return self._resample(values, "bilinear").astype(values.dtype)


def probabilities_path(label_path: str | Path) -> Path:
    """``out/case.npz`` beside ``out/case.nii.gz`` (nnU-Net's naming)."""
    from hybrids.datasets.medical import NIFTI_SUFFIXES

    path = Path(label_path)
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + PROBABILITIES_SUFFIX)


def write_probabilities(
    path: Path, probabilities: np.ndarray, affine: np.ndarray, label_names: Mapping[int, str]
) -> Path:
    """``np.savez_compressed`` of ``probabilities`` (K, X, Y, Z) float16, ``affine`` and ``labels``
    (one name per class, ``"background"`` for 0), written atomically."""
    import numpy as np

    from hybrids.datasets.atomic import atomic_write_path

    names = [label_names.get(k, "background" if k == 0 else str(k)) for k in range(probabilities.shape[0])]
    with atomic_write_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            probabilities=probabilities.astype(np.float16, copy=False),
            affine=np.asarray(affine, dtype=np.float64),
            labels=np.asarray(names),
        )
    return path


# -- the batch ----------------------------------------------------------------------------------------
@dataclass
class SegmentConfig:
    """A batch for :func:`segment` (``hybrids medical segment``): ``inputs`` (NIfTI files, DICOM series
    folders, folders of NIfTI files), ``output`` (a folder, or one ``.nii.gz`` for a single case), the
    model (``model``: a built-in name or a model folder; or ``weights``), and inference settings
    (``overlap`` and ``batch_size`` default to the model's)."""

    inputs: list[Path]
    output: Path
    model: str | None = None
    weights: Path | None = None
    device: str = "auto"
    tta: bool = False
    save_probabilities: bool = False
    overlap: float | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        self.inputs = [Path(p) for p in self.inputs]
        self.output = Path(self.output)


def segment(config: SegmentConfig) -> int:
    """Segment every case of ``config``; a failing case does not stop the others (``InputError``
    with a summary at the end). Returns 0."""
    from hybrids.datasets.atomic import check_output_folder, make_output_folder
    from hybrids.datasets.medical import MedicalImageError, is_nifti_path, list_cases

    inputs = list(config.inputs)
    if not inputs:
        raise InputError("no INPUT given: pass NIfTI files, DICOM series folders or folders of NIfTI files")
    if config.overlap is not None and not 0 <= config.overlap < 1:
        raise InputError(f"--overlap must be in [0, 1), got {config.overlap}")
    if config.batch_size is not None and config.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {config.batch_size}")
    if config.model is not None and config.weights is not None:
        raise InputError("pass either -m MODEL or --weights PATH, not both")

    # Inputs first (cheap): every case and every input that cannot even be listed.
    cases = []
    failures: list[str] = []
    seen: dict[str, Path] = {}
    for item in inputs:
        try:
            found = list_cases(item)
        except MedicalImageError as exc:
            failures.append(str(exc))
            continue
        for case in found:
            if case.name in seen:
                failures.append(f"{case.path}: case name {case.name!r} also comes from {seen[case.name]}")
                continue
            seen[case.name] = case.path
            cases.append(case)
    n_inputs = len(cases) + len(failures)
    if n_inputs == 1 and failures:
        raise InputError(failures[0])

    single_file = is_nifti_path(config.output)
    if single_file and n_inputs > 1:
        raise InputError(f"-o {config.output}: a single output file takes one input case, got {n_inputs}")
    targets = {
        case.name: config.output if single_file else config.output / f"{case.name}.nii.gz" for case in cases
    }
    for case in cases:
        target = targets[case.name]
        if target.resolve() == case.path.resolve() or (
            config.save_probabilities and probabilities_path(target).resolve() == case.path.resolve()
        ):
            raise InputError(f"{case.path}: the output would overwrite this input; choose another -o")
    for message in failures:
        logger.error("%s", message)
    if not cases:
        raise InputError(f"none of the {n_inputs} inputs can be segmented (see the messages above)")

    out_dir = config.output.parent if single_file else config.output
    check_output_folder(out_dir)  # before the model loads: an unwritable -o is an input error
    segmenter = _make_segmenter(config)
    created = not out_dir.exists()
    make_output_folder(out_dir)
    try:
        return _segment_cases(segmenter, cases, targets, config, failures, n_inputs, single_file)
    finally:
        if created:  # nothing written: leave no empty output folder behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()


def _segment_cases(
    segmenter: Segmenter,
    cases: list,
    targets: dict[str, Path],
    config: SegmentConfig,
    failures: list[str],
    n_inputs: int,
    single_file: bool,
) -> int:
    from hybrids.apps.core.memory import limit_malloc_arenas
    from hybrids.datasets.atomic import OutputError
    from hybrids.datasets.medical import MedicalImageError

    limit_malloc_arenas(1)
    done = 0
    for index, case in enumerate(cases, 1):
        level = logging.INFO if len(cases) > 1 else logging.DEBUG
        logger.log(level, "Segmenting %s (%d/%d)", case.path, index, len(cases))
        try:
            seconds = _segment_case(segmenter, case, targets[case.name], config)
            done += 1
            logger.debug("%s: %.2f s", case.name, seconds)
        except (HybridsError, MedicalImageError, OutputError) as exc:
            if n_inputs == 1:
                raise InputError(str(exc)) from None
            failures.append(str(exc))
            logger.error("%s", exc)
    if done:
        where = config.output if single_file else config.output.resolve()
        logger.info(
            "Label volume%s of %d case%s written to %s",
            "s" if done > 1 else "",
            done,
            "s" if done > 1 else "",
            where,
        )
    if failures:
        raise InputError(f"{len(failures)} of {n_inputs} inputs failed (see the messages above)")
    return 0


def _make_segmenter(config: SegmentConfig) -> Segmenter:
    from hybrids.apps.core.errors import CheckpointError

    try:
        return Segmenter(
            config.model,
            weights=config.weights,
            device=config.device,
            tta=config.tta,
            overlap=config.overlap,
            batch_size=config.batch_size,
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError) as exc:  # a config.json that does not fit the model's config class
        raise InputError(f"{config.weights or config.model}: model config does not fit ({exc})") from None


def _segment_case(segmenter: Segmenter, case: Any, target: Path, config: SegmentConfig) -> float:
    from hybrids.apps.core.progress import progress_bar
    from hybrids.datasets.medical import load_volume

    started = time.perf_counter()
    volume = load_volume(case.path)
    with progress_bar(total=segmenter.windows(volume), desc=case.name, unit="window") as bar:
        segmenter.segment_volume(
            volume, target, save_probabilities=config.save_probabilities, progress=bar.update
        )
    return time.perf_counter() - started
