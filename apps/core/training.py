"""The training run, once for every vertical: run options, the Trainer, the checkpoint callback.

A vertical writes its ``LightningModule``, its ``LightningDataModule`` and a config dataclass whose
``run`` field is a :class:`RunOptions`; then ``run_training`` (or ``build_trainer`` plus
``RunCheckpoint``) does the rest::

    run = RunOptions(out=Path("runs/x"), max_time=30, threads=1)
    checkpoint = RunCheckpoint(run.out, record=..., score=..., describe=...)
    trainer = build_trainer(run, callbacks=[checkpoint], max_steps=1000, val_check_interval=200)

What lives here, so that no vertical repeats it:

- **Run options** (:class:`RunOptions`, ``add_run_arguments``): ``-o/--out``, ``--max-time``,
  ``--resume``, ``--accelerator``, ``--devices``, ``--strategy``, ``--num-nodes``, ``--precision``
  (Lightning's names: ``32-true``, ``bf16-mixed``, ``16-mixed``...), ``--seed`` and ``--threads``,
  each defined once with one default.
- **The Trainer** (``build_trainer``): Lightning's banners and known-harmless warnings silenced,
  the seed set, torch threads chosen (on a CPU: cores / processes), a CSV logger whose version
  keeps earlier metrics on ``--resume`` (``OUT/resumed_N``), ``--max-time`` as Lightning's clean
  stop, and a progress bar only when both output streams are terminals (a redirected run logs one
  line per validation instead).
- **The checkpoint callback** (:class:`RunCheckpoint`): after each validation (or each training
  epoch, for runs without validation) ``OUT/last`` always, ``OUT/best`` when the score improves,
  ``OUT/history.json`` and ``OUT/resume.ckpt`` (Lightning's state for ``--resume``), every file
  written atomically; the best score and the history survive ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L

from hybrids.apps.core.run_options import RESUME_NAME, RunOptions

__all__ = [
    "HISTORY_NAME",
    "RunCheckpoint",
    "build_trainer",
    "default_threads",
    "fit",
    "quiet_lightning",
    "save_model_folder",
    "seed_run",
    "validate",
]

logger = logging.getLogger("hybrids.training")

HISTORY_NAME = "history.json"


# -- Lightning --------------------------------------------------------------------------------------
def quiet_lightning(verbosity: int = 0) -> None:
    """Lightning's banner lines (GPU available, tips) only with ``-v``; no warnings about what we
    do on purpose (data loaders without workers, an existing output folder, eval-mode modules
    such as frozen encoders) or about Lightning's own deprecated internals."""
    level = logging.INFO if verbosity > 0 else logging.WARNING
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(level)
    for message in (
        ".*does not have many workers.*",
        ".*LeafSpec.*is deprecated.*",
        ".*Checkpoint directory.*exists and is not empty.*",
        ".*module\\(s\\) in eval mode.*",
        ".*resuming from a checkpoint that ended before the epoch ended.*",
        ".*smaller than the logging interval.*",  # short epochs: the CSV log simply has fewer rows
    ):
        warnings.filterwarnings("ignore", message=message)


def seed_run(run: RunOptions) -> None:
    """Silence Lightning's banners and seed every generator (python, numpy, torch) with ``run.seed``.
    ``build_trainer`` calls it; call it first when a model is built before the trainer, so that its
    initial weights follow ``--seed`` too."""
    quiet_lightning(run.verbosity)
    L.seed_everything(run.seed, workers=True, verbose=False)


