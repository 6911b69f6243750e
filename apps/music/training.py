"""The Lightning side of ``hybrids music train``: augmentations, datasets, EMA, the
``HTDemucsTrainingModule`` and the ``StemsDataModule``, and ``build_model``. The run itself (Trainer,
checkpoints, resume) is ``hybrids.apps.core.training``; ``hybrids.apps.music.train`` holds the
config, ``train(config)`` and the recipe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hybrids.apps.core.errors import InputError
from hybrids.apps.music.htdemucs import HTDemucs, HTDemucsConfig
from hybrids.apps.music.train import PRESETS
from hybrids.datasets.musdb import MIXTURE, MusdbError, MusdbTrack, open_musdb, open_stems_folder

logger = logging.getLogger("hybrids.music.train")


# -- augmentations -------------------------------------------------------------------------------
# Each takes and returns sources ``(batch, sources, channels, samples)``; ``generator`` (optional)
# makes the draws reproducible.
def random_shift(
    wav: torch.Tensor, shift: int, *, same: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Crop ``shift`` samples: each source (or each example, ``same``) starts at a random offset
    in ``[0, shift)``. Output ``(b, s, c, samples - shift)``."""
    if shift <= 0:
        return wav
    b, s, c, t = wav.shape
    length = t - shift
    if length <= 0:
        raise ValueError(f"cannot shift by {shift} samples an input of {t} samples")
    offsets = torch.randint(shift, (b, 1 if same else s, 1, 1), generator=generator).to(wav.device)
    index = torch.arange(length, device=wav.device) + offsets.expand(b, s, c, 1)
    return wav.gather(3, index)


