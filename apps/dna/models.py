"""Registered DNA models, and loading a pretrained language model.

- ``dna/hybridna`` (presets ``tiny``, ``small``, ``300m``, ``3b``, ``7b``): the language model
  ``hybrids dna pretrain`` trains;
- ``dna/hybridna_classifier`` (presets ``tiny``, ``small``): a HybriDNA backbone read through echo
  embeddings + a linear head, what ``hybrids dna finetune`` trains by default;
- ``dna/cnn_classifier`` (presets ``default``, ``tiny``): the CNN baseline (``finetune --model cnn``).

Every folder the DNA commands write (``OUT/best``, ``OUT/last``) loads with
``create_model(name, weights=FOLDER)`` or ``hybrids.apps.core.checkpoint.load_checkpoint(FOLDER)``.
"""

from __future__ import annotations

import json
from pathlib import Path

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.registry import register_model
from hybrids.apps.dna.classifier import HybriDNAClassifier, HybriDNAClassifierConfig
from hybrids.apps.dna.cnn_baseline import CNNClassifier, CNNConfig
from hybrids.apps.dna.hybridna import HybriDNA, HybriDNAConfig

__all__ = ["cnn_classifier", "hybridna", "hybridna_classifier", "load_lm"]


@register_model("dna/hybridna", config=HybriDNAConfig, preset="small")
def hybridna(config: HybriDNAConfig) -> HybriDNA:
    """HybriDNA (Ma et al. 2025): hybrid Mamba2 / attention DNA language model at single-base resolution."""
    return HybriDNA(config)


@register_model("dna/hybridna_classifier", config=HybriDNAClassifierConfig, preset="small")
def hybridna_classifier(config: HybriDNAClassifierConfig) -> HybriDNAClassifier:
    """HybriDNA sequence classifier: echo embeddings of a HybriDNA backbone, pooled, and a linear head."""
    return HybriDNAClassifier.from_config(config)


@register_model("dna/cnn_classifier", config=CNNConfig)
def cnn_classifier(config: CNNConfig) -> CNNClassifier:
    """CNN baseline sequence classifier: dilated residual convolutions, mean + max pooling, linear."""
    return CNNClassifier(config)


def load_lm(path: str | Path) -> HybriDNA:
    """The HybriDNA language model of a checkpoint folder (``hybrids dna pretrain``'s ``OUT/best``),
    through ``load_checkpoint``; anything else is refused with one line naming the folder."""
    from hybrids.apps.core.checkpoint import load_checkpoint

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint (expected a folder written by `hybrids dna pretrain`)")
    config_file = path / "config.json" if path.is_dir() else path.parent / "config.json"
    try:
        info = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except (OSError, ValueError):
        info = {}
    if isinstance(info, dict) and "kind" in info and "model" not in info:
        raise InputError(
            f"{path}: a classifier folder written by an earlier `hybrids dna finetune`, not a language "
            "model; pass a `hybrids dna pretrain` folder (and re-run finetune to get a loadable classifier)"
        )
    model = load_checkpoint(path)
    if not isinstance(model, HybriDNA):
        name = getattr(model, "model_name", type(model).__name__)
        raise InputError(
            f"{path}: holds a {name}, not a HybriDNA language model (dna/hybridna, `hybrids dna pretrain`)"
        )
    return model
