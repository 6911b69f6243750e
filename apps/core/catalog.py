"""What can be created, listed fast: registered models, their weights, and built-in models.

Listing every model through the registry means importing every app (and torch) and building each
model on the meta device: seconds. ``hybrids models`` instead reads ``apps/model_index.json``,
written by ``python -m hybrids.apps.core.catalog --write`` from the registry itself (a test fails
when it is stale), and adds what changes on a machine (is a weights file in the cache?) with
file-system checks only. An app missing from the index (e.g. one installed after it was written)
is listed by importing it.

**Built-in models** are trained checkpoints shipped inside the package, one folder each:
``hybrids/apps/<app>/pretrained/<name>/`` with ``config.json`` (``"model"``: the registered
architecture; ``"card"``: description and licence), ``model.safetensors`` and ``MODEL_CARD.md``.
They are named ``<app>/<name>`` like the architectures, and every name also answers to its short
form (``htdemucs``, ``hippocampus``) wherever that is unambiguous.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrids.apps.core.errors import UnknownModelError

__all__ = [
    "BuiltinModel",
    "INDEX_PATH",
    "build_index",
    "builtin_models",
    "catalog_rows",
    "full_name",
    "read_index",
    "weights_cache_dir",
]

APPS_DIR = Path(__file__).resolve().parents[1]
INDEX_PATH = APPS_DIR / "model_index.json"
PRETRAINED = "pretrained"


@dataclass(frozen=True)
class BuiltinModel:
    """A checkpoint folder shipped in the package (``folder``) of the architecture ``model``."""

    name: str  # "<app>/<name>", e.g. "medical/hippocampus"
    folder: Path
    model: str  # the registered architecture, e.g. "medical/swtr_unet"
    description: str
    licence: str
    bytes: int

    @property
    def app(self) -> str:
        return self.name.split("/", 1)[0]


def builtin_models(app: str | None = None) -> list[BuiltinModel]:
    """Every built-in model (of one app), found by listing folders; nothing is imported."""
    import hybrids.apps

    found = []
    app_dirs = sorted(d for root in hybrids.apps.__path__ for d in Path(root).iterdir() if d.is_dir())
    for app_dir in app_dirs:
        if app is not None and app_dir.name != app:
            continue
        for folder in sorted((app_dir / PRETRAINED).glob("*/config.json")):
            folder = folder.parent
            info = json.loads((folder / "config.json").read_text())
            card = info.get("card") or {}
            weights = folder / "model.safetensors"
            found.append(
                BuiltinModel(
                    name=f"{app_dir.name}/{folder.name}",
                    folder=folder,
                    model=str(info["model"]),
                    description=str(card.get("description", "")),
                    licence=str(card.get("licence", "")),
                    bytes=weights.stat().st_size if weights.is_file() else 0,
                )
            )
    return found


def get_builtin(name: str) -> BuiltinModel | None:
    """The built-in model of that full name, or ``None``."""
    return next((b for b in builtin_models(name.split("/", 1)[0]) if b.name == name), None)


# -- the index --------------------------------------------------------------------------------------
def read_index() -> dict[str, Any]:
    """The committed index (``{"models": {...}, "builtin": {...}}``); empty when absent."""
    try:
        return json.loads(INDEX_PATH.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"models": {}, "builtin": {}}


def _model_row(name: str) -> dict[str, Any]:
    from hybrids.apps.core.registry import count_parameters, get_model_entry
    from hybrids.apps.core.weights import get_weights, list_weights

    entry = get_model_entry(name)
    weights = []
    for weights_name in entry.weights:
        if weights_name not in list_weights():  # named by the model, registered nowhere (yet)
            weights.append({"name": weights_name, "files": [], "licence": ""})
            continue
        w = get_weights(weights_name)
        parts = [get_weights(p) for p in w.parts] if w.parts else [w]
        weights.append(
            {
                "name": weights_name,
                "files": [p.filename for p in parts],
                "licence": w.license or parts[0].license,
            }
        )
    return {
        "description": entry.description,
        "parameters": count_parameters(name),
        "preset": entry.preset,
        "presets": entry.config_cls.preset_names(),
        "weights": weights,
    }


def _builtin_row(builtin: BuiltinModel) -> dict[str, Any]:
    from hybrids.apps.core.registry import count_parameters, get_model_entry

    config = json.loads((builtin.folder / "config.json").read_text())["config"]
    entry = get_model_entry(builtin.model)
    return {
        "model": builtin.model,
        "description": builtin.description,
        "licence": builtin.licence,
        "parameters": count_parameters(builtin.model, config=entry.config_cls.from_dict(config)),
        "bytes": builtin.bytes,
    }


def build_index(apps: Sequence[str] | None = None) -> dict[str, Any]:
    """The index computed from the registry (imports every app and torch: seconds)."""
    from hybrids.apps.core.registry import available_apps, list_models

    apps = list(available_apps() if apps is None else apps)
    models = {name: _model_row(name) for app in apps for name in list_models(app)}
    builtin = {b.name: _builtin_row(b) for app in apps for b in builtin_models(app)}
    return {"models": models, "builtin": builtin}


def write_index(path: Path = INDEX_PATH) -> None:
    from hybrids.datasets.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(build_index(), indent=1, sort_keys=True) + "\n")


# -- what `hybrids models` prints ---------------------------------------------------------------
def weights_cache_dir() -> Path:
    """The weights cache (``hybrids.apps.core.weights.cache_dir``) without importing torch: the
    same folders ``torch.hub.get_dir()`` picks by default."""
    if "torch" in sys.modules:
        from hybrids.apps.core.weights import cache_dir

        return cache_dir()
    if os.environ.get("HYBRIDS_CACHE"):
        return Path(os.environ["HYBRIDS_CACHE"]).expanduser()
    if os.environ.get("TORCH_HOME"):
        hub = Path(os.environ["TORCH_HOME"]).expanduser() / "hub"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        hub = Path(xdg).expanduser() / "torch" / "hub"
    return hub / "checkpoints"


def _weights_status(weights: list[dict[str, Any]]) -> str:
    if not weights:
        return "-"
    cache = weights_cache_dir()
    files = weights[0]["files"]
    if not files:
        return "official"
    present = sum((cache / f).is_file() for f in files)
    if present == len(files):
        return "official (cached)"
    return "official (download)" if present == 0 else f"official ({present}/{len(files)} cached)"


def catalog_rows(app: str | None = None) -> list[dict[str, Any]]:
    """One row per registered model and per built-in model (of one app), sorted by name."""
    from hybrids.apps.core.registry import available_apps

    apps = available_apps()
    if app is not None and app not in apps:
        raise UnknownModelError(f"unknown app {app!r} (apps: {', '.join(apps) or 'none installed'})")
    index = read_index()
    wanted = [app] if app else apps
    indexed = {name.split("/", 1)[0] for name in [*index["models"], *index["builtin"]]}
    live = [a for a in wanted if a not in indexed]
    if live:  # apps the index does not know: ask the registry (imports them)
        fresh = build_index(live)
        index = {
            "models": {**index["models"], **fresh["models"]},
            "builtin": {**index["builtin"], **fresh["builtin"]},
        }
    rows = []
    for name, info in index["models"].items():
        if name.split("/", 1)[0] not in wanted:
            continue
        rows.append(
            {
                "name": name,
                "parameters": info["parameters"],
                "official_weights": bool(info["weights"]),
                "weights": _weights_status(info["weights"]),
                "presets": info["presets"],
                "description": info["description"],
            }
        )
    for name, info in index["builtin"].items():
        if name.split("/", 1)[0] not in wanted:
            continue
        rows.append(
            {
                "name": name,
                "parameters": info["parameters"],
                "official_weights": False,
                "weights": f"built-in ({info['bytes'] / 1e6:.1f} MB, {info['licence']})",
                "presets": [],
                "description": f"{info['description']} [{info['model']}]",
                "model": info["model"],
            }
        )
    return sorted(rows, key=lambda r: r["name"])


def full_name(name: str) -> str:
    """``name`` itself when it has an app part, else the one registered or built-in model whose
    short name it is (``"htdemucs"`` -> ``"music/htdemucs"``). Ambiguous or unknown short names
    raise ``UnknownModelError``."""
    if "/" in name:
        return name
    from hybrids.apps.core.registry import registered_names

    index = read_index()
    names = {*index["models"], *index["builtin"], *registered_names()}
    names.update(b.name for b in builtin_models())
    matches = sorted(n for n in names if n.split("/", 1)[1] == name)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UnknownModelError(f"model name {name!r} is ambiguous: use one of {', '.join(matches)}")
    return name  # unknown: the registry's error (with suggestions) says so


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        print("usage: python -m hybrids.apps.core.catalog --write", file=sys.stderr)
        sys.exit(2)
    write_index()
    print(f"wrote {INDEX_PATH}")
