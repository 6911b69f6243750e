"""Registered medical models (imported lazily by ``hybrids.apps.core.registry``).

Every segmentation model follows one contract: ``forward(x (b, in_channels, *spatial)) -> logits
(b, num_classes, *spatial)``, with attributes ``spatial_dims``, ``in_channels``, ``num_classes`` and
``size_divisor``. ``medical/dino_vit`` is the ViT backbone that ``hybrids medical pretrain-dino``
trains and DIAMANT reads attention maps from (``forward(x) -> (b, embed_dim)``, the CLS feature).
"""

from __future__ import annotations

from hybrids.apps.core.registry import register_model
from hybrids.apps.medical import weights as _weights  # registers the encoders' weights entries
from hybrids.apps.medical.diamant import DIAMANT, DIAMANTConfig
from hybrids.apps.medical.dino_vit import TEACHER_MODEL, DINOViTConfig
from hybrids.apps.medical.hiformer import HiFormer, HiFormerConfig
from hybrids.apps.medical.swtr_unet import SWTRUnet, SWTRUnetConfig
from hybrids.shared_blocks.vit import VisionTransformer

# -- HiFormer (Heidari et al., WACV 2023) ---------------------------------------------------------------


@register_model("medical/hiformer_s", config=HiFormerConfig, preset="hiformer_s")
def hiformer_s(config: HiFormerConfig) -> HiFormer:
    """HiFormer-S: ResNet-34 + Swin-T stages 1-3, DLF depth 1 (23.25 M parameters, 9 classes)."""
    return HiFormer(config)


@register_model("medical/hiformer_b", config=HiFormerConfig, preset="hiformer_b")
def hiformer_b(config: HiFormerConfig) -> HiFormer:
    """HiFormer-B: ResNet-50 + Swin-T stages 1-3, DLF depth 2 (25.51 M parameters, 9 classes)."""
    return HiFormer(config)


@register_model("medical/hiformer_l", config=HiFormerConfig, preset="hiformer_l")
def hiformer_l(config: HiFormerConfig) -> HiFormer:
    """HiFormer-L: ResNet-34 + Swin-T stages 1-3, DLF depth 4 (29.52 M parameters, 9 classes)."""
    return HiFormer(config)


# -- SWTR-Unet (Hille et al. 2023) ---------------------------------------------------------------------


@register_model("medical/swtr_unet", config=SWTRUnetConfig, preset="default")
def swtr_unet(config: SWTRUnetConfig) -> SWTRUnet:
    """SWTR-Unet, 2-D slice-wise: ResNet-50, 12 transformer layers on the 1/16 features, U-Net decoder."""
    return SWTRUnet(config)


@register_model("medical/swtr_unet_3d", config=SWTRUnetConfig, preset="3d")
def swtr_unet_3d(config: SWTRUnetConfig) -> SWTRUnet:
    """SWTR-Unet, 3-D variant (3-D ResNet-50 encoder, 4 transformer layers)."""
    return SWTRUnet(config)


# -- DIAMANT (Yeganeh et al. 2023) ----------------------------------------------------------------------


@register_model("medical/diamant", config=DIAMANTConfig, preset="default")
def diamant(config: DIAMANTConfig) -> DIAMANT:
    """DIAMANT: U-Net image encoder + convolutional encoder of frozen DINO ViT-S/16 attention maps."""
    return DIAMANT(config)


# -- DINO ViT (Caron et al. 2021): pretrain-dino's teacher, DIAMANT's attention encoder -----------------


@register_model(
    TEACHER_MODEL, config=DINOViTConfig, weights=(_weights.DINO_WEIGHTS[16], _weights.DINO_WEIGHTS[8])
)
def dino_vit(config: DINOViTConfig) -> VisionTransformer:
    """DINO ViT backbone (default ViT-S/16 at 224): pretrain-dino's teacher, DIAMANT's attention encoder."""
    return VisionTransformer(**config.to_dict())
