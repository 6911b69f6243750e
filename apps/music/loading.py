"""Loading a separation model by name, from official or local weights, or from a model folder.

``load_separation_model`` is what ``Separator(model=...)`` and ``separate -n ... [--weights F]
[--repo DIR]`` use:

* ``-n NAME`` (``htdemucs``, ``htdemucs_6s``, ``htdemucs_ft`` or ``music/<name>``): the official
  weights, found in ``--repo DIR`` (under their official file names, sha256-checked), then in the
  cache (``$HYBRIDS_CACHE`` or ``torch.hub.get_dir()/checkpoints``), else downloaded (see
  ``hybrids.apps.core.weights``). ``htdemucs_ft`` is four files.
* ``-n NAME --weights FILE``: a demucs ``.th`` package under any name (read by the restricted
  unpickler with the demucs allow-list; the model is built from the package's own kwargs, so a
  package whose configuration differs from the preset loads too), one of our checkpoints, or a
  weights-entry name.
* ``-n NAME --repo DIR`` where ``DIR`` is a demucs repository, as demucs's own ``--repo``:
  ``NAME-*.th`` (a model signature) or ``NAME.yaml`` (a bag: ``models: [signatures]``, optional
  ``weights`` and ``segment``, read with ``yaml.safe_load``) with one ``<signature>-<sha8>.th`` per
  model. A file's sha256 must start with the ``<sha8>`` in its name (the full sha256 for an
  official name). Without either, ``DIR`` is only searched for the official files.
* ``-n DIR``: a model folder. Ours: ``model.safetensors`` + ``config.json`` (``save_checkpoint``).
  Or a Hugging Face-style folder: ``model.safetensors`` + ``config.yaml`` (or ``config.yml``) in one
  of two forms::

      # ours, in YAML: a registered name, config fields (missing ones: the name's preset)
      model: music/htdemucs_6s          # optional, default music/htdemucs
      config: {channels: 48, ...}
      preprocessing: {...}              # optional

      # demucs: the HTDemucs(**kwargs) of a .th package, under `kwargs` or at the top level
      # (sources required; missing ones: demucs's HTDemucs defaults, as HTDemucs(**kwargs))
      klass: demucs.htdemucs.HTDemucs   # optional
      kwargs: {sources: [drums, bass, other, vocals], segment: 7.8, channels: 48, ...}

  The safetensors keys are our parameter names (= demucs's; ``models.<k>.`` for a bag).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hybrids.apps.core.errors import InputError, UnknownModelError

DEFAULT_MODEL = "music/htdemucs"
YAML_CONFIG_NAMES = ("config.yaml", "config.yml")

__all__ = ["DEFAULT_MODEL", "load_model_folder", "load_separation_model"]


def load_separation_model(
    model: str | Path = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    repo: str | Path | None = None,
) -> nn.Module:
    """A model from a registry name (``"music/htdemucs"``, or short: ``"htdemucs"``) with its
    ``weights`` (default ``"official"``; a weights name or a file path), from a demucs repository
    ``repo`` (also searched for official files before the cache), or from a model folder/file."""
    from hybrids.apps.core.registry import create_model, get_model_entry
    from hybrids.apps.core.weights import OFFICIAL, load_into, read_model_weights

    path = Path(model).expanduser()
    if isinstance(model, Path) or path.exists():
        if not path.exists():
            raise InputError(f"{path}: no such checkpoint")
        if weights is not None:
            raise InputError(f"{path}: a checkpoint carries its own weights; do not pass weights too")
        return load_model_folder(path)
    text = str(model)
    if text.count("/") > 1 or text.startswith((".", "/", "~")) or text.endswith(".safetensors"):
        raise InputError(f"{path}: no such checkpoint (folder or .safetensors file)")
    name = text if "/" in text else f"music/{text}"
    short = name.rsplit("/", 1)[-1]
    try:
        entry = get_model_entry(name)
    except UnknownModelError:
        entry = None
    search_dirs: list[Path] = []
    if repo is not None:
        repo = Path(repo).expanduser()
        if not repo.is_dir():
            raise InputError(f"{repo}: --repo must be a folder (of weights files)")
        search_dirs.append(repo)
        if weights is None:
            from hybrids.apps.music.weights import load_demucs_repo_model

            found = load_demucs_repo_model(short, repo, model_name=entry.name if entry else None)
            if found is not None:
                return found
            if entry is None:
                raise InputError(
                    f"{short}: not a registered model, and {repo} has neither {short}-*.th nor {short}.yaml"
                )
    if entry is None:
        entry = get_model_entry(name)  # raises, with suggestions
    loaded = read_model_weights(entry, OFFICIAL if weights is None else weights, search_dirs=search_dirs)
    config = entry.config_cls.from_dict(loaded.config) if loaded.config is not None else None
    built = create_model(entry.name, config=config)
    load_into(built, loaded.state_dict, loaded.source)
    built.preprocessing = loaded.preprocessing if loaded.preprocessing is not None else _preprocessing(built)
    return built.eval()


def load_model_folder(path: str | Path) -> nn.Module:
    """A model from one of our checkpoints (folder or ``.safetensors`` file) or from a Hugging
    Face-style folder (``model.safetensors`` + ``config.yaml``; see the module docstring)."""
    from hybrids.apps.core.checkpoint import load_checkpoint
    from hybrids.apps.core.weights import CONFIG_NAME, SAFETENSORS_NAME

    path = Path(path)
    if path.is_dir() and not (path / CONFIG_NAME).is_file():
        for name in YAML_CONFIG_NAMES:
            if (path / name).is_file():
                return _load_yaml_folder(path, path / name)
        if not (path / SAFETENSORS_NAME).is_file():
            hint = ""
            if any(path.glob("*.th")):
                hint = f"; for a folder of demucs .th files use -n NAME --repo {path}"
            raise InputError(
                f"{path}: not a model folder (expected {SAFETENSORS_NAME} with {CONFIG_NAME} or "
                f"{YAML_CONFIG_NAMES[0]}){hint}"
            )
    return load_checkpoint(path).eval()


def _load_yaml_folder(folder: Path, config_file: Path) -> nn.Module:
    import yaml

    from hybrids.apps.core.registry import create_model, get_model_entry
    from hybrids.apps.core.weights import SAFETENSORS_NAME, load_into, load_safetensors
    from hybrids.apps.music.htdemucs import HTDemucsConfig
    from hybrids.apps.music.weights import DEMUCS_CLASS

    weights = folder / SAFETENSORS_NAME
    if not weights.is_file():
        raise InputError(f"{folder}: has {config_file.name} but no {SAFETENSORS_NAME}")
    try:
        data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{config_file}: not readable YAML ({reason})") from None
    if not isinstance(data, dict):
        raise InputError(f"{config_file}: expected a mapping (model/config, or demucs kwargs)")
    name = data.get("model", DEFAULT_MODEL)
    if not isinstance(name, str):
        raise InputError(f"{config_file}: 'model' must be a registered model name, got {name!r}")
    name = name if "/" in name else f"music/{name}"
    entry = get_model_entry(name)
    try:
        if "config" in data:  # ours
            fields = data["config"]
            if not isinstance(fields, dict):
                raise InputError("'config' must be a mapping of config fields")
            config = entry.config(None, **fields)
            preprocessing = data.get("preprocessing")
        else:  # demucs: HTDemucs(**kwargs)
            klass = data.get("klass", DEMUCS_CLASS)
            if klass not in (DEMUCS_CLASS, "HTDemucs"):
                raise InputError(f"klass {klass!r} is not supported (only {DEMUCS_CLASS})")
            kwargs = (
                data["kwargs"]
                if "kwargs" in data
                else {k: v for k, v in data.items() if k not in ("model", "klass", "preprocessing")}
            )
            if not isinstance(kwargs, dict):
                raise InputError("'kwargs' must be a mapping of HTDemucs keyword arguments")
            if entry.config_cls is not HTDemucsConfig:
                raise InputError(f"demucs kwargs describe one HTDemucs, but {name} is not one")
            config = HTDemucsConfig.from_demucs_kwargs(kwargs)
            preprocessing = data.get("preprocessing")
    except InputError as exc:
        raise InputError(f"{config_file}: {exc}") from None
    model = create_model(name, config=config)
    load_into(model, load_safetensors(weights), weights)
    model.preprocessing = dict(preprocessing) if isinstance(preprocessing, dict) else _preprocessing(model)
    return model.eval()


def _preprocessing(model: Any) -> dict[str, Any]:
    from hybrids.apps.music.weights import preprocessing_of

    return preprocessing_of(model.config)
