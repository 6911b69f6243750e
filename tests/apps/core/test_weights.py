"""The weights resolver, exercised against local files and a loopback HTTP server (no network)."""

import functools
import hashlib
import http.server
import socket
import threading

import pytest
import torch
from safetensors.torch import save_file

from hybrids.apps.core import weights as W
from hybrids.apps.core.errors import CheckpointError, InputError, WeightsError
from hybrids.apps.core.registry import create_model


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def entry_factory(tmp_path):
    """Register throw-away weights entries served from ``tmp_path/server``."""
    names = []
    server = tmp_path / "server"
    server.mkdir()

    def make(name="test/w", data=b"x" * 5000, sha=None, filename="w-0123abcd.safetensors", url=None, **kw):
        (server / filename).write_bytes(data)
        entry = W.WeightsEntry(
            name=name,
            url=url or (server / filename).as_uri(),
            sha256=sha or _sha(data),
            license="CC-BY-NC 4.0 (test)",
            **kw,
        )
        names.append(name)
        return W.register_weights(entry)

    yield make
    for name in names:
        W.unregister_weights(name)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HYBRIDS_OFFLINE", raising=False)


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HYBRIDS_CACHE", str(tmp_path / "c"))
    assert W.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HYBRIDS_CACHE")
    assert W.cache_dir() == __import__("pathlib").Path(torch.hub.get_dir()) / "checkpoints"


def test_download_verifies_hash_caches_and_prints_licence(entry_factory, online, capsys):
    entry = entry_factory()
    path, found = W.resolve_weights("test/w")
    assert found is entry
    assert path == W.cache_dir() / entry.filename
    assert path.read_bytes() == b"x" * 5000
    err = capsys.readouterr().err
    assert "Licence: CC-BY-NC 4.0 (test)" in err and entry.url in err
    # second resolution comes from the cache: no download, no licence banner
    (W.cache_dir() / entry.filename).touch()
    assert W.resolve_weights("test/w")[0] == path
    assert "Licence" not in capsys.readouterr().err


def test_checksum_mismatch_leaves_nothing_in_cache(entry_factory, online):
    entry_factory(sha="0" * 64)
    with pytest.raises(WeightsError, match="sha256 mismatch.*nothing was saved"):
        W.resolve_weights("test/w")
    assert not W.cache_dir().exists() or list(W.cache_dir().iterdir()) == []


def test_corrupted_cache_file_is_detected(entry_factory, online):
    entry_factory()
    path, _ = W.resolve_weights("test/w")
    path.write_bytes(b"y" * 5000)  # same size, different content, new mtime
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        W.resolve_weights("test/w")


def test_offline_error_names_file_url_cache_and_flag(entry_factory):
    entry = entry_factory()  # HYBRIDS_OFFLINE=1 is set for every test by conftest
    with pytest.raises(WeightsError) as info:
        W.resolve_weights("test/w")
    message = str(info.value)
    for needle in (entry.filename, entry.url, str(W.cache_dir()), "--weights PATH"):
        assert needle in message
    assert "\n" not in message


def test_unreachable_server_gives_clear_error(entry_factory, online):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = entry_factory(url=f"http://127.0.0.1:{port}/w-0123abcd.safetensors")
    with pytest.raises(WeightsError, match="could not be downloaded from http://127.0.0.1.*--weights PATH"):
        W.resolve_weights("test/w")
    assert not (W.cache_dir() / entry.filename).exists()


def test_http_download_from_loopback_server(entry_factory, online, tmp_path):
    data = bytes(range(256)) * 4000
    entry = entry_factory(data=data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "server"))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{entry.filename}"
        W.unregister_weights(entry.name)
        W.register_weights(W.WeightsEntry(entry.name, url, entry.sha256, entry.license))
        path, _ = W.resolve_weights(entry.name)
    finally:
        server.shutdown()
        server.server_close()
    assert path.read_bytes() == data


def test_search_dirs_and_user_paths(entry_factory, tmp_path):
    entry = entry_factory()
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / entry.filename).write_bytes(b"x" * 5000)
    assert W.resolve_weights("test/w", search_dirs=[repo])[0] == repo / entry.filename
    # a user's own file under the official name must be the official content
    (repo / entry.filename).write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        W.resolve_weights(repo / entry.filename)
    other = tmp_path / "finetuned.safetensors"
    other.write_bytes(b"anything")
    assert W.resolve_weights(str(other)) == (other, None)
    with pytest.raises(InputError, match="nope.safetensors: no such weights file"):
        W.resolve_weights(str(tmp_path / "nope.safetensors"))
    with pytest.raises(WeightsError, match="test/nope: neither a weights file nor a known weights name"):
        W.resolve_weights("test/nope")


