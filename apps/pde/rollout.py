"""Autoregressive rollouts: ``rollout(model, frames, steps)`` and ``hybrids pde rollout``.

A model maps its last ``in_frames`` frames to the next ``max_steps`` (FactFormer: up to its latent steps
from one encoding; IFactFormer-m and FNO: one); ``rollout`` calls it repeatedly, each time appending what
it predicted to the input window (FactFormer's evaluation: ``max_latent_steps`` frames per call), until
``steps`` frames exist. Batches of initial conditions are processed ``batch_size`` at a time, so memory is
bounded by one model call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hybrids.apps.core.errors import InputError

__all__ = ["RolloutConfig", "load_surrogate", "relative_l2", "rollout", "rollout_file"]


def relative_l2(pred: Tensor, true: Tensor, dims: tuple[int, ...] = (-2, -1), eps: float = 1e-5) -> Tensor:
    """``||pred - true|| / ||true||`` over ``dims`` (FactFormer's ``rel_l2_loss`` before its mean; the
    squared norm of ``true`` is floored at ``eps``)."""
    diff = (pred - true).square().sum(dims)
    norm = true.square().sum(dims).clamp_min(eps)
    return (diff / norm).sqrt()


@torch.no_grad()
def rollout(
    model: nn.Module, frames: Tensor, steps: int, *, batch_size: int = 16, progress: Any = None
) -> Tensor:
    """Predict ``steps`` frames after ``frames (b, T, *grid)`` (the last ``model.in_frames`` are used).

    Returns ``(b, steps, *grid)`` in ``frames``' dtype. ``progress``: an optional tqdm-like bar updated by
    one per predicted frame of each sample batch.
    """
    in_frames, stride = int(model.in_frames), int(getattr(model, "max_steps", 1))
    if frames.shape[1] < in_frames:
        raise InputError(f"the model needs {in_frames} input frames, got {frames.shape[1]}")
    if steps < 1:
        raise InputError(f"--steps must be >= 1, got {steps}")
    was_training = model.training
    model.eval()
    outs = []
    try:
        for start in range(0, frames.shape[0], batch_size):
            window = frames[start : start + batch_size, -in_frames:].float()
            pieces, done = [], 0
            while done < steps:
                k = min(stride, steps - done)
                pred = model(window, steps=stride if stride > 1 else 1)[:, :k]
                pieces.append(pred)
                window = torch.cat([window, pred], dim=1)[:, -in_frames:]
                done += k
                if progress is not None:
                    progress.update(k)
            outs.append(torch.cat(pieces, dim=1))
    finally:
        model.train(was_training)
    return torch.cat(outs).to(frames.dtype)


def load_surrogate(name_or_folder: str | Path) -> nn.Module:
    """A trained PDE model: a checkpoint folder (``runs/x/best``) or a built-in model name."""
    from hybrids.apps.core.checkpoint import load_checkpoint
    from hybrids.apps.core.errors import HybridsError
    from hybrids.apps.core.registry import create_model

    path = Path(name_or_folder)
    try:
        if path.exists():
            model = load_checkpoint(path)
        else:
            model = create_model(str(name_or_folder))
    except HybridsError as exc:
        raise InputError(str(exc)) from None
    if not str(getattr(model, "model_name", "")).startswith("pde/"):
        raise InputError(f"{name_or_folder}: not a PDE model ({getattr(model, 'model_name', '?')})")
    return model


@dataclass
class RolloutConfig:
    """What ``hybrids pde rollout`` does: ``model`` (folder or built-in name) rolled ``steps`` frames
    forward from the last frames of ``initial`` (``.npy``: ``(frames, n, n)`` or ``(b, frames, n, n)``),
    written to ``out`` (``.npy``, float32, ``(steps, n, n)`` or ``(b, steps, n, n)``)."""

    model: str
    initial: Path
    steps: int = 16
    out: Path = Path("rollout.npy")
    interval: int = 1  # take every interval-th frame of ``initial`` (2: a simulate trajectory, 1/32 -> 1/16)
    threads: int | None = None

    def __post_init__(self) -> None:
        self.initial, self.out = Path(self.initial), Path(self.out)


def read_initial(
    path: Path, in_frames: int, grid: int, spatial_dims: int = 2, interval: int = 1
) -> tuple[Tensor, bool]:
    """The initial frames of ``path`` as ``(b, T, *grid)`` float32 (every ``interval``-th frame, counted
    back from the last), and whether the file had no batch axis."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    single = array.ndim == spatial_dims + 1
    if single:
        array = array[None]
    if array.ndim != spatial_dims + 2 or not np.issubdtype(array.dtype, np.floating):
        raise InputError(
            f"{path}: expected float frames (frames, {', '.join(['n'] * spatial_dims)}) or a batch of them, "
            f"got {array.dtype} {array.shape}"
        )
    array = array[:, ::-1][:, ::interval][:, ::-1]  # every interval-th frame, the last one kept
    if tuple(array.shape[2:]) != (grid,) * spatial_dims:
        raise InputError(
            f"{path}: frames of {'x'.join(map(str, array.shape[2:]))}, but the model was trained on "
            f"{'x'.join([str(grid)] * spatial_dims)} (wrong grid for this model)"
        )
    if array.shape[1] < in_frames:
        raise InputError(
            f"{path}: {array.shape[1]} frames{f' (every {interval}-th)' if interval > 1 else ''}, the model "
            f"needs at least {in_frames} input frames"
        )
    if not np.isfinite(array[:, -in_frames:]).all():
        raise InputError(f"{path}: the input frames contain NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), single


def rollout_file(config: RolloutConfig) -> Path:
    """Run ``config`` (see :class:`RolloutConfig`); every input is checked before anything is written."""
    from hybrids.apps.core.progress import progress_bar
    from hybrids.datasets.atomic import atomic_write_path, check_output_folder

    if config.steps < 1:
        raise InputError(f"--steps must be >= 1, got {config.steps}")
    if config.threads is not None and config.threads < 1:
        raise InputError(f"--threads must be >= 1, got {config.threads}")
    if config.interval < 1:
        raise InputError(f"--interval must be >= 1, got {config.interval}")
    if config.out.suffix != ".npy":
        raise InputError(f"{config.out}: the output must be a .npy file")
    check_output_folder(config.out.parent)
    model = load_surrogate(config.model)
    cfg = model.config
    frames, single = read_initial(
        config.initial, int(cfg.in_frames), int(cfg.grid), int(cfg.spatial_dims), config.interval
    )
    before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        with progress_bar(total=frames.shape[0] * config.steps, desc="rollout", unit="frame") as bar:
            pred = rollout(model, frames, config.steps, progress=bar)
    finally:
        torch.set_num_threads(before)
    out = pred[0] if single else pred
    with atomic_write_path(config.out) as tmp:
        np.save(tmp, out.numpy().astype(np.float32))
    return config.out
