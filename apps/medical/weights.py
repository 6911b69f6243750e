"""Pretrained encoders of the medical models, and their loaders (no torchvision or timm import).

HiFormer (``hiformer.py``) starts from torchvision's ImageNet ResNet-34 (HiFormer-S/L) or ResNet-50
(HiFormer-B) and from the official Swin-T ImageNet-1k file, as the official code does
(``torchvision.models.resnet*(pretrained=True)``, i.e. ``IMAGENET1K_V1``, and
``swin_tiny_patch4_window7_224.pth`` with its stage-1/2 patch merging copied into ``p1_pm``/``p2_pm``).

=========================================  ============================================================
``medical/resnet34_imagenet1k_v1``          ``resnet34-b627a593.pth`` (torchvision, BSD-3-Clause)
``medical/resnet50_imagenet1k_v1``          ``resnet50-0676ba61.pth`` (torchvision, BSD-3-Clause)
``medical/swin_tiny_patch4_window7_224``    ``swin_tiny_patch4_window7_224.pth`` (Swin-Transformer, MIT)
``medical/dino_vits16``                     ``dino_deitsmall16_pretrain.pth`` (DINO ViT-S/16, Apache-2.0)
``medical/dino_vits8``                      ``dino_deitsmall8_pretrain.pth`` (DINO ViT-S/8, Apache-2.0)
=========================================  ============================================================

Each is a :class:`~hybrids.apps.core.weights.WeightsEntry` registered with the project's weights
registry, so finding, downloading (into ``$HYBRIDS_CACHE`` or ``torch.hub.get_dir()/checkpoints``, with
a progress bar; ``HYBRIDS_OFFLINE=1`` forbids it and the error names the file, its URL and the cache)
and hash checks happen in one place, :func:`hybrids.apps.core.weights.resolve_weights`.

The DINO files (the teacher backbones of Caron et al. 2021, self-supervised on ImageNet-1k; the URLs of
the official ``hubconf.py``) are the official weights of the registered ``medical/dino_vit``
(``create_model("medical/dino_vit", weights="official")``), DIAMANT's attention encoder. With
:func:`load_dino_backbone` they also load into a ViT of another input size or channel count (patch
embedding adapted to the model's channels, position embedding resized to its grid).

**Hash checks.** No full sha256 is published for these files. torchvision's file names carry the first
8 hex digits of the file's sha256 (torch.hub checks that prefix): the ResNet entries record that
prefix (``sha256_prefix``) and it is checked. The official Swin-T and DINO files have no published hash
at all (``sha256_prefix=""``): they are checked by content only (every key and shape the encoder needs
must be there when it is loaded).

**Loading never unpickles arbitrary objects**: files are read by
:func:`hybrids.apps.core.weights.read_weights_file` (safetensors, or a PyTorch file through the
restricted unpickler; a full DINO training checkpoint's ``args`` namespace becomes an inert stub).

Use :func:`load_pretrained_encoders`::

    model = create_model("medical/hiformer_b", in_channels=1, num_classes=14)
    load_pretrained_encoders(model)                                   # both, resolved/downloaded
    load_pretrained_encoders(model, resnet="resnet50-0676ba61.pth", swin=None)   # a local file only

A HiFormer checkpoint of the official code (``torch.save(model.state_dict(), ...)`` in its
``trainer.py``, e.g. ``hiformer-b_best.pth``) loads with :func:`load_official_hiformer` (the keys are the
same; its fixed-size ``attn_mask`` buffers and a ``DataParallel`` ``module.`` prefix are dropped).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybrids.apps.core.errors import CheckpointError, InputError
from hybrids.apps.core.weights import (
    WeightsEntry,
    get_weights,
    load_into,
    read_weights_file,
    register_weights,
    resolve_weights,
)

__all__ = [
    "DINO_WEIGHTS",
    "IMAGENET",
    "dino_backbone_state_dict",
    "dino_vit_config",
    "load_dino_backbone",
    "load_official_hiformer",
    "load_pretrained_encoders",
    "official_hiformer_state_dict",
    "resnet_encoder_state_dict",
    "swin_encoder_state_dict",
]

IMAGENET = "imagenet"  # "the ImageNet file that fits the model"
_IMAGENET_PREPROCESSING = {
    "pretraining": "ImageNet-1k classification, RGB in [0, 1]",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
_DINO_PRETRAINING = "DINO self-supervised on ImageNet-1k (no labels), RGB in [0, 1]"
_IMAGENET_TERMS = (
    "the weights were trained on ImageNet-1k, whose terms of access allow non-commercial research and "
    "educational use only"
)
_DEFAULT_RESNET = {"resnet34": "medical/resnet34_imagenet1k_v1", "resnet50": "medical/resnet50_imagenet1k_v1"}
_DEFAULT_SWIN = "medical/swin_tiny_patch4_window7_224"
DINO_WEIGHTS = {16: "medical/dino_vits16", 8: "medical/dino_vits8"}  # official ViT-S/p, by patch size


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (a bare one, or under ``"model"``/``"state_dict"``), read safely."""
    loaded = read_weights_file(path)
    if isinstance(loaded, dict):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if (
        not isinstance(loaded, dict)
        or not loaded
        or not all(isinstance(v, torch.Tensor) for v in loaded.values())
    ):
        raise CheckpointError(f"{path}: does not contain a state dict of tensors")
    return loaded


