"""HT Demucs against the reference implementation (PyPI demucs 4.1.0) on identical weights."""

from __future__ import annotations

import json
import os
import warnings
from fractions import Fraction

import pytest
import torch

from hybrids.apps.core.errors import CheckpointError, InputError, UnsafeCheckpointError, WeightsError
from hybrids.apps.core.registry import count_parameters, create_model, list_models
from hybrids.apps.core.weights import get_weights, load_into, load_state_dict
from hybrids.apps.music.bag import BagOfModels, HTDemucsBagConfig, identity_weights
from hybrids.apps.music.htdemucs import SOURCES_6, HTDemucs, HTDemucsConfig
from hybrids.apps.music.weights import (
    bag_from_demucs_packages,
    config_from_demucs_package,
    load_demucs_package,
    model_from_demucs_package,
)

TOL = 1e-5
TINY = HTDemucsConfig.from_preset("tiny")


def _run(model, mix):
    with torch.no_grad():
        return model(mix)


def _max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# -- registry and parameter counts ---------------------------------------------------------------
def test_models_are_registered():
    assert {"music/htdemucs", "music/htdemucs_6s", "music/htdemucs_ft"} <= set(list_models("music"))
    assert get_weights("music/htdemucs").filename == "955717e8-8726e21a.th"


def test_parameter_count_of_released_htdemucs():
    assert count_parameters("music/htdemucs") == 41_984_456


@pytest.mark.parametrize("preset", ["htdemucs", "htdemucs_6s", "tiny"])
def test_parameter_count_and_names_equal_demucs(demucs_htdemucs, preset):
    config = HTDemucsConfig.from_preset(preset)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = demucs_htdemucs.HTDemucs(**config.to_demucs_kwargs())
        ours = HTDemucs(config)
    ref_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes
    name = {"tiny": "music/htdemucs"}.get(preset, f"music/{preset}")
    assert count_parameters(name, preset=preset) == sum(p.numel() for p in reference.parameters())


def test_tiny_preset_is_small_and_fast():
    model = create_model("music/htdemucs", preset="tiny").eval()
    assert 1_000 <= sum(p.numel() for p in model.parameters()) <= 300_000
    out = _run(model, torch.randn(1, 2, 44100))
    assert out.shape == (1, 4, 2, 44100) and torch.isfinite(out).all()


# -- numerical parity ------------------------------------------------------------------------------
PARITY_CASES = {
    "tiny": ({}, 1, 44100),
    "tiny-odd-length-batch2": ({}, 2, 30001),
    "merge-branches": ({"nfft": 1024, "depth": 4, "bottom_channels": 0, "t_layers": 2}, 1, 20000),
    "post-norm-cross-first-groupnorms": (
        {
            "t_cross_first": True,
            "t_group_norm": 1,
            "t_norm_in": False,
            "t_norm_in_group": 1,
            "t_layers": 4,
            "t_norm_first": False,
            "use_train_segment": False,
        },
        1,
        5001,
    ),
    "no-transformer-time-only-levels": (
        {
            "nfft": 1024,
            "depth": 5,
            "t_layers": 0,
            "bottom_channels": 0,
            "dconv_mode": 1,
            "norm_starts": 0,
            "norm_groups": 2,
            "rewrite": False,
            "use_train_segment": False,
        },
        1,
        7777,
    ),
    "6-sources-mono-short-input": ({"sources": SOURCES_6, "audio_channels": 1}, 1, 100),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_with_demucs_small_configs(model_pair, case):
    overrides, batch, length = PARITY_CASES[case]
    config = TINY.replace(**overrides)
    reference, ours = model_pair(config)
    mix = torch.randn(batch, config.audio_channels, length)
    expected = _run(reference, mix)
    assert expected.shape == (batch, len(config.sources), config.audio_channels, length)
    assert expected.abs().max() > 0.1  # every branch contributes (weights were perturbed)
    assert _max_diff(_run(ours, mix), expected) < TOL


@pytest.mark.parametrize("length", [1, 100, 127, 128, 129, 1001, 4097])
def test_odd_lengths_match_demucs_without_segment_padding(model_pair, length):
    # use_train_segment=False: the model pads internally to whole hops and reflects short inputs.
    config = TINY.replace(use_train_segment=False)
    reference, ours = model_pair(config)
    mix = torch.randn(1, 2, length)
    expected = _run(reference, mix)
    assert expected.shape == (1, 4, 2, length)
    assert _max_diff(_run(ours, mix), expected) < TOL


@pytest.mark.parametrize("length", [1000, 4097])
def test_train_mode_uses_the_input_length_like_demucs(model_pair, length):
    config = TINY.replace(t_dropout=0.0)
    reference, ours = model_pair(config)
    reference.train(), ours.train()
    mix = torch.randn(2, 2, length)
    expected = _run(reference, mix)
    assert _max_diff(_run(ours, mix), expected) < TOL
    assert ours.segment == Fraction(1)  # unlike demucs, the training length is not recorded


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["htdemucs", "htdemucs_6s"])
def test_parity_with_demucs_released_size(model_pair, preset):
    reference, ours = model_pair(HTDemucsConfig.from_preset(preset))
    mix = torch.randn(1, 2, 2 * 44100 + 17)  # padded to the 7.8 s segment inside the model
    expected = _run(reference, mix)
    assert _max_diff(_run(ours, mix), expected) < TOL


