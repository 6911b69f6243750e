"""Pretrained encoders of the medical models: registered weights entries, hash checks (full, prefix,
none published) through the one resolver, key mappings, safe loading (local fake files)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from hybrids.apps.core import weights as core
from hybrids.apps.core.errors import CheckpointError, InputError, UnsafeCheckpointError, WeightsError
from hybrids.apps.medical import weights as W
from hybrids.apps.medical.hiformer import HiFormer, HiFormerConfig
from hybrids.shared_blocks.resnet import ResNet


def tiny(**overrides) -> HiFormer:
    torch.manual_seed(0)
    return HiFormer(HiFormerConfig.from_preset("tiny", **overrides))


def fake_torchvision_resnet(
    path: Path, block: str = "basic", base_width: int = 16
) -> dict[str, torch.Tensor]:
    """A torchvision-layout ResNet file (conv1, bn1, layer1-4, fc) with random values, shaped like the
    tiny preset's ResNet (one block per stage, ``base_width`` 16) plus a ``layer4``."""
    torch.manual_seed(1)
    resnet = ResNet(block, (1, 1, 1, 1), base_width=base_width, num_classes=1000)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in resnet.state_dict().items()}
    torch.save(state, path)
    return state


def fake_official_swin(path: Path, model: HiFormer) -> dict[str, torch.Tensor]:
    """An official-layout Swin file ``{"model": ...}`` shaped for ``model``'s Swin stages."""
    torch.manual_seed(2)
    prefix = "All2Cross.pyramid.swin_transformer."
    state = {
        k[len(prefix) :]: torch.randn_like(v.float())
        for k, v in model.state_dict().items()
        if k.startswith(prefix)
    }
    state = {k: (v.long() if k.endswith("relative_position_index") else v) for k, v in state.items()}
    d = model.config.embed_dim
    for i in range(4):
        width = d << i
        state[f"layers.{i}.downsample.reduction.weight"] = torch.randn(2 * width, 4 * width)
        state[f"layers.{i}.downsample.norm.weight"] = torch.randn(4 * width)
        state[f"layers.{i}.downsample.norm.bias"] = torch.randn(4 * width)
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    state["layers.3.blocks.0.norm1.weight"] = torch.randn(8 * d)
    state["patch_embed.proj.weight"] = torch.randn(d, 3, 4, 4)
    state["head.weight"], state["norm.weight"] = torch.randn(1000, 8 * d), torch.randn(8 * d)
    torch.save({"model": state}, path)
    return state


def test_registered_entries():
    names = [n for n in core.list_weights() if n.startswith("medical/")]
    assert names == [
        "medical/dino_vits16",
        "medical/dino_vits8",
        "medical/resnet34_imagenet1k_v1",
        "medical/resnet50_imagenet1k_v1",
        "medical/swin_tiny_patch4_window7_224",
    ]
    for entry in map(core.get_weights, names):
        assert entry.url.startswith("https://") and entry.license and entry.filename in entry.url
        assert not entry.sha256  # none is published for these files
        if entry.sha256_prefix:  # torchvision: the prefix is the one in the file name
            assert entry.filename.endswith(f"-{entry.sha256_prefix}.pth")
    assert core.get_weights("medical/resnet50_imagenet1k_v1").sha256_prefix == "0676ba61"
    assert core.get_weights("medical/swin_tiny_patch4_window7_224").sha256_prefix == ""  # no hash at all


