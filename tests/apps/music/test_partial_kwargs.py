"""demucs packages whose ``kwargs`` state only some of ``HTDemucs``'s arguments, as a user's own
training code writes them (``HTDemucs(sources=[...], bottom_channels=512, segment=Fraction(39, 5))``
then ``demucs.states.serialize_model``): every argument left out takes demucs 4.1.0's class default
(not the released recipe's), so the file loads strictly and ``separate --weights FILE`` writes the
stems demucs computes from it (``demucs.states.load_model`` + ``demucs.apply.apply_model``, mix
normalised as demucs's ``api.Separator`` does), to 1e-4 of each stem's peak.

The packages are written as ``serialize_model(model, args, half=True)`` (without OmegaConf, which
demucs imports there) and ``save_with_checksum``; the widths are tiny (``channels=8``) so that a
forward takes well under a second, every other size is demucs's default unless a case says so.
"""

from __future__ import annotations

import inspect
import warnings
from fractions import Fraction
from pathlib import Path

import pytest
import soundfile
import torch

from hybrids.apps.cli import main
from hybrids.apps.core.errors import InputError
from hybrids.apps.music.htdemucs import (
    _DEMUCS_DEFAULTS,
    _IGNORED_DEMUCS_KWARGS,
    _UNSUPPORTED_DEMUCS_KWARGS,
    SOURCES_4,
    SOURCES_6,
    HTDemucs,
    HTDemucsConfig,
)
from hybrids.apps.music.weights import config_from_demucs_package, load_demucs_package
from hybrids.datasets.audio import load_audio, save_audio

REL_TOL = 1e-4  # max |ours - demucs| <= REL_TOL * max |demucs| on every stem
TRACK = "karissa_hobbs-lets_go_fishin.ogg"


@pytest.fixture(scope="module")
def demucs():
    pytest.importorskip("demucs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import demucs.apply
        import demucs.htdemucs
        import demucs.states
    return demucs


def build(demucs, perturb, kwargs: dict, seed: int = 0) -> torch.nn.Module:
    """demucs's own ``HTDemucs(**kwargs)`` with visible (perturbed) random weights."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = demucs.htdemucs.HTDemucs(**kwargs)
    return perturb(model, seed + 1)


def write_package(demucs, perturb, folder: Path, kwargs: dict, sig: str, seed: int = 0) -> Path:
    """``save_with_checksum(serialize_model(HTDemucs(**kwargs), ..., half=True), folder/<sig>.th)``."""
    model = build(demucs, perturb, kwargs, seed)
    args, recorded = model._init_args_kwargs  # what demucs's @capture_init saw: only the given kwargs
    assert recorded == kwargs
    package = {
        "klass": model.__class__,
        "args": args,
        "kwargs": recorded,
        "state": demucs.states.get_state(model, None, half=True),
        "training_args": {"seed": seed},
    }
    folder.mkdir(parents=True, exist_ok=True)
    demucs.states.save_with_checksum(package, folder / f"{sig}.th")
    (path,) = folder.glob(f"{sig}-*.th")
    return path


# -- the defaults table --------------------------------------------------------------------------
def test_defaults_table_is_demucs_signature(demucs):
    params = inspect.signature(demucs.htdemucs.HTDemucs.__init__).parameters
    expected = {
        name: tuple(p.default) if isinstance(p.default, list) else p.default
        for name, p in params.items()
        if name not in ("self", "sources")
    }
    assert params["sources"].default is inspect.Parameter.empty
    assert _DEMUCS_DEFAULTS == expected
    for key, value in expected.items():  # same types too (10 is not 10.0 for segment)
        assert type(_DEMUCS_DEFAULTS[key]) is type(value), key


def test_every_demucs_kwarg_is_a_field_unsupported_or_ignored():
    fields = {f for f in HTDemucsConfig().to_dict() if f != "sources"}
    unsupported, ignored = set(_UNSUPPORTED_DEMUCS_KWARGS), set(_IGNORED_DEMUCS_KWARGS)
    assert fields | unsupported | ignored == set(_DEMUCS_DEFAULTS)
    assert not (fields & unsupported or fields & ignored or unsupported & ignored)
    assert all(_UNSUPPORTED_DEMUCS_KWARGS[k] == _DEMUCS_DEFAULTS[k] for k in unsupported)


def test_omitted_kwargs_take_demucs_defaults_not_the_recipe():
    config = HTDemucsConfig.from_demucs_kwargs({"sources": ["drums", "bass", "other", "vocals"]})
    ours, recipe = config.to_dict(), HTDemucsConfig().to_dict()
    differ = {k: (v, ours[k]) for k, v in recipe.items() if ours[k] != v}
    assert differ == {
        "segment": ([39, 5], [10, 1]),
        "dconv_mode": (3, 1),
        "bottom_channels": (512, 0),
        "t_dropout": (0.02, 0.0),
    }
    # a package that states everything (the releases, our own exports) is read as stated
    for preset in HTDemucsConfig.preset_names():
        stated = HTDemucsConfig.from_preset(preset)
        assert HTDemucsConfig.from_demucs_kwargs(stated.to_demucs_kwargs()) == stated


def test_sources_are_required():
    with pytest.raises(InputError, match="'sources' is required"):
        HTDemucsConfig.from_demucs_kwargs({"channels": 8})
    with pytest.raises(InputError, match="sources must be a list of names, got 'drums'"):
        HTDemucsConfig.from_demucs_kwargs({"sources": "drums"})


def test_only_sources_builds_demucs_default_model_strictly(demucs):
    """``HTDemucs(sources=[...])`` at its full default size: same parameter names and shapes."""
    kwargs = {"sources": list(SOURCES_4)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = demucs.htdemucs.HTDemucs(**kwargs)
    ours = HTDemucs(HTDemucsConfig.from_demucs_kwargs(kwargs))
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert ours.segment == reference.segment == 10
    assert ours.segment_length == int(reference.segment * reference.samplerate)


# -- separate --weights FILE against demucs, on real audio -------------------------------------------
CASES = {
    # demucs's defaults but the width and the transformer's depth (a 10 s segment through 5 layers
    # takes ~10 s): nfft 4096, depth 4, dconv_mode 1, no bottom channels, segment 10 s
    "sources": {"sources": list(SOURCES_4), "channels": 8, "t_layers": 1},
    # a user's training code, scaled down (bottom_channels=512 in the recipe)
    "bottom+segment": {
        "sources": list(SOURCES_4),
        "channels": 8,
        "t_layers": 1,
        "bottom_channels": 48,
        "segment": Fraction(39, 5),
    },
    # 6 sources, DConv in encoder and decoder, 5 transformer layers, an int segment shorter than
    # the track (3 chunks)
    "6s dconv_mode=3": {"sources": list(SOURCES_6), "channels": 8, "dconv_mode": 3, "segment": 1},
    # decoder-only DConv, a smaller STFT and transformer
    "dconv_mode=2 small": {
        "sources": list(SOURCES_4),
        "channels": 8,
        "nfft": 512,
        "depth": 3,
        "dconv_mode": 2,
        "t_layers": 2,
        "t_heads": 4,
        "segment": Fraction(1, 2),
    },
}


@pytest.fixture(scope="module")
def track(shared_data, tmp_path_factory):
    """2.5 s of a real song, as a float32 WAV (read back bit-exactly by both sides)."""
    wav, rate = load_audio(shared_data / "audio" / TRACK, offset=30.0, duration=2.5)
    return save_audio(wav, tmp_path_factory.mktemp("track") / "song.wav", rate, bits=32, clip="none")


def read(path: Path) -> torch.Tensor:
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    assert rate == 44100
    return torch.from_numpy(data.T.copy())


def demucs_stems(demucs, path: Path, wav: torch.Tensor) -> dict[str, torch.Tensor]:
    """demucs's separation of ``wav`` with the package at ``path`` (``api.Separator``'s maths, with
    our CLI's defaults but no random shift: shifts=0, split, overlap 0.25, the model's segment)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = demucs.states.load_model(path).eval()
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    with torch.no_grad():
        out = demucs.apply.apply_model(model, ((wav - mean) / std)[None], shifts=0, split=True, overlap=0.25)
    return dict(zip(model.sources, out[0] * std + mean))