def test_positional_embeddings_equal_demucs(demucs_htdemucs):
    from demucs import transformer

    from hybrids.shared_blocks.positional import sinusoidal_embedding_1d, sinusoidal_embedding_2d

    ref_1d = transformer.create_sin_embedding(37, 32, max_period=10000.0)[:, 0]
    assert torch.equal(sinusoidal_embedding_1d(37, 32, max_period=10000.0), ref_1d)
    ref_2d = transformer.create_2d_sin_embedding(32, 5, 11, max_period=10000.0)[0]
    assert torch.equal(sinusoidal_embedding_2d(32, 5, 11, 10000.0), ref_2d)


# -- behaviour ------------------------------------------------------------------------------------
def test_eval_pads_to_the_segment_and_refuses_longer_inputs():
    model = HTDemucs(TINY).eval()
    assert model.segment_length == 44100 and model.valid_length(1000) == 44100
    with pytest.raises(InputError, match="longer than the model's segment"):
        _run(model, torch.randn(1, 2, 44101))
    with pytest.raises(InputError, match=r"\(batch, 2, samples\)"):
        _run(model, torch.randn(1, 1, 1000))


def test_gradient_reaches_every_parameter():
    model = HTDemucs(TINY).train()
    model(torch.randn(2, 2, 3000)).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


# -- config ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", HTDemucsConfig.preset_names())
def test_config_json_round_trip(preset):
    config = HTDemucsConfig.from_preset(preset)
    again = HTDemucsConfig.from_dict(json.loads(config.to_json()))
    assert again == config and isinstance(again.segment, tuple) and isinstance(again.sources, tuple)
    assert HTDemucsConfig.from_demucs_kwargs(config.to_demucs_kwargs()) == config


def test_config_segment_and_validation():
    assert HTDemucsConfig().segment_seconds == Fraction(39, 5)
    assert HTDemucsConfig().segment_length == 343_980
    assert HTDemucsConfig(segment=7.8).segment_length == int(7.8 * 44100)
    assert HTDemucsConfig.from_dict({"segment": 10}).segment == 10.0
    with pytest.raises(InputError, match="cac=True"):
        HTDemucsConfig.from_dict({"cac": False})
    with pytest.raises(InputError, match="multiple of 4 and of t_heads"):
        TINY.replace(t_heads=5)
    with pytest.raises(InputError, match="does not match the STFT hop"):
        TINY.replace(nfft=512, depth=4)
    with pytest.raises(InputError, match="wiener_iters=1 is not supported"):
        HTDemucsConfig.from_demucs_kwargs({"wiener_iters": 1})
    with pytest.raises(InputError, match="unknown keyword argument 'bogus'"):
        HTDemucsConfig.from_demucs_kwargs({"bogus": 1})


# -- demucs .th packages through the weights path ------------------------------------------------
class _RunsCode:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _demucs_package(demucs_htdemucs, perturb, config):
    kwargs = config.to_demucs_kwargs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = perturb(demucs_htdemucs.HTDemucs(**kwargs)).eval()
    state = {k: v.half() for k, v in reference.state_dict().items()}  # as demucs releases them
    reference.load_state_dict(state)  # the reference now holds the float16-rounded weights too
    package = {
        "klass": demucs_htdemucs.HTDemucs,
        "args": (),
        "kwargs": kwargs,
        "state": state,
        "training_args": {"dset": {"segment": 7.8}, "optim": {"lr": 3e-4}, "seed": 42},
    }
    return reference, package


