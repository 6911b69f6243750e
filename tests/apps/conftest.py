"""A throw-away app (``testapp``) and a second one (``otherapp``), installed into
``hybrids.apps.__path__`` for the duration of a test, to exercise registration, lazy per-app
loading and CLI discovery without depending on any real app."""

from __future__ import annotations

import sys
import textwrap

import pytest

TESTAPP_MODELS = '''
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.registry import register_model


@dataclass
class NetConfig(ModelConfig):
    width: int = 64
    depth: int = 2
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {"width": 4, "depth": 1}}


class Net(nn.Module):
    def __init__(self, config: NetConfig):
        super().__init__()
        layers = [nn.Linear(3, config.width), nn.ReLU()]
        for _ in range(config.depth - 1):
            layers += [nn.Linear(config.width, config.width), nn.ReLU()]
        layers.append(nn.Linear(config.width, 2))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


@register_model("testapp/net", config=NetConfig, weights="testapp/net-v1")
def net(config: NetConfig) -> Net:
    """A small test network."""
    return Net(config)


@register_model("testapp/net_tiny", config=NetConfig, preset="tiny")
def net_tiny(config: NetConfig) -> Net:
    """The same network at its tiny preset."""
    return Net(config)
'''

TESTAPP_CLI = """
from hybrids.apps.core.errors import InputError


def add_parser(commands):
    parser = commands.add_parser("testapp", help="a test app")
    verbs = parser.add_subparsers(dest="verb", required=True)
    fail = verbs.add_parser("fail-input")
    fail.set_defaults(func=lambda args: (_ for _ in ()).throw(InputError("song.wav: not an audio file")))
    crash = verbs.add_parser("crash")
    crash.set_defaults(func=lambda args: 1 / 0)
    load = verbs.add_parser("load")
    load.add_argument("--weights", required=True)
    load.set_defaults(func=_load)


def _load(args):
    from hybrids.apps.core.registry import create_model

    model = create_model("testapp/net", weights=args.weights)
    print(type(model).__name__, sum(p.numel() for p in model.parameters()))
    return 0
"""


@pytest.fixture
def fake_apps(tmp_path, monkeypatch):
    """Install ``testapp`` (models + cli) and ``otherapp`` (models only) as hybrids apps."""
    import hybrids.apps
    from hybrids.apps.core import registry

    root = tmp_path / "fake_apps"
    for app, files in {
        "testapp": {"models.py": TESTAPP_MODELS, "cli.py": TESTAPP_CLI},
        "otherapp": {"models.py": "raise ImportError('otherapp must not be imported here')\n"},
    }.items():
        (root / app).mkdir(parents=True)
        (root / app / "__init__.py").write_text("")
        for name, text in files.items():
            (root / app / name).write_text(textwrap.dedent(text))
    monkeypatch.setattr(hybrids.apps, "__path__", [*hybrids.apps.__path__, str(root)])
    yield root
    for name in [n for n in registry._REGISTRY if n.split("/")[0] in {"testapp", "otherapp"}]:
        registry.unregister_model(name)
    registry._LOADED_APPS.difference_update({"testapp", "otherapp"})
    for module in [m for m in sys.modules if m.startswith(("hybrids.apps.testapp", "hybrids.apps.otherapp"))]:
        del sys.modules[module]
