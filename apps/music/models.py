"""Registered music models: ``music/htdemucs``, ``music/htdemucs_6s``, ``music/htdemucs_ft``."""

from __future__ import annotations

from hybrids.apps.core.registry import register_model
from hybrids.apps.music import weights as _weights  # noqa: F401  (registers the weights entries)
from hybrids.apps.music.bag import BagOfModels, HTDemucsBagConfig
from hybrids.apps.music.htdemucs import HTDemucs, HTDemucsConfig


@register_model("music/htdemucs", config=HTDemucsConfig, preset="htdemucs", weights="music/htdemucs")
def htdemucs(config: HTDemucsConfig) -> HTDemucs:
    """Hybrid Transformer Demucs (Rouard et al. 2023): drums, bass, other, vocals."""
    return HTDemucs(config)


@register_model("music/htdemucs_6s", config=HTDemucsConfig, preset="htdemucs_6s", weights="music/htdemucs_6s")
def htdemucs_6s(config: HTDemucsConfig) -> HTDemucs:
    """HT Demucs, experimental 6 sources (adds guitar and piano)."""
    return HTDemucs(config)


@register_model(
    "music/htdemucs_ft", config=HTDemucsBagConfig, preset="htdemucs_ft", weights="music/htdemucs_ft"
)
def htdemucs_ft(config: HTDemucsBagConfig) -> BagOfModels:
    """Bag of four HT Demucs, each fine-tuned for one source."""
    return BagOfModels(config)