def flip_channels(wav: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Swap left and right of each stereo source with probability 1/2 (mono: unchanged)."""
    b, s, c, t = wav.shape
    if c != 2:
        return wav
    swap = torch.randint(2, (b, s, 1, 1), generator=generator).to(wav.device).bool()
    return torch.where(swap, wav.flip(2), wav)


def flip_sign(wav: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Negate each source with probability 1/2."""
    b, s = wav.shape[:2]
    signs = torch.randint(2, (b, s, 1, 1), generator=generator).to(wav.device, wav.dtype) * 2 - 1
    return wav * signs


def random_scale(
    wav: torch.Tensor,
    low: float = 0.25,
    high: float = 1.25,
    *,
    proba: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability ``proba`` (once per batch), multiply each source by a gain drawn
    uniformly in ``[low, high]``."""
    if proba <= 0 or float(torch.rand((), generator=generator)) >= proba:
        return wav
    b, s = wav.shape[:2]
    gains = torch.rand((b, s, 1, 1), generator=generator) * (high - low) + low
    return wav * gains.to(wav.device, wav.dtype)


def remix(
    wav: torch.Tensor, group_size: int = 4, *, proba: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """With probability ``proba``, shuffle each source independently across the examples of
    each group of ``group_size`` consecutive examples (the last group may be smaller), so that
    new mixtures combine sources of different tracks. ``group_size`` 0 means the whole batch
    (demucs groups so that the statistics do not depend on the number of devices)."""
    if proba <= 0 or float(torch.rand((), generator=generator)) >= proba:
        return wav
    b, s = wav.shape[:2]
    group_size = group_size or b
    order = torch.empty(b, s, dtype=torch.long)
    for start in range(0, b, group_size):
        size = min(group_size, b - start)
        order[start : start + size] = start + torch.argsort(torch.rand(size, s, generator=generator), dim=0)
    index = order.to(wav.device)[:, :, None, None].expand_as(wav)
    return wav.gather(0, index)


@dataclass(frozen=True)
class Augmentation:
    """demucs's training augmentations (``shift`` in samples; 0 turns it off)."""

    shift: int = 0
    shift_same: bool = False
    flip: bool = True
    scale: tuple[float, float] | None = (0.25, 1.25)
    scale_proba: float = 1.0
    remix_proba: float = 1.0
    remix_group: int = 4

    def __call__(self, wav: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        wav = random_shift(wav, self.shift, same=self.shift_same, generator=generator)
        if self.flip:
            wav = flip_sign(flip_channels(wav, generator=generator), generator=generator)
        if self.scale is not None:
            wav = random_scale(wav, *self.scale, proba=self.scale_proba, generator=generator)
        if self.remix_proba:
            wav = remix(wav, self.remix_group, proba=self.remix_proba, generator=generator)
        return wav


# -- metrics -------------------------------------------------------------------------------------
def l1_loss(estimate: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over channels and samples, then over examples and sources (equal weight)."""
    return F.l1_loss(estimate, sources, reduction="none").mean(dim=(2, 3)).mean()


def usdr(references: torch.Tensor, estimates: torch.Tensor, delta: float = 1e-7) -> torch.Tensor:
    """MDX utterance SDR per source, ``(sources, channels, samples)`` -> ``(sources,)`` float64
    (``hybrids.evaluation.bsseval.usdr``)."""
    from hybrids.evaluation.bsseval import usdr as _usdr

    ref = references.detach().double().cpu().transpose(1, 2).numpy()  # (nsrc, nsamples, nchan)
    est = estimates.detach().double().cpu().transpose(1, 2).numpy()
    return torch.from_numpy(np.asarray(_usdr(ref, est, delta=delta)))


# -- EMA -----------------------------------------------------------------------------------------
class WeightsEMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    ``update()`` after each optimiser step; ``average = decay * average + (1 - decay) * weights``
    with the bias correction demucs uses (the first updates weigh more, ``1 / count``, ``count``
    growing to ``1 / (1 - decay)``). ``with ema.swapped(): ...`` runs with the averaged weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.model = model
        self.decay = decay
        self.count = 0.0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self) -> None:
        self.count = self.count * self.decay + 1
        weight = 1 / self.count
        for key, value in self.model.state_dict().items():
            if key in self.state:
                average = self.state[key]
                if average.device != value.device:
                    average = self.state[key] = average.to(value.device)
                average.mul_(1 - weight).add_(value.detach(), alpha=weight)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items() if k in self.state}
        self.model.load_state_dict(self.state, strict=False)
        try:
            yield
        finally:
            self.model.load_state_dict(current, strict=False)


# -- data ----------------------------------------------------------------------------------------
def _fit_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    if wav.shape[-1] >= length:
        return wav[..., :length]
    return F.pad(wav, (0, length - wav.shape[-1]))


def _to_model_format(wav: torch.Tensor, rate: int, samplerate: int, channels: int) -> torch.Tensor:
    from hybrids.datasets.audio import convert_channels, resample

    wav = convert_channels(wav, channels)
    return resample(wav, rate, samplerate) if rate != samplerate else wav


class SegmentDataset(Dataset):
    """Random excerpts of ``length`` samples (at ``samplerate``) of the ``sources``:
    ``(sources, channels, length)`` float32. A track is drawn in proportion to its duration and
    the excerpt's start uniformly; ``size`` excerpts make an epoch. Each item's draw mixes the
    item's index with a number taken from torch's global generator, so epochs, data-loader
    workers and devices see different excerpts while ``seed_everything`` keeps runs repeatable."""

    def __init__(
        self,
        tracks: Sequence[MusdbTrack],
        sources: Sequence[str],
        length: int,
        *,
        samplerate: int,
        channels: int,
        size: int,
    ):
        if not tracks:
            raise InputError("no training tracks")
        self.tracks = list(tracks)
        self.sources = list(sources)
        self.length = int(length)
        self.samplerate = samplerate
        self.channels = channels
        self.size = int(size)
        durations = np.array([t.duration for t in self.tracks], dtype=np.float64)
        self.weights = durations / durations.sum()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        base = int(torch.randint(2**62, ()).item())
        rng = np.random.default_rng([base, int(index)])
        track = self.tracks[int(rng.choice(len(self.tracks), p=self.weights))]
        need = math.ceil(self.length * track.samplerate / self.samplerate)
        need += 16 if track.samplerate != self.samplerate else 0
        start = int(rng.integers(0, track.frames - need + 1)) if track.frames > need else 0
        audio = track.load_frames(self.sources, start, need)
        wavs = [
            _fit_length(
                _to_model_format(audio[s], track.samplerate, self.samplerate, self.channels), self.length
            )
            for s in self.sources
        ]
        return torch.stack(wavs)


class TrackDataset(Dataset):
    """Whole validation tracks (or their first ``seconds``): ``(1 + sources, channels, samples)``,
    the mixture first."""

    def __init__(
        self,
        tracks: Sequence[MusdbTrack],
        sources: Sequence[str],
        *,
        samplerate: int,
        channels: int,
        seconds: float | None = None,
    ):
        self.tracks = list(tracks)
        self.sources = list(sources)
        self.samplerate = samplerate
        self.channels = channels
        self.seconds = seconds

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> torch.Tensor:
        track = self.tracks[index]
        audio = track.load([MIXTURE, *self.sources], duration=self.seconds)
        wavs = [_to_model_format(audio[n], track.samplerate, self.samplerate, self.channels) for n in audio]
        length = min(w.shape[-1] for w in wavs)
        return torch.stack([w[..., :length] for w in wavs])


def open_training_tracks(
    data: str | Path, sources: Sequence[str], valid_fraction: float = 0.1
) -> tuple[list[MusdbTrack], list[MusdbTrack]]:
    """``(train, valid)`` tracks of ``data`` (a MUSDB root, a folder with ``train/`` and
    ``valid/``, or a folder of track folders, whose last ``valid_fraction`` is held out)."""
    root = Path(data)
    if not root.is_dir():
        raise InputError(f"{root}: no such data folder (--data expects MUSDB18(-HQ) or a folder of stems)")
    try:
        if (root / "train").is_dir() and (root / "valid").is_dir():
            return open_stems_folder(root / "train", sources, split="train"), open_stems_folder(
                root / "valid", sources, split="valid"
            )
        if (root / "train").is_dir() and (root / "test").is_dir():
            if tuple(sources) != ("drums", "bass", "other", "vocals"):
                raise InputError(
                    f"{root}: MUSDB18 has drums, bass, other and vocals; the model separates "
                    f"{', '.join(sources)}"
                )
            train = open_musdb(root, "train", split="train")
            valid = open_musdb(root, "train", split="valid")
            if not train or not valid:
                raise InputError(
                    f"{root}: the official MUSDB18 split leaves no "
                    f"{'training' if not train else 'validation'} tracks in train/ (is this a partial copy?)"
                )
            return train, valid
        tracks = open_stems_folder(root, sources)
    except MusdbError as exc:
        raise InputError(str(exc)) from None
    if len(tracks) < 2:
        raise InputError(
            f"{root}: one track only; training needs at least two (one is held out for validation), "
            "or train/ and valid/ folders"
        )
    n_valid = min(len(tracks) - 1, max(1, round(valid_fraction * len(tracks))))
    for track in tracks[: len(tracks) - n_valid]:
        track.split = "train"
    for track in tracks[len(tracks) - n_valid :]:
        track.split = "valid"
    return tracks[: len(tracks) - n_valid], tracks[len(tracks) - n_valid :]


class StemsDataModule(L.LightningDataModule):
    """Random training excerpts of ``segment + shift`` samples and whole validation tracks."""

    def __init__(
        self,
        train_tracks: Sequence[MusdbTrack],
        valid_tracks: Sequence[MusdbTrack],
        *,
        sources: Sequence[str],
        samplerate: int,
        channels: int,
        segment: int,
        shift: int = 0,
        batch_size: int = 4,
        epoch_steps: int = 1000,
        workers: int = 0,
        valid_seconds: float | None = None,
    ):
        super().__init__()
        self.train_tracks, self.valid_tracks = list(train_tracks), list(valid_tracks)
        self.sources = list(sources)
        self.samplerate, self.channels = samplerate, channels
        self.segment, self.shift = int(segment), int(shift)
        self.batch_size, self.epoch_steps, self.workers = batch_size, epoch_steps, workers
        self.valid_seconds = valid_seconds

    @classmethod
    def from_folder(cls, data: str | Path, *, valid_fraction: float = 0.1, **kwargs: Any) -> StemsDataModule:
        train, valid = open_training_tracks(data, kwargs["sources"], valid_fraction)
        return cls(train, valid, **kwargs)

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        dataset = SegmentDataset(
            self.train_tracks,
            self.sources,
            self.segment + self.shift,
            samplerate=self.samplerate,
            channels=self.channels,
            size=self.batch_size * world * self.epoch_steps,
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            drop_last=True,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        dataset = TrackDataset(
            self.valid_tracks,
            self.sources,
            samplerate=self.samplerate,
            channels=self.channels,
            seconds=self.valid_seconds,
        )
        return DataLoader(dataset, batch_size=1, num_workers=self.workers)


# -- the Lightning module --------------------------------------------------------------------------
class HTDemucsTrainingModule(L.LightningModule):
    """Wraps an :class:`HTDemucs` (``self.model``, a plain ``nn.Module``) for training."""

    def __init__(
        self,
        model: HTDemucs,
        *,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        augmentation: Augmentation | None = None,
        ema_decay: float = 0.0,
        valid_overlap: float = 0.25,
    ):
        super().__init__()
        self.model = model
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.augmentation = augmentation if augmentation is not None else Augmentation()
        self.ema = WeightsEMA(model, ema_decay) if ema_decay else None
        self.valid_overlap = valid_overlap

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return self.model(mix)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        sources = self.augmentation(batch)
        estimate = self.model(sources.sum(dim=1))
        loss = l1_loss(estimate, sources)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:  # --resume continues the average (tensors and numbers only)
            checkpoint["hybrids_ema"] = {"count": self.ema.count, "state": self.ema.state}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hybrids_ema")
        if self.ema is not None and saved is not None:
            self.ema.count = float(saved["count"])
            self.ema.state = {k: v.detach().clone() for k, v in saved["state"].items()}

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """The weights that are validated and saved: the EMA's when enabled."""
        with self.ema.swapped() if self.ema is not None else contextlib.nullcontext():
            yield

    def on_validation_epoch_start(self) -> None:
        self._swap = self.averaged()
        self._swap.__enter__()

    def on_validation_epoch_end(self) -> None:
        self._swap.__exit__(None, None, None)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        from hybrids.apps.music.engine import apply_model

        mix, references = batch[:, 0], batch[:, 1:]
        estimate = apply_model(
            self.model,
            mix,
            shifts=0,
            split=True,
            overlap=self.valid_overlap,
            jobs=1,
            threads=torch.get_num_threads(),
        )
        loss = l1_loss(estimate, references)
        scores = usdr(references[0], estimate[0])
        self.log("valid_loss", loss, sync_dist=True, batch_size=1, prog_bar=True)
        self.log("valid_usdr", scores.mean().float(), sync_dist=True, batch_size=1)
        for name, score in zip(self.model.sources, scores):
            self.log(f"valid_usdr_{name}", score.float(), sync_dist=True, batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.model.parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay
        )


# -- building the model ----------------------------------------------------------------------------


def build_model(
    config: str | Path | None = None,
    *,
    init: str | Path | None = None,
    weights: str | Path | None = None,
    repo: str | Path | None = None,
    segment: float | None = None,
) -> HTDemucs:
    """A trainable :class:`HTDemucs`: random at the preset or JSON ``config`` (default ``tiny``),
    or ``init`` (``htdemucs``, a registered name resolved with ``weights``/``repo`` as by
    ``separate``, or one of our checkpoint folders). ``segment`` (seconds) replaces the config's."""
    from hybrids.apps.core.registry import create_model
    from hybrids.apps.music.loading import load_separation_model

    if init is not None:
        if config is not None:
            raise InputError(
                "--config and --init exclude each other: the initial weights bring their configuration"
            )
        model = load_separation_model(init, weights=weights, repo=repo)
        if not isinstance(model, HTDemucs):
            raise InputError(f"--init {init}: training needs one HT Demucs, not a {type(model).__name__}")
        if segment is not None:
            state = model.state_dict()
            name = model.model_name
            model = create_model(name, config=model.config.replace(segment=float(segment)))
            model.load_state_dict(state)
        return _with_preprocessing(model).train()
    if weights is not None or repo is not None:
        raise InputError("--weights and --repo go with --init (the weights to start from)")
    name, fields = "music/htdemucs", None
    config = "tiny" if config is None else config
    if str(config) in PRESETS:
        preset = str(config)
        if preset == "htdemucs_6s":
            name = "music/htdemucs_6s"
    else:
        path = Path(config)
        if not path.is_file():
            raise InputError(f"--config {config}: neither a preset ({', '.join(PRESETS)}) nor a JSON file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{path}: not a readable JSON config ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object of HTDemucsConfig fields")
        name = data.get("model", name) if "config" in data else name
        fields = data.get("config", data)
        preset = None
    cfg = HTDemucsConfig.from_preset(preset) if fields is None else HTDemucsConfig.from_dict(fields)
    if segment is not None:
        cfg = cfg.replace(segment=float(segment))
    return _with_preprocessing(create_model(name, config=cfg)).train()


def _with_preprocessing(model: HTDemucs) -> HTDemucs:
    from hybrids.apps.music.weights import preprocessing_of

    model.preprocessing = preprocessing_of(model.config)
    return model
