"""``hybrids pde report``: rollout errors, spectra and snapshots of trained surrogates, and cost scaling.

    hybrids pde report --data data/kf64 --equal-params runs/ff/best runs/iff/best runs/fno_steps/best \\
        --equal-time runs/ff/best runs/iff/best runs/fno_time/best -o pde-report --page docs/results/pde.md

Rollouts: from ``windows`` evenly spaced start points of each held-out trajectory (the last
``test_trajectories`` of the dataset: initial conditions no model trained on), ``steps`` frames predicted
autoregressively; relative L2 per step, averaged over the windows. Each table states every model's
parameter count and training budget (steps, batch, minutes on the training machine), read from its
``config.json``. Figures: error per step, energy spectra of predicted and true fields at the last step,
vorticity snapshots.

Cost: one forward pass (batch 1, ``threads`` torch threads, inference mode) of each model's architecture
at every grid, each measured in a fresh process (``hybrids.evaluation.bench.timing.measure_case``: best
of 3 after a warm-up; peak resident memory above the baseline), plus a softmax-attention transformer of
the same width (every grid point attends to every other, PyTorch SDPA) where its estimated time fits
``full_attention_limit_s``; the fitted exponent ``p`` of ``time ~ N^p`` over the grids (``N`` points).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.run_options import require_at_least_one

__all__ = ["ReportConfig", "ReportResult", "forward_case", "report"]

logger = logging.getLogger("hybrids.pde.report")

FULL_ATTENTION_LIMIT_S = 20.0


@dataclass
class ReportConfig:
    data: Path
    equal_params: list[str] = field(default_factory=list)
    equal_time: list[str] = field(default_factory=list)
    test_trajectories: int = 8
    steps: int = 16
    windows: int = 4
    interval: int = 2
    scaling: bool = True
    scaling_grids: list[int] = field(default_factory=lambda: [64, 128, 256])
    scaling_grids_3d: list[int] = field(default_factory=lambda: [32, 64])
    out: Path = Path("pde-report")
    page: Path | None = None
    threads: int = 1
    full_attention_limit_s: float = FULL_ATTENTION_LIMIT_S
    command: str = ""

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.page = Path(self.page) if self.page else None


@dataclass
class ReportResult:
    markdown_path: Path
    results: dict[str, Any]


# -- the models ------------------------------------------------------------------------------------------
@dataclass
class Run:
    key: str  # the folder or built-in name as given
    label: str
    model: nn.Module
    info: dict[str, Any]  # config.json's "training"

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def budget(self) -> str:
        t = self.info
        steps = t.get("step", "?")
        minutes = t.get("train_seconds")
        mins = f"{minutes / 60:.1f} min" if isinstance(minutes, int | float) else "? min"
        return f"{steps} steps x batch {t.get('batch_size', '?')}, {mins}"


def _load_run(key: str) -> Run:
    from hybrids.apps.core.checkpoint import read_checkpoint_info
    from hybrids.apps.pde.rollout import load_surrogate

    model = load_surrogate(key)
    path = Path(key)
    info: dict[str, Any] = {}
    if path.exists():
        info = (read_checkpoint_info(path) or {}).get("training", {}) or {}
    else:
        from hybrids.apps.core.catalog import full_name, get_builtin

        builtin = get_builtin(full_name(key))
        if builtin is not None:
            info = json.loads((builtin.folder / "config.json").read_text()).get("training", {})
    name = str(model.model_name).split("/", 1)[1]
    preset = _preset_of(model)
    label = f"{name} ({preset})" if preset else name
    return Run(key, label, model, info)


def _preset_of(model: nn.Module) -> str | None:
    from hybrids.apps.core.registry import get_model_entry

    entry = get_model_entry(model.model_name)
    fields = {k: v for k, v in model.config.to_dict().items() if k not in ("grid", "norm_mean", "norm_std")}
    for preset in entry.config_cls.preset_names():
        ref = {
            k: v
            for k, v in entry.config(preset).to_dict().items()
            if k not in ("grid", "norm_mean", "norm_std")
        }
        if ref == fields:
            return preset
    return None


# -- rollouts --------------------------------------------------------------------------------------------
def _evaluate(run: Run, test: Tensor, steps: int, windows: int) -> dict[str, Any]:
    from hybrids.apps.pde.rollout import relative_l2, rollout
    from hybrids.apps.pde.training import validation_windows

    x, y = validation_windows(test, int(run.model.in_frames), steps, windows)
    pred = rollout(run.model, x, steps, batch_size=8)
    errors = relative_l2(pred, y)  # (V, steps)
    return {
        "errors": errors,
        "persistence": relative_l2(x[:, -1:].expand_as(y), y),  # the last input frame, held
        "pred_last": pred[:, -1],
        "true_last": y[:, -1],
        "pred_first_window": pred[0],
        "true_first_window": y[0],
    }


def _spectrum(fields: Tensor) -> tuple[np.ndarray, np.ndarray]:
    from hybrids.datasets.kolmogorov import energy_spectrum

    k, e = energy_spectrum(fields.double())
    return k.numpy(), e.mean(0).numpy()


# -- cost scaling ----------------------------------------------------------------------------------------
class SoftmaxTransformer(nn.Module):
    """The full-attention counterpart: FactFormer's stem and width, ``depth`` pre-norm blocks of softmax
    self-attention over every grid point (SDPA) and a GELU MLP, a linear head."""

    def __init__(self, in_frames: int, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_in = nn.Linear(in_frames, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm1": nn.LayerNorm(dim),
                    "qkv": nn.Linear(dim, 3 * dim, bias=False),
                    "proj": nn.Linear(dim, dim),
                    "norm2": nn.LayerNorm(dim),
                    "mlp": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)),
                }
            )
            for _ in range(depth)
        )
        self.head = nn.Linear(dim, 1)

    def forward(self, frames: Tensor, steps: int = 1) -> Tensor:
        b, t, *grid = frames.shape
        u = self.to_in(frames.flatten(2).transpose(1, 2))  # (b, N, dim)
        for blk in self.blocks:
            q, k, v = (
                blk["qkv"](blk["norm1"](u)).reshape(b, u.shape[1], 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            )
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            u = u + blk["proj"](a.transpose(1, 2).reshape(b, u.shape[1], -1))
            u = u + blk["mlp"](blk["norm2"](u))
        return self.head(u).transpose(1, 2).reshape(b, 1, *grid)


def forward_case(model: str, config: dict[str, Any], grid: int, spatial_dims: int = 2) -> Callable[[], Any]:
    """A benchmark factory (``measure_case``): one forward of ``model`` (a registered name, or
    ``"softmax"``) with ``config`` on a ``grid^spatial_dims`` input of batch 1."""
    torch.manual_seed(0)
    if model == "softmax":
        net: nn.Module = SoftmaxTransformer(**config)
        in_frames = int(config["in_frames"])
    else:
        from hybrids.apps.core.registry import create_model

        net = create_model(model, config=_config_of(model, config))
        in_frames = int(net.in_frames)
    net.eval()
    fields = int(config.get("fields", 1)) if model != "softmax" else 1
    shape = (1, in_frames, *([fields] if fields > 1 else []), *([grid] * spatial_dims))
    x = torch.randn(shape)

    def run() -> Any:
        with torch.inference_mode():
            return net(x)

    return run


def _config_of(model: str, fields: dict[str, Any]) -> Any:
    from hybrids.apps.core.registry import get_model_entry

    return get_model_entry(model).config_cls.from_dict(fields)


def _softmax_seconds(grid: int, dims: int, dim: int, depth: int, in_frames: int) -> float:
    """Estimated seconds of the softmax transformer's forward: ``4 N^2 dim`` FLOPs per block at 10 GFLOP/s."""
    n = grid**dims
    return depth * 4.0 * n * n * dim / 1e10