def test_resnet_loads_into_the_model_with_adapted_first_conv(tmp_path):
    file = tmp_path / "resnet-tiny.pth"
    source = fake_torchvision_resnet(file)
    model = tiny(in_channels=1)
    loaded = W.load_pretrained_encoders(model, resnet=file, swin=None)
    assert loaded == {
        "resnet": len(
            [
                k
                for k in W._expected(
                    model,
                    ("All2Cross.pyramid.resnet_layers.", "All2Cross.pyramid.p2.", "All2Cross.pyramid.p3."),
                )
            ]
        )
    }
    pyramid = model.All2Cross.pyramid
    torch.testing.assert_close(pyramid.resnet_layers[4][0].conv1.weight, source["layer1.0.conv1.weight"])
    torch.testing.assert_close(pyramid.p3[0].bn2.running_var, source["layer3.0.bn2.running_var"])
    assert pyramid.p2 is pyramid.resnet_layers[5]
    assert pyramid.resnet_layers[0].weight.shape == (16, 1, 7, 7)
    torch.testing.assert_close(
        pyramid.resnet_layers[0].weight,
        W.resnet_encoder_state_dict(source, 1)["All2Cross.pyramid.resnet_layers.0.weight"],
    )
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 9, 32, 32)


def test_swin_loads_blocks_and_patch_merging(tmp_path):
    model = tiny()
    file = tmp_path / "swin-tiny.pth"
    source = fake_official_swin(file, model)
    loaded = W.load_pretrained_encoders(model, resnet=None, swin=file)
    assert loaded["swin"] > 0
    pyramid = model.All2Cross.pyramid
    block = pyramid.swin_transformer.layers[2].blocks[1]
    torch.testing.assert_close(block.attn.qkv.weight, source["layers.2.blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(pyramid.p1_pm.reduction.weight, source["layers.0.downsample.reduction.weight"])
    torch.testing.assert_close(pyramid.p2_pm.norm.bias, source["layers.1.downsample.norm.bias"])
    # the constant index buffer is the model's own, not the file's random one
    assert torch.equal(
        block.attn.relative_position_index,
        tiny().All2Cross.pyramid.swin_transformer.layers[2].blocks[1].attn.relative_position_index,
    )


def test_mismatched_file_raises(tmp_path):
    file = tmp_path / "resnet-bottleneck.pth"
    fake_torchvision_resnet(file, block="bottleneck")
    with pytest.raises(CheckpointError, match="resnet-bottleneck.pth"):
        W.load_pretrained_encoders(tiny(), resnet=file, swin=None)
    swin = tmp_path / "not-swin.pth"
    torch.save({"model": {"layers.0.blocks.0.norm1.weight": torch.zeros(3)}}, swin)
    with pytest.raises(CheckpointError, match="Swin-T"):
        W.load_pretrained_encoders(tiny(), resnet=None, swin=swin)


def test_default_imagenet_needs_a_resnet34_or_50():
    with pytest.raises(InputError):
        W.load_pretrained_encoders(tiny(), swin=None)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_pickles_are_refused(tmp_path):
    file = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Evil()}, file)
    with pytest.raises(UnsafeCheckpointError):
        W.load_pretrained_encoders(tiny(), resnet=file, swin=None)
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        W.load_pretrained_encoders(tiny(), resnet=raw, swin=None)


@pytest.fixture
def registered():
    """Register throw-away weights entries; unregistered afterwards."""
    names = []

    def register(entry: core.WeightsEntry) -> core.WeightsEntry:
        names.append(entry.name)
        return core.register_weights(entry)

    yield register
    for name in names:
        core.unregister_weights(name)


def test_resolve_checks_the_sha256_prefix(tmp_path, registered):
    file = tmp_path / "resnet-tiny.pth"
    fake_torchvision_resnet(file)
    good = hashlib.sha256(file.read_bytes()).hexdigest()[:8]
    bad = "0" * 8 if good != "0" * 8 else "1" * 8
    for prefix, ok in ((good, True), (bad, False)):
        core.unregister_weights("medical/test_resnet")
        entry = core.WeightsEntry(
            "medical/test_resnet",
            "https://example.invalid/resnet-tiny.pth",
            license="test",
            sha256_prefix=prefix,
        )
        registered(entry)
        for stamp in tmp_path.glob("*.sha256"):
            stamp.unlink()
        if ok:
            assert core.resolve_weights(entry.name, search_dirs=[tmp_path]) == (file, entry)
            assert core.resolve_weights(file)[1] == entry  # a path with the official name is checked too
            loaded = W.load_pretrained_encoders(tiny(), resnet=entry.name, swin=None, search_dirs=[tmp_path])
            assert loaded["resnet"] > 0
        else:
            with pytest.raises(WeightsError, match=f"sha256 prefix mismatch .expected {bad}, got {good}"):
                core.resolve_weights(entry.name, search_dirs=[tmp_path])
            with pytest.raises(WeightsError):
                core.resolve_weights(file)


