"""Our own checkpoints: a folder with ``model.safetensors`` and ``config.json``.

``config.json`` holds the registered model name, the full config, the preprocessing the model
expects and the hybrids version; the same name and config are also stored in the safetensors
metadata, so a lone ``.safetensors`` file still rebuilds its model. No pickle is involved::

    save_checkpoint(model, "runs/exp1/best")            # model from create_model(...)
    model = load_checkpoint("runs/exp1/best")           # or .../best/model.safetensors
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import CheckpointError
from hybrids.apps.core.weights import (
    CONFIG_NAME,
    SAFETENSORS_NAME,
    load_into,
    load_safetensors,
    safetensors_metadata,
    sniff_format,
)
from hybrids.datasets.atomic import atomic_write_folder, atomic_write_path, atomic_write_text

_META_MODEL = "hybrids.model"
_META_CONFIG = "hybrids.config"


def save_checkpoint(
    model: nn.Module,
    directory: str | Path,
    *,
    model_name: str | None = None,
    config: ModelConfig | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/config.json`` (each atomically).

    ``model_name``/``config`` default to the ``model_name``/``config`` attributes that
    ``create_model`` sets; ``preprocessing`` defaults to ``model.preprocessing`` if present.
    """
    from safetensors.torch import save_file

    import hybrids.apps

    name = model_name or getattr(model, "model_name", None)
    cfg = config or getattr(model, "config", None)
    if not name or not isinstance(cfg, ModelConfig):
        raise ValueError("save_checkpoint needs a registered model name and its ModelConfig")
    prep = dict(preprocessing if preprocessing is not None else getattr(model, "preprocessing", {}) or {})
    info = {
        "model": name,
        "config": cfg.to_dict(),
        "preprocessing": prep,
        "hybrids_version": hybrids.apps.__version__,
        **dict(extra or {}),
    }
    # safetensors refuses tensors that share memory (tied weights): store each one separately.
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        tensors[key] = tensor.contiguous()
    directory = Path(directory)
    metadata = {"format": "pt", _META_MODEL: name, _META_CONFIG: json.dumps(info["config"], sort_keys=True)}
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    ours = {SAFETENSORS_NAME, CONFIG_NAME}
    if directory.is_dir() and any(p.name not in ours for p in directory.iterdir()):
        # A folder holding other files too (a model card...): replace our two files, each atomically.
        with atomic_write_path(directory / SAFETENSORS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        atomic_write_text(directory / CONFIG_NAME, text)
        return directory
    # Otherwise the whole folder at once: an interruption never leaves an empty or mixed folder.
    with atomic_write_folder(directory) as tmp:
        save_file(tensors, str(tmp / SAFETENSORS_NAME), metadata=metadata)
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
    return directory


def read_checkpoint_info(path: str | Path) -> dict[str, Any] | None:
    """``{"model", "config", "preprocessing", ...}`` of one of our checkpoints (folder or
    ``.safetensors`` file), or ``None`` when ``path`` is not one (e.g. a third-party file)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = path / SAFETENSORS_NAME if path.is_dir() else path
    config_file = folder / CONFIG_NAME
    if config_file.is_file() and (path.is_dir() or path.name == SAFETENSORS_NAME):
        try:
            info = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{config_file}: not a valid JSON checkpoint config ({exc})") from None
        if not isinstance(info, dict) or "model" not in info or "config" not in info:
            raise CheckpointError(
                f"{config_file}: missing 'model' or 'config' (not a checkpoint folder of this hybrids "
                "version; re-create it with the command that wrote it)"
            )
        return info
    if weights.is_file() and sniff_format(weights) == "safetensors":
        meta = safetensors_metadata(weights)
        if _META_MODEL in meta and _META_CONFIG in meta:
            try:
                config = json.loads(meta[_META_CONFIG])
            except ValueError as exc:
                raise CheckpointError(f"{weights}: corrupt config in safetensors metadata ({exc})") from None
            return {"model": meta[_META_MODEL], "config": config, "preprocessing": {}}
    return None


def load_checkpoint(path: str | Path, *, device: str | torch.device | None = None) -> nn.Module:
    """Rebuild the registered model a checkpoint names, with its config, and load it strictly."""
    from hybrids.apps.core.registry import get_model_entry

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    info = read_checkpoint_info(path)
    if info is None:
        raise CheckpointError(f"{path}: not a hybrids checkpoint (no {CONFIG_NAME} and no hybrids metadata)")
    entry = get_model_entry(info["model"])
    config = entry.config_cls.from_dict(info["config"])
    with torch.device(device) if device is not None else torch.device("cpu"):
        model = entry.builder(config)
    if not hasattr(model, "config"):
        model.config = config
    model.model_name = entry.name
    weights = path / SAFETENSORS_NAME if path.is_dir() else path
    load_into(model, load_safetensors(weights), weights)
    model.preprocessing = dict(info.get("preprocessing") or {})
    return model