# -- key mappings ------------------------------------------------------------------------------------
_PYRAMID = "All2Cross.pyramid."
# torchvision ResNet module -> HiFormer's ``resnet_layers`` index (official ``list(resnet.children())[:7]``)
_RESNET_INDEX = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6}


def resnet_encoder_state_dict(
    state_dict: Mapping[str, torch.Tensor], in_channels: int = 3
) -> dict[str, torch.Tensor]:
    """torchvision ResNet keys -> HiFormer keys (``layer4``/``fc`` dropped; ``p2``/``p3`` aliases filled);
    ``conv1`` is adapted to ``in_channels`` (:func:`hybrids.shared_blocks.resnet.adapt_first_conv`)."""
    from hybrids.shared_blocks.resnet import adapt_first_conv

    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head not in _RESNET_INDEX:
            continue
        if key == "conv1.weight" and value.shape[1] != in_channels:
            value = adapt_first_conv(value, in_channels)
        out[f"{_PYRAMID}resnet_layers.{_RESNET_INDEX[head]}.{rest}"] = value
        if head in ("layer2", "layer3"):
            out[f"{_PYRAMID}p{head[-1]}.{rest}"] = value
    return out


def swin_encoder_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Swin-T keys -> HiFormer keys: stages 1-3 blocks (``attn_mask`` and the constant
    ``relative_position_index`` are dropped: the model computes them),
    and the stage-1/2 patch merging into ``p1_pm``/``p2_pm``, as the official ``PyramidFeatures`` does."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        found = re.match(r"layers\.([0-2])\.(blocks\..*|downsample\..*)$", key)
        if not found or key.endswith(("attn_mask", "relative_position_index")):
            continue
        stage, rest = int(found.group(1)), found.group(2)
        if rest.startswith("blocks."):
            out[f"{_PYRAMID}swin_transformer.layers.{stage}.{rest}"] = value
        elif stage < 2:
            out[f"{_PYRAMID}p{stage + 1}_pm.{rest.removeprefix('downsample.')}"] = value
    return out


def _expected(model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in model.state_dict().items()
        if k.startswith(prefixes) and not k.endswith(("num_batches_tracked", "relative_position_index"))
    }


def _load_part(
    model: nn.Module,
    mapped: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    source: Path,
    what: str,
) -> int:
    missing = sorted(set(expected) - set(mapped))
    wrong = sorted(
        f"{k} {tuple(mapped[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in mapped and mapped[k].shape != v.shape
    )
    if missing or wrong:
        parts = [
            f"{len(keys)} {label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("wrong shape", wrong))
            if keys
        ]
        raise CheckpointError(f"{source}: is not a {what} file that fits this model ({'; '.join(parts)})")
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(mapped[key])
    return len(expected)


def _model_kind(model: nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "cnn_layers", None) != (3, 4, 6) or getattr(cfg, "cnn_base_width", None) != 64:
        return None
    return "resnet50" if cfg.cnn_block == "bottleneck" else "resnet34"


def load_pretrained_encoders(
    model: nn.Module,
    resnet: str | Path | None = IMAGENET,
    swin: str | Path | None = IMAGENET,
    *,
    search_dirs: Iterable[str | Path] = (),
    allow_download: bool | None = None,
) -> dict[str, int]:
    """Copy ImageNet encoder weights into a :class:`~hybrids.apps.medical.hiformer.HiFormer`.

    ``resnet``/``swin``: ``"imagenet"`` (the entry that fits the model: ResNet-34 or -50, Swin-T), an
    entry name, a file path, or ``None`` to skip. Every key the part needs must be in the file with the
    right shape (``CheckpointError`` otherwise); ``conv1`` is adapted to the model's ``in_channels``.
    Returns the number of tensors loaded per part.
    """
    search_dirs = list(search_dirs)
    loaded: dict[str, int] = {}
    if resnet is not None:
        if resnet == IMAGENET:
            kind = _model_kind(model)
            if kind is None:
                raise InputError(
                    "load_pretrained_encoders: this model's CNN is not a ResNet-34/50; pass a file"
                )
            resnet = _DEFAULT_RESNET[kind]
        path, _ = resolve_weights(resnet, search_dirs=search_dirs, allow_download=allow_download)
        mapped = resnet_encoder_state_dict(_read_tensors(path), model.in_channels)
        expected = _expected(model, (f"{_PYRAMID}resnet_layers.", f"{_PYRAMID}p2.", f"{_PYRAMID}p3."))
        loaded["resnet"] = _load_part(model, mapped, expected, path, "ResNet")
    if swin is not None:
        path, _ = resolve_weights(
            _DEFAULT_SWIN if swin == IMAGENET else swin,
            search_dirs=search_dirs,
            allow_download=allow_download,
        )
        mapped = swin_encoder_state_dict(_read_tensors(path))
        expected = _expected(
            model, (f"{_PYRAMID}swin_transformer.", f"{_PYRAMID}p1_pm.", f"{_PYRAMID}p2_pm.")
        )
        loaded["swin"] = _load_part(model, mapped, expected, path, "Swin-T")
    return loaded


