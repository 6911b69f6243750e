"""The model registry: ``register_model``, ``create_model``, ``list_models``.

Names are ``"<app>/<model>"`` (lower case, e.g. ``"music/htdemucs"``). Each app registers its models
in ``hybrids/apps/<app>/models.py``; that module is imported the first time a model of the app is
asked for, so importing or using one app never imports another::

    @register_model("music/htdemucs", config=HTDemucsConfig, preset="default", weights="htdemucs")
    def htdemucs(config: HTDemucsConfig) -> HTDemucs:
        return HTDemucs(config)

    model = create_model("music/htdemucs", preset="tiny")            # random init, test size
    model = create_model("music/htdemucs", weights="official")       # resolve + load the default
    model = create_model("music/htdemucs", weights="path/to/file")   # a local file

Registering a name twice raises ``ValueError`` (as in torchvision).
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrids.apps.core.config import DEFAULT_PRESET, ModelConfig
from hybrids.apps.core.errors import InputError, UnknownModelError

if TYPE_CHECKING:  # torch is imported only when a model is built, so `hybrids --help` stays fast
    import torch
    from torch import nn

_NAME = re.compile(r"^[a-z][a-z0-9_]*/[a-z0-9][a-z0-9_.\-]*$")
_NOT_APPS = {"core", "cli"}


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of one model name."""

    name: str
    builder: Callable[[Any], nn.Module]
    config_cls: type[ModelConfig]
    preset: str = DEFAULT_PRESET
    weights: tuple[str, ...] = ()  # weights-registry names; the first is the default ("official")
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def app(self) -> str:
        return self.name.split("/", 1)[0]

    def config(self, preset: str | None = None, **overrides: Any) -> ModelConfig:
        return self.config_cls.from_preset(preset or self.preset, **overrides)


_REGISTRY: dict[str, ModelEntry] = {}
_LOADED_APPS: set[str] = set()


