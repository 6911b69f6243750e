import json

import pytest
import torch

from hybrids.apps.core.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from hybrids.apps.core.errors import CheckpointError
from hybrids.apps.core.registry import create_model


def test_round_trip_rebuilds_config_and_weights(fake_apps, tmp_path):
    model = create_model("testapp/net", preset="tiny", depth=3)
    model.preprocessing = {"sample_rate": 44100}
    folder = save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    info = json.loads((folder / "config.json").read_text())
    assert info["model"] == "testapp/net" and info["config"]["depth"] == 3
    x = torch.randn(2, 3)
    for path in (folder, folder / "model.safetensors"):
        loaded = load_checkpoint(path)
        assert loaded.config == model.config
        assert loaded.preprocessing == {"sample_rate": 44100}
        assert torch.equal(loaded(x), model(x))
    # create_model(weights=PATH) takes the architecture from the checkpoint, not the default preset
    assert torch.equal(create_model("testapp/net", weights=folder)(x), model(x))


def test_lone_safetensors_file_carries_its_config(fake_apps, tmp_path):
    model = create_model("testapp/net_tiny")
    folder = save_checkpoint(model, tmp_path / "ckpt")
    lone = tmp_path / "moved.safetensors"
    (folder / "model.safetensors").rename(lone)
    assert read_checkpoint_info(lone)["model"] == "testapp/net_tiny"
    x = torch.randn(2, 3)
    assert torch.equal(load_checkpoint(lone)(x), model(x))


def test_tied_weights_are_saved(fake_apps, tmp_path):
    model = create_model("testapp/net", preset="tiny", depth=3)
    model.layers[4].weight = model.layers[2].weight  # two keys, one storage (safetensors refuses those)
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(loaded.layers[4].weight, model.layers[2].weight)
    x = torch.randn(2, 3)
    assert torch.equal(loaded(x), model(x))


def test_wrong_model_and_bad_checkpoints(fake_apps, tmp_path):
    save_checkpoint(create_model("testapp/net_tiny"), tmp_path / "tiny")
    with pytest.raises(CheckpointError, match="checkpoint of testapp/net_tiny, not of testapp/net"):
        create_model("testapp/net", weights=tmp_path / "tiny")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a hybrids checkpoint"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "tiny" / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="config.json: not a valid JSON checkpoint config"):
        load_checkpoint(tmp_path / "tiny")
