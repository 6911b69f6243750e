"""Parity with demucs 4.1.0 through the official weights path, on real audio.

The weights are written the way demucs writes its releases: ``HTDemucs(**kwargs)`` (demucs's own
class, random weights made visible by ``perturb``), ``states.get_state(model, None, half=True)``
(float16, as ``serialize_model(half=True)``), the package dict ``{klass, args, kwargs, state,
training_args}`` and ``states.save_with_checksum`` (``<sig>-<sha256 prefix>.th``); a bag is a
``<name>.yaml`` beside them, as ``remote/htdemucs_ft.yaml``. demucs loads them with
``demucs.api.Separator(model=..., repo=folder)`` (its local repository, checksums verified) and
separates; we load the same files with our restricted reader and separate with our ``Separator``.
Both normalise the mix the same way (demucs 4.1.0's ``separate.py`` goes through
``api.Separator.separate_tensor``) and use the same shift offsets: demucs's ``random.randint``
is patched to return the offsets ours draws from its seed. Every stem must agree to 1e-4 of its
peak. ``tiny`` configurations run by default; the released sizes are ``slow``.

Also: the official ``.th`` reader refuses packages whose pickle references anything outside its
allow-list (a payload calling ``os.system``, ``builtins.eval`` or ``subprocess.Popen``; a
``klass`` other than demucs's ``HTDemucs``), through every entry point, and runs none of it.
"""

from __future__ import annotations

import fractions
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from hybrids.apps.core.errors import CheckpointError, UnsafeCheckpointError
from hybrids.apps.core.registry import create_model
from hybrids.apps.music.bag import HTDemucsBagConfig
from hybrids.apps.music.htdemucs import SOURCES_6, HTDemucsConfig
from hybrids.apps.music.separate import Separator, draw_shift_offsets
from hybrids.apps.music.weights import (
    bag_from_demucs_packages,
    load_demucs_package,
    model_from_demucs_package,
)
from hybrids.datasets.audio import load_audio

TRACK = "kevin_macleod-vibe_ace.ogg"
REL_TOL = 1e-4  # max |ours - demucs| <= REL_TOL * max |demucs| on every stem
SEED = 0  # seed of our shift offsets (demucs is fed the same offsets)


