"""Segmentation metrics and reports: Dice, HD95 and normalised surface Dice per class.

Arrays are integer label volumes ``(X, Y, Z)`` (0 = background), ``labels`` the foreground
classes to score, ``spacing`` the voxel size in mm along the three axes.

Conventions (per class ``c``, ``P = pred == c``, ``R = ref == c``):

- **Dice** ``2|P∩R| / (|P| + |R|)``, nnU-Net's rule for empty masks: NaN only when both ``P`` and
  ``R`` are empty (nothing to find, nothing found); an empty reference with a non-empty
  prediction scores 0 (every voxel is a false positive), as does a non-empty reference with an
  empty prediction. MONAI's ``DiceMetric`` (``ignore_empty=True``) instead gives NaN whenever the
  reference is empty; on non-empty references the two agree exactly.
- **HD95** in mm: MONAI's ``compute_hausdorff_distance(percentile=95)`` (symmetric: the larger of
  the two directed 95th percentiles of the Euclidean distances between the masks' edge voxels,
  measured with the voxel spacing). Both empty: NaN; exactly one empty: ``inf`` (MONAI returns
  NaN there; a missed or hallucinated structure is reported as an infinite distance instead of
  silently dropping out of the mean).
- **NSD** (normalised surface Dice, Nikolov et al. 2021): MONAI's ``compute_surface_dice`` with a
  tolerance in mm: the fraction of both surfaces lying within the tolerance of the other. Both
  empty: NaN; one empty: 0.

Summaries (per class and metric) are the mean, population std and median over the cases where the
value is finite, with the counts of NaN (``n_nan``) and infinite (``n_inf``) cases beside them.

``evaluate_folders(pred_dir, ref_dir)`` scores every NIfTI label file of ``pred_dir`` against the
file of the same case name in ``ref_dir`` (``.nii`` and ``.nii.gz`` match; ``ref_dir`` may hold
more cases, e.g. all of ``labelsTr``); ``write_segmentation_report`` writes ``cases.csv``,
``summary.csv``, ``summary.json``, ``report.md`` and ``contours.png`` (a few slices of the worst,
median and best case with reference and predicted contours), each atomically. Problems with the
inputs raise ``MedicalImageError`` naming the case or file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybrids.datasets.atomic import atomic_write_path, atomic_write_text
from hybrids.datasets.medical import (
    MedicalImageError,
    Volume,
    is_nifti_path,
    load_label_volume,
    load_volume,
    read_label_names,
    read_msd_label_names,
    read_nifti_geometry,
)

__all__ = [
    "METRICS",
    "dice_per_class",
    "hd95_per_class",
    "surface_dice_per_class",
    "evaluate_case",
    "CaseResult",
    "SegmentationEvaluation",
    "match_cases",
    "evaluate_folders",
    "summary_rows",
    "case_rows",
    "write_segmentation_report",
]

METRICS = ("dice", "hd95_mm", "nsd")


def _masks(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One-hot ``(C, X, Y, Z)`` bool masks of ``labels`` in pred and ref."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    labels = [int(c) for c in labels]
    return (
        np.stack([pred == c for c in labels]) if labels else np.zeros((0, *pred.shape), bool),
        np.stack([ref == c for c in labels]) if labels else np.zeros((0, *ref.shape), bool),
    )


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label (nnU-Net's empty rule: NaN only when both masks are empty)."""
    p, r = _masks(pred, ref, labels)
    out = {}
    for c, pc, rc in zip(labels, p, r):
        tp = np.count_nonzero(pc & rc)
        denominator = np.count_nonzero(pc) + np.count_nonzero(rc)
        out[int(c)] = math.nan if denominator == 0 else 2.0 * tp / denominator
    return out


def _monai_per_class(
    compute: Callable, pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], one_empty: float, **kwargs
) -> dict[int, float]:
    import torch

    p, r = _masks(pred, ref, labels)
    out: dict[int, float] = {}
    todo = []
    for i, c in enumerate(labels):
        p_any, r_any = bool(p[i].any()), bool(r[i].any())
        if not p_any and not r_any:
            out[int(c)] = math.nan
        elif not (p_any and r_any):
            out[int(c)] = one_empty
        else:
            todo.append(i)
    if todo:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = compute(
                torch.from_numpy(p[todo][None]).float(), torch.from_numpy(r[todo][None]).float(), **kwargs
            )
        for i, value in zip(todo, values.reshape(-1).tolist()):
            out[int(labels[i])] = float(value)
    return {int(c): out[int(c)] for c in labels}


