"""Dataclass configurations with named presets, serialised as JSON next to checkpoints.

Every architecture declares one ``@dataclass class XConfig(ModelConfig)`` whose field defaults are
the published configuration and whose ``PRESETS`` maps preset names (always including ``"tiny"``
for tests) to the fields that differ::

    @dataclass
    class HTDemucsConfig(ModelConfig):
        channels: int = 48
        depth: int = 4
        PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"channels": 4, "depth": 2}}

    cfg = HTDemucsConfig.from_preset("tiny", depth=3)
    HTDemucsConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Self

from hybrids.apps.core.errors import InputError
from hybrids.datasets.atomic import atomic_write_text

DEFAULT_PRESET = "default"


@dataclasses.dataclass
class ModelConfig:
    """Base class of model configurations (a dataclass; subclasses add fields)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def preset_names(cls) -> list[str]:
        """``"default"`` (the field defaults) followed by the declared presets."""
        return [DEFAULT_PRESET, *(name for name in cls.PRESETS if name != DEFAULT_PRESET)]

    @classmethod
    def from_preset(cls, name: str = DEFAULT_PRESET, **overrides: Any) -> Self:
        """The preset ``name`` with ``overrides`` applied on top."""
        if name != DEFAULT_PRESET and name not in cls.PRESETS:
            raise InputError(
                f"{cls.__name__}: unknown preset {name!r}; choose one of {', '.join(cls.preset_names())}"
            )
        fields = dict(cls.PRESETS.get(name, {}))
        fields.update(overrides)
        return cls.from_dict(fields)

    def replace(self, **overrides: Any) -> Self:
        """A copy with ``overrides`` applied (unknown field names raise ``InputError``)."""
        return type(self).from_dict({**self.to_dict(), **overrides})

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict of all fields (tuples become lists)."""
        return {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from ``to_dict()`` output; unknown keys raise ``InputError`` naming them."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InputError(
                f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(cls)
        values = {name: _coerce(hints.get(name), value) for name, value in data.items()}
        try:
            config = cls(**values)
        except TypeError as exc:
            raise InputError(f"{cls.__name__}: {exc}") from None
        config.validate()
        return config

    def validate(self) -> None:
        """Check field values; subclasses raise ``InputError`` with a clear message."""

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON (atomically)."""
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Self:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"{path}: cannot read config ({exc.strerror or exc})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a valid JSON config ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: a config must be a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    return value


def _coerce(hint: Any, value: Any) -> Any:
    """Turn JSON lists back into the tuples a field is declared with (recursively)."""
    if hint is None or value is None:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is not type(None):
                coerced = _coerce(arg, value)
                if coerced is not value:
                    return coerced
        return value
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_coerce(a, v) for a, v in zip(args, value))
        return tuple(value)
    if origin is list and isinstance(value, list | tuple):
        (arg,) = typing.get_args(hint) or (None,)
        return [_coerce(arg, v) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
