"""Official HT Demucs weights, and the readers of demucs ``.th`` packages and ``--repo`` folders
(no demucs import).

A demucs package is ``torch.save({"klass": demucs.htdemucs.HTDemucs, "args": (), "kwargs": {...},
"state": {parameter name: tensor (float16 in the releases)}, "training_args": {...}})``; the file
is named ``<signature>-<first 8 hex of its sha256>.th`` and served from
``https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/`` (demucs ``remote/files.txt``,
``pretrained.py``). It is read by the restricted unpickler with ``fractions.Fraction`` (the
segment) allowed and the model class mapped to an inert stub, so nothing of demucs runs. The model
is built from the package's own ``kwargs`` (:func:`config_from_demucs_package`), not from a preset;
as in demucs, a kwarg the package leaves out takes ``HTDemucs``'s class default (a user's training
code may state only a few; the releases state them all).

Registered weights (``hybrids models``/``create_model(name, weights="official")``):

====================  =========================================================================
``music/htdemucs``     ``955717e8-8726e21a.th``
``music/htdemucs_6s``  ``5c90dfd2-34c22ccb.th``
``music/htdemucs_ft``  a bag of four files, in the order of demucs's ``remote/htdemucs_ft.yaml``
                       (model ``k`` alone gives source ``k``): ``f7e0c4bc-ba3fe64a.th`` (drums),
                       ``d12395a8-e57c48e6.th`` (bass), ``92cfc3b6-ef3bcb9c.th`` (other),
                       ``04573f0d-f3cf25b2.th`` (vocals); registered as ``music/htdemucs_ft/<source>``
====================  =========================================================================

A demucs ``--repo`` folder (:func:`load_demucs_repo_model`) holds ``<signature>-<sha8>.th`` files and
``<name>.yaml`` bag descriptions (``models: [signatures]``, optional ``weights`` and ``segment``),
as demucs writes and reads them.
"""

from __future__ import annotations

import fractions
import hashlib
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from hybrids.apps.core.errors import CheckpointError, InputError, WeightsError
from hybrids.apps.core.restricted_pickle import PickleStub, load_pickled_checkpoint
from hybrids.apps.core.weights import WeightsEntry, register_weights
from hybrids.apps.music.bag import BagOfModels, HTDemucsBagConfig, identity_weights
from hybrids.apps.music.htdemucs import SOURCES_4, SOURCES_6, HTDemucs, HTDemucsConfig

__all__ = [
    "DEMUCS_CLASS",
    "LICENSE",
    "PICKLE_GLOBALS",
    "PICKLE_STUBS",
    "ROOT_URL",
    "bag_config_from_demucs_packages",
    "bag_from_demucs_packages",
    "bag_state_dict_from_demucs_packages",
    "config_from_demucs_package",
    "demucs_package_state_dict",
    "find_demucs_files",
    "load_demucs_package",
    "load_demucs_repo_model",
    "model_from_demucs_package",
    "preprocessing_of",
    "read_bag_description",
]

ROOT_URL = "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/"
DEMUCS_CLASS = "demucs.htdemucs.HTDemucs"
PICKLE_GLOBALS: Mapping[str, Any] = {"fractions.Fraction": fractions.Fraction}
PICKLE_STUBS = (DEMUCS_CLASS,)

LICENSE = (
    "for research / non-commercial use. demucs's code is MIT, but no licence is stated for these "
    "weights; they were trained on MUSDB18-HQ (licensed for non-commercial research only) plus 800 "
    "in-house songs, so treat them as research / non-commercial. hybrids never bundles them."
)


# -- one demucs package ------------------------------------------------------------------------
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
    """The :class:`HTDemucsConfig` of a package's ``kwargs`` (``args`` must be empty; a kwarg left
    out takes demucs's class default, see :meth:`HTDemucsConfig.from_demucs_kwargs`)."""
    package = _check_package(package)
    if package.get("args"):
        raise CheckpointError("demucs package with positional 'args' is not supported")
    return HTDemucsConfig.from_demucs_kwargs(dict(package.get("kwargs") or {}))


