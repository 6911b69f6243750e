"""Registered hyperspectral models (imported lazily by ``hybrids.apps.core.registry``).

Denoisers follow one contract: ``forward(x (B, 1, bands, H, W)) -> (B, 1, bands, H, W)`` on cubes
scaled to [0, 1], with attributes ``size_divisor`` (H and W multiples of it), ``num_bands`` (the
band count it takes without ``flex``), ``flex`` and ``set_flex(bool)``.
"""

from __future__ import annotations

from hybrids.apps.core.registry import register_model
from hybrids.apps.hsi.hsdt import HSDT, HSDTConfig


@register_model("hsi/hsdt_s", config=HSDTConfig, preset="hsdt_s")
def hsdt_s(config: HSDTConfig) -> HSDT:
    """HSDT-S denoiser, the official hsdt_8 (8 channels, 5 layers; 0.13 M parameters, 31 bands)."""
    return HSDT(config)


@register_model("hsi/hsdt_m", config=HSDTConfig, preset="hsdt_m")
def hsdt_m(config: HSDTConfig) -> HSDT:
    """HSDT-M denoiser, the official hsdt (16 channels, 5 layers; 0.52 M parameters, 31 bands)."""
    return HSDT(config)


@register_model("hsi/hsdt_l", config=HSDTConfig, preset="hsdt_l")
def hsdt_l(config: HSDTConfig) -> HSDT:
    """HSDT-L denoiser, the official hsdt_deep (16 channels, 7 layers; 2.09 M parameters, 31 bands)."""
    return HSDT(config)
