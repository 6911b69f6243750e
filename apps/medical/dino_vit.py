"""The DINO ViT as a registered model, ``medical/dino_vit``: its config, and its teachers saved and read.

``hybrids medical pretrain-dino`` writes its teacher backbone as one of our checkpoint folders
(``OUT/teacher``: ``model.safetensors`` with DINO's key names + ``config.json``), so it loads like any
registered model::

    vit = create_model("medical/dino_vit", weights="runs/dino/teacher")       # or load_checkpoint(...)
    vit = create_model("medical/dino_vit", weights="official")                 # DINO's ViT-S/16 file
    vit = create_model("medical/dino_vit", weights="dino_deitsmall8_pretrain.pth")  # shape from the file

The model is :class:`hybrids.shared_blocks.vit.VisionTransformer` built from :class:`DINOViTConfig`,
whose fields are its keyword arguments (field defaults: DINO's ViT-S/16 at 224x224, RGB, the shape of
the official weights). Besides the model and its config, a teacher's ``config.json`` records how
slices are fed to it: ``image_size`` (the ViT's training input side), ``vit_input`` (``resize``:
bilinear to ``image_size`` squared; ``pad``: centred zero padding), ``slice_axis`` and the volume
``preprocessing`` -- the rule DIAMANT applies (:func:`hybrids.apps.medical.diamant.load_attention_encoder`).

Teacher folders of earlier versions name their model ``"dino/vit"`` (never registered) with the same
config fields: :func:`load_teacher` (and so DIAMANT's ``--init-attention-encoder``) still reads them
through that one mapping; ``create_model``/``load_checkpoint`` refuse them (one line naming the model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError

if TYPE_CHECKING:
    from hybrids.shared_blocks.vit import VisionTransformer

__all__ = [
    "LEGACY_TEACHER_MODEL",
    "TEACHER_MODEL",
    "VIT_INPUTS",
    "DINOViTConfig",
    "load_teacher",
    "save_teacher",
]

TEACHER_MODEL = "medical/dino_vit"
LEGACY_TEACHER_MODEL = "dino/vit"  # the name teacher folders had before the model was registered
VIT_INPUTS = ("resize", "pad")  # how a slice becomes the ViT's square input


@dataclass
class DINOViTConfig(ModelConfig):
    """:class:`~hybrids.shared_blocks.vit.VisionTransformer`'s arguments; defaults: DINO's ViT-S/16 at
    224 (the official ``dino_deitsmall16_pretrain.pth``). ``img_size`` only sets the stored
    position-embedding grid: the ViT takes any multiple of ``patch_size``."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "vits8": {"patch_size": 8},  # dino_deitsmall8_pretrain.pth
        "vit_tiny": {"embed_dim": 192, "num_heads": 3},
        "vit_base": {"embed_dim": 768, "num_heads": 12},
        # DIAMANT's hippocampus preset: 64x64 slices, patch 8, one channel, 192 wide, 6 blocks, 6 heads
        "hippocampus": {"img_size": 64, "patch_size": 8, "in_chans": 1, "embed_dim": 192, "depth": 6},
        "tiny": {"img_size": 32, "patch_size": 8, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 4},
    }

    def validate(self) -> None:
        sizes = (self.img_size, self.patch_size, self.in_chans, self.embed_dim, self.depth, self.num_heads)
        if min(sizes) < 1:
            raise InputError(f"DINOViTConfig: sizes must be >= 1, got {sizes}")
        if self.img_size % self.patch_size:
            raise InputError(
                f"DINOViTConfig: img_size {self.img_size} must be a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise InputError(
                f"DINOViTConfig: embed_dim {self.embed_dim} must be a multiple of num_heads {self.num_heads}"
            )
        if not self.mlp_ratio > 0:
            raise InputError(f"DINOViTConfig: mlp_ratio must be > 0, got {self.mlp_ratio}")


def save_teacher(
    backbone: VisionTransformer,
    directory: str | Path,
    config: DINOViTConfig,
    *,
    preprocessing: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``backbone`` as a ``medical/dino_vit`` checkpoint folder (``model.safetensors`` +
    ``config.json``, atomically); ``extra`` holds the slice rule (``image_size``, ``vit_input``,
    ``slice_axis``) and the training record."""
    from hybrids.apps.core.checkpoint import save_checkpoint

    return save_checkpoint(
        backbone,
        directory,
        model_name=TEACHER_MODEL,
        config=config,
        preprocessing=dict(preprocessing or {}),
        extra=extra,
    )


def load_teacher(path: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """``(ViT in eval mode, the checkpoint's config.json or {})`` of a DINO teacher: a ``pretrain-dino``
    teacher folder or its ``model.safetensors`` (also an earlier version's ``"dino/vit"`` folder), or an
    official DINO ``.pth`` / full training checkpoint (its shape read from its tensors). The ViT carries
    its :class:`DINOViTConfig` as ``.config``."""
    from hybrids.apps.core.checkpoint import read_checkpoint_info
    from hybrids.apps.core.registry import create_model

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (a DINO teacher folder or weights file)")
    info = read_checkpoint_info(path) or {}
    if info.get("model") == LEGACY_TEACHER_MODEL:
        model = _legacy_teacher(path, info)
    else:
        model = create_model(TEACHER_MODEL, weights=path)
    return model.eval(), info


def _legacy_teacher(path: Path, info: dict[str, Any]) -> VisionTransformer:
    """A ``"dino/vit"`` folder: the same tensors and config fields under the unregistered name."""
    from hybrids.apps.core.registry import create_model
    from hybrids.apps.core.weights import SAFETENSORS_NAME, load_into, load_safetensors

    config = DINOViTConfig.from_dict(dict(info["config"]))
    weights = path / SAFETENSORS_NAME if path.is_dir() else path
    model = create_model(TEACHER_MODEL, config=config)
    load_into(model, load_safetensors(weights), weights)
    return model