def load_demucs_package(path: str | Path) -> dict[str, Any]:
    """Read a demucs ``.th`` package with the restricted unpickler (``klass`` becomes a stub)."""
    package = load_pickled_checkpoint(path, allowed_globals=PICKLE_GLOBALS, stub_classes=PICKLE_STUBS)
    try:
        return _check_package(package)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def model_from_demucs_package(path: str | Path) -> HTDemucs:
    """Build the :class:`HTDemucs` a demucs package describes and load its weights strictly."""
    from hybrids.apps.core.weights import load_into

    package = load_demucs_package(path)
    model = HTDemucs(_named(path, config_from_demucs_package, package))
    load_into(model, demucs_package_state_dict(package), path)
    return model.eval()


def _named(path: str | Path, convert: Any, package: Any) -> Any:
    try:
        return convert(package)
    except (CheckpointError, InputError) as exc:
        raise type(exc)(f"{path}: {exc}") from None


# -- bags of packages --------------------------------------------------------------------------
def bag_config_from_demucs_packages(
    packages: Sequence[Any],
    bag_weights: Sequence[Sequence[float]] | None = None,
    segment: float | None = None,
) -> HTDemucsBagConfig:
    """The :class:`HTDemucsBagConfig` of one package per member (all alike).

    ``bag_weights`` defaults to the identity when there is one package per source (the
    ``htdemucs_ft`` layout), else to all ones. ``segment`` (seconds) replaces the members' training
    segment when it is shorter, as a demucs bag's ``segment`` does.
    """
    if not packages:
        raise CheckpointError("a bag needs at least one demucs package")
    configs = [config_from_demucs_package(package) for package in packages]
    for index, config in enumerate(configs[1:], 2):
        if config != configs[0]:
            raise CheckpointError(
                f"the model of package {index} differs from the first one's: cannot bag them"
            )
    member = configs[0]
    if segment is not None and segment <= float(member.segment_seconds):
        member = member.replace(segment=segment)
    n_sources = len(member.sources)
    if bag_weights is None and len(packages) == n_sources:
        bag_weights = identity_weights(n_sources)
    return HTDemucsBagConfig.from_dict(
        {
            **member.to_dict(),
            "num_models": len(packages),
            "bag_weights": None if bag_weights is None else [list(row) for row in bag_weights],
        }
    )


def bag_state_dict_from_demucs_packages(packages: Sequence[Any]) -> dict[str, torch.Tensor]:
    """The state dict of a :class:`BagOfModels` whose member ``k`` is package ``k``."""
    return {
        f"models.{index}.{key}": value
        for index, package in enumerate(packages)
        for key, value in demucs_package_state_dict(package).items()
    }