def _scaling(runs: Sequence[Run], config: ReportConfig) -> list[dict[str, Any]]:
    from hybrids.evaluation.bench.timing import measure_case

    target = "hybrids.apps.pde.report:forward_case"
    rows: list[dict[str, Any]] = []
    seen = set()
    cases_2d: list[tuple[str, str, dict[str, Any]]] = []
    for run in runs:
        name = str(run.model.model_name)
        if name in seen:
            continue
        seen.add(name)
        cases_2d.append((run.label, name, run.model.config.to_dict()))
    width = next((c[2]["dim"] for c in cases_2d if "dim" in c[2]), 32)
    heads = next((c[2]["heads"] for c in cases_2d if "heads" in c[2]), 4)
    depth = next((c[2]["depth"] for c in cases_2d if c[1] == "pde/factformer"), 4)
    softmax = {"in_frames": 10, "dim": width, "heads": heads, "depth": depth}
    cases_2d.append((f"softmax attention (dim {width}, {depth} blocks)", "softmax", softmax))
    for grid in config.scaling_grids:
        for label, name, cfg in cases_2d:
            row = {"model": label, "dims": 2, "grid": grid, "points": grid * grid}
            if (
                name == "softmax"
                and _softmax_seconds(grid, 2, width, depth, 10) > config.full_attention_limit_s
            ):
                row["note"] = (
                    f"not run: estimated {_softmax_seconds(grid, 2, width, depth, 10):.0f} s per forward"
                )
            else:
                cfg2 = dict(cfg) if name == "softmax" else {**cfg, "grid": grid}
                row.update(
                    measure_case(
                        target,
                        {"model": name, "config": cfg2, "grid": grid},
                        repeats=3,
                        threads=config.threads,
                        timeout_s=600,
                    )
                )
            logger.info("cost %s %d^2: %s", label, grid, row.get("time_s", row.get("note", row.get("error"))))
            rows.append(row)
    cases_3d = _cases_3d(cases_2d)
    for grid in config.scaling_grids_3d:
        for label, name, cfg in cases_3d:
            row = {"model": label, "dims": 3, "grid": grid, "points": grid**3}
            if name == "softmax":
                est = _softmax_seconds(grid, 3, width, depth, 10)
                if est > config.full_attention_limit_s:
                    row["note"] = f"not run: estimated {est:.0f} s per forward"
                    rows.append(row)
                    continue
            cfg3 = dict(cfg) if name == "softmax" else {**cfg, "grid": grid}
            row.update(
                measure_case(
                    target,
                    {"model": name, "config": cfg3, "grid": grid, "spatial_dims": 3},
                    repeats=2,
                    threads=config.threads,
                    timeout_s=600,
                )
            )
            logger.info("cost %s %d^3: %s", label, grid, row.get("time_s", row.get("note", row.get("error"))))
            rows.append(row)
    return rows


