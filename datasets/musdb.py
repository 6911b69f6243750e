"""MUSDB18, MUSDB18-HQ and folders of stems: tracks that load as ``{name: (channels, samples)}``.

Three layouts are read::

    musdb18/{train,test}/<Artist - Title>.stem.mp4                 # MUSDB18: 5 AAC streams
    musdb18hq/{train,test}/<Artist - Title>/{mixture,drums,bass,other,vocals}.wav
    my_stems/<track>/{drums,bass,other,vocals}.wav [+ mixture.wav]  # a user's own stems

``open_musdb(root, subset="train", split="valid")`` gives the official validation tracks (the 14
of musdb's ``configs/mus.yaml``), ``split="train"`` the 86 others, ``split=None`` all of the
subset. ``open_stems_folder(root)`` reads a folder of track folders (or one track folder); a
missing ``mixture.wav`` is the sum of the stems. ``.stem.mp4`` files are decoded with ``ffmpeg``
(stream ``k`` through ``-map 0:a:k``, all requested streams in one pass); ``stempeg`` is not
needed. ``MusdbTrack.load(offset=..., duration=...)`` decodes only the excerpt.

Tracks are checked when opened: a missing stem, stems of different lengths, sample rates or
channel counts, and an empty folder raise ``MusdbError`` (a ``ValueError``) with one line naming
the track. This module never imports ``hybrids.apps``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "MIXTURE",
    "SOURCES",
    "STEM_STREAMS",
    "VALIDATION_TRACKS",
    "MusdbError",
    "MusdbTrack",
    "open_musdb",
    "open_stems_folder",
]

MIXTURE = "mixture"
SOURCES = ("drums", "bass", "other", "vocals")
# Order of the audio streams in a MUSDB18 .stem.mp4 (musdb 0.4.3, configs/mus.yaml `stem_ids`).
STEM_STREAMS = (MIXTURE, "drums", "bass", "other", "vocals")
SUBSETS = ("train", "test")
SPLITS = ("train", "valid")
STEM_EXTENSIONS = (".wav", ".flac")
STEM_MP4_SUFFIX = ".stem.mp4"
# The official validation tracks of the MUSDB18 train subset: musdb 0.4.3, musdb/configs/mus.yaml
# (`validation_tracks`), the split demucs and the SiSEC/MDX baselines use.
VALIDATION_TRACKS = (
    "Actions - One Minute Smile",
    "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies",
    "Patrick Talbot - A Reason To Leave",
    "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero",
    "Fergessen - Nos Palpitants",
    "Leaf - Summerghost",
    "Skelpolu - Human Mistakes",
    "Young Griffo - Pennies",
    "ANiMAL - Rockshow",
    "James May - On The Line",
    "Meaxic - Take A Step",
    "Traffic Experiment - Sirens",
)
# Decoded AAC streams of one .stem.mp4 may differ by up to about one AAC frame (1024 samples of
# encoder priming/padding); larger differences are a broken file.
_MP4_LENGTH_TOLERANCE = 2048
_MP4_PREROLL = 4096  # samples decoded before an excerpt and dropped


class MusdbError(ValueError):
    """A track or dataset folder that cannot be used; ``str(error)`` is one line naming the track."""


@dataclass(frozen=True)
class _Stem:
    path: Path
    frames: int
    samplerate: int
    channels: int


@dataclass
class MusdbTrack:
    """One multitrack song.

    ``path`` is the track folder (wav/flac stems) or the ``.stem.mp4`` file; ``sources`` the
    stems it holds (without the mixture); ``frames`` its length in samples at ``samplerate``.
    """

    name: str
    path: Path
    subset: str | None
    split: str | None
    samplerate: int
    frames: int
    channels: int
    sources: tuple[str, ...] = SOURCES
    is_wav: bool = True
    has_mixture: bool = True  # False: "mixture" is the sum of the stems

    @property
    def folder(self) -> Path:
        return self.path if self.is_wav else self.path.parent

    @property
    def duration(self) -> float:
        return self.frames / self.samplerate

    def __repr__(self) -> str:
        where = "/".join(x for x in (self.subset, self.split) if x)
        return f"MusdbTrack({self.name!r}, {where or 'stems'}, {self.duration:.1f} s, {self.samplerate} Hz)"

    # -- reading ---------------------------------------------------------------------------------
    def load(
        self, sources: Sequence[str] | None = None, offset: float = 0.0, duration: float | None = None
    ) -> dict[str, torch.Tensor]:
        """``{name: float32 (channels, samples)}`` of ``sources`` (default: ``"mixture"`` then
        every stem), from ``offset`` seconds, ``duration`` seconds long (default: to the end)."""
        if offset < 0 or (duration is not None and duration <= 0):
            raise ValueError(f"offset must be >= 0 and duration > 0, got {offset} and {duration}")
        start = int(round(offset * self.samplerate))
        count = None if duration is None else int(round(duration * self.samplerate))
        return self.load_frames(sources, start, count)

    def load_frames(
        self, sources: Sequence[str] | None = None, start: int = 0, frames: int | None = None
    ) -> dict[str, torch.Tensor]:
        """As :meth:`load`, in samples: ``frames`` samples from sample ``start`` (fewer at the
        end of the track; none past it)."""
        names = [MIXTURE, *self.sources] if sources is None else list(sources)
        unknown = [n for n in names if n != MIXTURE and n not in self.sources]
        if unknown:
            raise MusdbError(
                f"track {self.name!r} ({self.path}): no stem {unknown[0]!r} "
                f"(it has {', '.join(self.sources)})"
            )
        start = max(0, int(start))
        available = max(0, self.frames - start)
        count = available if frames is None else max(0, min(int(frames), available))
        if count == 0:
            return {n: torch.zeros(self.channels, 0) for n in names}
        need = list(dict.fromkeys(n for n in names if n != MIXTURE or self.has_mixture))
        if MIXTURE in names and not self.has_mixture:
            need = list(dict.fromkeys([*need, *self.sources]))
        if self.is_wav:
            audio = {n: self._read_wav(n, start, count) for n in need}
        else:
            audio = self._read_mp4(need, start, count)
        if MIXTURE in names and not self.has_mixture:
            audio[MIXTURE] = torch.stack([audio[s] for s in self.sources]).sum(0)
        return {n: audio[n] for n in names}

    def _stem_file(self, name: str) -> Path:
        for ext in STEM_EXTENSIONS:
            path = self.path / f"{name}{ext}"
            if path.is_file():
                return path
        raise MusdbError(f"track {self.name!r} ({self.path}): missing stem {name}.wav")

    def _read_wav(self, name: str, start: int, count: int) -> torch.Tensor:
        import soundfile

        path = self._stem_file(name)
        try:
            with soundfile.SoundFile(str(path)) as handle:
                handle.seek(start)
                data = handle.read(count, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise MusdbError(f"track {self.name!r}: cannot read {path} ({exc})") from None
        return _fit(torch.from_numpy(np.ascontiguousarray(data.T)), count)

    def _read_mp4(self, names: Sequence[str], start: int, count: int) -> dict[str, torch.Tensor]:
        ffmpeg = _require("ffmpeg", self)
        # Decoding restarts a little before ``start`` (AAC needs the previous frames to rebuild
        # the first ones), so an excerpt equals the same samples of a full decode.
        preroll = min(start, _MP4_PREROLL)
        command = [ffmpeg, "-nostdin", "-v", "error"]
        if start:
            command += ["-ss", f"{(start - preroll) / self.samplerate:.6f}"]
        command += ["-i", str(self.path)]
        with tempfile.TemporaryDirectory(prefix="hybrids-musdb-") as tmp:
            outputs = []
            for name in names:
                out = Path(tmp) / f"{name}.f32"
                command += [
                    "-map",
                    f"0:a:{STEM_STREAMS.index(name)}",
                    "-t",
                    f"{(count + preroll) / self.samplerate:.6f}",
                ]
                command += ["-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(self.channels), str(out)]
                outputs.append(out)
            result = subprocess.run(command, capture_output=True)
            if result.returncode != 0:
                lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
                reason = lines[-1] if lines else "ffmpeg failed"
                raise MusdbError(f"track {self.name!r}: cannot decode {self.path} ({reason})")
            audio = {}
            for name, out in zip(names, outputs):
                data = np.fromfile(out, dtype="<f4")
                data = data[: data.size - data.size % self.channels].reshape(-1, self.channels)
                audio[name] = _fit(torch.from_numpy(np.ascontiguousarray(data[preroll:].T)), count)
        return audio


def _fit(wav: torch.Tensor, count: int) -> torch.Tensor:
    """``(C, T)`` cut or zero-padded to ``count`` samples."""
    if wav.shape[-1] >= count:
        return wav[:, :count].contiguous()
    return torch.nn.functional.pad(wav, (0, count - wav.shape[-1]))


def _require(tool: str, track: MusdbTrack | Path) -> str:
    binary = shutil.which(tool)
    if binary is None:
        where = track.path if isinstance(track, MusdbTrack) else track
        raise MusdbError(f"{where}: reading .stem.mp4 files needs {tool} (not installed)")
    return binary


# -- opening tracks --------------------------------------------------------------------------------
def _check_stems(name: str, where: Path, stems: dict[str, _Stem], mp4: bool = False) -> tuple[int, int, int]:
    """``(frames, samplerate, channels)`` shared by ``stems``, or ``MusdbError`` naming the track."""
    first_name, first = next(iter(stems.items()))
    for stem_name, stem in stems.items():
        if stem.samplerate != first.samplerate:
            raise MusdbError(
                f"track {name!r} ({where}): {stem_name} is at {stem.samplerate} Hz but {first_name} at "
                f"{first.samplerate} Hz (different sample rates)"
            )
        if stem.channels != first.channels:
            raise MusdbError(
                f"track {name!r} ({where}): {stem_name} has {stem.channels} channels but {first_name} "
                f"{first.channels} (different channel counts)"
            )
    frames = [s.frames for s in stems.values()]
    tolerance = _MP4_LENGTH_TOLERANCE if mp4 else 0
    if max(frames) - min(frames) > tolerance:
        longest = max(stems, key=lambda k: stems[k].frames)
        shortest = min(stems, key=lambda k: stems[k].frames)
        raise MusdbError(
            f"track {name!r} ({where}): mismatched lengths, {longest} has {stems[longest].frames} samples "
            f"but {shortest} {stems[shortest].frames}"
        )
    if first.frames == 0:
        raise MusdbError(f"track {name!r} ({where}): the stems hold no samples")
    return (stems[MIXTURE].frames if MIXTURE in stems else min(frames)), first.samplerate, first.channels


def _stem_info(name: str, path: Path) -> _Stem:
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise MusdbError(f"track {name!r}: {path} is not a readable audio file ({exc})") from None
    return _Stem(path, int(info.frames), int(info.samplerate), int(info.channels))


def _open_wav_track(
    folder: Path,
    sources: Sequence[str],
    *,
    subset: str | None = None,
    split: str | None = None,
    require_mixture: bool = False,
) -> MusdbTrack:
    name = folder.name
    stems: dict[str, _Stem] = {}
    for source in [MIXTURE, *sources]:
        path = next(
            (folder / f"{source}{ext}" for ext in STEM_EXTENSIONS if (folder / f"{source}{ext}").is_file()),
            None,
        )
        if path is None:
            if source == MIXTURE and not require_mixture:
                continue
            raise MusdbError(f"track {name!r} ({folder}): missing stem {source}.wav")
        stems[source] = _stem_info(name, path)
    frames, samplerate, channels = _check_stems(name, folder, stems)
    return MusdbTrack(
        name, folder, subset, split, samplerate, frames, channels, tuple(sources), True, MIXTURE in stems
    )


def _probe_mp4(path: Path) -> list[_Stem]:
    ffprobe = _require("ffprobe", path)
    command = [ffprobe, "-v", "error", "-select_streams", "a", "-show_streams", "-show_format", "-of", "json"]
    result = subprocess.run([*command, str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise MusdbError(f"{path}: not a readable .stem.mp4 ({lines[-1] if lines else 'ffprobe failed'})")
    try:
        info = json.loads(result.stdout or "{}")
    except ValueError:
        info = {}
    container = float((info.get("format") or {}).get("duration") or 0.0)
    stems = []
    for stream in info.get("streams") or []:
        rate = int(stream.get("sample_rate") or 0)
        seconds = float(stream.get("duration") or container or 0.0)
        stems.append(_Stem(path, int(round(seconds * rate)), rate, int(stream.get("channels") or 0)))
    return stems


def _open_mp4_track(path: Path, subset: str | None, split: str | None) -> MusdbTrack:
    name = path.name[: -len(STEM_MP4_SUFFIX)]
    streams = _probe_mp4(path)
    if len(streams) < len(STEM_STREAMS):
        missing = STEM_STREAMS[len(streams)]
        raise MusdbError(
            f"track {name!r} ({path}): missing stem {missing} ({len(streams)} audio streams, a MUSDB18 "
            f".stem.mp4 has {len(STEM_STREAMS)}: {', '.join(STEM_STREAMS)})"
        )
    stems = dict(zip(STEM_STREAMS, streams))
    frames, samplerate, channels = _check_stems(name, path, stems, mp4=True)
    return MusdbTrack(name, path, subset, split, samplerate, frames, channels, SOURCES, False, True)


def _track_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def open_musdb(
    root: str | Path, subset: str = "train", split: str | None = None, is_wav: bool | None = None
) -> list[MusdbTrack]:
    """The tracks of a MUSDB18 (``.stem.mp4``) or MUSDB18-HQ (wav folders) ``subset``, sorted by
    name. ``split`` (``"train"``/``"valid"``, train subset only) keeps the official split;
    ``is_wav`` forces the layout (default: wav folders if ``root/subset`` has any, else
    ``.stem.mp4`` files)."""
    root = Path(root)
    if subset not in SUBSETS:
        raise MusdbError(f"{root}: subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    if split is not None and split not in SPLITS:
        raise MusdbError(f"{root}: split must be None or one of {', '.join(SPLITS)}, got {split!r}")
    if split is not None and subset != "train":
        raise MusdbError(f"{root}: the train/valid split exists only in the train subset, not {subset!r}")
    folder = root / subset
    if not folder.is_dir():
        raise MusdbError(f"{root}: not a MUSDB18 folder (no {subset}/ sub-folder)")
    mp4s = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(STEM_MP4_SUFFIX))
    dirs = _track_folders(folder)
    if is_wav is None:
        is_wav = bool(dirs) or not mp4s
    valid = set(VALIDATION_TRACKS)

    def split_of(name: str) -> str | None:
        return None if subset != "train" else ("valid" if name in valid else "train")

    tracks: list[MusdbTrack] = []
    if is_wav:
        for track_dir in dirs:
            if split is None or split_of(track_dir.name) == split:
                tracks.append(
                    _open_wav_track(
                        track_dir,
                        SOURCES,
                        subset=subset,
                        split=split_of(track_dir.name),
                        require_mixture=False,
                    )
                )
    else:
        for path in mp4s:
            name = path.name[: -len(STEM_MP4_SUFFIX)]
            if split is None or split_of(name) == split:
                tracks.append(_open_mp4_track(path, subset, split_of(name)))
    if not tracks and split is None:
        kind = "track folders" if is_wav else f"{STEM_MP4_SUFFIX} files"
        raise MusdbError(f"{folder}: empty, no MUSDB18 {kind} found")
    return tracks


def open_stems_folder(
    root: str | Path, sources: Sequence[str] = SOURCES, *, split: str | None = None
) -> list[MusdbTrack]:
    """A user's tracks: each sub-folder of ``root`` holding ``{source}.wav`` (or ``.flac``) for
    every source and optionally ``mixture.wav`` (else the sum of the stems); ``root`` itself when
    it holds the stems (one track). ``split`` is recorded on the tracks."""
    root = Path(root)
    sources = tuple(sources)
    if not sources or len(set(sources)) != len(sources) or MIXTURE in sources:
        raise MusdbError(f"{root}: sources must be distinct stem names (not {MIXTURE!r}), got {sources}")
    if not root.is_dir():
        raise MusdbError(f"{root}: no such folder of stems")
    if any((root / f"{s}{ext}").is_file() for s in (MIXTURE, *sources) for ext in STEM_EXTENSIONS):
        return [_open_wav_track(root, sources, split=split)]
    folders = _track_folders(root)
    if not folders:
        raise MusdbError(
            f"{root}: empty, no track folders with {', '.join(f'{s}.wav' for s in sources)} found"
        )
    return [_open_wav_track(folder, sources, split=split) for folder in folders]


def total_duration(tracks: Sequence[MusdbTrack]) -> float:
    """Seconds of audio in ``tracks``."""
    return math.fsum(t.duration for t in tracks)