def default_threads(run: RunOptions) -> int | None:
    """Torch threads per process: ``run.threads``, else on a CPU-only run the cores divided among
    the processes (so two processes do not fight over each core), else torch's default."""
    if run.threads:
        return run.threads
    import torch

    if run.accelerator in ("cpu", "auto") and not torch.cuda.is_available():
        return max(1, (os.cpu_count() or 1) // run.processes)
    return None


class ThreadsCallback(L.Callback):
    """``torch.set_num_threads(threads)`` for the run (every stage), restored afterwards; on a
    small shared CPU one thread per process is often much faster than torch's default."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads
        self._before: int | None = None

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        import torch

        if self.threads and self._before is None:
            self._before = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        import torch

        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None


def _log_version(out: Path, resume: bool) -> str:
    """Lightning's ``metrics.csv`` goes to ``OUT`` (``OUT/resumed_N`` for the N-th ``--resume``,
    so that earlier metrics are kept)."""
    if not resume:
        return ""
    n = 1
    while (out / f"resumed_{n}").exists():
        n += 1
    return f"resumed_{n}"


def _progress_bar(run: RunOptions) -> Any:
    """Lightning's tqdm bar (it writes to stdout) when both streams are terminals, else ``None``.
    The tqdm bar, not rich's: rich's reads ``Epoch 0/-2`` on a run bounded by steps."""
    if run.quiet or not (sys.stdout.isatty() and sys.stderr.isatty()):
        return None
    from lightning.pytorch.callbacks import TQDMProgressBar

    return TQDMProgressBar()


def build_trainer(
    run: RunOptions,
    *,
    callbacks: Iterable[Any] = (),
    gradient_clip_val: float | None = None,
    log_every_n_steps: int = 50,
    **limits: Any,
) -> L.Trainer:
    """The ``L.Trainer`` of every training verb, after ``seed_run`` and with the thread set-up.

    ``limits`` are the vertical's loop bounds, passed to Lightning as they are: ``max_steps``,
    ``max_epochs``, ``val_check_interval``, ``check_val_every_n_epoch``, ``limit_train_batches``,
    ``limit_val_batches``, ``reload_dataloaders_every_n_epochs``, ``sync_batchnorm``... ``--max-time``
    becomes Lightning's ``max_time`` (a clean stop at the end of a step).
    """
    from lightning.pytorch.loggers import CSVLogger

    seed_run(run)
    from hybrids.datasets.atomic import make_output_folder

    make_output_folder(run.out)
    bar = _progress_bar(run)
    extra = [ThreadsCallback(default_threads(run)), *([bar] if bar is not None else [])]
    limits.setdefault("num_sanity_val_steps", 0)
    return L.Trainer(
        accelerator=run.accelerator,
        devices=run.devices,
        strategy=run.strategy,
        num_nodes=run.num_nodes,
        precision=run.precision,
        max_time={"seconds": run.max_time * 60} if run.max_time else None,
        gradient_clip_val=gradient_clip_val or None,
        callbacks=[*callbacks, *extra],
        logger=CSVLogger(run.out, name="", version=_log_version(run.out, run.resume)),
        enable_checkpointing=False,
        enable_progress_bar=bar is not None,
        enable_model_summary=False,
        log_every_n_steps=max(1, log_every_n_steps),
        default_root_dir=run.out,
        inference_mode=False,  # no_grad instead: the SSD kernel caches masks that autograd reuses later
        **limits,
    )


@contextlib.contextmanager
def _ctrl_c_as_keyboard_interrupt(trainer: L.Trainer) -> Iterator[None]:
    """Lightning turns Ctrl-C into ``exit(1)`` after its clean shutdown; re-raise it as
    ``KeyboardInterrupt`` so the CLI exits with 130, as every other command does."""
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def fit(trainer: L.Trainer, module: L.LightningModule, run: RunOptions, **data: Any) -> None:
    """``trainer.fit`` from ``OUT/resume.ckpt`` when resuming (read with ``weights_only=True``:
    tensors and plain values only, never code); Ctrl-C raises ``KeyboardInterrupt``."""
    ckpt = run.resume_path
    with _ctrl_c_as_keyboard_interrupt(trainer):
        trainer.fit(module, ckpt_path=ckpt, weights_only=True if ckpt else None, **data)


def validate(trainer: L.Trainer, module: L.LightningModule, **data: Any) -> None:
    """``trainer.validate`` (the starting or stopping point of a run, quietly); Ctrl-C raises
    ``KeyboardInterrupt``."""
    with _ctrl_c_as_keyboard_interrupt(trainer):
        trainer.validate(module, verbose=False, **data)


# -- the checkpoint callback --------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """NaN and infinities become ``null`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def save_model_folder(module: L.LightningModule, folder: Path, record: Mapping[str, Any], extra: Any) -> None:
    """The default ``save``: ``module.model`` as a checkpoint folder (safetensors + config.json),
    with ``extra`` (e.g. labels, inference settings) and the record under ``training``."""
    from hybrids.apps.core.checkpoint import save_checkpoint

    extra = dict(extra or {})
    training = {**extra.get("training", {}), **record}
    save_checkpoint(module.model, folder, extra=_json_safe({**extra, "training": training}))


class RunCheckpoint(L.Callback):
    """After each validation (``trigger="validation"``) or training epoch (``"epoch"``): ``OUT/last``,
    ``OUT/best`` when ``score(record)`` beats every earlier one, ``OUT/history.json``, ``OUT/resume.ckpt``
    and one log line (``describe(record, improved)``).

    ``record(trainer, module) -> dict | None`` gives what to remember of this point (``None``: nothing
    was measured, skip it); ``step``, ``epoch`` and the training ``seconds`` (across ``--resume``) are
    added. ``score(record)`` is a number or a tuple, higher is better (``None`` or NaN never counts as
    best); without ``score`` no ``best`` is kept. ``save(module, folder, record, extra)`` writes one
    checkpoint folder (default :func:`save_model_folder`); ``names`` renames ``last``/``best`` (e.g.
    ``{"last": "teacher"}``). Files are written by the first process only, each atomically;
    ``resume.ckpt`` is saved by every process (sharded strategies need all of them) under a
    temporary name, then renamed.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        record: Callable[[L.Trainer, L.LightningModule], dict[str, Any] | None],
        score: Callable[[dict[str, Any]], Any] | None = None,
        describe: Callable[[dict[str, Any], bool], str] | None = None,
        save: Callable[[L.LightningModule, Path, dict[str, Any], Any], None] = save_model_folder,
        extra: Any = None,
        trigger: str = "validation",
        names: Mapping[str, str] | None = None,
    ) -> None:
        if trigger not in ("validation", "epoch"):
            raise ValueError(f"trigger must be 'validation' or 'epoch', got {trigger!r}")
        self.directory = Path(directory)
        self.record, self.score, self.describe, self.save = record, score, describe, save
        self.extra, self.trigger, self.names = extra, trigger, dict(names or {})
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self._seconds_before = 0.0
        self._start = time.monotonic()

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": json.dumps(_json_safe(self.best)),
            "history": json.dumps(_json_safe(self.history)),
            "seconds": self.elapsed(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = json.loads(state_dict.get("best", "null"))
        self.history = json.loads(state_dict.get("history", "[]"))
        self._seconds_before = float(state_dict.get("seconds", 0.0))
        self._start = time.monotonic()

    def elapsed(self) -> float:
        """Training seconds so far, including the runs this one resumes."""
        return self._seconds_before + time.monotonic() - self._start

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.trigger == "validation" and not trainer.sanity_checking:
            self.checkpoint(trainer, module)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.trigger == "epoch":
            self.checkpoint(trainer, module)
        elif trainer.global_step > 0:
            self._save_resume(trainer)  # between validations too: a stop loses at most an epoch

    def checkpoint(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any] | None:
        """Record this point and write the files; returns the record (``None``: nothing new)."""
        values = self.record(trainer, module)
        if values is None:
            return None
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, **values}
        record.setdefault("seconds", round(self.elapsed(), 1))
        if self.history and self.history[-1]["step"] == record["step"]:
            return None  # the same weights measured twice (the final validation after a stop)
        self.history.append(record)
        improved = self._improves(record)
        if improved:
            self.best = record
        if trainer.global_step > 0:
            self._save_resume(trainer)
        if trainer.is_global_zero:
            from hybrids.datasets.atomic import atomic_write_text

            self.save(module, self.directory / self.names.get("last", "last"), record, self.extra)
            if improved:
                self.save(module, self.directory / self.names.get("best", "best"), record, self.extra)
            history = json.dumps(_json_safe(self.history), indent=2) + "\n"
            atomic_write_text(self.directory / HISTORY_NAME, history)
            if self.describe is not None:
                logger.info("%s", self.describe(record, improved))
        return record

    def _improves(self, record: dict[str, Any]) -> bool:
        if self.score is None:
            return False
        value = self.score(record)
        if value is None or any(isinstance(v, float) and math.isnan(v) for v in _flat(value)):
            return False
        return self.best is None or value > self.score(self.best)

    def _save_resume(self, trainer: L.Trainer) -> None:
        path = self.directory / RESUME_NAME
        tmp = path.with_name(f".{path.name}.part")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, path)


def _flat(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, tuple) else (value,)