def bag_from_demucs_packages(
    paths: Sequence[str | Path],
    bag_weights: Sequence[Sequence[float]] | None = None,
    segment: float | None = None,
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
    for path, package in zip(paths, packages):
        _named(path, config_from_demucs_package, package)  # name the file whose kwargs are wrong
    try:
        config = bag_config_from_demucs_packages(packages, bag_weights, segment)
    except CheckpointError as exc:
        raise CheckpointError(f"{paths[0]}: {exc}") from None
    bag = BagOfModels(config)
    for index, (path, package) in enumerate(zip(paths, packages)):
        load_into(bag.models[index], demucs_package_state_dict(package), path)
    return bag.eval()


# -- demucs --repo folders ---------------------------------------------------------------------
def find_demucs_files(folder: str | Path) -> dict[str, Path]:
    """``{signature: file}`` of the ``<signature>[-<sha256 prefix>].th`` files in ``folder`` (demucs's
    local repository layout); two files of one signature raise."""
    found: dict[str, Path] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix != ".th" or not path.is_file():
            continue
        signature = path.stem.split("-", 1)[0]
        if signature in found:
            raise InputError(
                f"{folder}: two files of signature {signature} ({found[signature].name}, {path.name})"
            )
        found[signature] = path
    return found


def read_bag_description(path: str | Path) -> tuple[list[str], list[list[float]] | None, float | None]:
    """``(signatures, weights or None, segment or None)`` of a demucs bag ``.yaml`` (read with
    ``yaml.safe_load``), e.g. ``remote/htdemucs_ft.yaml``."""
    import yaml

    path = Path(path)
    try:
        bag = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable YAML bag description ({reason})") from None
    models = bag.get("models") if isinstance(bag, dict) else None
    if not isinstance(models, list) or not models or not all(isinstance(m, str | int) for m in models):
        raise InputError(f"{path}: a bag description needs 'models', a list of model signatures")
    weights = bag.get("weights")
    if weights is not None and not (
        isinstance(weights, list)
        and all(isinstance(row, list) and all(isinstance(w, int | float) for w in row) for row in weights)
    ):
        raise InputError(f"{path}: 'weights' must be a list of lists of numbers (one per model)")
    segment = bag.get("segment")
    if segment is not None and (not isinstance(segment, int | float) or segment <= 0):
        raise InputError(f"{path}: 'segment' must be a positive number of seconds, got {segment!r}")
    rows = None if weights is None else [[float(w) for w in row] for row in weights]
    return [str(m) for m in models], rows, None if segment is None else float(segment)


def _check_demucs_file(path: Path) -> None:
    """An official file name gets its full sha256 checked; any ``<sig>-<hex>.th`` its prefix, as
    demucs checks its repositories."""
    from hybrids.apps.core.weights import resolve_weights

    _, entry = resolve_weights(path)  # verifies the hash of a file under an official name
    if entry is not None:
        return
    _, _, checksum = path.stem.partition("-")
    if not checksum:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    actual = digest.hexdigest()
    if not actual.startswith(checksum.lower()):
        raise WeightsError(
            f"{path}: sha256 mismatch (its name says {checksum}, the file hashes to "
            f"{actual[: len(checksum)]}); the file is corrupt or renamed"
        )


def load_demucs_repo_model(name: str, folder: str | Path, *, model_name: str | None = None) -> Any:
    """The model ``name`` of a demucs ``--repo`` folder, or ``None`` if the folder has neither a
    ``<name>-*.th`` file nor a ``<name>.yaml`` bag description (demucs looks in that order).

    A single package gives an :class:`HTDemucs`, a bag a :class:`BagOfModels`, built from the
    packages' own kwargs and loaded strictly; ``model_name`` names the result (default
    ``music/htdemucs`` or ``music/htdemucs_ft``).
    """
    from hybrids.apps.core.registry import create_model
    from hybrids.apps.core.weights import load_into

    folder = Path(folder)
    files = find_demucs_files(folder)
    description = folder / f"{name}.yaml"
    if name in files:
        signatures, bag_weights, segment = [name], None, None
    elif description.is_file():
        signatures, bag_weights, segment = read_bag_description(description)
    else:
        return None
    missing = [sig for sig in signatures if sig not in files]
    if missing:
        raise InputError(
            f"{description}: no file for model {missing[0]} in {folder} (expected {missing[0]}-*.th)"
        )
    paths = [files[sig] for sig in signatures]
    for path in paths:
        _check_demucs_file(path)
    packages = [load_demucs_package(path) for path in paths]
    for path, package in zip(paths, packages):
        _named(path, config_from_demucs_package, package)
    if len(packages) == 1 and bag_weights is None:  # a bag of one model averages nothing
        config = config_from_demucs_package(packages[0])
        if segment is not None and segment <= float(config.segment_seconds):
            config = config.replace(segment=segment)
        model = create_model(model_name or "music/htdemucs", config=config)
        load_into(model, demucs_package_state_dict(packages[0]), paths[0])
    else:
        try:
            config = bag_config_from_demucs_packages(packages, bag_weights, segment)
        except (CheckpointError, InputError) as exc:
            raise type(exc)(f"{description}: {exc}") from None
        model = create_model(model_name or "music/htdemucs_ft", config=config)
        load_into(model, bag_state_dict_from_demucs_packages(packages), folder)
    model.preprocessing = preprocessing_of(model.config)
    return model.eval()


# -- registered weights --------------------------------------------------------------------------
def preprocessing_of(config: HTDemucsConfig) -> dict[str, Any]:
    """What an HT Demucs (or a bag of them) expects: sample rate, channels, training segment
    (seconds; ``[num, den]`` when exact) and the order of its sources."""
    segment = list(config.segment) if isinstance(config.segment, tuple) else config.segment
    return {
        "samplerate": config.samplerate,
        "audio_channels": config.audio_channels,
        "segment": segment,
        "sources": list(config.sources),
    }


def _preprocessing(sources: Sequence[str]) -> dict[str, Any]:
    """The released models': 44.1 kHz stereo, 39/5 s segments."""
    return preprocessing_of(HTDemucsConfig(sources=tuple(sources)))


def _config_fields(package: Any) -> dict[str, Any]:
    return config_from_demucs_package(package).to_dict()


def _bag_config_fields(packages: Sequence[Any], bag_weights: Sequence[Sequence[float]]) -> dict[str, Any]:
    return bag_config_from_demucs_packages(packages, bag_weights).to_dict()


def _demucs_entry(
    name: str, filename: str, sha256: str, sources: Sequence[str], description: str
) -> WeightsEntry:
    if not sha256.startswith(filename.rsplit("-", 1)[-1].removesuffix(".th")):
        raise ValueError(f"{name}: sha256 {sha256} does not start with the checksum in {filename}")
    return register_weights(
        WeightsEntry(
            name=name,
            url=ROOT_URL + filename,
            sha256=sha256,
            license=LICENSE,
            preprocessing=_preprocessing(sources),
            description=description,
            pickle_globals=PICKLE_GLOBALS,
            pickle_stubs=PICKLE_STUBS,
            to_state_dict=demucs_package_state_dict,
            to_config=_config_fields,
        )
    )


HTDEMUCS = _demucs_entry(
    "music/htdemucs",
    "955717e8-8726e21a.th",
    "8726e21a993978c7ba086d3872e7608d7d5bfca646ca4aca459ffda844faa8b4",
    SOURCES_4,
    "HT Demucs (Rouard et al. 2023), 4 sources, MUSDB18-HQ + 800 songs, 9.00 dB SDR",
)

# The full sha256 values below come from third-party lists of the demucs files; each agrees with
# the 8-hex checksum demucs puts in the file name, but they were not verified by a download here.
# A wrong value fails safe: the download (or a local copy) is refused with a sha256 mismatch.
HTDEMUCS_6S = _demucs_entry(
    "music/htdemucs_6s",
    "5c90dfd2-34c22ccb.th",
    "34c22ccb381c6f9fdbf324f04e1e2fe21aaaf293f5ded163a162697ff9a02ddd",
    SOURCES_6,
    "HT Demucs, experimental 6 sources (adds guitar and piano; piano is weak)",
)

FT_MEMBERS = {  # remote/htdemucs_ft.yaml order: model k is fine-tuned for source k
    "drums": ("f7e0c4bc-ba3fe64a.th", "ba3fe64ae8ef66ac9a4857222ce48efbdc5eb3ad375cb79dd13debee5aaa4066"),
    "bass": ("d12395a8-e57c48e6.th", "e57c48e6b0e38af4f7118d7bd08c49f0a0c0edf7d09143bdd902ea0d237303e6"),
    "other": ("92cfc3b6-ef3bcb9c.th", "ef3bcb9c8b40d14ae5d51b6db2587339cc12c6b77c0be151ce6d69002e087bf2"),
    "vocals": ("04573f0d-f3cf25b2.th", "f3cf25b222c4eed7cd49dd8b2c9597d50c18bd154090f7b919cfa5f93cf22c49"),
}
for _source, (_filename, _sha256) in FT_MEMBERS.items():
    _demucs_entry(
        f"music/htdemucs_ft/{_source}",
        _filename,
        _sha256,
        SOURCES_4,
        f"htdemucs_ft member fine-tuned for {_source} (one file of the music/htdemucs_ft bag)",
    )

HTDEMUCS_FT = register_weights(
    WeightsEntry(
        name="music/htdemucs_ft",
        license=LICENSE,
        preprocessing=_preprocessing(SOURCES_4),
        description="HT Demucs fine-tuned per source: a bag of 4 models, source k from model k (4x slower)",
        to_state_dict=bag_state_dict_from_demucs_packages,
        to_config=partial(_bag_config_fields, bag_weights=identity_weights(len(SOURCES_4))),
        parts=tuple(f"music/htdemucs_ft/{source}" for source in FT_MEMBERS),
    )
)