def register_model(
    name: str,
    *,
    config: type[ModelConfig],
    preset: str = DEFAULT_PRESET,
    weights: str | Sequence[str] = (),
    description: str | None = None,
) -> Callable[[Callable[[Any], nn.Module]], Callable[[Any], nn.Module]]:
    """Decorator registering ``builder(config) -> nn.Module`` under ``name``.

    ``preset`` is the config preset this name stands for (several names may share one config
    class, e.g. ``htdemucs`` and ``htdemucs_6s``); ``weights`` names entries of the weights
    registry that fit this model, the first being what ``weights="official"`` loads.
    """
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} must look like 'app/model' (lower case, digits, _ . -)")
    if not (isinstance(config, type) and issubclass(config, ModelConfig)):
        raise TypeError(f"{name}: config must be a ModelConfig subclass, got {config!r}")
    if preset != DEFAULT_PRESET and preset not in config.PRESETS:
        raise ValueError(f"{name}: {config.__name__} has no preset {preset!r}")
    weight_names = (weights,) if isinstance(weights, str) else tuple(weights)

    def decorator(builder: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(
                f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})"
            )
        doc = description if description is not None else (builder.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = ModelEntry(name, builder, config, preset, weight_names, doc)
        return builder

    return decorator


def unregister_model(name: str) -> None:
    """Remove ``name`` (for tests that register throw-away models)."""
    _REGISTRY.pop(name, None)


def available_apps() -> list[str]:
    """Apps installed in ``hybrids.apps`` (found without importing them)."""
    import hybrids.apps

    return sorted(
        info.name
        for info in pkgutil.iter_modules(hybrids.apps.__path__)
        if info.ispkg and info.name not in _NOT_APPS and not info.name.startswith("_")
    )


def _load_app(app: str) -> None:
    """Import ``hybrids.apps.<app>.models`` once, which registers the app's models."""
    if app in _LOADED_APPS:
        return
    if app not in available_apps():
        known = ", ".join(available_apps()) or "none installed"
        raise UnknownModelError(f"unknown app {app!r} (apps: {known})")
    try:
        importlib.import_module(f"hybrids.apps.{app}.models")
    except ModuleNotFoundError as exc:
        if exc.name != f"hybrids.apps.{app}.models":
            raise
    _LOADED_APPS.add(app)


def list_models(app: str | None = None) -> list[str]:
    """Sorted registered names, of one app or of all apps (which imports every app's models)."""
    for name in [app] if app else available_apps():
        _load_app(name)
    return sorted(n for n in _REGISTRY if app is None or n.split("/", 1)[0] == app)


def registered_names() -> list[str]:
    """Names registered so far (apps not yet loaded are missing; ``list_models`` loads them)."""
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    """The entry of ``name`` (or of its short form, e.g. ``"htdemucs"``), loading its app on first
    use; unknown names raise with suggestions."""
    from hybrids.apps.core.catalog import full_name

    name = full_name(name)
    if name not in _REGISTRY:
        app = name.split("/", 1)[0] if "/" in name else None
        if app is not None and app in available_apps():
            _load_app(app)
    if name not in _REGISTRY:
        import difflib

        candidates = list_models()
        close = difflib.get_close_matches(name, candidates, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(candidates)}"
        raise UnknownModelError(f"unknown model {name!r}{hint if candidates else ' (no models registered)'}")
    return _REGISTRY[name]


def create_model(
    name: str,
    weights: str | Path | None = None,
    *,
    preset: str | None = None,
    config: ModelConfig | None = None,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    ``preset`` picks a named config (default: the one the name stands for); ``config`` passes a
    full config instead; ``overrides`` replace config fields. ``weights`` is ``None`` (random
    init), ``"official"`` (the name's default weights entry), a weights-registry name, or a path to
    a checkpoint; weights are loaded with ``strict=True``. The config is attached as
    ``model.config`` (when the module has no such attribute) and the name as ``model.model_name``.
    """
    import torch

    from hybrids.apps.core.catalog import full_name, get_builtin

    builtin = get_builtin(full_name(name))
    if builtin is not None:  # a trained model shipped in the package: its architecture + weights
        if config is not None or preset is not None or overrides:
            raise InputError(f"{builtin.name} is a trained model: it takes no preset, config or overrides")
        return create_model(builtin.model, weights=weights or builtin.folder, device=device)
    entry = get_model_entry(name)
    if config is None and preset is None and weights is not None:
        config = _config_from_checkpoint(entry, weights)
    if config is not None:
        if preset is not None:
            raise InputError(f"{name}: pass either preset or config, not both")
        if not isinstance(config, entry.config_cls):
            raise InputError(
                f"{name}: config must be a {entry.config_cls.__name__}, got {type(config).__name__}"
            )
        cfg = config.replace(**overrides) if overrides else config
    else:
        cfg = entry.config(preset, **overrides)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = entry.builder(cfg)
    if not hasattr(model, "config"):
        model.config = cfg
    model.model_name = entry.name
    if weights is not None:
        from hybrids.apps.core.weights import load_weights_into

        load_weights_into(model, entry, weights)
    return model


def _config_from_checkpoint(entry: ModelEntry, weights: str | Path) -> ModelConfig | None:
    """The config stored with the weights (ours, or a third-party file's own, e.g. a demucs
    package's kwargs), so ``weights=...`` rebuilds their shape."""
    from hybrids.apps.core.weights import weights_config

    fields = weights_config(entry, weights)
    return None if fields is None else entry.config_cls.from_dict(fields)


def count_parameters(
    name: str, preset: str | None = None, *, config: ModelConfig | None = None, **overrides: Any
) -> int:
    """Number of parameters of ``name`` built on the meta device (no memory, any size)."""
    model = create_model(name, preset=preset, config=config, device="meta", **overrides)
    return sum(p.numel() for p in model.parameters())