def test_entry_validation():
    with pytest.raises(ValueError, match="64 lower-case hex"):
        W.WeightsEntry("x/y", "https://example.org/a.th", "abc", "MIT")
    assert (
        W.WeightsEntry("x/y", "https://example.org/dir/a-12.th?dl=1", "a" * 64, "MIT").filename == "a-12.th"
    )


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[:8] + b"\x00" * 20 + b[28:], id="corrupt-header"),
        pytest.param(lambda b: (10**6).to_bytes(8, "little") + b[8:], id="header-length-too-long"),
    ],
)
def test_corrupt_safetensors_gives_one_line_error(tmp_path, mangle):
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.randn(64, 64), "b": torch.randn(64)}, str(good))
    assert set(W.load_state_dict(good)) == {"w", "b"}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(mangle(good.read_bytes()))
    with pytest.raises(CheckpointError) as info:
        W.load_state_dict(bad)
    message = str(info.value)
    assert message.startswith(str(bad)) and "\n" not in message


def test_load_state_dict_formats(tmp_path):
    tensors = {"w": torch.randn(3, 3)}
    torch.save({"state_dict": tensors}, tmp_path / "lightning.ckpt")
    assert torch.equal(W.load_state_dict(tmp_path / "lightning.ckpt")["w"], tensors["w"])
    torch.save(tensors, tmp_path / "plain.pt")
    assert torch.equal(W.load_state_dict(tmp_path / "plain.pt")["w"], tensors["w"])
    torch.save({"w": tensors["w"], "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="does not contain a state dict"):
        W.load_state_dict(tmp_path / "mixed.pt")
    (tmp_path / "notes.txt").write_text("hello world, not weights")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        W.load_state_dict(tmp_path / "notes.txt")


def test_create_model_with_official_weights_and_mismatch(fake_apps, entry_factory, online, tmp_path):
    source = create_model("testapp/net")
    blob = tmp_path / "blob.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(blob))
    entry_factory(
        name="testapp/net-v1",
        data=blob.read_bytes(),
        filename="net-v1-abcdef01.safetensors",
        preprocessing={"sample_rate": 44100},
    )
    model = create_model("testapp/net", weights="official")
    x = torch.randn(4, 3)
    assert torch.equal(model(x), source(x))
    assert model.preprocessing == {"sample_rate": 44100}
    with pytest.raises(CheckpointError, match="do not fit testapp/net.*wrong shape"):
        create_model("testapp/net", weights="official", preset="tiny")
    with pytest.raises(WeightsError, match="has no official weights"):
        create_model("testapp/net_tiny", weights="official")


def test_user_pickle_is_read_with_the_models_official_reader(fake_apps, entry_factory, tmp_path):
    source = create_model("testapp/net")
    package = tmp_path / "official.pt"
    torch.save({"state": source.state_dict(), "note": "wrapped"}, package)
    entry_factory(
        name="testapp/net-v1",
        data=package.read_bytes(),
        filename="net-v1-abcdef01.pt",
        to_state_dict=lambda loaded: loaded["state"],
    )
    finetuned = tmp_path / "my-finetuned.pt"  # not the official name: no hash check, same layout
    torch.save({"state": source.state_dict(), "note": "fine-tuned"}, finetuned)
    model = create_model("testapp/net", weights=finetuned)
    x = torch.randn(4, 3)
    assert torch.equal(model(x), source(x))


# -- entries of several files -------------------------------------------------------------------
@pytest.fixture
def two_part_net(fake_apps, entry_factory, tmp_path):
    """``testapp/net-v1`` as two safetensors files (the first layer, the rest), served from
    ``tmp_path/server``; its ``to_config`` reads the width from the first file's shapes."""
    source = create_model("testapp/net", width=8)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    blobs = []
    for index, keys in enumerate([[k for k in state if k.startswith("layers.0.")], None]):
        part = {k: v for k, v in state.items() if (k in keys if keys else not k.startswith("layers.0."))}
        path = tmp_path / f"part{index}.safetensors"
        save_file(part, str(path))
        blobs.append(path.read_bytes())
    parts = [
        entry_factory(name=f"testapp/net-v1/{i}", data=blob, filename=f"net-v1-{i}-0123abcd.safetensors")
        for i, blob in enumerate(blobs)
    ]
    parent = W.register_weights(
        W.WeightsEntry(
            "testapp/net-v1",
            license="CC-BY-NC 4.0 (test bag)",
            preprocessing={"sample_rate": 8000},
            to_state_dict=lambda loaded: {k: v for part in loaded for k, v in part.items()},
            to_config=lambda loaded: {"width": int(loaded[0]["layers.0.weight"].shape[0])},
            parts=tuple(p.name for p in parts),
        )
    )
    yield source, parts, parent
    W.unregister_weights(parent.name)


def test_entry_of_parts_downloads_each_file_and_prints_the_licence_once(two_part_net, online, capsys):
    source, parts, parent = two_part_net
    with pytest.raises(WeightsError, match="are 2 files: use resolve_weights_files"):
        W.resolve_weights(parent.name)
    paths, entry = W.resolve_weights_files(parent.name)
    assert entry is parent and paths == [W.cache_dir() / p.filename for p in parts]
    err = capsys.readouterr().err
    assert err.count("Downloading weights") == 2 and err.count("Licence: CC-BY-NC 4.0 (test bag)") == 1
    model = create_model("testapp/net", weights="official")  # config from the files: width 8
    assert model.layers[0].out_features == 8 and model.preprocessing == {"sample_rate": 8000}
    x = torch.randn(4, 3)
    assert torch.equal(model(x), source(x))
    assert "Downloading" not in capsys.readouterr().err  # now from the cache


def test_entry_of_parts_offline_names_every_missing_file(two_part_net, tmp_path):
    _, parts, parent = two_part_net
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / parts[0].filename).write_bytes((tmp_path / "server" / parts[0].filename).read_bytes())
    with pytest.raises(WeightsError) as info:  # HYBRIDS_OFFLINE=1 (conftest)
        W.resolve_weights_files(parent.name, search_dirs=[repo])
    message = str(info.value)
    for needle in ("1 of its 2 files", parts[1].filename, parts[1].url, str(W.cache_dir()), "--repo DIR"):
        assert needle in message
    assert parts[0].filename not in message and "\n" not in message
    (repo / parts[0].filename).unlink()  # every missing file is named in the one message
    with pytest.raises(WeightsError) as info:
        W.resolve_weights_files(parent.name, search_dirs=[repo])
    message = str(info.value)
    assert "2 of its 2 files" in message and all(p.filename in message and p.url in message for p in parts)
    (repo / parts[0].filename).write_bytes((tmp_path / "server" / parts[0].filename).read_bytes())
    (repo / parts[1].filename).write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        W.resolve_weights_files(parent.name, search_dirs=[repo])


def test_one_user_file_for_a_model_of_several_files_is_refused(two_part_net, tmp_path):
    finetuned = tmp_path / "finetuned.pt"
    torch.save({"layers.0.weight": torch.zeros(8, 3)}, finetuned)
    with pytest.raises(InputError, match=r"finetuned.pt: testapp/net takes 2 weights files .*--repo DIR"):
        create_model("testapp/net", weights=finetuned)


def test_entry_of_parts_validation():
    with pytest.raises(ValueError, match="an entry with parts has no url"):
        W.WeightsEntry("x/y", "https://example.org/a.th", parts=("x/a",))
    with pytest.raises(ValueError, match="a url and a licence are required"):
        W.WeightsEntry("x/y", "https://example.org/a.th", "a" * 64)


def test_a_raw_pickle_is_refused_by_name_and_a_legacy_torch_file_still_loads(tmp_path):
    import pickle

    raw = tmp_path / "weights.pkl"
    with open(raw, "wb") as handle:
        pickle.dump({"layers.0.weight": [[0.0] * 3] * 8}, handle)
    assert W.sniff_format(raw) == "pickle"
    with pytest.raises(CheckpointError, match=r"weights\.pkl: a raw Python pickle \(pickle.dump\), which"):
        W.read_weights_file(raw)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert W.sniff_format(legacy) == "torch-legacy"
    assert torch.equal(W.read_weights_file(legacy)["w"], torch.ones(2))