def hd95_per_class(
    pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], spacing: Sequence[float], percentile: float = 95
) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance in mm per label (MONAI's definition)."""
    from monai.metrics import compute_hausdorff_distance

    return _monai_per_class(
        compute_hausdorff_distance,
        pred,
        ref,
        labels,
        math.inf,
        include_background=True,
        percentile=percentile,
        spacing=[float(s) for s in spacing],
    )


def surface_dice_per_class(
    pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], spacing: Sequence[float], tolerance_mm: float
) -> dict[int, float]:
    """Normalised surface Dice per label at ``tolerance_mm`` (MONAI's ``compute_surface_dice``)."""
    from monai.metrics import compute_surface_dice

    def compute(y_pred, y, **kwargs):
        return compute_surface_dice(y_pred, y, [float(tolerance_mm)] * y.shape[1], **kwargs)

    return _monai_per_class(
        compute, pred, ref, labels, 0.0, include_background=True, spacing=[float(s) for s in spacing]
    )


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
) -> dict[int, dict[str, float]]:
    """``{label: {"dice", "hd95_mm", "nsd", "ref_voxels", "pred_voxels"}}`` of one case."""
    dice = dice_per_class(pred, ref, labels)
    hd95 = hd95_per_class(pred, ref, labels, spacing)
    nsd = surface_dice_per_class(pred, ref, labels, spacing, tolerance_mm)
    return {
        int(c): {
            "dice": dice[c],
            "hd95_mm": hd95[c],
            "nsd": nsd[c],
            "ref_voxels": int(np.count_nonzero(ref == c)),
            "pred_voxels": int(np.count_nonzero(pred == c)),
        }
        for c in labels
    }


@dataclass
class CaseResult:
    name: str
    pred_path: Path
    ref_path: Path
    metrics: dict[int, dict[str, float]]

    def mean_dice(self) -> float:
        values = [m["dice"] for m in self.metrics.values() if not math.isnan(m["dice"])]
        return float(np.mean(values)) if values else math.nan


@dataclass
class SegmentationEvaluation:
    pred_dir: Path
    ref_dir: Path
    labels: list[int]
    label_names: dict[int, str]
    tolerance_mm: float
    cases: list[CaseResult] = field(default_factory=list)


