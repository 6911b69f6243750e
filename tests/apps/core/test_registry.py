import sys

import pytest
import torch

from hybrids.apps.core import registry
from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError, UnknownModelError
from hybrids.apps.core.registry import count_parameters, create_model, list_models, register_model


def test_create_model_loads_only_its_own_app(fake_apps):
    model = create_model("testapp/net")
    assert "hybrids.apps.testapp.models" in sys.modules
    assert "hybrids.apps.otherapp.models" not in sys.modules
    assert model.model_name == "testapp/net"
    assert model.config.width == 64
    assert model(torch.zeros(5, 3)).shape == (5, 2)
    assert list_models("testapp") == ["testapp/net", "testapp/net_tiny"]
    assert "hybrids.apps.otherapp.models" not in sys.modules


def test_presets_overrides_and_config(fake_apps):
    assert create_model("testapp/net_tiny").config.width == 4
    tiny = create_model("testapp/net", preset="tiny", depth=3)
    assert (tiny.config.width, tiny.config.depth) == (4, 3)
    assert len([m for m in tiny.modules() if isinstance(m, torch.nn.Linear)]) == 4
    cfg = tiny.config.replace(width=8)
    assert create_model("testapp/net", config=cfg).config.width == 8
    with pytest.raises(InputError, match="either preset or config"):
        create_model("testapp/net", preset="tiny", config=cfg)
    with pytest.raises(InputError, match="unknown field.*widht"):
        create_model("testapp/net", widht=3)
    with pytest.raises(InputError, match="unknown preset"):
        create_model("testapp/net", preset="huge")


def test_parameter_count_on_meta_device(fake_apps):
    # 3*64+64 + 64*64+64 + 64*2+2
    assert count_parameters("testapp/net") == 256 + 4160 + 130
    assert count_parameters("testapp/net", preset="tiny") == 3 * 4 + 4 + 4 * 2 + 2


def test_duplicate_and_malformed_names_raise(fake_apps):
    create_model("testapp/net")  # registers testapp

    with pytest.raises(ValueError, match="already registered"):
        register_model("testapp/net", config=ModelConfig)(lambda c: torch.nn.Identity())
    for bad in ["net", "TestApp/net", "testapp/", "/net", "testapp/net/v2"]:
        with pytest.raises(ValueError, match="must look like"):
            register_model(bad, config=ModelConfig)
    with pytest.raises(TypeError, match="ModelConfig subclass"):
        register_model("testapp/x", config=dict)
    with pytest.raises(ValueError, match="no preset 'tiny'"):
        register_model("testapp/x", config=ModelConfig, preset="tiny")


def test_unknown_names_suggest_close_matches(fake_apps, monkeypatch):
    monkeypatch.setattr(registry, "available_apps", lambda: ["testapp"])
    with pytest.raises(UnknownModelError, match="did you mean testapp/net"):
        create_model("testapp/nett")
    with pytest.raises(UnknownModelError, match="unknown model 'nosuchapp/x'"):
        create_model("nosuchapp/x")


def test_available_apps_finds_packages_without_importing(fake_apps):
    apps = registry.available_apps()
    assert {"testapp", "otherapp"} <= set(apps)
    assert "core" not in apps
    assert "hybrids.apps.testapp" not in sys.modules
