"""ImageNet-pretrained encoders of the medical models, and their loaders (no torchvision or timm import).

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

The DINO files (the teacher backbones of Caron et al. 2021, self-supervised on ImageNet-1k; the URLs of
the official ``hubconf.py``) are DIAMANT's attention encoder and the starting point of ``hybrids medical
pretrain-dino``. They load into :class:`hybrids.shared_blocks.vit.VisionTransformer` with
:func:`load_dino_backbone` (patch embedding adapted to the model's channels, position embedding resized
to its grid).

**Hash checks.** The project's :class:`~hybrids.apps.core.weights.WeightsEntry` requires a full sha256,
which is not published for these files and could not be found offline. torchvision's file names carry
the first 8 hex digits of the file's sha256 (torch.hub checks that prefix), so these entries record the
prefix and :func:`verify_encoder_file` checks it (a full digest is checked instead when one is recorded).
The official Swin-T and DINO files have no published hash at all: they are checked by content only
(every key and shape the encoder needs must be there). Downloads go to the project cache
(``$HYBRIDS_CACHE`` or ``torch.hub.get_dir()/checkpoints``) through ``torch.hub.download_url_to_file``
with the prefix check; ``HYBRIDS_OFFLINE=1`` forbids them and the error names the file, its URL and the
cache folder.

**Loading never unpickles arbitrary objects**: files are read by
:func:`hybrids.apps.core.weights.read_weights_file` (safetensors, or a PyTorch file through
``torch.load(weights_only=True)`` with no extra globals).

Use :func:`load_pretrained_encoders`::

    model = create_model("medical/hiformer_b", in_channels=1, num_classes=14)
    load_pretrained_encoders(model)                                   # both, resolved/downloaded
    load_pretrained_encoders(model, resnet="resnet50-0676ba61.pth", swin=None)   # a local file only

A HiFormer checkpoint of the official code (``torch.save(model.state_dict(), ...)`` in its
``trainer.py``, e.g. ``hiformer-b_best.pth``) loads with :func:`load_official_hiformer` (the keys are the
same; its fixed-size ``attn_mask`` buffers and a ``DataParallel`` ``module.`` prefix are dropped).
"""

from __future__ import annotations

import re
import urllib.error
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybrids.apps.core.errors import CheckpointError, InputError, WeightsError
from hybrids.apps.core.weights import cache_dir, load_into, offline, read_weights_file, sha256_file