# -- the official layout, written by demucs's own code ------------------------------------------
@pytest.fixture(scope="module")
def demucs_modules():
    pytest.importorskip("demucs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import demucs.api
        import demucs.apply
        import demucs.htdemucs
        import demucs.states
    return demucs


def write_release(demucs, folder: Path, config: HTDemucsConfig, seed: int, sig: str, perturb) -> Path:
    """One demucs package as the releases are made; returns ``folder/<sig>-<sha256[:8]>.th``."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = demucs.htdemucs.HTDemucs(**config.to_demucs_kwargs())
    perturb(model, seed + 1)
    args, kwargs = model._init_args_kwargs  # recorded by demucs's @capture_init
    package = {  # demucs.states.serialize_model(model, training_args, half=True), without OmegaConf
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": demucs.states.get_state(model, None, half=True),
        "training_args": {"dset": {"segment": 11, "shift": 1}, "optim": {"lr": 3e-4}, "seed": seed},
    }
    demucs.states.save_with_checksum(package, folder / f"{sig}.th")
    (path,) = folder.glob(f"{sig}-*.th")
    assert all(v.dtype == torch.float16 for v in package["state"].values())
    return path


def write_bag(folder: Path, name: str, signatures: list[str], weights) -> None:
    rows = ",\n".join("  [" + ", ".join(f"{w:.1f}" for w in row) + "]" for row in weights)
    (folder / f"{name}.yaml").write_text(f"models: {signatures!r}\nweights: [\n{rows},\n]\n")


def demucs_separate(demucs, monkeypatch, name: str, repo: Path, wav, rate, draws: int):
    """``demucs.api.Separator(model=name, repo=repo).separate_tensor`` with our shift offsets."""
    offsets = iter(draw_shift_offsets(draws, rate // 2, seed=SEED))
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(demucs.apply.random, "randint", lambda a, b: next(offsets))
        separator = demucs.api.Separator(
            model=name, repo=repo, device="cpu", shifts=1, overlap=0.25, split=True, jobs=0, progress=False
        )
        _, stems = separator.separate_tensor(wav, rate)
    assert next(offsets, None) is None, "demucs drew fewer shift offsets than expected"
    return stems


def ours_separate(model, wav, rate):
    return Separator(model, shifts=1, overlap=0.25, split=True, seed=SEED).separate_tensor(wav, rate)


def compare(ours: dict, expected: dict, label: str) -> dict[str, float]:
    assert list(ours) == list(expected)
    rel = {}
    for name, reference in expected.items():
        assert ours[name].shape == reference.shape
        rel[name] = float((ours[name] - reference).abs().max() / reference.abs().max())
    print(f"\n{label}: max|ours - demucs| / peak: " + ", ".join(f"{k} {v:.2e}" for k, v in rel.items()))
    assert all(v <= REL_TOL for v in rel.values()), rel
    return rel


def excerpt(shared_data, seconds: float, offset: float = 0.0):
    return load_audio(shared_data / "audio" / TRACK, offset=offset, duration=seconds)


# -- tiny configurations (default suite) ----------------------------------------------------------
def test_tiny_release_separates_like_demucs(demucs_modules, shared_data, tmp_path, monkeypatch, perturb):
    config = HTDemucsConfig.from_preset("tiny")
    path = write_release(demucs_modules, tmp_path, config, seed=0, sig="7e57a000", perturb=perturb)
    wav, rate = excerpt(shared_data, 30.0)
    expected = demucs_separate(demucs_modules, monkeypatch, "7e57a000", tmp_path, wav, rate, draws=1)

    ours = model_from_demucs_package(path)
    assert ours.config == config
    compare(ours_separate(ours, wav, rate), expected, "tiny htdemucs, 30 s")
    # the registry path reads the same file into the same weights
    registry = create_model("music/htdemucs", preset="tiny", weights=path)
    for key, value in ours.state_dict().items():
        assert torch.equal(registry.state_dict()[key], value), key


def test_tiny_6_source_release_separates_like_demucs(
    demucs_modules, shared_data, tmp_path, monkeypatch, perturb
):
    config = HTDemucsConfig.from_preset("tiny", sources=SOURCES_6)
    path = write_release(demucs_modules, tmp_path, config, seed=3, sig="7e57a006", perturb=perturb)
    wav, rate = excerpt(shared_data, 8.0, offset=20.0)
    expected = demucs_separate(demucs_modules, monkeypatch, "7e57a006", tmp_path, wav, rate, draws=1)
    assert list(expected) == list(SOURCES_6)
    compare(ours_separate(model_from_demucs_package(path), wav, rate), expected, "tiny htdemucs_6s, 8 s")


def test_tiny_per_source_bag_separates_like_demucs(
    demucs_modules, shared_data, tmp_path, monkeypatch, perturb
):
    """``htdemucs_ft``'s layout: four models, one per source, one-hot bag weights."""
    member = HTDemucsConfig.from_preset("tiny")
    signatures = [f"7e57b00{k}" for k in range(4)]
    paths = [
        write_release(demucs_modules, tmp_path, member, seed=10 + k, sig=sig, perturb=perturb)
        for k, sig in enumerate(signatures)
    ]
    identity = [[1.0 if i == k else 0.0 for i in range(4)] for k in range(4)]
    write_bag(tmp_path, "tiny_ft", signatures, identity)
    wav, rate = excerpt(shared_data, 5.0, offset=40.0)
    expected = demucs_separate(demucs_modules, monkeypatch, "tiny_ft", tmp_path, wav, rate, draws=4)

    bag = bag_from_demucs_packages(paths)  # identity weights by default for one model per source
    assert bag.config == HTDemucsBagConfig.from_preset("tiny", num_models=4, bag_weights=identity)
    compare(ours_separate(bag, wav, rate), expected, "tiny 4-model bag, 5 s")


# -- released sizes (slow) ------------------------------------------------------------------------
@pytest.mark.slow
def test_htdemucs_release_separates_like_demucs(demucs_modules, shared_data, tmp_path, monkeypatch, perturb):
    """Released htdemucs configuration, 30 s, loaded by name + --weights as users do."""
    path = write_release(demucs_modules, tmp_path, HTDemucsConfig(), seed=0, sig="955717e8", perturb=perturb)
    wav, rate = excerpt(shared_data, 30.0)
    expected = demucs_separate(demucs_modules, monkeypatch, "955717e8", tmp_path, wav, rate, draws=1)
    separator = Separator("htdemucs", weights=path, shifts=1, overlap=0.25, seed=SEED)
    compare(separator.separate_tensor(wav, rate), expected, "htdemucs, 30 s")


@pytest.mark.slow
def test_htdemucs_6s_release_separates_like_demucs(
    demucs_modules, shared_data, tmp_path, monkeypatch, perturb
):
    config = HTDemucsConfig.from_preset("htdemucs_6s")
    path = write_release(demucs_modules, tmp_path, config, seed=1, sig="5c90dfd2", perturb=perturb)
    wav, rate = excerpt(shared_data, 30.0)
    expected = demucs_separate(demucs_modules, monkeypatch, "5c90dfd2", tmp_path, wav, rate, draws=1)
    compare(ours_separate(model_from_demucs_package(path), wav, rate), expected, "htdemucs_6s, 30 s")


@pytest.mark.slow
def test_htdemucs_ft_bag_separates_like_demucs(demucs_modules, shared_data, tmp_path, monkeypatch, perturb):
    signatures = ["f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d"]  # remote/htdemucs_ft.yaml
    paths = [
        write_release(demucs_modules, tmp_path, HTDemucsConfig(), seed=20 + k, sig=sig, perturb=perturb)
        for k, sig in enumerate(signatures)
    ]
    identity = [[1.0 if i == k else 0.0 for i in range(4)] for k in range(4)]
    write_bag(tmp_path, "htdemucs_ft", signatures, identity)
    wav, rate = excerpt(shared_data, 30.0)
    expected = demucs_separate(demucs_modules, monkeypatch, "htdemucs_ft", tmp_path, wav, rate, draws=4)
    compare(ours_separate(bag_from_demucs_packages(paths), wav, rate), expected, "htdemucs_ft bag, 30 s")


# -- a 6-source release through the registry --------------------------------------------------------
def test_6_source_release_loads_through_the_registry(demucs_modules, tmp_path, perturb):
    """``music/htdemucs_6s`` reads a user's ``.th`` with the demucs allow-list, builds the package's
    own configuration (tiny, not the preset) and loads it strictly; ``music/htdemucs`` does too."""
    config = HTDemucsConfig.from_preset("tiny", sources=SOURCES_6)
    path = write_release(demucs_modules, tmp_path, config, seed=3, sig="7e57a006", perturb=perturb)
    expected = model_from_demucs_package(path)
    for name in ("music/htdemucs_6s", "music/htdemucs"):
        model = create_model(name, weights=path)
        assert model.config == config
        for key, value in expected.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
    # an explicit preset still wins, and then the file must fit it
    model = create_model("music/htdemucs_6s", preset="tiny", sources=SOURCES_6, weights=path)
    assert model.config.sources == SOURCES_6
    with pytest.raises(CheckpointError, match=r"7e57a006-.*\.th: weights do not fit music/htdemucs_6s"):
        create_model("music/htdemucs_6s", preset="tiny", weights=path)


# -- hostile packages -------------------------------------------------------------------------------
class _Calls:
    """Pickles as ``func(*args)``: a real unpickler would call it while loading."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _hostile(kind: str, sentinel: Path, package: dict) -> dict:
    touch = f"open({str(sentinel)!r}, 'w').close()"
    if kind == "os.system payload":
        return {**package, "payload": _Calls(os.system, f"touch {sentinel}")}
    if kind == "eval payload":
        return {**package, "payload": _Calls(eval, touch)}
    if kind == "Popen payload":
        return {**package, "payload": _Calls(subprocess.Popen, ["touch", str(sentinel)])}
    if kind == "klass eval":
        return {**package, "klass": eval, "args": (touch,), "kwargs": {}}
    if kind == "klass Popen":
        return {**package, "klass": subprocess.Popen, "args": (["touch", str(sentinel)],), "kwargs": {}}
    raise AssertionError(kind)


HOSTILE = ["os.system payload", "eval payload", "Popen payload", "klass eval", "klass Popen"]
GLOBAL_IN_MESSAGE = {  # as the pickle spells them (protocol 2 writes subprocess.Popen as commands.Popen)
    "os.system payload": r"(posix|os)\.system",
    "eval payload": r"(builtins\.)?eval",
    "Popen payload": r"(subprocess|commands)\.Popen",
    "klass eval": r"(builtins\.)?eval",
    "klass Popen": r"(subprocess|commands)\.Popen",
}


@pytest.fixture
def tiny_release(demucs_modules, tmp_path, perturb):
    """A valid tiny package, as the dict demucs wrote, to tamper with."""
    folder = tmp_path / "release"
    folder.mkdir()
    path = write_release(
        demucs_modules, folder, HTDemucsConfig.from_preset("tiny"), seed=0, sig="7e57a000", perturb=perturb
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        package = torch.load(path, weights_only=False)  # our own file, written just above
    return package


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_package_is_refused_everywhere_and_runs_nothing(
    tiny_release, tmp_path, kind, shared_data, capsys
):
    from hybrids.apps.cli import main

    sentinel = tmp_path / "pwned"
    path = tmp_path / "955717e8-00000000.th"  # not the official name: no hash check hides the refusal
    torch.save(_hostile(kind, sentinel, tiny_release), path)
    pattern = GLOBAL_IN_MESSAGE[kind]
    for load in (
        load_demucs_package,
        model_from_demucs_package,
        lambda p: bag_from_demucs_packages([p]),
        lambda p: create_model("music/htdemucs", preset="tiny", weights=p),
        lambda p: Separator("htdemucs", weights=p),
    ):
        with pytest.raises(UnsafeCheckpointError, match=rf"{path.name}: refused to unpickle.*{pattern}"):
            load(path)
    track = shared_data / "audio" / "sorohanro-solo_trumpet_06.ogg"
    code = main(
        ["-q", "music", "separate", "-n", "htdemucs", "--weights", str(path), "-o", str(tmp_path), str(track)]
    )
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "refused to unpickle" in err[0], err
    assert not sentinel.exists()
    assert not (tmp_path / "htdemucs").exists()


def test_package_of_another_allowed_class_is_refused(tiny_release, tmp_path):
    """A ``klass`` the unpickler may build (``fractions.Fraction``) is still not a demucs model."""
    path = tmp_path / "other.th"
    torch.save({**tiny_release, "klass": fractions.Fraction}, path)
    with pytest.raises(
        CheckpointError, match=r"demucs package of .*Fraction.*expected demucs\.htdemucs\.HTDemucs"
    ):
        model_from_demucs_package(path)
