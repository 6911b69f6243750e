"""``hybrids dna report``: the DNA benchmark report -- every number beside its reference, measured here.

    hybrids dna report -m runs/hybridna_small/best --fasta ecoli.fasta.gz \\
        --finetune runs/tata runs/tata_cnn runs/mouse_0 runs/mouse_0_cnn --long-context 8192,32768 -o report/

Sections (each one only when its inputs are given):

1. **Language modelling** (``-m CKPT --fasta GENOME...``): held-out bits per base of the model and of the
   order-k Markov baseline (:mod:`hybrids.apps.dna.markov`, modified Kneser-Ney, both strands) on the
   same split as ``hybrids dna pretrain``: the last ``--holdout-fraction`` of every record is held out.
   The Markov order is chosen on a dev slice (the last 10 % of each record's training part, counts from
   the rest), then refit on the whole training part. The model scores all non-overlapping tiles of
   ``--context`` bases (each read after ``<bos>``; ``--max-tiles`` keeps an evenly spaced subset); the
   Markov model scores every held-out base with its full context.
2. **GUE fine-tuning** (``--finetune RUN...``): the ``metrics.json`` of ``hybrids dna finetune`` runs,
   one row per run, grouped by task: dev MCC (the selection metric) and test MCC / F1 / AUROC, the
   parameters and steps; per task, our HybriDNA's test MCC minus the CNN baseline's when both ran.
   ``--published CSV`` (columns ``task,model,mcc,source``; MCC in [-1, 1]) adds numbers reported
   elsewhere, for context only (they were not measured here).
3. **Long context** (``--long-context L1,L2,...``): one forward pass of the model over ``L`` random bases
   per length, each in a fresh subprocess (``-m`` or ``--preset``), with its wall time, tokens per second
   and peak resident memory (the subprocess's ``ru_maxrss``).

Writes ``OUT/report.md`` and ``OUT/report.json`` (atomically); ``hybrids dna report`` prints the markdown.
From Python: ``report(ReportConfig(finetune=[Path("runs/tata"), Path("runs/tata_cnn")], out=Path("rep")))``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import InputError
from hybrids.datasets.atomic import make_output_folder

__all__ = [
    "ReportConfig",
    "ReportResult",
    "gue_rows",
    "language_modelling",
    "long_context",
    "read_published",
    "render_markdown",
    "report",
]

MARKOV_ORDERS = range(1, 13)


# -- 1. language modelling -----------------------------------------------------------------------------------
def language_modelling(
    checkpoint: Path,
    fasta: list[Path],
    *,
    holdout_fraction: float = 0.1,
    context: int = 1024,
    max_tiles: int | None = None,
    batch_size: int = 8,
    orders=MARKOV_ORDERS,
) -> dict[str, Any]:
    """Held-out bits per base of ``checkpoint`` and of the dev-selected Markov model (module docstring)."""
    import torch

    from hybrids.apps.dna.markov import MarkovModel, select_order
    from hybrids.apps.dna.models import load_lm
    from hybrids.apps.dna.pretrain import load_genomes
    from hybrids.apps.dna.training import LN2, ValidationTiles, lm_token_losses
    from hybrids.datasets.dna import DNATokenizer, split_holdout

    model = load_lm(checkpoint).eval()
    train, valid, summary = load_genomes(fasta, holdout_fraction, DNATokenizer())
    started = time.perf_counter()
    tiles = ValidationTiles(valid, context, max_tiles)
    total = scored = 0.0
    with torch.inference_mode():
        for i in range(0, len(tiles), batch_size):
            batch = torch.stack([tiles[j] for j in range(i, min(i + batch_size, len(tiles)))]).long()
            loss, mask = lm_token_losses(model, batch)
            total += float(loss[mask].double().sum())
            scored += float(mask.sum())
    if not scored:
        raise InputError(f"{', '.join(map(str, fasta))}: no held-out A/C/G/T base to score")
    ours = {
        "bits_per_base": total / scored / LN2,
        "tiles": len(tiles),
        "tile_bases": tiles.length,
        "scored_bases": int(scored),
        "seconds": round(time.perf_counter() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    started = time.perf_counter()
    fit, dev = [], []
    for part in train:  # dev = the last 10 % of each record's training part, counts from the rest
        try:
            split = split_holdout(part, fraction=0.1)
        except ValueError:
            fit.append(part)
            continue
        fit.append(split.train)
        dev.append(split.test)
    if not dev:
        raise InputError("the training part is too short for a Markov dev slice")
    order, dev_bpb = select_order(fit, dev, orders)
    markov = MarkovModel(order).fit(train)  # refit on the whole training part
    baseline = {
        "order": order,
        "dev_bits_per_base": dev_bpb,
        "bits_per_base": markov.bits_per_base(valid),
        "smoothing": "modified Kneser-Ney, both strands",
        "seconds": round(time.perf_counter() - started, 1),
    }
    return {"data": {**summary, "holdout_fraction": holdout_fraction}, "ours": ours, "markov": baseline}


# -- 2. GUE ------------------------------------------------------------------------------------------------
def gue_rows(runs: list[Path]) -> list[dict[str, Any]]:
    """One row per ``hybrids dna finetune`` output folder (its ``metrics.json``)."""
    rows = []
    for run in runs:
        path = run / "metrics.json" if run.is_dir() else run
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            rows.append(
                {
                    "run": run.name if run.is_dir() else run.parent.name,
                    "task": result["task"],
                    "model": result["model"],
                    "parameters": int(result["parameters"]),
                    "steps": int(result["recipe"]["steps"]),
                    "pooling": result["recipe"].get("pooling"),
                    "dev_mcc": float(result["dev"]["mcc"]),
                    "test_mcc": float(result["test"]["mcc"]),
                    "test_f1": float(result["test"]["f1"]),
                    "test_auroc": float(result["test"]["auroc"]),
                }
            )
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a `hybrids dna finetune` metrics.json ({exc!r})") from None
    return rows


def read_published(path: Path) -> list[dict[str, Any]]:
    """``task,model,mcc,source`` rows (numbers reported elsewhere, shown for context)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"task", "model", "mcc", "source"} <= set(reader.fieldnames):
                raise InputError(f"{path}: needs the columns task,model,mcc,source")
            rows = []
            for line, row in enumerate(reader, start=2):
                try:
                    mcc = float(row["mcc"])
                except (TypeError, ValueError):
                    raise InputError(f"{path}:{line}: mcc {row['mcc']!r} is not a number") from None
                if not -1.0 <= mcc <= 1.0:
                    raise InputError(f"{path}:{line}: mcc {mcc} is outside [-1, 1] (not a percentage)")
                rows.append({"task": row["task"], "model": row["model"], "mcc": mcc, "source": row["source"]})
            return rows
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