def _nifti_files(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise MedicalImageError(f"{folder}: {what} ({role} label NIfTI files expected)")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_nifti_path(path) and not path.name.startswith("."):
            name = _label_case_name(path)
            if name in files:
                raise MedicalImageError(
                    f"{folder}: case {name!r} appears twice ({files[name].name}, {path.name})"
                )
            files[name] = path
    return files


def _label_case_name(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def match_cases(pred_dir: str | Path, ref_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """``(case, pred_file, ref_file)`` for every prediction; each needs a reference of the same
    case name (extra references are ignored)."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds = _nifti_files(pred_dir, "predicted")
    refs = _nifti_files(ref_dir, "reference")
    if not preds:
        raise MedicalImageError(f"{pred_dir}: no NIfTI label files (.nii, .nii.gz) to evaluate")
    missing = [name for name in preds if name not in refs]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MedicalImageError(f"case {missing[0]}{more}: no reference label file in {ref_dir}")
    return [(name, preds[name], refs[name]) for name in sorted(preds)]


def _default_label_names(ref_dir: Path, ref_files: Sequence[Path]) -> dict[int, str]:
    for candidate in (ref_dir / "dataset.json", ref_dir.parent / "dataset.json"):
        if candidate.is_file():
            try:
                return read_msd_label_names(candidate)
            except MedicalImageError:
                pass
    for path in ref_files[:1]:
        try:
            return read_label_names(path)
        except MedicalImageError:
            pass
    return {}


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: Sequence[int] | None = None,
    tolerance_mm: float = 1.0,
    label_names: Mapping[int, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SegmentationEvaluation:
    """Score every case of ``pred_dir`` against ``ref_dir``.

    ``labels``: classes to score (default: those named in ``dataset.json`` in ``ref_dir`` or its
    parent, else the label names stored in the references, else every non-zero label found).
    Shapes and affines of each pair must agree (checked on the headers of all cases before any
    voxel is read); the spacing is the reference's. Cases are loaded one at a time.
    """
    if tolerance_mm <= 0 or not math.isfinite(tolerance_mm):
        raise ValueError(f"tolerance must be a positive number of mm, got {tolerance_mm}")
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    pairs = match_cases(pred_dir, ref_dir)
    names = dict(label_names or _default_label_names(ref_dir, [ref for _, _, ref in pairs]))
    # Pass 1, headers only: every pair must share one grid before any voxel is read.
    for name, pred_path, ref_path in pairs:
        pred_shape, pred_affine = _geometry(pred_path, name)
        ref_shape, ref_affine = _geometry(ref_path, name)
        if pred_shape != ref_shape:
            raise MedicalImageError(
                f"case {name}: prediction shape {_dims(pred_shape)} differs from "
                f"reference shape {_dims(ref_shape)} ({pred_path})"
            )
        if not np.allclose(pred_affine, ref_affine, atol=1e-3):
            raise MedicalImageError(
                f"case {name}: prediction and reference lie in different grids (affines differ; {pred_path})"
            )
    if labels is not None:
        chosen = [int(c) for c in labels]
    elif names:
        chosen = sorted(names)
    else:  # pass 2: every non-zero label of the references and predictions
        found: set[int] = set()
        for name, pred_path, ref_path in pairs:
            for path in (ref_path, pred_path):
                found.update(int(v) for v in np.unique(_load_labels(path, name).array))
        chosen = sorted(found - {0})
    if not chosen:
        raise MedicalImageError(f"{ref_dir}: no foreground labels in the references or predictions")
    if any(c <= 0 for c in chosen):
        raise ValueError(f"labels must be positive foreground classes, got {chosen}")
    result = SegmentationEvaluation(
        pred_dir, ref_dir, chosen, {c: names.get(c, f"label {c}") for c in chosen}, float(tolerance_mm)
    )
    # Pass 3: one case in memory at a time.
    for name, pred_path, ref_path in pairs:
        pred = _load_labels(pred_path, name)
        ref = _load_labels(ref_path, name)
        metrics = evaluate_case(pred.array, ref.array, chosen, ref.spacing, tolerance_mm)
        result.cases.append(CaseResult(name, pred_path, ref_path, metrics))
        if progress is not None:
            progress(name)
    return result


def _geometry(path: Path, case: str) -> tuple[tuple[int, ...], np.ndarray]:
    try:
        return read_nifti_geometry(path)
    except MedicalImageError as exc:
        raise MedicalImageError(f"case {case}: {exc}") from None


def _load_labels(path: Path, case: str) -> Volume:
    try:
        return load_label_volume(path)
    except MedicalImageError as exc:
        raise MedicalImageError(f"case {case}: {exc}") from None


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape)


# --- tables ------------------------------------------------------------------------------------


def case_rows(evaluation: SegmentationEvaluation) -> list[dict]:
    """One dict per (case, label): case, label, name, dice, hd95_mm, nsd, ref_voxels, pred_voxels."""
    return [
        {"case": case.name, "label": c, "name": evaluation.label_names[c], **case.metrics[c]}
        for case in evaluation.cases
        for c in evaluation.labels
    ]


def summary_rows(evaluation: SegmentationEvaluation) -> list[dict]:
    """One dict per (label, metric): mean, std, median over finite values, n, n_nan, n_inf.
    A last ``label = "mean"`` block averages each case's foreground classes first (NaNs skipped)."""
    rows = []
    groups: list[tuple[str | int, str, dict[str, list[float]]]] = []
    for c in evaluation.labels:
        values = {m: [case.metrics[c][m] for case in evaluation.cases] for m in METRICS}
        groups.append((c, evaluation.label_names[c], values))
    if len(evaluation.labels) > 1:
        values = {
            m: [_finite_mean([case.metrics[c][m] for c in evaluation.labels]) for case in evaluation.cases]
            for m in METRICS
        }
        groups.append(("mean", "over classes", values))
    for label, name, values in groups:
        for metric in METRICS:
            v = np.asarray(values[metric], dtype=np.float64)
            finite = v[np.isfinite(v)]
            rows.append(
                {
                    "label": label,
                    "name": name,
                    "metric": metric,
                    "mean": float(finite.mean()) if finite.size else math.nan,
                    "std": float(finite.std()) if finite.size else math.nan,
                    "median": float(np.median(finite)) if finite.size else math.nan,
                    "n": int(finite.size),
                    "n_nan": int(np.isnan(v).sum()),
                    "n_inf": int(np.isinf(v).sum()),
                }
            )
    return rows


def _finite_mean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    if np.isinf(v).any():
        return math.inf
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def _csv_text(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row[k]) for k in columns})
    return buffer.getvalue()


def _csv_value(value):
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.6g}")
    return value