def official_hiformer_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official HiFormer state dict in our layout: the same keys less the ``attn_mask`` buffers
    (fixed to 224x224 there, computed from the input here) and a ``module.`` prefix."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if not key.endswith(".attn_mask"):
            out[key] = value
    return out


def load_official_hiformer(model: nn.Module, path: str | Path) -> None:
    """Load an official HiFormer checkpoint (read safely) into ``model`` strictly; the model must have the
    checkpoint's preset, ``in_channels`` and ``num_classes`` (a one-line ``CheckpointError`` lists what
    does not fit)."""
    path = Path(path)
    load_into(model, official_hiformer_state_dict(_read_tensors(path)), path)


# -- DINO ViT backbones --------------------------------------------------------------------------------------
def dino_backbone_state_dict(
    state_dict: Mapping[str, Any], model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """A DINO checkpoint's ViT backbone in our layout (the names are the same).

    Accepts the official backbone files (a bare state dict), a full training checkpoint's ``teacher`` /
    ``student`` dict (``module.`` and ``backbone.`` prefixes dropped, ``head.*`` dropped) and our own
    ``pretrain-dino`` teacher. With ``model`` (a :class:`~hybrids.shared_blocks.vit.VisionTransformer`), the
    patch embedding is adapted to its ``in_chans`` (:func:`hybrids.shared_blocks.resnet.adapt_first_conv`)
    and the position embedding resized (bicubic, DINO's rule) to its ``img_size / patch_size`` grid.
    """
    from hybrids.shared_blocks.resnet import adapt_first_conv
    from hybrids.shared_blocks.vit import resize_pos_embed

    if not isinstance(state_dict, Mapping):
        raise CheckpointError("does not contain a state dict")
    for key in ("teacher", "student", "model", "state_dict"):
        if isinstance(state_dict.get(key), Mapping):
            state_dict = state_dict[key]
            break
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if key.startswith("head.") or not isinstance(value, torch.Tensor):
            continue
        out[key] = value
    if model is not None:
        proj = out.get("patch_embed.proj.weight")
        if proj is not None and proj.dim() == 4 and proj.shape[1] != model.in_chans:
            out["patch_embed.proj.weight"] = adapt_first_conv(proj, model.in_chans)
        pos = out.get("pos_embed")
        if pos is not None and pos.dim() == 3 and pos.shape[1] != model.pos_embed.shape[1]:
            grid = model.img_size // model.patch_size
            try:
                out["pos_embed"] = resize_pos_embed(pos, grid, grid)
            except ValueError as exc:
                raise CheckpointError(f"DINO checkpoint: pos_embed {tuple(pos.shape)}: {exc}") from None
    return out


_DINO_HEADS = {192: 3, 384: 6, 768: 12}  # DINO's ViT-Ti / ViT-S / ViT-B


def dino_vit_config(loaded: Mapping[str, Any]) -> dict[str, Any]:
    """The ``medical/dino_vit`` config fields of a DINO checkpoint (official backbone file or full
    training checkpoint), read from its tensors: the patch size, channels and width from
    ``patch_embed.proj.weight``, the input size from the position-embedding grid, the depth from the
    block count, the MLP ratio and the qkv bias from block 0; the heads (not in the tensors) from the
    DINO family of that width (192: 3, 384: 6, 768: 12)."""
    state = dino_backbone_state_dict(loaded)
    proj, pos = state.get("patch_embed.proj.weight"), state.get("pos_embed")
    if proj is None or proj.dim() != 4 or pos is None or pos.dim() != 3:
        raise CheckpointError("no patch_embed.proj.weight / pos_embed: not a DINO ViT checkpoint")
    dim, chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    grid = math.isqrt(int(pos.shape[1]) - 1)
    if grid * grid != int(pos.shape[1]) - 1:
        raise CheckpointError(f"pos_embed {tuple(pos.shape)} is not a square grid plus the CLS token")
    heads = _DINO_HEADS.get(dim)
    if heads is None:
        raise InputError(
            f"cannot tell the heads of a ViT of width {dim} (DINO's widths: 192, 384, 768); use a teacher "
            "folder of `hybrids medical pretrain-dino`, which records them"
        )
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    return {
        "img_size": grid * patch,
        "patch_size": patch,
        "in_chans": chans,
        "embed_dim": dim,
        "depth": len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
        "num_heads": heads,
        "mlp_ratio": float(fc1.shape[0]) / dim if fc1 is not None else 4.0,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
    }


def load_dino_backbone(
    model: nn.Module,
    weights: str | Path = IMAGENET,
    *,
    search_dirs: Iterable[str | Path] = (),
    allow_download: bool | None = None,
) -> Path:
    """Load DINO ViT weights into ``model`` (a :class:`~hybrids.shared_blocks.vit.VisionTransformer`)
    strictly and return the file used.

    ``weights``: ``"imagenet"`` (the official ViT-S file of the model's patch size,
    ``dino_deitsmall{16,8}_pretrain.pth``; resolved from ``search_dirs`` / the cache, downloaded unless
    offline), an entry name, or a file (an official ``.pth`` or a full DINO checkpoint, read by the
    restricted reader, or a ``.safetensors`` / ``pretrain-dino`` teacher folder). A missing key or a wrong
    shape is one ``CheckpointError`` line. ``create_model("medical/dino_vit", weights=...)`` builds the
    ViT in the file's own shape instead.
    """
    if weights == IMAGENET:
        patch = int(getattr(model, "patch_size", 0))
        if patch not in DINO_WEIGHTS or getattr(model, "embed_dim", None) != 384:
            raise InputError(
                f"load_dino_backbone: official DINO ViT-S weights exist for patch 8/16 and width 384, the "
                f"model has patch {patch} and width {getattr(model, 'embed_dim', None)}; pass a file"
            )
        weights = DINO_WEIGHTS[patch]
    path, entry = resolve_weights(weights, search_dirs=search_dirs, allow_download=allow_download)
    loaded = read_weights_file(path, entry or get_weights(DINO_WEIGHTS[16]))  # DINO's pickle allow-list
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: does not contain a state dict")
    load_into(model, dino_backbone_state_dict(loaded, model), path)
    return path


# -- the registered entries --------------------------------------------------------------------------------
def _dino_entry(patch: int) -> WeightsEntry:
    name = f"dino_deitsmall{patch}_pretrain"
    return WeightsEntry(
        name=DINO_WEIGHTS[patch],
        url=f"https://dl.fbaipublicfiles.com/dino/{name}/{name}.pth",
        sha256_prefix="",  # no hash is published; checked by content when loaded
        license=f"Apache-2.0 (facebookresearch/dino); {_IMAGENET_TERMS}",
        preprocessing={**_IMAGENET_PREPROCESSING, "pretraining": _DINO_PRETRAINING, "image_size": 224},
        description=f"DINO ViT-S/{patch} teacher backbone, self-supervised on ImageNet-1k (Caron et al.)",
        pickle_stubs=("argparse.Namespace",),  # a full training checkpoint stores its args
        to_state_dict=dino_backbone_state_dict,
        to_config=dino_vit_config,
        fit_to_model=lambda state_dict, model: dino_backbone_state_dict(state_dict, model),
    )


for _entry in (
    WeightsEntry(
        name=_DEFAULT_RESNET["resnet34"],
        url="https://download.pytorch.org/models/resnet34-b627a593.pth",
        sha256_prefix="b627a593",
        license=f"BSD-3-Clause (torchvision); {_IMAGENET_TERMS}",
        preprocessing=_IMAGENET_PREPROCESSING,
        description="torchvision ResNet-34 IMAGENET1K_V1 (HiFormer-S/L's CNN)",
    ),
    WeightsEntry(
        name=_DEFAULT_RESNET["resnet50"],
        url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
        sha256_prefix="0676ba61",
        license=f"BSD-3-Clause (torchvision); {_IMAGENET_TERMS}",
        preprocessing=_IMAGENET_PREPROCESSING,
        description="torchvision ResNet-50 IMAGENET1K_V1 (HiFormer-B's CNN)",
    ),
    WeightsEntry(
        name=_DEFAULT_SWIN,
        url="https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth",
        sha256_prefix="",  # no hash is published; checked by content when loaded
        license=f"MIT (microsoft/Swin-Transformer); {_IMAGENET_TERMS}",
        preprocessing=_IMAGENET_PREPROCESSING,
        description="Swin-T ImageNet-1k (HiFormer's Swin stages 1-3)",
    ),
    _dino_entry(16),
    _dino_entry(8),
):
    register_weights(_entry)