# -- 3. long context -----------------------------------------------------------------------------------------
_FORWARD = """
import json, resource, sys, time, torch
from hybrids.apps.core.registry import create_model
from hybrids.apps.dna.models import load_lm
torch.set_num_threads({threads})
if {checkpoint!r}:
    model = load_lm({checkpoint!r}).eval()
else:
    model = create_model("dna/hybridna", preset={preset!r}).eval()
tokens = torch.randint(5, 9, (1, {length}))
with torch.inference_mode():
    t = time.perf_counter()
    model(tokens)
    seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def long_context(
    lengths: list[int], *, checkpoint: Path | None = None, preset: str = "small", threads: int = 1
) -> list[dict[str, Any]]:
    """Forward-pass time and peak RSS per length, each in a fresh Python process (module docstring)."""
    rows = []
    for length in sorted(lengths):
        code = _FORWARD.format(
            threads=int(threads), checkpoint=str(checkpoint or ""), preset=preset, length=int(length)
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"long-context forward of {length} tokens failed: {last}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        seconds = measured["seconds"]
        rows.append(
            {
                "tokens": int(length),
                "seconds": round(seconds, 4),
                "tokens_per_second": round(length / seconds),
                "peak_rss_mib": round(measured["peak_kib"] / 1024),  # the subprocess's own ru_maxrss
                "threads": int(threads),
            }
        )
    return rows


# -- the report --------------------------------------------------------------------------------------------
def render_markdown(result: dict[str, Any]) -> str:
    """The report's markdown (``report.md``) of what ``report.json`` holds."""
    lines = ["# HybriDNA benchmark report", ""]
    lm = result.get("language_modelling")
    if lm:
        d, ours, mk = lm["data"], lm["ours"], lm["markov"]
        lines += [
            "## Held-out bits per base",
            "",
            f"{d['records']} record(s), {d['bases']:,} bases; the last {d['holdout_fraction']:.0%} of each "
            f"record held out ({d['valid_bases']:,} bases), trained on the rest ({d['train_bases']:,}).",
            "",
            "| model | bits per base | scored |",
            "|---|---|---|",
            f"| HybriDNA ({ours['parameters']:,} parameters) | **{ours['bits_per_base']:.4f}** | "
            f"{ours['tiles']} tiles of {ours['tile_bases']:,} ({ours['scored_bases']:,} bases) |",
            f"| order-{mk['order']} Markov ({mk['smoothing']}; order chosen on dev) | "
            f"{mk['bits_per_base']:.4f} | every held-out base |",
            "",
        ]
    gue = result.get("gue") or []
    published = result.get("published") or []
    if gue:
        lines += [
            "## GUE fine-tuning (measured here: train/dev/test as given, selected on dev MCC)",
            "",
            "| task | run | model | params | steps | dev MCC | test MCC | test F1 | test AUROC |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(gue, key=lambda r: (r["task"], r["model"] != "hybridna", r["run"])):
            name = r["model"] + (f" ({r['pooling']} pooling)" if r.get("pooling") else "")
            lines.append(
                f"| {r['task']} | {r['run']} | {name} | {r['parameters']:,} | {r['steps']:,} | "
                f"{r['dev_mcc']:.4f} | {r['test_mcc']:.4f} | {r['test_f1']:.4f} | {r['test_auroc']:.4f} |"
            )
        lines.append("")
        verdicts = result.get("gue_vs_cnn") or {}
        if verdicts:
            lines += ["| task | HybriDNA test MCC | CNN test MCC | difference |", "|---|---|---|---|"]
            for task, v in sorted(verdicts.items()):
                lines.append(f"| {task} | {v['hybridna']:.4f} | {v['cnn']:.4f} | {v['difference']:+.4f} |")
            lines.append("")
    if published:
        lines += [
            "Reported elsewhere (not measured here; for context):",
            "",
            "| task | model | MCC | source |",
            "|---|---|---|---|",
        ]
        lines += [f"| {p['task']} | {p['model']} | {p['mcc']:.4f} | {p['source']} |" for p in published]
        lines.append("")
    long = result.get("long_context") or []
    if long:
        lines += [
            f"## Long context ({result.get('long_context_model', '')}, one forward pass, CPU)",
            "",
            "| tokens | seconds | tokens/s | peak RSS (MiB) | threads |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['tokens']:,} | {r['seconds']:.2f} | {r['tokens_per_second']:,} | {r['peak_rss_mib']:,} | "
            f"{r['threads']} |"
            for r in long
        ]
        lines.append("")
    return "\n".join(lines)


def compare_with_cnn(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task with both: the best-on-dev HybriDNA run's and CNN run's test MCC and their difference."""
    out = {}
    for task in sorted({r["task"] for r in rows}):
        picks = {}
        for kind in ("hybridna", "cnn"):
            runs = [r for r in rows if r["task"] == task and r["model"] == kind]
            if runs:
                picks[kind] = max(runs, key=lambda r: r["dev_mcc"])["test_mcc"]  # selected on dev
        if len(picks) == 2:
            out[task] = {**picks, "difference": picks["hybridna"] - picks["cnn"]}
    return out


@dataclass
class ReportConfig:
    """What ``hybrids dna report`` reports (module docstring); each section only when its inputs are
    given: ``model`` + ``fasta`` (language modelling), ``finetune`` (+ ``published``), ``long_context``
    (``model``, else a random ``preset``)."""

    model: Path | None = None
    fasta: list[Path] | None = None
    holdout_fraction: float = 0.1
    context: int = 1024
    max_tiles: int | None = None
    finetune: list[Path] | None = None
    published: Path | None = None
    long_context: list[int] | None = None
    preset: str = "small"
    threads: int | None = None  # torch threads (default: torch's; long context: 1)
    out: Path = Path("dna_report")
    page: Path | None = None  # also write this results page (docs/results/dna.md), stamped
    command: str = ""  # the command line, for the page's stamp (default: this process's)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in ("model", "published", "page"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        for name in ("fasta", "finetune"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, [Path(p) for p in ([value] if isinstance(value, str | Path) else value)])

    def check(self) -> None:
        """Raise ``InputError`` (one line naming the flag) for values no report can use."""
        if not (self.fasta or self.finetune or self.long_context):
            raise InputError("nothing to report: give --fasta (with -m), --finetune RUN... or --long-context")
        if self.fasta and not self.model:
            raise InputError("--fasta needs -m CKPT (the language model to score)")
        if not 0 < self.holdout_fraction < 1:
            raise InputError(f"--holdout-fraction must be in (0, 1), got {self.holdout_fraction}")
        for flag in ("context", "max_tiles", "threads"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
        if self.long_context and min(self.long_context) < 1:
            raise InputError(f"--long-context: token counts must be >= 1, got {self.long_context}")


@dataclass
class ReportResult:
    data: dict[str, Any]  # what OUT/report.json holds
    markdown: str  # what OUT/report.md holds
    out: Path


def report(config: ReportConfig) -> ReportResult:
    """Measure and write the report ``config`` asks for (module docstring)."""
    from hybrids.datasets.atomic import atomic_write_text

    config.check()
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    result: dict[str, Any] = {}
    if config.fasta:
        result["language_modelling"] = language_modelling(
            config.model,
            config.fasta,
            holdout_fraction=config.holdout_fraction,
            context=config.context,
            max_tiles=config.max_tiles,
        )
    if config.finetune:
        rows = gue_rows(config.finetune)
        result["gue"] = rows
        result["gue_vs_cnn"] = compare_with_cnn(rows)
    if config.published:
        result["published"] = read_published(config.published)
    if config.long_context:
        result["long_context"] = long_context(
            config.long_context, checkpoint=config.model, preset=config.preset, threads=config.threads or 1
        )
        result["long_context_model"] = str(config.model) if config.model else f"random `{config.preset}`"
    make_output_folder(config.out)
    text = render_markdown(result)
    atomic_write_text(config.out / "report.md", text + "\n")
    atomic_write_text(config.out / "report.json", json.dumps(result, indent=2) + "\n")
    if config.page is not None:
        from hybrids.evaluation.results_page import measurement_stamp, write_results_page

        body = text.split("\n", 1)[1] if text.startswith("# ") else text  # without its title
        stamp = measurement_stamp(config.command or None)
        write_results_page(config.page, "DNA language models", body, stamp)
    return ReportResult(result, text, config.out)