def _cases_3d(cases_2d: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, dict[str, Any]]]:
    """The 3-D counterparts (FABlock3D, the 3-D parallel block, FNO 3-D) of the 2-D models' widths."""
    out = []
    for label, name, cfg in cases_2d:
        if name == "softmax":
            out.append((label, name, cfg))
        elif name in ("pde/factformer", "pde/ifactformer_m", "pde/fno", "pde/tfno"):
            cfg3 = {**cfg, "spatial_dims": 3}
            if name == "pde/factformer":
                cfg3.update({"stem": "conv", "head_groups": 8})
                name3 = "pde/factformer_3d"
            else:
                name3 = name
            if "modes" in cfg3:
                cfg3["modes"] = min(int(cfg3["modes"]), 8)
            out.append((label.replace("(", "3-D (", 1) if "(" in label else f"{label} 3-D", name3, cfg3))
    return out


def _fit_exponents(rows: list[dict[str, Any]]) -> dict[str, float]:
    exponents = {}
    groups: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in rows:
        if "time_s" in r:
            groups.setdefault((r["model"], r["dims"]), []).append((r["points"], r["time_s"]))
    for (model, dims), points in groups.items():
        if len(points) >= 2:
            n, t = np.log([p[0] for p in points]), np.log([p[1] for p in points])
            exponents[f"{model}|{dims}"] = float(np.polyfit(n, t, 1)[0])
    return exponents


