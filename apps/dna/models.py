"""Registered DNA models: ``dna/hybridna`` (presets ``tiny``, ``small``, ``300m``, ``3b``, ``7b``)."""

from __future__ import annotations

from hybrids.apps.core.registry import register_model
from hybrids.apps.dna.hybridna import HybriDNA, HybriDNAConfig


@register_model("dna/hybridna", config=HybriDNAConfig, preset="small")
def hybridna(config: HybriDNAConfig) -> HybriDNA:
    """HybriDNA (Ma et al. 2025): hybrid Mamba2 / attention DNA language model at single-base resolution."""
    return HybriDNA(config)
