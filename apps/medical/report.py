"""``hybrids medical report``: compare trained model folders on their shared validation cases.

    hybrids medical report -m RUN_A/best RUN_B/best ... --data ../shared/data/hippocampus -o report/
                           [--threads 1] [--tolerance 1] [--attention-png]

    from hybrids.apps.medical.report import ReportConfig, report
    result = report(ReportConfig(models=[Path("runs/a/best"), Path("runs/b/best")], data=Path("hippocampus")))
    print(markdown_table(result.rows, result.labels))

Every folder must record the same validation cases (``config.json`` -> ``training.validation_cases``,
as ``hybrids medical train`` writes them); otherwise the comparison is refused. Each model segments
each validation image with the ``segment`` pipeline (:class:`hybrids.apps.medical.segment.Segmenter`,
CPU, no TTA) and is scored against the case's label file (``hybrids.evaluation.segmentation``: Dice
with nnU-Net's empty rule, HD95 in mm). The table also holds:

- parameters: all of them and the trained ones (DIAMANT's frozen ViT is counted in the first only);
- GFLOPs per slice: ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of one window:
  ``--flops-size`` or the largest inference window (``roi_size``) of the compared models (a 48x64
  slice for the 2-D hippocampus models, one window for a 3-D model), rounded up to each model's size
  divisor; FLOPs as PyTorch counts them (2 per multiply-add: convolutions, matmuls, and attention,
  including the CPU ``scaled_dot_product_attention`` kernel PyTorch's table lacks), with DIAMANT's
  attention maps computed (cache empty);
- CPU time per volume: the median over the cases of ``Segmenter.predict`` (preprocessing, sliding
  windows, resampling back) with ``--threads`` torch threads.

Writes ``report.md`` and ``report.csv`` (one row per model) and ``cases.csv`` (per case and label);
with ``--attention-png`` also ``attention.png``: four slices of the first two validation cases and the
DINO attention maps (one per head, and their mean) of the first model that has an attention branch.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError
from hybrids.datasets.atomic import atomic_write_text, make_output_folder

__all__ = [
    "ModelReport",
    "ReportConfig",
    "ReportResult",
    "compare_models",
    "count_flops",
    "markdown_table",
    "report",
    "write_report",
]


@dataclass
class ReportConfig:
    """What ``hybrids medical report`` compares (the fields are its flags): the model folders, the MSD
    folder they were trained on, the report folder, torch threads for the timing, the NSD tolerance
    (mm), the window GFLOPs are counted on (``None``: the largest inference window of the models) and
    whether to draw the DINO attention maps of a DIAMANT model."""

    models: list[Path]
    data: Path
    output: Path = Path("report")
    threads: int = 1
    tolerance: float = 1.0
    flops_size: tuple[int, ...] | None = None
    attention_png: bool = False
    page: Path | None = None  # also write this results page (docs/results/medical.md), stamped
    command: str = ""  # the command line, for the page's stamp (default: this process's)

    def __post_init__(self) -> None:
        self.models = [Path(m) for m in self.models]
        self.data, self.output = Path(self.data), Path(self.output)
        if self.flops_size is not None:
            self.flops_size = tuple(int(v) for v in self.flops_size)

    def check(self) -> None:
        """Raise ``InputError`` (one line naming the flag) for values no report can use."""
        if not self.models:
            raise InputError("report: no model folders (-m)")
        if self.threads < 1:
            raise InputError(f"--threads must be at least 1, got {self.threads}")
        if not self.tolerance > 0:
            raise InputError(f"--tolerance must be a positive number of mm, got {self.tolerance}")
        if self.flops_size is not None and (not self.flops_size or min(self.flops_size) < 1):
            raise InputError(f"--flops-size: sizes must be positive, got {self.flops_size}")


@dataclass
class ReportResult:
    rows: list[ModelReport]  # one per model folder, in the order given
    labels: dict[int, str]  # foreground label -> name
    written: list[Path]  # report.csv, cases.csv, report.md (and attention.png)


@dataclass
class ModelReport:
    """One model folder's row of the comparison table."""

    folder: Path
    model: str
    params: int
    trainable: int
    gflops: float
    flops_input: tuple[int, ...]  # the window the FLOPs were counted on
    seconds: float  # median CPU seconds per volume
    dice: dict[int, float]  # mean over cases, per label
    hd95: dict[int, float]  # mean over cases (finite values), per label
    cases: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)

    @property
    def mean_dice(self) -> float:
        values = [v for v in self.dice.values() if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan


def report(config: ReportConfig) -> ReportResult:
    """Compare ``config.models`` on their shared validation cases and write the report (module
    docstring) into ``config.output``."""
    from hybrids.apps.medical.segment import resolve_model_path

    config.check()
    rows, labels = compare_models(
        [resolve_model_path(m) for m in config.models],
        config.data,
        threads=config.threads,
        tolerance_mm=config.tolerance,
        flops_size=config.flops_size,
    )
    written = write_report(
        rows,
        labels,
        config.output,
        attention_png=config.attention_png,
        data=config.data,
        threads=config.threads,
    )
    if config.page is not None:
        from hybrids.evaluation.results_page import measurement_stamp, write_results_page

        stamp = measurement_stamp(config.command or None)
        body = (config.output / "report.md").read_text().split("\n", 2)[2]  # without its title
        body = "\n".join(line for line in body.splitlines() if not line.startswith("!["))  # figures stay
        written.append(write_results_page(config.page, "Medical segmentation: model comparison", body, stamp))
    return ReportResult(rows, labels, written)


# -- measuring --------------------------------------------------------------------------------
def count_flops(model: Any, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of ``model`` on a zero-mean random input of ``shape`` (FlopCounterMode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    cache = getattr(model, "_cache", None)
    if cache is not None:
        cache.clear()
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping()) as counter:
        model(x)
    if cache is not None:
        cache.clear()
    return int(counter.get_total_flops())


def _cpu_sdpa_mapping() -> dict[Any, Any]:
    """PyTorch's counter knows the CUDA attention kernels but not the CPU one that
    ``scaled_dot_product_attention`` dispatches to here: count it with the same formula."""
    import torch
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_counter.flop_registry or not hasattr(flop_counter, "sdpa_flop_count"):
        return {}

    def count(query, key, value, *args, out_shape=None, **kwargs) -> int:
        # FlopCounterMode hands the mapping shapes (it wraps custom formulas itself); tensors work too
        shapes = [tuple(getattr(t, "shape", t)) for t in (query, key, value)]
        return flop_counter.sdpa_flop_count(*shapes)

    return {op: count}


def _validation_cases(folders: list[Path]) -> tuple[list[str], list[dict[str, Any]]]:
    from hybrids.apps.core.checkpoint import read_checkpoint_info
    from hybrids.apps.medical.segment import resolve_model_path

    infos, cases = [], None
    for i, folder in enumerate(folders):
        path = resolve_model_path(folder, None)
        folders[i] = path
        info = read_checkpoint_info(path)
        if info is None:
            raise InputError(f"{folder}: not a model folder (needs model.safetensors and config.json)")
        names = (info.get("training") or {}).get("validation_cases")
        if not names:
            raise InputError(f"{folder}/config.json: no training.validation_cases (train it with hybrids)")
        if cases is None:
            cases = list(names)
        elif list(names) != cases:
            raise InputError(
                f"{folder}: validation cases differ from those of {folders[0]} "
                f"({len(names)} vs {len(cases)} cases); the models must share one split"
            )
        infos.append(info)
    return list(cases or []), infos


def compare_models(
    folders: list[Path],
    data: Path,
    *,
    threads: int = 1,
    tolerance_mm: float = 1.0,
    flops_size: tuple[int, ...] | None = None,
) -> tuple[list[ModelReport], dict[int, str]]:
    """Segment and score the shared validation cases with every model folder: ``(rows, label names)``."""
    import torch

    from hybrids.apps.medical.segment import Segmenter
    from hybrids.datasets.medical import MedicalImageError, load_label_volume, load_volume
    from hybrids.datasets.msd import MSDError, read_msd_dataset
    from hybrids.evaluation.segmentation import evaluate_case

    if not folders:
        raise InputError("report: no model folders (-m)")
    folders = [Path(f) for f in folders]
    names, infos = _validation_cases(folders)
    try:
        dataset = read_msd_dataset(data)
        cases = [dataset.case(n) for n in names]
    except (MSDError, KeyError) as exc:
        raise InputError(f"{data}: {exc}") from None
    labels = {k: v for k, v in dataset.labels.items() if k > 0}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        windows = [tuple(int(r) for r in (i.get("inference") or {}).get("roi_size", ())) for i in infos]
        images = [load_volume(c.images[0]) for c in cases]
        refs = [load_label_volume(c.label) for c in cases]
        for folder, info in zip(folders, infos, strict=True):
            segmenter = Segmenter(folder, device="cpu", tta=False)
            model = segmenter.model
            params = sum(p.numel() for p in model.parameters())
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            window = _flops_window(model, segmenter.settings.roi_size, flops_size, windows)
            gflops = count_flops(model, (1, int(model.in_channels), *window)) / 1e9
            seconds, per_case = [], {}
            for case, image, ref in zip(cases, images, refs, strict=True):
                started = time.perf_counter()
                pred = segmenter.predict(image).labels
                seconds.append(time.perf_counter() - started)
                per_case[case.name] = evaluate_case(
                    pred, ref.array, sorted(labels), ref.spacing, tolerance_mm
                )
            dice = {c: _mean([m[c]["dice"] for m in per_case.values()]) for c in labels}
            hd95 = {c: _mean([m[c]["hd95_mm"] for m in per_case.values()]) for c in labels}
            name = str(info["model"])
            if (info.get("config") or {}).get("attention_branch") is False:
                name += " (no attention branch)"
            rows.append(
                ModelReport(
                    folder,
                    name,
                    params,
                    trainable,
                    gflops,
                    window,
                    float(statistics.median(seconds)),
                    dice,
                    hd95,
                    per_case,
                )
            )
            del segmenter, model
    except MedicalImageError as exc:
        raise InputError(str(exc)) from None
    finally:
        torch.set_num_threads(before)
    return rows, labels


def _flops_window(
    model: Any, roi: tuple[int, ...], size: tuple[int, ...] | None, windows: list[tuple[int, ...]]
) -> tuple[int, ...]:
    """The window FLOPs are counted on: ``size`` (``--flops-size``) or the largest inference window of
    the compared models of the same dimensionality, rounded up to the model's ``size_divisor`` so that
    every model sees (nearly) the same input."""
    dims = len(roi)
    if size is not None:
        if len(size) != dims:
            raise InputError(f"--flops-size: a {dims}-D model needs {dims} sizes, got {len(size)}")
        base = tuple(size)
    else:
        same = [w for w in windows if len(w) == dims] or [tuple(roi)]
        base = tuple(max(w[i] for w in same) for i in range(dims))
    divisor = int(getattr(model, "size_divisor", 1) or 1)
    return tuple(int(math.ceil(n / divisor) * divisor) for n in base)


def _mean(values: list[float]) -> float:
    """Mean of the finite values; ``inf`` when there are none but some are infinite (HD95 of a class
    missed in every case), NaN when all are NaN (class absent everywhere)."""
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        return sum(finite) / len(finite)
    return math.inf if any(math.isinf(v) for v in values) else math.nan


# -- writing ----------------------------------------------------------------------------------
def _label(folder: Path) -> str:
    """A short name for a model folder: ``runs/diamant/best`` -> ``diamant``."""
    return folder.parent.name if folder.name == "best" else folder.name


def table_rows(rows: list[ModelReport], labels: dict[int, str]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        row: dict[str, Any] = {"run": _label(r.folder), "model": r.model}
        for c, name in labels.items():
            row[f"dice_{name}"] = r.dice[c]
        row["dice_mean"] = r.mean_dice
        for c, name in labels.items():
            row[f"hd95_mm_{name}"] = r.hd95[c]
        row.update(
            params_m=r.params / 1e6,
            trainable_m=r.trainable / 1e6,
            gflops_per_slice=r.gflops,
            flops_input="x".join(map(str, r.flops_input)),
            cpu_s_per_volume=r.seconds,
            cases=len(r.cases),
        )
        out.append(row)
    return out


def markdown_table(rows: list[ModelReport], labels: dict[int, str]) -> str:
    names = list(labels.values())
    head = (
        ["run", "model"]
        + [f"Dice {n}" for n in names]
        + ["mean Dice"]
        + [f"HD95 {n} (mm)" for n in names]
        + ["params (M)", "trained (M)", "GFLOPs/slice", "FLOPs input", "CPU s/volume"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table_rows(rows, labels):
        cells = [row["run"], f"`{row['model']}`"]
        cells += [f"{row[f'dice_{n}']:.4f}" for n in names] + [f"{row['dice_mean']:.4f}"]
        cells += [f"{row[f'hd95_mm_{n}']:.2f}" for n in names]
        cells += [
            f"{row['params_m']:.3f}",
            f"{row['trainable_m']:.3f}",
            f"{row['gflops_per_slice']:.3f}",
            row["flops_input"],
            f"{row['cpu_s_per_volume']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    rows: list[ModelReport],
    labels: dict[int, str],
    out: Path,
    *,
    attention_png: bool = False,
    data: Path | None = None,
    threads: int = 1,
) -> list[Path]:
    """Write ``report.md``, ``report.csv``, ``cases.csv`` (and ``attention.png``) into ``out``."""
    out = Path(out)
    make_output_folder(out)
    written = []
    png = None
    if attention_png:
        png = draw_attention_png(rows, out / "attention.png", data)
    table = table_rows(rows, labels)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(out / "report.csv", buffer.getvalue())
    written.append(out / "report.csv")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "case", "label", "name", "dice", "hd95_mm", "nsd"])
    for r in rows:
        for case, metrics in r.cases.items():
            for c, m in metrics.items():
                writer.writerow([_label(r.folder), case, c, labels[c], m["dice"], m["hd95_mm"], m["nsd"]])
    atomic_write_text(out / "cases.csv", buffer.getvalue())
    written.append(out / "cases.csv")
    cases = next(iter(rows)).cases
    text = [
        "# Medical segmentation: model comparison",
        "",
        f"{len(cases)} validation cases shared by all models ({', '.join(cases)}); predictions by the "
        "`segment` pipeline (CPU, no TTA). Dice and HD95 are means over the cases (HD95 over the "
        "cases where it is finite, inf when a class is missed in every case); GFLOPs per slice are "
        "counted by `FlopCounterMode` on one inference window (2 FLOPs per multiply-add); CPU time is "
        f"the median per volume with {threads} torch thread{'s' if threads > 1 else ''}.",
        "",
        markdown_table(rows, labels),
    ]
    if png is not None:
        text += [f"![DINO attention maps]({png.name})", ""]
    atomic_write_text(out / "report.md", "\n".join(text))
    written.append(out / "report.md")
    if png is not None:
        written.append(png)
    return written


def draw_attention_png(
    rows: list[ModelReport], path: Path, data: Path | None, cases: int = 2, per_case: int = 2
) -> Path | None:
    """The DINO attention maps of the first model with an attention branch (``None`` when no model has
    one): ``per_case`` slices (at 40 % and 60 % along the slice axis) of the first ``cases`` validation
    cases, one row each: the slice, every head's map (as the model's attention branch reads them), the
    mean over heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from hybrids.apps.medical.preprocessing import normalize_intensity, spatial_transform
    from hybrids.apps.medical.segment import Segmenter
    from hybrids.datasets.medical import load_volume
    from hybrids.datasets.msd import read_msd_dataset

    for r in rows:
        segmenter = Segmenter(r.folder, device="cpu", tta=False)
        model = segmenter.model
        if getattr(model, "attention_encoder", None) is None or data is None:
            continue
        axis = segmenter.settings.slice_axis if segmenter.settings.slice_axis is not None else 2
        dataset = read_msd_dataset(data)
        panels = []  # (label, slice (h, w), maps (heads, h, w))
        for name in list(r.cases)[:cases]:
            volume = load_volume(dataset.case(name).images[0])
            image = spatial_transform(segmenter.preprocessing)(volume.to_metatensor())
            image = normalize_intensity(image, segmenter.preprocessing).as_tensor()  # (C, X, Y, Z)
            depth = image.shape[1 + axis]
            for index in sorted({int(round(f * (depth - 1))) for f in np.linspace(0.4, 0.6, per_case)}):
                slice_ = image.select(1 + axis, index)[None].float()  # (1, C, h, w)
                with torch.no_grad():
                    maps = model.attention_maps(slice_)[0]
                panels.append((f"{name}\nslice {index}", slice_[0, 0], maps))
        heads = panels[0][2].shape[0]
        fig, axes = plt.subplots(
            len(panels), heads + 2, figsize=(1.7 * (heads + 2), 1.9 * len(panels) + 0.5), squeeze=False
        )
        for row, (label, slice_, maps) in enumerate(panels):
            axes[row, 0].imshow(slice_.T.numpy(), cmap="gray", origin="lower")
            axes[row, 0].set_title(label, fontsize=7)
            for h in range(heads):
                axes[row, h + 1].imshow(maps[h].T.numpy(), cmap="viridis", origin="lower")
                axes[row, h + 1].set_title(f"head {h + 1}", fontsize=7)
            axes[row, heads + 1].imshow(maps.mean(0).T.numpy(), cmap="viridis", origin="lower")
            axes[row, heads + 1].set_title("mean", fontsize=7)
        for ax in axes.flat:
            ax.axis("off")
        config = model.config
        grid = config.map_size // config.vit_patch_size
        fig.suptitle(
            f"DINO last-block CLS attention ({_label(r.folder)}; ViT input {config.map_size}x"
            f"{config.map_size}, {grid}x{grid} patches)",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
    return None
