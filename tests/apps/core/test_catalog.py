"""The model catalogue: ``apps/model_index.json`` is what the registry says, ``hybrids models`` is
fast and complete (built-in models, weights status), and short names work everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hybrids.apps.cli import main
from hybrids.apps.core import catalog
from hybrids.apps.core.errors import InputError, UnknownModelError
from hybrids.apps.core.registry import create_model, get_model_entry

HYBRIDS_SCRIPT = Path(sys.executable).parent / "hybrids"


def test_the_committed_index_is_what_the_registry_says():
    # Stale after adding or changing a model: run `python -m hybrids.apps.core.catalog --write`.
    fresh = json.loads(json.dumps(catalog.build_index()))
    assert catalog.read_index() == fresh


def test_builtin_models_are_listed_with_architecture_size_and_licence():
    (hippocampus,) = [b for b in catalog.builtin_models() if b.name == "medical/hippocampus"]
    assert hippocampus.model == "medical/swtr_unet" and hippocampus.licence == "CC-BY-SA 4.0"
    assert hippocampus.bytes == (hippocampus.folder / "model.safetensors").stat().st_size > 1_000_000


def test_models_command_is_fast_imports_no_torch_and_lists_builtins(tmp_path):
    if not HYBRIDS_SCRIPT.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    code = (
        "import sys; from hybrids.apps.cli import main; main(['models']); "
        "assert 'torch' not in sys.modules, 'hybrids models imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=tmp_path)
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        result = subprocess.run([str(HYBRIDS_SCRIPT), "models"], capture_output=True, text=True, cwd=tmp_path)
        walls.append(time.perf_counter() - start)
        assert result.returncode == 0, result.stderr
    assert min(walls) < 1.0, walls
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "built-in" in lines["medical/hippocampus"] and "medical/swtr_unet" in lines["medical/hippocampus"]
    assert "official (download)" in lines["music/htdemucs"]  # the test cache is empty


def test_weights_status_follows_the_cache(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HYBRIDS_CACHE", str(tmp_path))
    info = catalog.read_index()["models"]["music/htdemucs_ft"]["weights"][0]
    (tmp_path / info["files"][0]).write_bytes(b"x")
    assert main(["models", "--app", "music"]) == 0
    out = capsys.readouterr().out
    assert f"official (1/{len(info['files'])} cached)" in out
    for name in info["files"]:
        (tmp_path / name).write_bytes(b"x")
    assert main(["models", "--app", "music", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["music/htdemucs_ft"]["weights"] == "official (cached)"


def test_short_names_work_wherever_unambiguous():
    assert catalog.full_name("htdemucs") == "music/htdemucs"
    assert get_model_entry("htdemucs").name == "music/htdemucs"
    model = create_model("htdemucs", preset="tiny")
    assert model.model_name == "music/htdemucs"
    builtin = create_model("hippocampus")  # a trained model shipped in the package
    assert builtin.model_name == "medical/swtr_unet" and builtin.config.num_classes == 3
    reference = create_model("medical/swtr_unet", weights=catalog.get_builtin("medical/hippocampus").folder)
    for (name, a), (_, b) in zip(builtin.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(InputError, match="takes no preset"):
        create_model("hippocampus", preset="tiny")
    with pytest.raises(UnknownModelError, match="unknown model 'nosuchmodel'"):
        create_model("nosuchmodel")


def test_ambiguous_short_names_are_refused(fake_apps, monkeypatch):
    from hybrids.apps.core import registry

    registry.list_models("testapp")
    monkeypatch.setitem(registry._REGISTRY, "music/net", registry._REGISTRY["testapp/net"])
    with pytest.raises(UnknownModelError, match="'net' is ambiguous: use one of music/net, testapp/net"):
        create_model("net")
