"""The PDE app's registered models (imported by the registry the first time a ``pde/`` name is asked for).

pde/factformer      FactFormer (2-D default: the Kolmogorov-flow config, 3,463,489 parameters)
pde/factformer_3d   FactFormer with FABlock3D (the 3-D turbulence config)
pde/ifactformer_m   IFactFormer-m (one shared parallel-factorised block iterated 10 times)
pde/fno, pde/tfno   neuraloperator's FNO / Tucker TFNO behind this app's interface (dev dependency)
"""

from __future__ import annotations

from hybrids.apps.core.registry import register_model
from hybrids.apps.pde.factformer import FactFormer, FactFormerConfig
from hybrids.apps.pde.fno import FNOConfig, FNOSurrogate
from hybrids.apps.pde.ifactformer import IFactFormer, IFactFormerConfig


@register_model("pde/factformer", config=FactFormerConfig, preset="km2d")
def factformer(config: FactFormerConfig) -> FactFormer:
    """FactFormer 2-D (Li et al. 2023): factorised axial kernel attention, latent MLP propagator"""
    return FactFormer(config)


@register_model("pde/factformer_3d", config=FactFormerConfig, preset="ns3d")
def factformer_3d(config: FactFormerConfig) -> FactFormer:
    """FactFormer 3-D (FABlock3D; the reference's 3-D turbulence config)"""
    return FactFormer(config)


@register_model("pde/ifactformer_m", config=IFactFormerConfig, preset="km2d")
def ifactformer_m(config: IFactFormerConfig) -> IFactFormer:
    """IFactFormer-m (Yang et al. 2024): one parallel-factorised block iterated 10 times"""
    return IFactFormer(config)


@register_model("pde/fno", config=FNOConfig, preset="small")
def fno(config: FNOConfig) -> FNOSurrogate:
    """FNO from neuraloperator (Li et al. 2021), the peer (needs the neuraloperator package)"""
    return FNOSurrogate(config)


@register_model("pde/tfno", config=FNOConfig, preset="tfno_small")
def tfno(config: FNOConfig) -> FNOSurrogate:
    """TFNO from neuraloperator (Tucker-factorised FNO), the peer (needs the neuraloperator package)"""
    return FNOSurrogate(config)
