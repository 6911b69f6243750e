"""The weights resolver: every pretrained file the suite uses is found, fetched and checked here.

A ``WeightsEntry`` records where a file comes from (URL), what it must be (full sha256; only where
the publisher gives none, ``sha256_prefix``: the published prefix, or nothing), under which licence
it may be used, and the preprocessing the model expects with it (sample rate, STFT, voxel spacing,
intensity normalisation, tokenizer, band list...). ``resolve_weights`` turns an entry name or a
user's path into a verified local file:

1. a path the user gave (``--weights PATH``) is used as is (checked against the entry's sha256
   when it carries the entry's file name);
2. otherwise the entry's file name is looked up in the user's folders (``--repo DIR``), then in
   the cache: ``$HYBRIDS_CACHE`` or ``torch.hub.get_dir()/checkpoints``;
3. otherwise it is downloaded with a progress bar, hashed while streaming, and renamed into the
   cache only when the sha256 matches; the licence is printed on that first download. With
   ``HYBRIDS_OFFLINE=1`` (or no network) the error names the file, the URL, the cache path and
   ``--weights PATH``.

A weights set made of several files (a bag of models, e.g. ``htdemucs_ft``) is one entry whose
``parts`` name the single-file entries, in order: ``resolve_weights_files`` finds or fetches each
of them (the licence is printed once), and the entry's ``to_state_dict``/``to_config`` receive the
list of what the parts hold.

``load_state_dict`` reads safetensors (ours and third parties'), or a third-party pickle through
the restricted unpickler, and never anything else. ``read_model_weights`` reads the weights of a
registered model together with the config they were trained with (our checkpoints' config, or a
third-party file's own description through the entry's ``to_config``), so a file whose shape
differs from the model's preset still loads, strictly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hybrids.apps.core.errors import CheckpointError, InputError, WeightsError
from hybrids.apps.core.progress import progress_bar
from hybrids.datasets.atomic import atomic_write_path

if TYPE_CHECKING:
    from torch import nn

    from hybrids.apps.core.registry import ModelEntry

logger = logging.getLogger(__name__)

OFFICIAL = "official"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable weights file (or a set of them) and everything needed to use it correctly."""

    name: str  # registry key, e.g. "music/htdemucs"
    url: str = ""
    sha256: str = ""  # full lower-case hex digest
    license: str = ""  # short licence text shown on first download
    filename: str = ""  # cache file name; default: the URL's last path component
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    # Third-party pickles: extra globals the restricted unpickler may allow, and class names it
    # maps to inert stubs (see restricted_pickle.py).
    pickle_globals: Mapping[str, Any] = field(default_factory=dict)
    pickle_stubs: tuple[str, ...] = ()
    # Turns the loaded object (a dict of tensors, or a pickled structure) into a state dict.
    to_state_dict: Callable[[Any], dict[str, torch.Tensor]] | None = None
    # Reads the model's config fields from the loaded object (e.g. the init kwargs a demucs package
    # stores), so the model is built in the file's shape; None: the file does not say.
    to_config: Callable[[Any], Mapping[str, Any]] | None = None
    # Adapts the state dict to the model it is loaded into, e.g. the first convolution to the
    # model's input channels or a position embedding to its grid: (state_dict, model) -> state_dict.
    fit_to_model: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None
    # A set of several files: the names of their single-file entries, in order. Such an entry has
    # no url/sha256/filename of its own; its loaded object is the list of the parts' objects (each
    # read with its part's pickle allow-list), handed to its to_state_dict and to_config.
    parts: tuple[str, ...] = ()
    # Only where the publisher gives no full digest: the part of it that is published, checked as a
    # prefix of the file's sha256 (torch.hub-style file names carry 8 hex digits: resnet50-0676ba61.pth),
    # or "" where no hash is published at all (then nothing is hash-checked; the download says so).
    # None (the default): ``sha256`` is required.
    sha256_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.parts:
            if self.url or self.sha256 or self.filename or self.sha256_prefix is not None:
                raise ValueError(f"weights {self.name!r}: an entry with parts has no url, sha256 or filename")
            return
        if not self.url or not self.license:
            raise ValueError(f"weights {self.name!r}: a url and a licence are required")
        hexdigits = set("0123456789abcdef")
        if self.sha256_prefix is not None and not self.sha256:
            prefix = self.sha256_prefix
            if prefix and (not 8 <= len(prefix) < 64 or not set(prefix) <= hexdigits):
                raise ValueError(f"weights {self.name!r}: sha256_prefix must be 8-63 lower-case hex digits")
        elif len(self.sha256) != 64 or not set(self.sha256) <= hexdigits or self.sha256_prefix is not None:
            raise ValueError(
                f"weights {self.name!r}: sha256 must be 64 lower-case hex digits (or give sha256_prefix only)"
            )
        if not self.filename:
            object.__setattr__(self, "filename", Path(urllib.parse.urlparse(self.url).path).name)
        if not self.filename:
            raise ValueError(f"weights {self.name!r}: cannot derive a file name from {self.url!r}")

    @property
    def expected_sha256(self) -> str:
        """What a file of this entry is checked against: the full digest, or the published prefix
        (``""``: nothing, no hash is published)."""
        return self.sha256 or self.sha256_prefix or ""


