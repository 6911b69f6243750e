"""Hooks shared by our LightningModules (mixed in before ``L.LightningModule``).

``ThreadsHooks``: ``torch.set_num_threads(self.threads)`` for the run when ``self.threads`` is set
(restored at teardown; on a small shared CPU one thread per process is often much faster).
``TrainingClock``: training wall time that survives ``--resume`` (``self.train_seconds`` is stored in
Lightning's checkpoint); ``elapsed()`` is what ``--max-time`` limits compare against.
Torch is imported lazily, so importing this module stays cheap.
"""

from __future__ import annotations

import time
from typing import Any


class ThreadsHooks:
    threads: int | None = None
    _threads_before: int | None = None

    def setup(self, stage: str) -> None:
        import torch

        if self.threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def teardown(self, stage: str) -> None:
        import torch

        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None


class TrainingClock:
    train_seconds: float = 0.0  # training time of earlier runs (restored on --resume)
    _start: float | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hybrids_train_seconds"] = self.elapsed()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.train_seconds = float(checkpoint.get("hybrids_train_seconds", 0.0))

    def elapsed(self) -> float:
        return self.train_seconds + (time.monotonic() - self._start if self._start is not None else 0.0)

    def on_fit_start(self) -> None:
        self._start = time.monotonic()

    def on_fit_end(self) -> None:
        self.train_seconds, self._start = self.elapsed(), None