def test_downloads_check_the_prefix_or_say_no_hash_is_published(tmp_path, registered, monkeypatch, capsys):
    """Through the one downloader (``hybrids.apps.core.weights``; a local file:// URL, no network)."""
    monkeypatch.delenv("HYBRIDS_OFFLINE", raising=False)
    server = tmp_path / "server"
    server.mkdir()
    (server / "w-prefix.pth").write_bytes(b"x" * 3000)
    digest = hashlib.sha256(b"x" * 3000).hexdigest()
    url = (server / "w-prefix.pth").as_uri()
    registered(
        core.WeightsEntry("medical/test_bad", url, license="t", sha256_prefix="0" * 8, filename="bad.pth")
    )
    with pytest.raises(WeightsError, match="sha256 mismatch.*nothing was saved"):
        core.resolve_weights("medical/test_bad")
    assert not (core.cache_dir() / "bad.pth").exists()
    registered(core.WeightsEntry("medical/test_prefix", url, license="t", sha256_prefix=digest[:8]))
    path, _ = core.resolve_weights("medical/test_prefix")
    assert path == core.cache_dir() / "w-prefix.pth" and path.read_bytes() == b"x" * 3000
    assert "No sha256 is published" not in capsys.readouterr().err
    registered(
        core.WeightsEntry("medical/test_none", url, license="t", sha256_prefix="", filename="none.pth")
    )
    path, _ = core.resolve_weights("medical/test_none")
    assert path.read_bytes() == b"x" * 3000
    assert "No sha256 is published for this file" in capsys.readouterr().err


def test_offline_error_names_file_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HYBRIDS_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"resnet50-0676ba61\.pth.*https://download\.pytorch\.org"):
        with torch.device("meta"):  # HiFormer-B's shape, no memory: the file is asked for first
            model = HiFormer(HiFormerConfig.from_preset("hiformer_b", num_classes=2))
        W.load_pretrained_encoders(model, resnet=W.IMAGENET, swin=None)
    with pytest.raises(InputError, match="no such weights file"):
        W.load_pretrained_encoders(tiny(), resnet=tmp_path / "missing.pth", swin=None)


def test_entry_validation():
    url = "https://e/x.pth"
    with pytest.raises(ValueError, match="sha256_prefix must be 8-63 lower-case hex"):
        core.WeightsEntry("x/y", url, license="l", sha256_prefix="XYZ12345")
    with pytest.raises(ValueError, match="sha256_prefix must be 8-63"):
        core.WeightsEntry("x/y", url, license="l", sha256_prefix="abc")
    with pytest.raises(ValueError, match="64 lower-case hex"):
        core.WeightsEntry("x/y", url, "ab", "l")
    with pytest.raises(ValueError, match="64 lower-case hex"):
        core.WeightsEntry("x/y", url, "a" * 64, "l", sha256_prefix="a" * 8)  # one or the other
    assert core.WeightsEntry("x/y", url, license="l", sha256_prefix="").expected_sha256 == ""
    assert core.WeightsEntry("x/y", url, license="l", sha256_prefix="ab" * 4).expected_sha256 == "abababab"


def test_official_hiformer_checkpoint_loads(tmp_path):
    source = tiny(num_classes=4)
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    state["module.All2Cross.pyramid.swin_transformer.layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    file = tmp_path / "hiformer-tiny_best.pth"
    torch.save(state, file)
    torch.manual_seed(5)
    model = HiFormer(HiFormerConfig.from_preset("tiny", num_classes=4))
    W.load_official_hiformer(model, file)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source.eval()(x))
    with pytest.raises(CheckpointError, match="hiformer-tiny_best.pth"):
        W.load_official_hiformer(tiny(num_classes=5), file)