__all__ = [
    "ENCODER_WEIGHTS",
    "IMAGENET",
    "EncoderWeights",
    "dino_backbone_state_dict",
    "load_dino_backbone",
    "load_official_hiformer",
    "load_pretrained_encoders",
    "official_hiformer_state_dict",
    "resnet_encoder_state_dict",
    "resolve_encoder_weights",
    "swin_encoder_state_dict",
    "verify_encoder_file",
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


@dataclass(frozen=True)
class EncoderWeights:
    """One pretrained encoder file: where it comes from, how it is checked, its licence."""

    name: str
    url: str
    license: str
    kind: str  # "resnet34" | "resnet50" | "swin_t" | "vit_small16" | "vit_small8"
    sha256: str = ""  # full digest, when known
    sha256_prefix: str = ""  # leading hex digits of the sha256 (torchvision file names carry 8)
    filename: str = ""
    preprocessing: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label, value in (("sha256", self.sha256), ("sha256_prefix", self.sha256_prefix)):
            if value and not re.fullmatch(r"[0-9a-f]+", value):
                raise ValueError(f"encoder weights {self.name!r}: {label} must be lower-case hex")
        if self.sha256 and len(self.sha256) != 64:
            raise ValueError(f"encoder weights {self.name!r}: sha256 must have 64 hex digits")
        if not self.filename:
            object.__setattr__(self, "filename", self.url.rsplit("/", 1)[-1])


ENCODER_WEIGHTS: dict[str, EncoderWeights] = {
    entry.name: entry
    for entry in (
        EncoderWeights(
            name="medical/resnet34_imagenet1k_v1",
            url="https://download.pytorch.org/models/resnet34-b627a593.pth",
            license=f"BSD-3-Clause (torchvision); {_IMAGENET_TERMS}",
            kind="resnet34",
            sha256_prefix="b627a593",
            preprocessing=_IMAGENET_PREPROCESSING,
        ),
        EncoderWeights(
            name="medical/resnet50_imagenet1k_v1",
            url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
            license=f"BSD-3-Clause (torchvision); {_IMAGENET_TERMS}",
            kind="resnet50",
            sha256_prefix="0676ba61",
            preprocessing=_IMAGENET_PREPROCESSING,
        ),
        EncoderWeights(
            name="medical/dino_vits16",
            url="https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
            license=f"Apache-2.0 (facebookresearch/dino); {_IMAGENET_TERMS}",
            kind="vit_small16",
            preprocessing={**_IMAGENET_PREPROCESSING, "pretraining": _DINO_PRETRAINING, "image_size": 224},
        ),
        EncoderWeights(
            name="medical/dino_vits8",
            url="https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth",
            license=f"Apache-2.0 (facebookresearch/dino); {_IMAGENET_TERMS}",
            kind="vit_small8",
            preprocessing={**_IMAGENET_PREPROCESSING, "pretraining": _DINO_PRETRAINING, "image_size": 224},
        ),
        EncoderWeights(
            name="medical/swin_tiny_patch4_window7_224",
            url="https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth",
            license=f"MIT (microsoft/Swin-Transformer); {_IMAGENET_TERMS}",
            kind="swin_t",
            preprocessing=_IMAGENET_PREPROCESSING,
        ),
    )
}
_DEFAULT_RESNET = {"resnet34": "medical/resnet34_imagenet1k_v1", "resnet50": "medical/resnet50_imagenet1k_v1"}
_DEFAULT_SWIN = "medical/swin_tiny_patch4_window7_224"


# -- resolving files ---------------------------------------------------------------------------------
def verify_encoder_file(path: Path, entry: EncoderWeights) -> None:
    """Raise ``WeightsError`` unless ``path`` hashes to the entry's sha256 (or starts with its prefix);
    entries with neither are checked by content when loaded."""
    expected = entry.sha256 or entry.sha256_prefix
    if not expected:
        return
    actual = sha256_file(path)
    if not actual.startswith(expected):
        what = "sha256" if entry.sha256 else "sha256 prefix"
        raise WeightsError(
            f"{path}: {what} mismatch for {entry.name} (expected {expected}, got {actual[: len(expected)]}); "
            "the file is corrupt or not the official one: delete it and download again"
        )


def _entry_for_path(path: Path) -> EncoderWeights | None:
    return next((e for e in ENCODER_WEIGHTS.values() if e.filename == path.name), None)


def resolve_encoder_weights(
    spec: str | Path, *, search_dirs: Iterable[str | Path] = (), allow_download: bool | None = None
) -> tuple[Path, EncoderWeights | None]:
    """``(local file, entry or None)`` for an entry name or a path.

    A path is used as is (hash-checked when it carries an official file name); a name is looked up in
    ``search_dirs``, then in the cache, then downloaded (unless offline) with the prefix check.
    """
    if isinstance(spec, Path) or str(spec) not in ENCODER_WEIGHTS:
        path = Path(spec).expanduser()
        if not path.is_file():
            known = ", ".join(sorted(ENCODER_WEIGHTS))
            raise InputError(f"{path}: no such encoder weights file (or a name: {known})")
        entry = _entry_for_path(path)
        if entry is not None:
            verify_encoder_file(path, entry)
        return path, entry
    entry = ENCODER_WEIGHTS[str(spec)]
    for folder in [*search_dirs, cache_dir()]:
        candidate = Path(folder).expanduser() / entry.filename
        if candidate.is_file():
            verify_encoder_file(candidate, entry)
            return candidate, entry
    target = cache_dir() / entry.filename
    if allow_download is None:
        allow_download = not offline()
    hint = f"download it on a connected machine and pass its path, or copy it to {target}"
    if not allow_download:
        raise WeightsError(
            f"encoder weights {entry.name} ({entry.filename}) are not in the cache ({target.parent}) and "
            f"downloads are disabled (HYBRIDS_OFFLINE); the file is at {entry.url}: {hint}"
        )
    print(f"Downloading {entry.name} from {entry.url}\nLicence: {entry.license}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(entry.url, str(target), hash_prefix=entry.sha256_prefix or None)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise WeightsError(
            f"encoder weights {entry.name} could not be downloaded from {entry.url} ({exc}): {hint}"
        ) from None
    verify_encoder_file(target, entry)
    return target, entry


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
        path, _ = resolve_encoder_weights(resnet, search_dirs=search_dirs, allow_download=allow_download)
        mapped = resnet_encoder_state_dict(_read_tensors(path), model.in_channels)
        expected = _expected(model, (f"{_PYRAMID}resnet_layers.", f"{_PYRAMID}p2.", f"{_PYRAMID}p3."))
        loaded["resnet"] = _load_part(model, mapped, expected, path, "ResNet")
    if swin is not None:
        path, _ = resolve_encoder_weights(
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
_DINO_DEFAULT = {8: "medical/dino_vits8", 16: "medical/dino_vits16"}


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
    offline), an entry name, or a file (an official ``.pth``, read with ``torch.load(weights_only=True)``
    semantics by the restricted reader, or a ``.safetensors`` / ``pretrain-dino`` teacher folder). A
    missing key or a wrong shape is one ``CheckpointError`` line.
    """
    if weights == IMAGENET:
        patch = int(getattr(model, "patch_size", 0))
        if patch not in _DINO_DEFAULT or getattr(model, "embed_dim", None) != 384:
            raise InputError(
                f"load_dino_backbone: official DINO ViT-S weights exist for patch 8/16 and width 384, the "
                f"model has patch {patch} and width {getattr(model, 'embed_dim', None)}; pass a file"
            )
        weights = _DINO_DEFAULT[patch]
    if Path(weights).is_dir():  # a pretrain-dino teacher folder
        path = Path(weights)
    else:
        path, _ = resolve_encoder_weights(weights, search_dirs=search_dirs, allow_download=allow_download)
    loaded = read_weights_file(path)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: does not contain a state dict")
    load_into(model, dino_backbone_state_dict(loaded, model), path)
    return path