# -- figures and text ------------------------------------------------------------------------------------
def _figures(
    folder: Path,
    evaluated: dict[str, dict[str, Any]],
    labels: dict[str, str],
    steps: int,
    frame_dt: float,
    scaling: list[dict[str, Any]],
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from hybrids.datasets.atomic import atomic_write_path

    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    def save(fig: Any, name: str, dpi: int = 110) -> None:
        with atomic_write_path(folder / name) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        plt.close(fig)
        files[name.removesuffix(".png")] = name

    fig, ax = plt.subplots(figsize=(6, 4))
    t = np.arange(1, steps + 1)
    for key, ev in evaluated.items():
        ax.plot(t, ev["errors"].mean(0).numpy(), marker=".", label=labels[key])
    ax.set_xlabel(f"rollout step (x {frame_dt:g} time units)")
    ax.set_ylabel("relative L2 error")
    ax.set_title("Autoregressive rollout on held-out trajectories")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "rollout_error.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    first = next(iter(evaluated.values()))
    k, e_true = _spectrum(first["true_last"])
    ax.loglog(k[1:], e_true[1:], "k-", lw=2, label="simulation")
    for key, ev in evaluated.items():
        k, e = _spectrum(ev["pred_last"])
        ax.loglog(k[1:], e[1:], label=labels[key])
    ax.loglog(k[8:], e_true[8] * (k[8:] / 8.0) ** -3, "k:", lw=1, label="k^-3")
    ax.set_xlabel("wavenumber k")
    ax.set_ylabel("E(k)")
    ax.set_title(f"Energy spectra at rollout step {steps}")
    ax.set_ylim(bottom=max(1e-9, float(e_true[1:].min()) / 10))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    save(fig, "spectra.png")

    shown = [0, steps // 2 - 1, steps - 1] if steps >= 4 else [steps - 1]
    rows = 1 + len(evaluated)
    fig, axes = plt.subplots(
        rows, len(shown), figsize=(2.0 * len(shown), 2.0 * rows), squeeze=False, layout="constrained"
    )
    true = first["true_first_window"].numpy()
    vmax = float(np.abs(true).max())
    for j, s in enumerate(shown):
        axes[0, j].imshow(true[s].T, origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        axes[0, j].set_title(f"step {s + 1}", fontsize=8)
    axes[0, 0].set_ylabel("simulation", fontsize=7)
    for i, (key, ev) in enumerate(evaluated.items(), start=1):
        pred = ev["pred_first_window"].numpy()
        for j, s in enumerate(shown):
            axes[i, j].imshow(pred[s].T, origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        axes[i, 0].set_ylabel(labels[key], fontsize=6)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle("Vorticity, first held-out window", fontsize=9)
    save(fig, "snapshots.png", dpi=80)

    if scaling:
        fig, ax = plt.subplots(figsize=(6, 4))
        for dims, style in ((2, "-"), (3, "--")):
            models = sorted({r["model"] for r in scaling if r["dims"] == dims})
            for m in models:
                pts = [
                    (r["points"], r["time_s"])
                    for r in scaling
                    if r["model"] == m and r["dims"] == dims and "time_s" in r
                ]
                if pts:
                    ax.loglog(*zip(*pts), style, marker="o", label=f"{m} ({dims}-D)")
        ax.set_xlabel("grid points N")
        ax.set_ylabel("seconds per forward (batch 1)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
        save(fig, "scaling.png")
    return files


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _rollout_table(
    keys: Sequence[str],
    runs: dict[str, Run],
    evaluated: dict[str, dict[str, Any]],
    steps: int,
    labels: dict[str, str] | None = None,
) -> str:
    marks = sorted({1, min(4, steps), min(8, steps), steps})
    head = (
        "| model | parameters | budget (training) | "
        + " | ".join(f"step {m}" for m in marks)
        + f" | mean 1-{steps} |"
    )
    lines = [head, "|" + "---|" * (4 + len(marks))]
    for key in keys:
        run, err = runs[key], evaluated[key]["errors"].mean(0)
        cells = " | ".join(_fmt(float(err[m - 1])) for m in marks)
        label = labels[key] if labels else run.label
        lines.append(
            f"| {label} | {run.parameters:,} | {run.budget()} | {cells} | {_fmt(float(err.mean()))} |"
        )
    base = evaluated[keys[0]]["persistence"].mean(0)
    cells = " | ".join(_fmt(float(base[m - 1])) for m in marks)
    lines.append(f"| persistence (last input frame held) | 0 | - | {cells} | {_fmt(float(base.mean()))} |")
    return "\n".join(lines)


def _scaling_table(rows: list[dict[str, Any]], exponents: dict[str, float]) -> str:
    lines = []
    for dims in (2, 3):
        sub = [r for r in rows if r["dims"] == dims]
        if not sub:
            continue
        grids = sorted({r["grid"] for r in sub})
        models = list(dict.fromkeys(r["model"] for r in sub))
        lines.append(
            f"| model ({dims}-D) | "
            + " | ".join(f"{g}^{dims}: ms / MiB" for g in grids)
            + " | exponent p (time ~ N^p) |"
        )
        lines.append("|" + "---|" * (len(grids) + 2))
        for m in models:
            cells = []
            for g in grids:
                r = next((r for r in sub if r["model"] == m and r["grid"] == g), None)
                if r is None:
                    cells.append("-")
                elif "time_s" in r:
                    peak = r.get("peak_mib")
                    cells.append(f"{r['time_s'] * 1e3:.0f} / {'-' if peak is None else f'{peak:.0f}'}")
                else:
                    cells.append(r.get("note") or r.get("error", "-"))
            p = exponents.get(f"{m}|{dims}")
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(p, 2)} |")
        lines.append("")
    return "\n".join(lines)


def _verdict(
    keys: Sequence[str], runs: dict[str, Run], evaluated: dict[str, dict[str, Any]], table: str
) -> str:
    means = {runs[k].model.model_name: float(evaluated[k]["errors"].mean()) for k in keys}
    ff, fno = means.get("pde/factformer"), means.get("pde/fno")
    if ff is None or fno is None:
        return ""
    verb = "below" if ff < fno else "not below"
    met = "met" if ff < fno else "not met"
    hold = float(evaluated[keys[0]]["persistence"].mean())
    return (
        f"At {table}, FactFormer's mean {len(evaluated[keys[0]]['errors'][0])}-step rollout error ({ff:.4f}) "
        f"is {verb} FNO's ({fno:.4f}): the goal (FactFormer below FNO, as the paper reports for "
        f"Kolmogorov flow) is **{met}** here. Persistence scores {hold:.4f}: FactFormer is "
        f"{'below' if ff < hold else 'not below'} it, FNO {'below' if fno < hold else 'not below'} it."
    )


def report(config: ReportConfig) -> ReportResult:
    """Evaluate, measure and write the report (module docstring)."""
    from hybrids.apps.pde.training import load_split
    from hybrids.datasets.atomic import atomic_write_bytes, atomic_write_text, check_output_folder
    from hybrids.datasets.kolmogorov import KolmogorovError, read_dataset
    from hybrids.evaluation.results_page import measurement_stamp, stamp_line, write_results_page

    if not config.equal_params and not config.equal_time:
        raise InputError("give the models to compare with --equal-params and/or --equal-time")
    require_at_least_one(config, "steps", "windows", "test_trajectories", "threads", "interval")
    check_output_folder(config.out)
    if config.page is not None:
        check_output_folder(config.page.parent)
    try:
        dataset = read_dataset(config.data)
    except KolmogorovError as exc:
        raise InputError(str(exc)) from None
    keys = list(dict.fromkeys([*config.equal_params, *config.equal_time]))
    runs = {key: _load_run(key) for key in keys}
    for key, run in runs.items():
        if int(run.model.config.grid) != dataset.grid:
            raise InputError(
                f"{key}: trained on {run.model.config.grid}^2, the data is {dataset.grid}^2 (wrong grid)"
            )
    if config.test_trajectories >= len(dataset):
        raise InputError(
            f"--test-trajectories {config.test_trajectories}: the data has {len(dataset)} trajectories"
        )
    before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        _, test = load_split(dataset, config.interval, config.test_trajectories)
        evaluated = {}
        for key in keys:
            logger.info("rolling out %s", key)
            evaluated[key] = _evaluate(runs[key], test, config.steps, config.windows)
        scaling = _scaling(list(runs.values()), config) if config.scaling else []
    finally:
        torch.set_num_threads(before)
    exponents = _fit_exponents(scaling)
    stamp = measurement_stamp(config.command or None)
    frame_dt = dataset.frame_dt * config.interval
    labels = {k: runs[k].label for k in keys}
    plain = [runs[k].label for k in keys]
    for k in keys:  # the same architecture trained twice: tell them apart by the training budget
        if plain.count(runs[k].label) > 1:
            labels[k] = f"{runs[k].label}, {runs[k].budget()}"
    fig_dir = config.out
    files = _figures(fig_dir, evaluated, labels, config.steps, frame_dt, scaling)
    windows = int(next(iter(evaluated.values()))["errors"].shape[0])
    sim = dataset.meta.get("simulation", {})
    kf = sim.get("forcing_wavenumber")
    body = [
        "## Data",
        "",
        f"2-D Kolmogorov flow simulated by `hybrids pde simulate` (`{config.data.name}`): "
        f"Re {sim.get('re')}, drag {sim.get('drag')}, forcing -{kf} cos({kf} y), "
        f"solved on {dataset.meta.get('solver_grid')}^2 and stored on {dataset.grid}^2, "
        f"{len(dataset)} trajectories from GRF initial vorticity; frames every {frame_dt:g} time units "
        f"(every stored frame at stride {config.interval}). "
        f"The last {config.test_trajectories} trajectories (other initial conditions) are held out: "
        f"{windows} rollouts of {config.steps} steps from {config.windows} start points each, "
        "10 input frames.",
        "",
    ]
    tables = {}
    if config.equal_params:
        tables["equal_params"] = _rollout_table(config.equal_params, runs, evaluated, config.steps, labels)
        body += [
            "## Rollout error at equal parameter count",
            "",
            "Relative L2 error per rollout step (mean over the held-out windows). Models sized to about the "
            "same number of parameters; the budget column says how long each trained (same data, batch, "
            "recipe; CPU, one thread). A prediction of zero scores exactly 1 at every step; the persistence "
            "row holds the last input frame.",
            "",
            tables["equal_params"],
            "",
            _verdict(config.equal_params, runs, evaluated, "equal parameters"),
            "",
        ]
    if config.equal_time:
        tables["equal_time"] = _rollout_table(config.equal_time, runs, evaluated, config.steps, labels)
        body += [
            "## Rollout error at equal wall-clock budget",
            "",
            "The same, each model trained for the same wall-clock time (`--max-time`, validation included; "
            "the minutes column is the measured training time, the final validation included).",
            "",
            tables["equal_time"],
            "",
            _verdict(config.equal_time, runs, evaluated, "equal wall-clock time"),
            "",
        ]
    body += [
        "## Figures",
        "",
        "![rollout error](pde-rollout_error.png)",
        "",
        "![spectra](pde-spectra.png)",
        "",
        "![snapshots](pde-snapshots.png)",
        "",
    ]
    if scaling:
        body += [
            "## Cost of one forward pass",
            "",
            f"Batch 1, {config.threads} torch thread(s), inference mode, each case in a fresh process (best "
            "of 3 after a warm-up; peak resident memory above the baseline). The trained models' "
            "architectures at growing grids (3-D: the same widths with FABlock3D / the 3-D parallel block / "
            "3-D FNO with at most 8 modes); full softmax attention only where its estimated time fits "
            f"{config.full_attention_limit_s:.0f} s. Exponent: least-squares slope of log time against "
            "log N.",
            "",
            _scaling_table(scaling, exponents),
            "![scaling](pde-scaling.png)",
            "",
        ]
    markdown = "\n".join(body)
    results = {
        "stamp": stamp,
        "runs": {
            k: {"label": runs[k].label, "parameters": runs[k].parameters, "training": runs[k].info}
            for k in keys
        },
        "rel_l2_per_step": {k: [float(v) for v in evaluated[k]["errors"].mean(0)] for k in keys},
        "equal_params": config.equal_params,
        "equal_time": config.equal_time,
        "scaling": scaling,
        "exponents": exponents,
        "windows": windows,
    }
    local = markdown.replace("](pde-", "](")
    path = config.out / "report.md"
    atomic_write_text(path, f"# PDE surrogates on Kolmogorov flow\n\n{stamp_line(stamp)}\n\n{local}\n")
    atomic_write_text(config.out / "report.json", json.dumps(results, indent=2, default=str) + "\n")
    if config.page is not None:
        for name in files.values():
            atomic_write_bytes(config.page.parent / f"pde-{name}", (fig_dir / name).read_bytes())
        write_results_page(config.page, "PDE surrogates on Kolmogorov flow", markdown, stamp)
    return ReportResult(path, results)
