"""Official HT Demucs weights (``htdemucs``, ``htdemucs_6s``, ``htdemucs_ft``), ``--weights``,
``--repo`` and Hugging Face-style model folders.

Packages are written as demucs 4.1.0 writes its releases: demucs's own ``HTDemucs(**kwargs)``
(tiny configurations, random weights made visible by ``perturb``), its state rounded to float16,
``torch.save({klass, args, kwargs, state, training_args})`` named ``<sig>-<sha256[:8]>.th``. The
official files themselves are never downloaded: entries are pointed at local copies (file:// or a
loopback HTTP server) with their hashes where a test needs the official route.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import importlib.util
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from safetensors.torch import save_file

from hybrids.apps.cli import main
from hybrids.apps.core import weights as W
from hybrids.apps.core.errors import CheckpointError, InputError, UnsafeCheckpointError, WeightsError
from hybrids.apps.core.registry import create_model, get_model_entry
from hybrids.apps.music.bag import BagOfModels, HTDemucsBagConfig
from hybrids.apps.music.htdemucs import SOURCES_4, SOURCES_6, HTDemucs, HTDemucsConfig
from hybrids.apps.music.loading import load_separation_model
from hybrids.apps.music.separate import Separator
from hybrids.apps.music.weights import (
    FT_MEMBERS,
    LICENSE,
    ROOT_URL,
    bag_from_demucs_packages,
    model_from_demucs_package,
)

FT_SIGNATURES = ["f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d"]
TINY = HTDemucsConfig.from_preset("tiny")
TINY_6S = HTDemucsConfig.from_preset("tiny", sources=SOURCES_6, channels=4)  # != any preset


def demucs_remote(name: str) -> Path:
    """A file of demucs's ``remote/`` folder, found without importing demucs."""
    spec = importlib.util.find_spec("demucs")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("demucs is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "remote" / name


# -- demucs-format packages ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demucs_htdemucs():
    pytest.importorskip("demucs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import demucs.htdemucs
    return demucs.htdemucs


@pytest.fixture
def write_package(demucs_htdemucs, perturb):
    """``write(folder, config, seed, sig, filename=None) -> (path, demucs model with the rounded
    weights)``: a demucs package as ``serialize_model(half=True)`` + ``save_with_checksum``."""

    def write(folder: Path, config: HTDemucsConfig, seed: int, sig: str, filename: str | None = None):
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = demucs_htdemucs.HTDemucs(**config.to_demucs_kwargs())
        perturb(model, seed + 1)
        args, kwargs = model._init_args_kwargs
        state = {k: v.detach().clone().half() for k, v in model.state_dict().items()}
        package = {
            "klass": model.__class__,
            "args": args,
            "kwargs": kwargs,
            "state": state,
            "training_args": {"seed": seed},
        }
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{sig}.tmp"
        torch.save(package, tmp)
        sha8 = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
        path = folder / (filename or f"{sig}-{sha8}.th")
        tmp.rename(path)
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return path, model.eval()

    return write


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def wav_file(tmp_path):
    """2 s of stereo noise at 44.1 kHz (the separation itself is tested elsewhere)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "mix.wav"
    soundfile.write(str(path), (0.1 * rng.standard_normal((88200, 2))).astype("float32"), 44100)
    return path


def run_cli(*args) -> int:
    return main(["-q", "music", "separate", *map(str, args)])


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# -- the registered entries ----------------------------------------------------------------------
def test_official_entries_name_the_released_files():
    released = demucs_remote("files.txt").read_text().split()
    singles = {"music/htdemucs": "955717e8-8726e21a.th", "music/htdemucs_6s": "5c90dfd2-34c22ccb.th"}
    singles.update({f"music/htdemucs_ft/{s}": f for s, (f, _) in FT_MEMBERS.items()})
    for name, filename in singles.items():
        entry = W.get_weights(name)
        assert entry.filename == filename and filename in released
        assert entry.url == ROOT_URL + filename
        assert entry.sha256.startswith(filename.removesuffix(".th").split("-")[1])  # demucs's checksum
        assert entry.license == LICENSE
    assert W.get_weights("music/htdemucs").sha256 == (
        "8726e21a993978c7ba086d3872e7608d7d5bfca646ca4aca459ffda844faa8b4"
    )
    # the bag: its four files in the order of demucs's remote/htdemucs_ft.yaml, source k from model k
    bag = yaml.safe_load(demucs_remote("htdemucs_ft.yaml").read_text())
    parts = [W.get_weights(p) for p in W.get_weights("music/htdemucs_ft").parts]
    assert [p.filename.split("-")[0] for p in parts] == bag["models"] == FT_SIGNATURES
    assert bag["weights"] == [[float(i == k) for i in range(4)] for k in range(4)]
    assert [p.name.rsplit("/", 1)[1] for p in parts] == list(SOURCES_4)
    assert W.get_weights("music/htdemucs_6s").preprocessing["sources"] == list(SOURCES_6)
    for name in ("htdemucs", "htdemucs_6s", "htdemucs_ft"):
        assert get_model_entry(f"music/{name}").weights == (f"music/{name}",)
    # honest licence note: code MIT, weights research / non-commercial, never bundled
    for needle in ("non-commercial", "MIT", "MUSDB18-HQ", "never bundles"):
        assert needle in LICENSE


# -- --weights FILE.th ---------------------------------------------------------------------------
def test_6s_package_with_its_own_config_loads_by_name_and_separates_like_the_package(
    write_package, tmp_path, wav_file
):
    path, reference = write_package(tmp_path / "w", TINY_6S, seed=5, sig="0a0b0c0d")
    model = create_model("music/htdemucs_6s", weights=path)  # config from the package's kwargs
    assert isinstance(model, HTDemucs) and model.config == TINY_6S
    mix = torch.randn(1, 2, TINY_6S.segment_length)
    with torch.no_grad():
        expected = reference(mix)
        # float32 roundoff of two code paths differs by CPU (AVX2 vs AVX-512 kernels): relative to peak
        peak = expected.abs().max().item()
        torch.testing.assert_close(model.eval()(mix), expected, rtol=0, atol=1e-5 * peak)
    # Separator and the CLI take the same route
    wav, _ = soundfile.read(str(wav_file), dtype="float32")
    wav = torch.from_numpy(wav.T.copy())
    ours = Separator("htdemucs_6s", weights=path).separate_tensor(wav, 44100)
    expected = Separator(model_from_demucs_package(path)).separate_tensor(wav, 44100)
    assert list(ours) == list(SOURCES_6)
    for stem in ours:
        assert torch.equal(ours[stem], expected[stem]), stem
    out = tmp_path / "out"
    assert run_cli("-n", "htdemucs_6s", "--weights", path, "-o", out, wav_file) == 0
    # the output is named after the model used: the package's signature
    assert sorted(p.stem for p in (out / "0a0b0c0d" / "mix").iterdir()) == sorted(SOURCES_6)


def test_official_file_name_with_other_content_is_refused(write_package, tmp_path, wav_file, capsys):
    path, _ = write_package(tmp_path / "w", TINY_6S, seed=5, sig="5c90dfd2", filename="5c90dfd2-34c22ccb.th")
    with pytest.raises(WeightsError, match=r"5c90dfd2-34c22ccb.th: sha256 mismatch \(expected 34c22ccb"):
        create_model("music/htdemucs_6s", weights=path)
    assert run_cli("-n", "htdemucs_6s", "--weights", path, "-o", tmp_path / "out", wav_file) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "5c90dfd2-34c22ccb.th: sha256 mismatch" in err
    assert not (tmp_path / "out" / "htdemucs_6s").exists()


# -- --repo DIR ------------------------------------------------------------------------------------
@pytest.fixture
def ft_repo(write_package, tmp_path):
    """A demucs repository: four tiny one-source members under the htdemucs_ft signatures and
    demucs's own ``htdemucs_ft.yaml``."""
    repo = tmp_path / "repo"
    members = [write_package(repo, TINY, seed=10 + k, sig=sig) for k, sig in enumerate(FT_SIGNATURES)]
    (repo / "htdemucs_ft.yaml").write_text(demucs_remote("htdemucs_ft.yaml").read_text())
    return repo, [path for path, _ in members]


def test_htdemucs_ft_from_a_demucs_repo_folder(ft_repo, tmp_path, wav_file):
    repo, paths = ft_repo
    bag = load_separation_model("htdemucs_ft", repo=repo)
    assert isinstance(bag, BagOfModels) and bag.model_name == "music/htdemucs_ft"
    identity = [[float(i == k) for i in range(4)] for k in range(4)]
    assert bag.config == HTDemucsBagConfig.from_preset("tiny", num_models=4, bag_weights=identity)
    assert bag.preprocessing == {
        "samplerate": 44100,
        "audio_channels": 2,
        "segment": [1, 1],
        "sources": [*SOURCES_4],
    }
    expected = bag_from_demucs_packages(paths)
    same_weights(bag, expected)
    wav = torch.randn(2, 44100)
    ours = Separator(bag).separate_tensor(wav, 44100)
    reference = Separator(expected).separate_tensor(wav, 44100)
    assert all(torch.equal(ours[s], reference[s]) for s in SOURCES_4)
    out = tmp_path / "out"
    assert run_cli("-n", "htdemucs_ft", "--repo", repo, "-o", out, wav_file) == 0
    assert sorted(p.stem for p in (out / "htdemucs_ft" / "mix").iterdir()) == sorted(SOURCES_4)
    # a signature of the folder is a model too, as in demucs (`-n f7e0c4bc --repo DIR`)
    single = load_separation_model("f7e0c4bc", repo=repo)
    assert isinstance(single, HTDemucs)
    same_weights(single, model_from_demucs_package(paths[0]))


def test_repo_bag_description_with_weights_and_segment(ft_repo):
    repo, paths = ft_repo
    (repo / "mine.yaml").write_text(
        "models: ['92cfc3b6', 'f7e0c4bc']\nweights: [[1., 2., 0., 1.], [1., 0., 3., 1.]]\nsegment: 0.5\n"
    )
    bag = load_separation_model("mine", repo=repo)
    assert bag.config.num_models == 2 and bag.config.segment == 0.5
    assert bag.weights == [[1.0, 2.0, 0.0, 1.0], [1.0, 0.0, 3.0, 1.0]]
    same_weights(bag.models[0], model_from_demucs_package(paths[2]))
    (repo / "broken.yaml").write_text("models: ['f7e0c4bc', 'ffffffff']\n")
    with pytest.raises(InputError, match=r"broken.yaml: no file for model ffffffff"):
        load_separation_model("broken", repo=repo)
    with pytest.raises(InputError, match=r"nothing: not a registered model, and .*repo has neither"):
        load_separation_model("nothing", repo=repo)


def test_repo_file_whose_content_does_not_match_its_checksum_is_refused(ft_repo, capsys, tmp_path, wav_file):
    repo, paths = ft_repo
    renamed = paths[1].with_name("d12395a8-deadbeef.th")
    paths[1].rename(renamed)
    with pytest.raises(WeightsError, match=r"d12395a8-deadbeef.th: sha256 mismatch \(its name says deadbeef"):
        load_separation_model("htdemucs_ft", repo=repo)
    assert run_cli("-n", "htdemucs_ft", "--repo", repo, "-o", tmp_path / "out", wav_file) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256 mismatch" in err


@pytest.fixture
def official_ft(ft_repo, monkeypatch):
    """The four members renamed to the official htdemucs_ft file names, with the entries' sha256
    pointed at them (their real hashes cannot be produced here)."""
    repo, paths = ft_repo
    (repo / "htdemucs_ft.yaml").unlink()  # no bag description: the official entries decide
    renamed = []
    for part, path in zip(W.get_weights("music/htdemucs_ft").parts, paths):
        entry = W.get_weights(part)
        target = path.rename(repo / entry.filename)
        monkeypatch.setitem(W._WEIGHTS, part, dataclasses.replace(entry, sha256=sha256(target)))
        renamed.append(target)
    return repo, renamed


def test_htdemucs_ft_official_files_in_repo_and_cache(official_ft, monkeypatch, tmp_path):
    repo, paths = official_ft
    bag = load_separation_model("htdemucs_ft", repo=repo)
    same_weights(bag, bag_from_demucs_packages(paths))
    assert bag.preprocessing["sources"] == list(SOURCES_4)
    cache = tmp_path / "cache"
    monkeypatch.setenv("HYBRIDS_CACHE", str(cache))
    cache.mkdir()
    for path in paths:
        (cache / path.name).write_bytes(path.read_bytes())
    model = create_model("music/htdemucs_ft", weights="official")  # config from the cached packages
    assert model.config == bag.config
    same_weights(model, bag)
    (cache / paths[3].name).write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="04573f0d-f3cf25b2.th: sha256 mismatch"):
        create_model("music/htdemucs_ft", weights="official")
    one = tmp_path / "my-member.th"  # one user file cannot be the four-file bag
    one.write_bytes(paths[0].read_bytes())
    with pytest.raises(InputError, match=r"takes 4 weights files \(f7e0c4bc-ba3fe64a.th, .*--repo DIR"):
        create_model("music/htdemucs_ft", weights=one)


# -- downloads (local servers only) ----------------------------------------------------------------
def test_htdemucs_ft_download_verifies_caches_and_prints_the_licence_once(official_ft, monkeypatch, capsys):
    repo, paths = official_ft
    monkeypatch.delenv("HYBRIDS_OFFLINE")
    for part in W.get_weights("music/htdemucs_ft").parts:
        entry = W.get_weights(part)
        monkeypatch.setitem(
            W._WEIGHTS, part, dataclasses.replace(entry, url=(repo / entry.filename).as_uri())
        )
    bag = load_separation_model("htdemucs_ft")
    err = capsys.readouterr().err
    assert err.count("Downloading weights 'music/htdemucs_ft/") == 4
    assert err.count("Licence: ") == 1 and LICENSE in err
    assert sorted(p.name for p in W.cache_dir().glob("*.th")) == sorted(p.name for p in paths)
    same_weights(bag, bag_from_demucs_packages(paths))
    load_separation_model("htdemucs_ft")
    assert "Downloading" not in capsys.readouterr().err


def test_htdemucs_6s_download_from_a_loopback_http_server(write_package, tmp_path, monkeypatch, capsys):
    server_dir = tmp_path / "server"
    path, reference = write_package(
        server_dir, TINY_6S, seed=2, sig="5c90dfd2", filename="5c90dfd2-34c22ccb.th"
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(server_dir))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    entry = W.get_weights("music/htdemucs_6s")
    url = f"http://127.0.0.1:{server.server_address[1]}/{entry.filename}"
    monkeypatch.setitem(W._WEIGHTS, entry.name, dataclasses.replace(entry, url=url, sha256=sha256(path)))
    monkeypatch.delenv("HYBRIDS_OFFLINE")
    try:
        model = create_model("music/htdemucs_6s", weights="official")
    finally:
        server.shutdown()
        server.server_close()
    assert model.config == TINY_6S and model.preprocessing["sources"] == list(SOURCES_6)
    assert (W.cache_dir() / entry.filename).read_bytes() == path.read_bytes()
    assert f"Downloading weights 'music/htdemucs_6s' from {url}" in capsys.readouterr().err
    same_weights(model, model_from_demucs_package(path))


@pytest.mark.parametrize(
    "name, filename", [("htdemucs_6s", "5c90dfd2-34c22ccb.th"), ("htdemucs_ft", "f7e0c4bc-ba3fe64a.th")]
)
def test_offline_with_nothing_cached_is_one_line_naming_file_url_and_flag(
    name, filename, tmp_path, wav_file, capsys
):
    assert os.environ["HYBRIDS_OFFLINE"] == "1"  # set by tests/conftest.py
    assert run_cli("-n", name, "-o", tmp_path / "out", wav_file) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    if name == "htdemucs_ft":  # a bag: every missing file, its URL, the cache and --repo, in one line
        needles = [f for f, _ in FT_MEMBERS.values()] + [ROOT_URL + f for f, _ in FT_MEMBERS.values()]
        needles += ["4 of its 4 files", str(W.cache_dir()), "--repo DIR"]
    else:
        needles = [filename, ROOT_URL + filename, "--weights"]
    for needle in needles:
        assert needle in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


# -- hostile packages --------------------------------------------------------------------------------
class Evil:
    """A class outside the allow-list: a real unpickler would import this module and build it."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (Path(self.sentinel),))


@pytest.mark.parametrize("kind", ["os.system", "touch payload", "klass", "bag member"])
def test_package_referencing_a_global_outside_the_allow_list_is_refused(
    kind, write_package, ft_repo, tmp_path, wav_file, capsys
):
    sentinel = tmp_path / "pwned"
    path, _ = write_package(tmp_path / "w", TINY_6S, seed=1, sig="0e0e0e0e")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        package = torch.load(path, weights_only=False)  # our own file, written just above
    if kind == "os.system":
        package["payload"] = _Calls(os.system, f"touch {sentinel}")
    elif kind == "touch payload":
        package["payload"] = Evil(str(sentinel))
    elif kind == "klass":
        package["klass"] = Evil
    hostile = tmp_path / "hostile-00000000.th"
    torch.save(package, hostile)
    if kind == "bag member":
        repo, paths = ft_repo
        target = paths[2]
        target.unlink()
        package["payload"] = _Calls(os.system, f"touch {sentinel}")
        torch.save(package, target.with_name("92cfc3b6.th"))  # no checksum in the name: none to check
        with pytest.raises(UnsafeCheckpointError, match=r"92cfc3b6.th: refused to unpickle.*system"):
            load_separation_model("htdemucs_ft", repo=repo)
        argv = ["-n", "htdemucs_ft", "--repo", repo]
    else:
        with pytest.raises(UnsafeCheckpointError, match=r"hostile-00000000.th: refused to unpickle"):
            create_model("music/htdemucs_6s", weights=hostile)
        argv = ["-n", "htdemucs_6s", "--weights", hostile]
    assert run_cli(*argv, "-o", tmp_path / "out", wav_file) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused to unpickle" in err
    assert not sentinel.exists()


class _Calls:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


# -- Hugging Face-style folders: model.safetensors + config.yaml -------------------------------------
def write_folder(folder: Path, model: torch.nn.Module, config_yaml: str) -> Path:
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(config_yaml)
    return folder


def test_folder_with_our_config_yaml(tmp_path, wav_file):
    torch.manual_seed(0)
    source = HTDemucs(TINY_6S).eval()
    fields = {k: v for k, v in TINY_6S.to_dict().items() if v != HTDemucsConfig().to_dict()[k]}
    folder = write_folder(
        tmp_path / "my-6s", source, yaml.safe_dump({"model": "music/htdemucs_6s", "config": fields})
    )
    model = load_separation_model(folder)
    assert model.model_name == "music/htdemucs_6s" and model.config == TINY_6S
    same_weights(model, source)
    assert model.preprocessing["sources"] == list(SOURCES_6)
    out = tmp_path / "out"
    assert run_cli("-n", folder, "-o", out, wav_file) == 0
    assert sorted(p.stem for p in (out / "my-6s" / "mix").iterdir()) == sorted(SOURCES_6)
    # a bag in the same layout
    torch.manual_seed(1)
    bag = BagOfModels(HTDemucsBagConfig.from_preset("tiny")).eval()
    bag_folder = write_folder(
        tmp_path / "my-bag", bag, yaml.safe_dump({"model": "htdemucs_ft", "config": bag.config.to_dict()})
    )
    loaded = Separator(model=bag_folder).model
    assert isinstance(loaded, BagOfModels) and loaded.config == bag.config
    same_weights(loaded, bag)


@pytest.mark.parametrize("nested", [True, False])
def test_folder_with_demucs_kwargs_yaml(tmp_path, nested):
    torch.manual_seed(0)
    source = HTDemucs(TINY).eval()
    kwargs = TINY.to_demucs_kwargs()
    kwargs["segment"] = 1.0  # YAML has no Fraction
    text = yaml.safe_dump({"klass": "demucs.htdemucs.HTDemucs", "kwargs": kwargs} if nested else kwargs)
    folder = write_folder(tmp_path / "hub", source, text)
    model = load_separation_model(folder)
    assert model.config == TINY.replace(segment=1.0) and model.model_name == "music/htdemucs"
    same_weights(model, source)


def test_folder_errors(tmp_path):
    torch.manual_seed(0)
    source = HTDemucs(TINY)
    folder = write_folder(tmp_path / "a", source, "kwargs: {channels: 8, depth: 3, nfft: 512, bogus: 1}\n")
    with pytest.raises(InputError, match=r"config.yaml: demucs HTDemucs: unknown keyword argument 'bogus'"):
        load_separation_model(folder)
    (folder / "config.yaml").write_text("model: music/htdemucs\nconfig: {channels: 16}\n")
    with pytest.raises(CheckpointError, match=r"model.safetensors: weights do not fit music/htdemucs"):
        load_separation_model(folder)
    (folder / "config.yaml").write_text("model: [oops\n")
    with pytest.raises(InputError, match=r"config.yaml: not readable YAML"):
        load_separation_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"has config.yaml but no model.safetensors"):
        load_separation_model(folder)
    empty = tmp_path / "thfiles"
    empty.mkdir()
    (empty / "955717e8-8726e21a.th").write_bytes(b"x")
    with pytest.raises(InputError, match=r"not a model folder .*use -n NAME --repo"):
        load_separation_model(empty)


def test_packages_are_read_without_importing_demucs(write_package, tmp_path):
    """The restricted reader maps ``demucs.htdemucs.HTDemucs`` to a stub: demucs is never imported
    (checked in a fresh interpreter, as this one imported demucs to write the files)."""
    import subprocess
    import sys

    path, _ = write_package(tmp_path / "w", TINY_6S, seed=5, sig="0a0b0c0d")
    code = (
        "import sys\n"
        "from hybrids.apps.core.registry import create_model\n"
        f"model = create_model('music/htdemucs_6s', weights={str(path)!r})\n"
        "assert model.config.sources == ('drums', 'bass', 'other', 'vocals', 'guitar', 'piano')\n"
        "print(sorted(m for m in sys.modules if m == 'demucs' or m.startswith('demucs.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