def _fmt(value: float, digits: int = 4) -> str:
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _markdown(evaluation: SegmentationEvaluation, summary: Sequence[Mapping], png: str | None) -> str:
    lines = [
        "# Segmentation evaluation",
        "",
        f"- predictions: `{evaluation.pred_dir}`",
        f"- references: `{evaluation.ref_dir}`",
        f"- cases: {len(evaluation.cases)}; labels: "
        + ", ".join(f"{c} ({evaluation.label_names[c]})" for c in evaluation.labels),
        f"- NSD tolerance: {evaluation.tolerance_mm:g} mm",
        "",
        "## Summary",
        "",
        "| label | metric | mean | std | median | n | NaN | inf |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary:
        digits = 2 if row["metric"] == "hd95_mm" else 4
        lines.append(
            f"| {row['label']} {row['name']} | {row['metric']} | {_fmt(row['mean'], digits)} | "
            f"{_fmt(row['std'], digits)} | {_fmt(row['median'], digits)} | {row['n']} | {row['n_nan']} | "
            f"{row['n_inf']} |"
        )
    lines += [
        "",
        "Mean, std (population) and median over cases with a finite value. Dice follows nnU-Net: "
        "NaN only when prediction and reference are both empty; an empty reference with a non-empty "
        "prediction scores 0. HD95 (mm, MONAI's definition) is NaN when both are empty and inf when "
        "exactly one is. NSD (MONAI) is NaN when both are empty and 0 when one is.",
        "",
        "## Cases",
        "",
        "| case | "
        + " | ".join(f"Dice {c}" for c in evaluation.labels)
        + " | "
        + " | ".join(f"HD95 {c} (mm)" for c in evaluation.labels)
        + " | "
        + " | ".join(f"NSD {c}" for c in evaluation.labels)
        + " |",
        "|---|" + "---:|" * (3 * len(evaluation.labels)),
    ]
    for case in evaluation.cases:
        cells = [_fmt(case.metrics[c]["dice"]) for c in evaluation.labels]
        cells += [_fmt(case.metrics[c]["hd95_mm"], 2) for c in evaluation.labels]
        cells += [_fmt(case.metrics[c]["nsd"]) for c in evaluation.labels]
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    if png:
        lines += ["", "## Slices", "", f"![reference (solid) and predicted (dashed) contours]({png})"]
    return "\n".join(lines) + "\n"


# --- report ------------------------------------------------------------------------------------


def write_segmentation_report(
    evaluation: SegmentationEvaluation,
    out_dir: str | Path,
    images_dir: str | Path | None = None,
    cases_shown: int = 3,
    slices_shown: int = 3,
) -> dict[str, Path]:
    """Write ``cases.csv``, ``summary.csv``, ``summary.json``, ``report.md`` and ``contours.png``
    (skipped when there is no case) into ``out_dir``; returns ``{kind: path}``.

    ``images_dir``: optional folder of the images (``case.nii.gz`` or nnU-Net's
    ``case_0000.nii.gz``) drawn under the contours; without it the background is blank.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_rows(evaluation)
    written = {}
    columns = ["case", "label", "name", *METRICS, "ref_voxels", "pred_voxels"]
    written["cases_csv"] = out / "cases.csv"
    atomic_write_text(written["cases_csv"], _csv_text(case_rows(evaluation), columns))
    written["summary_csv"] = out / "summary.csv"
    atomic_write_text(
        written["summary_csv"],
        _csv_text(summary, ["label", "name", "metric", "mean", "std", "median", "n", "n_nan", "n_inf"]),
    )
    written["summary_json"] = out / "summary.json"
    payload = {
        "pred_dir": str(evaluation.pred_dir),
        "ref_dir": str(evaluation.ref_dir),
        "labels": {str(c): evaluation.label_names[c] for c in evaluation.labels},
        "tolerance_mm": evaluation.tolerance_mm,
        "summary": [{k: _json_value(v) for k, v in row.items()} for row in summary],
        "cases": {
            case.name: {str(c): {k: _json_value(v) for k, v in m.items()} for c, m in case.metrics.items()}
            for case in evaluation.cases
        },
    }
    atomic_write_text(written["summary_json"], json.dumps(payload, indent=2) + "\n")
    png = None
    if evaluation.cases:
        written["contours_png"] = out / "contours.png"
        _plot_contours(evaluation, written["contours_png"], images_dir, cases_shown, slices_shown)
        png = written["contours_png"].name
    written["report_md"] = out / "report.md"
    atomic_write_text(written["report_md"], _markdown(evaluation, summary, png))
    return written


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else "inf"
    return value


def _shown_cases(evaluation: SegmentationEvaluation, count: int) -> list[CaseResult]:
    """Worst, median and best case by mean foreground Dice (cases with no Dice sort last)."""
    ranked = sorted(evaluation.cases, key=lambda c: (math.isnan(c.mean_dice()), c.mean_dice(), c.name))
    if len(ranked) <= count:
        return ranked
    positions = np.linspace(0, len(ranked) - 1, count).round().astype(int)
    return [ranked[i] for i in dict.fromkeys(positions.tolist())]


def _image_for(images_dir: Path | None, case: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if images_dir is None:
        return None
    for suffix in (".nii.gz", ".nii", "_0000.nii.gz", "_0000.nii"):
        path = images_dir / f"{case}{suffix}"
        if path.is_file():
            volume = load_volume(path)
            return volume.array if volume.spatial_shape == shape else None
    return None


def _plot_contours(
    evaluation: SegmentationEvaluation,
    destination: Path,
    images_dir: str | Path | None,
    cases_shown: int,
    slices_shown: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    cases = _shown_cases(evaluation, cases_shown)
    figure = Figure(figsize=(3.0 * slices_shown, 3.2 * len(cases)), dpi=100)
    axes = figure.subplots(len(cases), slices_shown, squeeze=False)
    colours = matplotlib.colormaps["tab10"]
    images = Path(images_dir) if images_dir is not None else None
    for row, case in zip(axes, cases):
        ref = load_label_volume(case.ref_path).array
        pred = load_label_volume(case.pred_path).array
        image = _image_for(images, case.name, ref.shape)
        fg = np.isin(ref, evaluation.labels) | np.isin(pred, evaluation.labels)
        zs = np.flatnonzero(fg.any(axis=(0, 1)))
        if zs.size == 0:
            zs = np.arange(ref.shape[2])
        picks = (
            np.quantile(zs, np.linspace(0.2, 0.8, slices_shown)).round().astype(int) if zs.size > 1 else zs
        )
        for ax, z in zip(row, np.resize(picks, slices_shown)):
            background = image[:, :, z].T if image is not None else np.zeros(ref.shape[1::-1])
            ax.imshow(background, cmap="gray", origin="lower", interpolation="nearest")
            for i, c in enumerate(evaluation.labels):
                colour = colours(i % 10)
                for mask, style in ((ref[:, :, z] == c, "solid"), (pred[:, :, z] == c, "dashed")):
                    if mask.any() and not mask.all():
                        ax.contour(
                            mask.T.astype(float),
                            levels=[0.5],
                            colors=[colour],
                            linestyles=style,
                            linewidths=1.2,
                            origin="lower",
                        )
            ax.set_title(f"{case.name}  z={int(z)}  Dice {_fmt(case.mean_dice(), 3)}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [
        Line2D([], [], color="black", linestyle="solid", label="reference"),
        Line2D([], [], color="black", linestyle="dashed", label="prediction"),
    ]
    handles += [
        Line2D([], [], color=colours(i % 10), label=f"{c} {evaluation.label_names[c]}")
        for i, c in enumerate(evaluation.labels)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_write_path(destination) as tmp:
        figure.savefig(tmp, format="png")
