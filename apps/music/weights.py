"""Official HT Demucs weights and the reader of demucs ``.th`` packages (no demucs import).

A demucs package is ``torch.save({"klass": demucs.htdemucs.HTDemucs, "args": (), "kwargs": {...},
"state": {parameter name: tensor (float16 in the releases)}, "training_args": {...}})``; the file
is named ``<signature>-<first 8 hex of its sha256>.th`` and served from
``https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/`` (demucs ``remote/files.txt``,
``pretrained.py``). It is read by the restricted unpickler with ``fractions.Fraction`` (the
segment) allowed and the model class mapped to an inert stub, so nothing of demucs runs.

Registered here: only files whose full sha256 is known (``music/htdemucs``). The other released
HT Demucs files (``htdemucs_6s``: ``5c90dfd2-34c22ccb.th``; ``htdemucs_ft``: ``f7e0c4bc-ba3fe64a.th``,
``d12395a8-e57c48e6.th``, ``92cfc3b6-ef3bcb9c.th``, ``04573f0d-f3cf25b2.th``) can be loaded with
:func:`model_from_demucs_package` (one model) or :func:`bag_from_demucs_packages` (the four
``htdemucs_ft`` files) from local copies.
"""

from __future__ import annotations

import fractions
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hybrids.apps.core.errors import CheckpointError
from hybrids.apps.core.restricted_pickle import PickleStub, load_pickled_checkpoint
from hybrids.apps.core.weights import WeightsEntry, register_weights
from hybrids.apps.music.bag import BagOfModels, HTDemucsBagConfig, identity_weights
from hybrids.apps.music.htdemucs import SOURCES_4, HTDemucs, HTDemucsConfig

__all__ = [
    "DEMUCS_CLASS",
    "PICKLE_GLOBALS",
    "PICKLE_STUBS",
    "ROOT_URL",
    "bag_from_demucs_packages",
    "config_from_demucs_package",
    "demucs_package_state_dict",
    "load_demucs_package",
    "model_from_demucs_package",
]

ROOT_URL = "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/"
DEMUCS_CLASS = "demucs.htdemucs.HTDemucs"
PICKLE_GLOBALS: Mapping[str, Any] = {"fractions.Fraction": fractions.Fraction}
PICKLE_STUBS = (DEMUCS_CLASS,)

LICENSE = (
    "MIT: demucs 4.1.0 is released under the MIT license (its LICENSE and README); no separate "
    "licence is stated for the weights. They were trained on MUSDB18-HQ (whose licence is for "
    "non-commercial research) plus 800 in-house songs: check the data terms before commercial use."
)


def _check_package(package: Any) -> dict[str, Any]:
    if not isinstance(package, dict) or not isinstance(package.get("state"), dict):
        raise CheckpointError("not a demucs model package (expected a dict with 'klass', 'kwargs', 'state')")
    klass = package.get("klass")
    if klass is not None:
        name = getattr(klass, "qualified_name", None) if isinstance(klass, type) else None
        if not (isinstance(klass, type) and issubclass(klass, PickleStub)) or name != DEMUCS_CLASS:
            raise CheckpointError(f"demucs package of {name or klass!r}, expected {DEMUCS_CLASS}")
    if package["state"].get("__quantized"):
        raise CheckpointError("DiffQ-quantized demucs packages are not supported")
    return package


def demucs_package_state_dict(package: Any) -> dict[str, torch.Tensor]:
    """The package's ``state`` as a float32 state dict (demucs names = our names)."""
    state = _check_package(package)["state"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError("demucs package 'state' is not a dict of tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def config_from_demucs_package(package: Any) -> HTDemucsConfig:
    """The :class:`HTDemucsConfig` of a package's ``kwargs`` (``args`` must be empty)."""
    package = _check_package(package)
    if package.get("args"):
        raise CheckpointError("demucs package with positional 'args' is not supported")
    return HTDemucsConfig.from_demucs_kwargs(dict(package.get("kwargs") or {}))


def load_demucs_package(path: str | Path) -> dict[str, Any]:
    """Read a demucs ``.th`` package with the restricted unpickler (``klass`` becomes a stub)."""
    return _check_package(
        load_pickled_checkpoint(path, allowed_globals=PICKLE_GLOBALS, stub_classes=PICKLE_STUBS)
    )


def model_from_demucs_package(path: str | Path) -> HTDemucs:
    """Build the :class:`HTDemucs` a demucs package describes and load its weights strictly."""
    from hybrids.apps.core.weights import load_into

    package = load_demucs_package(path)
    model = HTDemucs(config_from_demucs_package(package))
    load_into(model, demucs_package_state_dict(package), path)
    return model.eval()


def bag_from_demucs_packages(
    paths: Sequence[str | Path], bag_weights: Sequence[Sequence[float]] | None = None
) -> BagOfModels:
    """A :class:`BagOfModels` from one demucs package per member, loaded strictly.

    ``bag_weights`` defaults to the identity when there is one package per source (the
    ``htdemucs_ft`` layout: pass its four files in the order of ``remote/htdemucs_ft.yaml``,
    ``f7e0c4bc``, ``d12395a8``, ``92cfc3b6``, ``04573f0d``), else to all ones.
    """
    from hybrids.apps.core.weights import load_into

    if not paths:
        raise CheckpointError("a bag needs at least one demucs package")
    packages = [load_demucs_package(path) for path in paths]
    configs = [config_from_demucs_package(package) for package in packages]
    for path, config in zip(paths[1:], configs[1:]):
        if config != configs[0]:
            raise CheckpointError(f"{path}: its model differs from the first package's; cannot bag them")
    n_sources = len(configs[0].sources)
    if bag_weights is None and len(paths) == n_sources:
        bag_weights = identity_weights(n_sources)
    bag_config = HTDemucsBagConfig.from_dict(
        {
            **configs[0].to_dict(),
            "num_models": len(paths),
            "bag_weights": None if bag_weights is None else [list(row) for row in bag_weights],
        }
    )
    bag = BagOfModels(bag_config)
    for index, (path, package) in enumerate(zip(paths, packages)):
        load_into(bag.models[index], demucs_package_state_dict(package), path)
    return bag.eval()


HTDEMUCS = register_weights(
    WeightsEntry(
        name="music/htdemucs",
        url=ROOT_URL + "955717e8-8726e21a.th",
        sha256="8726e21a993978c7ba086d3872e7608d7d5bfca646ca4aca459ffda844faa8b4",
        license=LICENSE,
        preprocessing={
            "samplerate": 44100,
            "audio_channels": 2,
            "segment": [39, 5],  # seconds, 39/5 = 7.8 s
            "sources": list(SOURCES_4),
        },
        description="HT Demucs (Rouard et al. 2023), 4 sources, MUSDB18-HQ + 800 songs, 9.00 dB SDR",
        pickle_globals=PICKLE_GLOBALS,
        pickle_stubs=PICKLE_STUBS,
        to_state_dict=demucs_package_state_dict,
    )
)
