from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError


@dataclass
class NetConfig(ModelConfig):
    channels: int = 48
    depth: int = 4
    kernel: tuple[int, int] = (3, 3)
    sources: tuple[str, ...] = ("drums", "bass")
    dropout: float = 0.0
    norm: str | None = "layer"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"channels": 4, "depth": 2}}

    def validate(self) -> None:
        if self.depth < 1:
            raise InputError(f"depth must be >= 1, got {self.depth}")


def test_presets_and_overrides():
    assert NetConfig.preset_names() == ["default", "tiny"]
    assert NetConfig.from_preset() == NetConfig()
    tiny = NetConfig.from_preset("tiny", depth=3)
    assert (tiny.channels, tiny.depth, tiny.kernel) == (4, 3, (3, 3))
    assert tiny.replace(channels=8).channels == 8
    assert tiny.channels == 4  # replace does not mutate


def test_json_round_trip_restores_tuples(tmp_path):
    cfg = NetConfig.from_preset("tiny", kernel=(5, 7), sources=("a", "b", "c"), dropout=1)
    path = tmp_path / "config.json"
    cfg.save(path)
    loaded = NetConfig.load(path)
    assert loaded == cfg
    assert isinstance(loaded.kernel, tuple) and isinstance(loaded.sources, tuple)
    assert isinstance(loaded.dropout, float)


def test_bad_input_raises_clear_errors(tmp_path):
    with pytest.raises(InputError, match="unknown preset 'huge'.*default, tiny"):
        NetConfig.from_preset("huge")
    with pytest.raises(InputError, match="unknown field.*chanels"):
        NetConfig.from_preset("tiny", chanels=3)
    with pytest.raises(InputError, match="depth must be >= 1"):
        NetConfig.from_preset(depth=0)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json: not a valid JSON config"):
        NetConfig.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="must be a JSON object"):
        NetConfig.load(bad)
    with pytest.raises(InputError, match="cannot read config"):
        NetConfig.load(tmp_path / "missing.json")