_WEIGHTS: dict[str, WeightsEntry] = {}


def register_weights(entry: WeightsEntry) -> WeightsEntry:
    if entry.name in _WEIGHTS:
        raise ValueError(f"weights {entry.name!r} are already registered")
    _WEIGHTS[entry.name] = entry
    return entry


def unregister_weights(name: str) -> None:
    """Remove an entry (for tests that register throw-away entries)."""
    _WEIGHTS.pop(name, None)


def get_weights(name: str) -> WeightsEntry:
    try:
        return _WEIGHTS[name]
    except KeyError:
        known = ", ".join(sorted(_WEIGHTS)) or "none registered"
        raise WeightsError(f"unknown weights {name!r} (known: {known})") from None


def list_weights() -> list[str]:
    return sorted(_WEIGHTS)


# -- cache and download -------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$HYBRIDS_CACHE`` if set, else ``torch.hub.get_dir()/checkpoints`` (shared with torch.hub)."""
    env = os.environ.get("HYBRIDS_CACHE")
    return Path(env).expanduser() if env else Path(torch.hub.get_dir()) / "checkpoints"


def offline() -> bool:
    return os.environ.get("HYBRIDS_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify_file(path: Path, expected_sha256: str) -> None:
    """Raise ``WeightsError`` unless ``path`` hashes to ``expected_sha256`` (a full digest, or the
    published prefix of one; ``""`` checks nothing).

    A verified file gets a ``<file>.sha256`` stamp recording its size and mtime, so a multi-GB
    checkpoint is hashed once, not at every load; any change to the file invalidates the stamp.
    """
    if not expected_sha256:
        return
    stat = path.stat()
    stamp = _stamp_path(path)
    expected_stamp = f"{expected_sha256} {stat.st_size} {stat.st_mtime_ns}"
    try:
        if stamp.read_text(encoding="ascii").strip() == expected_stamp:
            return
    except OSError:
        pass
    actual = sha256_file(path)
    if not actual.startswith(expected_sha256):
        what = "sha256" if len(expected_sha256) == 64 else "sha256 prefix"
        raise WeightsError(
            f"{path}: {what} mismatch (expected {expected_sha256}, got {actual[: len(expected_sha256)]}); "
            "the file is corrupt or not the official one: delete it and download again"
        )
    try:
        stamp.write_text(expected_stamp + "\n", encoding="ascii")
    except OSError:
        pass  # a read-only folder: verification still happened


def download(url: str, destination: Path, sha256: str, *, timeout: float = 60.0) -> Path:
    """Stream ``url`` into ``destination`` (atomically), verifying ``sha256`` (a full digest or the
    published prefix of one; ``""``: none is published) on the way."""
    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _DownloadError(str(reason)) from None
    with response, atomic_write_path(destination) as tmp:
        total = response.headers.get("Content-Length")
        with (
            open(tmp, "wb") as out,
            progress_bar(
                total=int(total) if total and total.isdigit() else None,
                desc=f"Downloading {destination.name}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
            ) as bar,
        ):
            try:
                while chunk := response.read(_HASH_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            except (OSError, urllib.error.URLError) as exc:
                raise _DownloadError(f"transfer interrupted ({exc})") from None
        actual = digest.hexdigest()
        if not actual.startswith(sha256):
            raise WeightsError(
                f"{destination.name}: sha256 mismatch for {url} (expected {sha256}, got {actual}); "
                "nothing was saved"
            )
    if not sha256:
        return destination
    stat = destination.stat()
    try:
        _stamp_path(destination).write_text(f"{sha256} {stat.st_size} {stat.st_mtime_ns}\n", encoding="ascii")
    except OSError:
        pass
    return destination


class _DownloadError(Exception):
    pass


def resolve_weights(
    spec: str | Path,
    *,
    search_dirs: Iterable[str | Path] = (),
    allow_download: bool | None = None,
) -> tuple[Path, WeightsEntry | None]:
    """Turn a weights-entry name or a path into ``(local file, entry or None)``.

    ``allow_download`` defaults to "unless ``HYBRIDS_OFFLINE`` is set". Errors are
    ``WeightsError``/``InputError`` with one line naming the file and what to do. An entry of
    several files goes through :func:`resolve_weights_files`.
    """
    if isinstance(spec, Path) or spec not in _WEIGHTS:
        path = Path(spec).expanduser()
        if path.exists():
            return path, _entry_for_file(path)
        if isinstance(spec, Path) or str(spec).startswith((os.sep, ".", "~")) or Path(spec).suffix:
            raise InputError(f"{path}: no such weights file")
        known = ", ".join(sorted(_WEIGHTS)) or "none registered"
        raise WeightsError(f"{spec}: neither a weights file nor a known weights name (known: {known})")
    entry = _WEIGHTS[str(spec)]
    if entry.parts:
        raise WeightsError(f"weights {entry.name!r} are {len(entry.parts)} files: use resolve_weights_files")
    local = _find_local(entry, search_dirs)
    if local is not None:
        return local, entry
    return _fetch(entry, allow_download=allow_download, licence=entry.license), entry


def resolve_weights_files(
    spec: str | Path,
    *,
    search_dirs: Iterable[str | Path] = (),
    allow_download: bool | None = None,
) -> tuple[list[Path], WeightsEntry | None]:
    """Every file of ``spec``: the parts of an entry of several files, in order (each found in
    ``search_dirs`` or the cache, else downloaded; the licence is printed once), or the one file
    :func:`resolve_weights` finds for anything else."""
    entry = _WEIGHTS.get(spec) if isinstance(spec, str) else None
    if entry is None or not entry.parts:
        path, found = resolve_weights(spec, search_dirs=search_dirs, allow_download=allow_download)
        return [path], found
    search_dirs = list(search_dirs)
    parts = [get_weights(name) for name in entry.parts]
    found_paths = [_find_local(part, search_dirs) for part in parts]
    missing = [part for part, path in zip(parts, found_paths) if path is None]
    if missing and not (not offline() if allow_download is None else allow_download):
        listing = "; ".join(f"{part.filename} from {part.url}" for part in missing)
        raise WeightsError(
            f"weights {entry.name!r}: {len(missing)} of its {len(parts)} files are not in the cache "
            f"({cache_dir()}) and downloads are disabled (HYBRIDS_OFFLINE): {listing}; download them on "
            "a connected machine and pass --repo DIR (the folder holding them), or copy them to the cache"
        )
    paths: list[Path] = []
    licence: str | None = entry.license or parts[0].license
    for index, (part, path) in enumerate(zip(parts, found_paths)):
        if path is None:
            where = f"file {index + 1} of {len(parts)} of {entry.name!r}"
            path = _fetch(part, allow_download=allow_download, licence=licence, part_of=where)
            licence = None  # shown with the first download only
        paths.append(path)
    return paths, entry


def _find_local(entry: WeightsEntry, search_dirs: Iterable[str | Path]) -> Path | None:
    """The entry's file in one of ``search_dirs`` (``--repo``) or in the cache, hash-verified."""
    for folder in [*search_dirs, cache_dir()]:
        candidate = Path(folder).expanduser() / entry.filename
        if candidate.is_file():
            verify_file(candidate, entry.expected_sha256)
            return candidate
    return None


def _fetch(
    entry: WeightsEntry, *, allow_download: bool | None, licence: str | None, part_of: str = ""
) -> Path:
    """Download the entry's file into the cache, printing ``licence`` (when given) first."""
    cached = cache_dir() / entry.filename
    if allow_download is None:
        allow_download = not offline()
    label = f"weights {entry.name!r} ({entry.filename}{', ' + part_of if part_of else ''})"
    hint = (
        "download it on a connected machine and pass --weights PATH (or --repo DIR, the folder holding "
        f"it), or copy it to {cached}"
    )
    if not allow_download:
        raise WeightsError(
            f"{label} are not in the cache ({cached}) and downloads are disabled (HYBRIDS_OFFLINE); "
            f"the file is at {entry.url}: {hint}"
        )
    print(f"Downloading weights {entry.name!r} from {entry.url}", file=sys.stderr)
    if licence:
        print(f"Licence: {licence}", file=sys.stderr)
    if not entry.expected_sha256:
        print("No sha256 is published for this file: it is checked only by loading it", file=sys.stderr)
    try:
        download(entry.url, cached, entry.expected_sha256)
    except _DownloadError as exc:
        raise WeightsError(
            f"{label} could not be downloaded from {entry.url} ({exc}) and are not in the cache ({cached}): "
            f"{hint}"
        ) from None
    return cached


def _entry_for_file(path: Path) -> WeightsEntry | None:
    """The entry whose official file name ``path`` carries (then its hash is checked), if any."""
    for entry in _WEIGHTS.values():
        if not entry.parts and path.is_file() and path.name == entry.filename:
            verify_file(path, entry.expected_sha256)
            return entry
    return None


# -- reading files ------------------------------------------------------------------------------
SAFETENSORS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


# torch.save's legacy (non-zip) format starts with its magic number pickled at protocol 2.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def sniff_format(path: Path) -> str:
    """``"safetensors"``, ``"torch-zip"``, ``"torch-legacy"``, ``"pickle"`` (a raw Python pickle, not
    written by ``torch.save``) or ``"unknown"`` from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch-legacy"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "pickle"
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if head[8:9] == b"{" and 0 < header_len < 100_000_000:
            return "safetensors"
    return "unknown"


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU; corrupt or truncated files raise
    ``CheckpointError`` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(path, device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({reason})") from None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (``{}`` when absent)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({reason})") from None


def read_weights_file(path: str | Path, entry: WeightsEntry | None = None) -> Any:
    """What a weights file holds, read safely: the tensors of a safetensors file (or of a checkpoint
    folder's ``model.safetensors``), or a third-party PyTorch pickle through the restricted
    unpickler with the entry's allow-list. The entry's ``to_state_dict`` is not applied."""
    from hybrids.apps.core.restricted_pickle import load_pickled_checkpoint

    path = Path(path)
    if path.is_dir():
        if not (path / SAFETENSORS_NAME).is_file():
            raise CheckpointError(f"{path}: folder has no {SAFETENSORS_NAME}")
        path = path / SAFETENSORS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    kind = sniff_format(path)
    if kind == "safetensors":
        return load_safetensors(path)
    if kind.startswith("torch"):
        return load_pickled_checkpoint(
            path,
            allowed_globals=entry.pickle_globals if entry else None,
            stub_classes=entry.pickle_stubs if entry else (),
        )
    if kind == "pickle":
        raise CheckpointError(
            f"{path}: a raw Python pickle (pickle.dump), which is not accepted since unpickling can run "
            "code; use a safetensors file, a checkpoint folder, or a PyTorch file written by torch.save"
        )
    raise CheckpointError(f"{path}: unknown checkpoint format (expected safetensors or a PyTorch file)")


def _naming(source: str | Path, convert: Callable[[Any], Any], loaded: Any) -> Any:
    """``convert(loaded)``, its one-line errors prefixed with the file they are about."""
    try:
        return convert(loaded)
    except (CheckpointError, InputError) as exc:
        message = str(exc)
        raise type(exc)(message if message.startswith(str(source)) else f"{source}: {message}") from None


def _as_state_dict(loaded: Any, entry: WeightsEntry | None, source: str | Path) -> dict[str, torch.Tensor]:
    if entry is not None and entry.to_state_dict is not None:
        loaded = _naming(source, entry.to_state_dict, loaded)
    elif isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # Lightning / common training-script layout
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{source}: does not contain a state dict of tensors")
    return loaded


def load_state_dict(path: str | Path, entry: WeightsEntry | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file, a checkpoint folder, or (through the restricted
    unpickler) a third-party PyTorch pickle, then apply the entry's ``to_state_dict``."""
    return _as_state_dict(read_weights_file(path, entry), entry, path)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(strict=True)`` with a one-line error listing what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"{source}: weights do not fit {name}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


# -- weights of a registered model -------------------------------------------------------------
@dataclass
class ModelWeights:
    """Weights read for a registered model."""

    source: Path  # the file (the first part, for an entry of several files), for messages
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None  # config fields stored with the weights; None: they do not say
    preprocessing: dict[str, Any] | None  # what the model expects; None: not recorded
    entry: WeightsEntry | None  # the weights entry the files were read with, if any


def _resolve_for_model(
    entry: ModelEntry, weights: str | Path, search_dirs: Iterable[str | Path]
) -> tuple[list[Path], WeightsEntry | None, bool]:
    """``(files, the entry to read them with, whether that entry is only borrowed)``."""
    spec: str | Path = weights
    if weights == OFFICIAL:
        if not entry.weights:
            raise WeightsError(f"{entry.name} has no official weights; pass a checkpoint path instead")
        spec = entry.weights[0]
    paths, weights_entry = resolve_weights_files(spec, search_dirs=search_dirs)
    path = paths[0]
    if weights_entry is None and entry.weights and path.is_file() and sniff_format(path).startswith("torch"):
        # A third-party pickle under a name of the user's (e.g. a fine-tuned demucs file): read it
        # the way the model's official file is read (same allow-list and layout), without the hash.
        official = _WEIGHTS.get(entry.weights[0])
        if official is not None and official.parts:
            names = ", ".join(get_weights(part).filename for part in official.parts)
            raise InputError(
                f"{path}: {entry.name} takes {len(official.parts)} weights files ({names}), not one; "
                "put them in a folder and pass it with --repo DIR"
            )
        return paths, official, official is not None
    return paths, weights_entry, False


def _read_config(
    entry: ModelEntry, paths: list[Path], weights_entry: WeightsEntry | None, borrowed: bool, loaded: Any
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(config fields, preprocessing)`` stored with the weights. A user's file read with the
    official entry's reader gets no preprocessing: the official one need not apply to it."""
    if weights_entry is not None:
        to_config = weights_entry.to_config
        config = _naming(paths[0], to_config, loaded) if to_config is not None else None
        preprocessing = None if borrowed else dict(weights_entry.preprocessing)
        return (dict(config) if config is not None else None), preprocessing
    from hybrids.apps.core.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(paths[0])
    if info is None:
        return None, None
    if info["model"] != entry.name:
        raise CheckpointError(f"{paths[0]}: is a checkpoint of {info['model']}, not of {entry.name}")
    return dict(info["config"]), dict(info.get("preprocessing") or {})


def _read_loaded(paths: list[Path], weights_entry: WeightsEntry | None) -> Any:
    if weights_entry is not None and weights_entry.parts:
        return [read_weights_file(path, get_weights(part)) for path, part in zip(paths, weights_entry.parts)]
    return read_weights_file(paths[0], weights_entry)


def read_model_weights(
    entry: ModelEntry, weights: str | Path, *, search_dirs: Iterable[str | Path] = ()
) -> ModelWeights:
    """Resolve and read ``weights`` for a registered model: ``"official"`` (the model's first
    weights entry), a weights-entry name, or a path (a file or one of our checkpoint folders);
    ``search_dirs`` are searched for official files before the cache."""
    paths, weights_entry, borrowed = _resolve_for_model(entry, weights, search_dirs)
    loaded = _read_loaded(paths, weights_entry)
    state_dict = _as_state_dict(loaded, weights_entry, paths[0])
    config, preprocessing = _read_config(entry, paths, weights_entry, borrowed, loaded)
    return ModelWeights(paths[0], state_dict, config, preprocessing, weights_entry)


def weights_config(
    entry: ModelEntry, weights: str | Path, *, search_dirs: Iterable[str | Path] = ()
) -> dict[str, Any] | None:
    """The config fields stored with ``weights`` (see :func:`read_model_weights`), or ``None``:
    ours in ``config.json``/the safetensors metadata, a third-party file's through its entry's
    ``to_config`` (e.g. a demucs package's init kwargs)."""
    paths, weights_entry, borrowed = _resolve_for_model(entry, weights, search_dirs)
    if weights_entry is not None and weights_entry.to_config is None:
        return None
    loaded = _read_loaded(paths, weights_entry) if weights_entry is not None else None
    return _read_config(entry, paths, weights_entry, borrowed, loaded)[0]


def load_weights_into(
    model: nn.Module, entry: ModelEntry, weights: str | Path, *, search_dirs: Iterable[str | Path] = ()
) -> None:
    """Resolve ``weights`` for a registered model and load them strictly (see
    :func:`read_model_weights`). The preprocessing recorded with the weights is attached as
    ``model.preprocessing``."""
    found = read_model_weights(entry, weights, search_dirs=search_dirs)
    state_dict = found.state_dict
    if found.entry is not None and found.entry.fit_to_model is not None:
        state_dict = _naming(found.source, lambda sd: found.entry.fit_to_model(sd, model), state_dict)
    load_into(model, state_dict, found.source)
    if found.preprocessing is not None:
        model.preprocessing = found.preprocessing