def test_demucs_package_loads_through_the_restricted_weights_path(tmp_path, demucs_htdemucs, perturb):
    reference, package = _demucs_package(demucs_htdemucs, perturb, TINY)
    path = tmp_path / "custom-00000000.th"
    torch.save(package, path)

    state = load_state_dict(path, get_weights("music/htdemucs"))
    assert all(v.dtype == torch.float32 for v in state.values())
    ours = HTDemucs(TINY).eval()
    load_into(ours, state, path)  # strict
    mix = torch.randn(1, 2, 20000)
    expected = _run(reference, mix)
    assert _max_diff(_run(ours, mix), expected) < TOL

    loaded = load_demucs_package(path)
    assert loaded["kwargs"]["segment"] == Fraction(1) and config_from_demucs_package(loaded) == TINY
    assert _max_diff(_run(model_from_demucs_package(path), mix), expected) < TOL


def test_tampered_demucs_package_is_refused(tmp_path, demucs_htdemucs, perturb):
    _, package = _demucs_package(demucs_htdemucs, perturb, TINY.replace(t_layers=0))
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.th"
    torch.save({**package, "payload": _RunsCode(sentinel)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.th: refused.*system"):
        load_state_dict(path, get_weights("music/htdemucs"))
    with pytest.raises(UnsafeCheckpointError):
        load_demucs_package(path)
    assert not sentinel.exists()

    from demucs.hdemucs import HDemucs  # another class than the one the entry allows

    torch.save({**package, "klass": HDemucs}, tmp_path / "other.th")
    with pytest.raises(UnsafeCheckpointError, match="demucs.hdemucs.HDemucs"):
        load_demucs_package(tmp_path / "other.th")
    torch.save({"state": {"__quantized": True}}, tmp_path / "quantized.th")
    with pytest.raises(CheckpointError, match="quantized"):
        load_state_dict(tmp_path / "quantized.th", get_weights("music/htdemucs"))


def test_official_weights_offline_and_corrupt_cache(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match=r"955717e8-8726e21a\.th.*dl\.fbaipublicfiles\.com.*--weights"):
        create_model("music/htdemucs", weights="official", device="meta")
    monkeypatch.setenv("HYBRIDS_CACHE", str(tmp_path))
    (tmp_path / "955717e8-8726e21a.th").write_bytes(b"not the official file")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        create_model("music/htdemucs", weights="official", device="meta")


# -- bag of models (htdemucs_ft) --------------------------------------------------------------------
def test_bag_matches_demucs_apply_model(tmp_path, demucs_htdemucs, perturb):
    from demucs.apply import BagOfModels as RefBag
    from demucs.apply import apply_model

    weights = ((1.0, 0.5, 0.0, 2.0), (0.0, 0.5, 1.0, 1.0))
    config = HTDemucsBagConfig.from_preset("tiny", bag_weights=weights)
    member = config.member_config()
    references = []
    for seed in range(config.num_models):
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            references.append(perturb(demucs_htdemucs.HTDemucs(**member.to_demucs_kwargs()), seed + 1))
    reference = RefBag(references, weights=[list(w) for w in weights])
    ours = BagOfModels(config).eval()
    load_into(ours, reference.state_dict(), "demucs bag")
    mix = torch.randn(1, 2, member.segment_length)  # apply_model pads nothing at this length
    expected = apply_model(reference, mix, shifts=0, split=False, progress=False)
    assert _max_diff(_run(ours, mix), expected) < TOL

    # the same bag from one demucs package per member (the htdemucs_ft release layout)
    paths = []
    for index, sub in enumerate(references):
        paths.append(tmp_path / f"member{index}.th")
        kwargs = member.to_demucs_kwargs()
        torch.save({"klass": type(sub), "args": (), "kwargs": kwargs, "state": sub.state_dict()}, paths[-1])
    from_packages = bag_from_demucs_packages(paths, weights)
    assert from_packages.config == config
    assert _max_diff(_run(from_packages, mix), expected) < TOL
    four = bag_from_demucs_packages([paths[0]] * 4)
    assert four.config.bag_weights == identity_weights(4) and four.config.num_models == 4


def test_htdemucs_ft_config():
    config = HTDemucsBagConfig.from_preset("htdemucs_ft")
    assert config.num_models == 4 and config.bag_weights[2] == (0.0, 0.0, 1.0, 0.0)
    assert HTDemucsBagConfig.from_dict(json.loads(config.to_json())) == config
    assert count_parameters("music/htdemucs_ft") == 4 * 41_984_456
    with pytest.raises(InputError, match="bag_weights must be 4 rows"):
        HTDemucsBagConfig.from_dict({"bag_weights": [[1.0] * 4]})
