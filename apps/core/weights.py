"""The weights resolver: every pretrained file the suite uses is found, fetched and checked here.

A ``WeightsEntry`` records where a file comes from (URL), what it must be (full sha256), under
which licence it may be used, and the preprocessing the model expects with it (sample rate, STFT,
voxel spacing, intensity normalisation, tokenizer, band list...). ``resolve_weights`` turns an
entry name or a user's path into a verified local file:

1. a path the user gave (``--weights PATH``) is used as is (checked against the entry's sha256
   when it carries the entry's file name);
2. otherwise the entry's file name is looked up in the user's folders (``--repo DIR``), then in
   the cache: ``$HYBRIDS_CACHE`` or ``torch.hub.get_dir()/checkpoints``;
3. otherwise it is downloaded with a progress bar, hashed while streaming, and renamed into the
   cache only when the sha256 matches; the licence is printed on that first download. With
   ``HYBRIDS_OFFLINE=1`` (or no network) the error names the file, the URL, the cache path and
   ``--weights PATH``.

``load_state_dict`` reads safetensors (ours and third parties'), or a third-party pickle through
the restricted unpickler, and never anything else.
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
    """One downloadable weights file and everything needed to use it correctly."""

    name: str  # registry key, e.g. "music/htdemucs"
    url: str
    sha256: str  # full lower-case hex digest
    license: str  # short licence text shown on first download
    filename: str = ""  # cache file name; default: the URL's last path component
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    # Third-party pickles: extra globals the restricted unpickler may allow, and class names it
    # maps to inert stubs (see restricted_pickle.py).
    pickle_globals: Mapping[str, Any] = field(default_factory=dict)
    pickle_stubs: tuple[str, ...] = ()
    # Turns the loaded object (a dict of tensors, or a pickled structure) into a state dict.
    to_state_dict: Callable[[Any], dict[str, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"weights {self.name!r}: sha256 must be 64 lower-case hex digits")
        if not self.filename:
            object.__setattr__(self, "filename", Path(urllib.parse.urlparse(self.url).path).name)
        if not self.filename:
            raise ValueError(f"weights {self.name!r}: cannot derive a file name from {self.url!r}")


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
    """Raise ``WeightsError`` unless ``path`` hashes to ``expected_sha256``.

    A verified file gets a ``<file>.sha256`` stamp recording its size and mtime, so a multi-GB
    checkpoint is hashed once, not at every load; any change to the file invalidates the stamp.
    """
    stat = path.stat()
    stamp = _stamp_path(path)
    expected_stamp = f"{expected_sha256} {stat.st_size} {stat.st_mtime_ns}"
    try:
        if stamp.read_text(encoding="ascii").strip() == expected_stamp:
            return
    except OSError:
        pass
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise WeightsError(
            f"{path}: sha256 mismatch (expected {expected_sha256}, got {actual}); "
            "the file is corrupt or not the official one: delete it and download again"
        )
    try:
        stamp.write_text(expected_stamp + "\n", encoding="ascii")
    except OSError:
        pass  # a read-only folder: verification still happened


def download(url: str, destination: Path, sha256: str, *, timeout: float = 60.0) -> Path:
    """Stream ``url`` into ``destination`` (atomically), verifying ``sha256`` on the way."""
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
        if actual != sha256:
            raise WeightsError(
                f"{destination.name}: sha256 mismatch for {url} (expected {sha256}, got {actual}); "
                "nothing was saved"
            )
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
    ``WeightsError``/``InputError`` with one line naming the file and what to do.
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

    for folder in search_dirs:
        candidate = Path(folder).expanduser() / entry.filename
        if candidate.is_file():
            verify_file(candidate, entry.sha256)
            return candidate, entry

    cached = cache_dir() / entry.filename
    if cached.is_file():
        verify_file(cached, entry.sha256)
        return cached, entry

    if allow_download is None:
        allow_download = not offline()
    hint = f"download it on a connected machine and pass --weights PATH, or copy it to {cached}"
    if not allow_download:
        raise WeightsError(
            f"weights {entry.name!r} ({entry.filename}) are not in the cache ({cached}) and downloads are "
            f"disabled (HYBRIDS_OFFLINE); the file is at {entry.url}: {hint}"
        )
    print(f"Downloading weights {entry.name!r} from {entry.url}\nLicence: {entry.license}", file=sys.stderr)
    try:
        download(entry.url, cached, entry.sha256)
    except _DownloadError as exc:
        raise WeightsError(
            f"weights {entry.name!r} ({entry.filename}) could not be downloaded from {entry.url} ({exc}) "
            f"and are not in the cache ({cached}): {hint}"
        ) from None
    return cached, entry


def _entry_for_file(path: Path) -> WeightsEntry | None:
    """The entry whose official file name ``path`` carries (then its hash is checked), if any."""
    for entry in _WEIGHTS.values():
        if path.is_file() and path.name == entry.filename:
            verify_file(path, entry.sha256)
            return entry
    return None


# -- reading files ------------------------------------------------------------------------------
SAFETENSORS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def sniff_format(path: Path) -> str:
    """``"safetensors"``, ``"torch-zip"``, ``"torch-legacy"`` or ``"unknown"`` from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "torch-legacy"
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


def load_state_dict(path: str | Path, entry: WeightsEntry | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file, a checkpoint folder, or (through the restricted
    unpickler) a third-party PyTorch pickle, then apply the entry's ``to_state_dict``."""
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
        loaded: Any = load_safetensors(path)
    elif kind.startswith("torch"):
        loaded = load_pickled_checkpoint(
            path,
            allowed_globals=entry.pickle_globals if entry else None,
            stub_classes=entry.pickle_stubs if entry else (),
        )
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format (expected safetensors or a PyTorch file)")
    if entry is not None and entry.to_state_dict is not None:
        loaded = entry.to_state_dict(loaded)
    elif isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # Lightning / common training-script layout
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: does not contain a state dict of tensors")
    return loaded


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


def load_weights_into(
    model: nn.Module, entry: ModelEntry, weights: str | Path, *, search_dirs: Iterable[str | Path] = ()
) -> None:
    """Resolve ``weights`` for a registered model and load them strictly.

    ``weights`` is ``"official"`` (the model's first weights entry), a weights-entry name, or a
    path (a file or one of our checkpoint folders). The preprocessing recorded with the weights is
    attached as ``model.preprocessing``.
    """
    spec: str | Path = weights
    if weights == OFFICIAL:
        if not entry.weights:
            raise WeightsError(f"{entry.name} has no official weights; pass a checkpoint path instead")
        spec = entry.weights[0]
    path, weights_entry = resolve_weights(spec, search_dirs=search_dirs)
    if weights_entry is None and entry.weights and path.is_file() and sniff_format(path).startswith("torch"):
        # A third-party pickle under a name of the user's (e.g. a fine-tuned demucs file): read it
        # the way the model's official file is read (same allow-list and layout), without the hash.
        weights_entry = _WEIGHTS.get(entry.weights[0])
    state_dict = load_state_dict(path, weights_entry)
    load_into(model, state_dict, path)
    if weights_entry is not None:
        model.preprocessing = dict(weights_entry.preprocessing)
    else:
        from hybrids.apps.core.checkpoint import read_checkpoint_info

        info = read_checkpoint_info(path)
        if info is not None:
            model.preprocessing = dict(info.get("preprocessing") or {})