@pytest.mark.parametrize("case", list(CASES))
def test_separate_weights_file_matches_demucs(case, demucs, perturb, track, tmp_path, capsys):
    kwargs = CASES[case]
    path = write_package(demucs, perturb, tmp_path / "models", kwargs, sig="0ab1c2d3")
    assert set(load_demucs_package(path)["kwargs"]) == set(kwargs)  # the file states only these
    config = config_from_demucs_package(load_demucs_package(path))
    assert config.sources == tuple(kwargs["sources"])

    out = tmp_path / "out"
    exact = ["--shifts", "0", "--float32", "--clip-mode", "none"]  # no random shift, unrounded stems
    argv = ["music", "separate", "-n", "htdemucs", "--weights", str(path), "-o", str(out), *exact, str(track)]
    assert main(argv) == 0, capsys.readouterr().err
    expected = demucs_stems(demucs, path, read(track))
    written = {p.stem: p for p in out.glob("*/song/*.wav")}
    assert sorted(written) == sorted(kwargs["sources"])
    for name, reference in expected.items():
        ours = read(written[name])
        assert ours.shape == reference.shape
        rel = float((ours - reference).abs().max() / reference.abs().max())
        assert rel <= REL_TOL, (name, rel)


def test_yaml_folder_with_partial_demucs_kwargs(demucs, perturb, tmp_path):
    """A Hugging Face-style folder whose ``config.yaml`` gives partial demucs kwargs: demucs defaults."""
    import yaml
    from safetensors.torch import save_file

    from hybrids.apps.music.loading import load_separation_model

    kwargs = {"sources": list(SOURCES_4), "channels": 8, "bottom_channels": 48, "segment": 2}
    reference = build(demucs, perturb, kwargs)
    folder = tmp_path / "mine"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.yaml").write_text(yaml.safe_dump({"kwargs": kwargs}))
    model = load_separation_model(folder)
    assert (model.config.dconv_mode, model.config.bottom_channels, model.config.segment) == (1, 48, (2, 1))
    state = model.state_dict()
    assert state.keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key
