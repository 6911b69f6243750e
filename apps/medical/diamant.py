"""DIAMANT (Yeganeh et al., "DIAMANT: Dual Image-Attention Map Encoders For Medical Image Segmentation",
arXiv 2304.14571, 2023): a purely convolutional dual-encoder U-Net whose second encoder reads the
self-attention maps of a frozen self-supervised ViT (DINO), one channel per head.

    x (b, C, H, W) ---------------------------------------------------> image encoder (U-Net levels)
      |                                                                   skips e0..e(L-2), deep eL-1
      +-> ViT input: channel 0 resized to s^2 (s = vit_map_size or vit_img_size), repeated to vit_in_chans
          -> frozen ViT, last block's CLS attention [:, :, 0, 1:] -> (b, heads, n, n) -> upsampled by p
          -> resized back to (H, W): maps (b, heads, H, W)   [no_grad; optional per-slice cache]
          -> attention encoder (same U-Net levels, own widths) -> deep aL-1
      fusion at the bottleneck: concat(eL-1, aL-1) -> 1x1 conv-norm-ReLU (``fusion="concat"``)
                                or eL-1 + 1x1(aL-1)                      (``fusion="add"``)
      -> U-Net decoder: per level upsample x2, concat the IMAGE encoder's skip, two conv-norm-ReLU
      -> 1x1 head: logits (b, K, H, W)

No official code is public. The paper (and the authors' earlier dual-encoder Y-Net) fixes the layout:
two convolutional encoder branches, image and attention maps (6 channels: DINO ViT-S has 6 heads),
fused at the bottleneck, a U-Net decoder with skip connections. Choices made here, all configurable:

- each encoder level is U-Net's double 3x3 conv-BN-ReLU, levels after the first preceded by 2x2 max
  pooling (``size_divisor = 2 ** (levels - 1)``); the attention branch has its own (by default
  narrower) widths, since six smooth maps carry less detail than the image;
- the decoder takes skips from the image branch only (the issue's reading of the paper); fusion is
  channel concatenation + 1x1 conv, as in Y-Net; ``fusion="add"`` is the cheaper alternative;
- the attention maps are DINO's visualisation recipe: last block, CLS query, patch keys, per head,
  upsampled by the patch size (nearest, as DINO's ``visualize_attention.py``) and then resized
  (bilinear) to the slice; the ViT input is the (z-scored) slice resized to the ViT's training size
  (``vit_img_size``, read from the DINO teacher's config by :func:`load_attention_encoder`) or, with
  ``vit_map_size``, to a larger square whose finer patch grid DINO's own visualisations use (models
  trained at 224 shown at 480; position embeddings interpolated);
- the ViT is a submodule whose weights are in the state dict (a model folder is self-contained), kept in
  eval mode with ``requires_grad=False`` even under ``model.train()``; maps are computed under
  ``torch.no_grad``; the optimiser sees no gradient for it (AdamW/SGD skip parameters without grads);
- ``attention_branch=False`` is the ablation: the same image encoder and decoder without the ViT, the
  attention encoder and the fusion layer;
- ``attention_cache=N`` keeps the patch-level maps of up to N slices (LRU, keyed by a BLAKE2 hash of
  the slice's bytes, shape and dtype; 1.5 KB per slice for 6 heads on an 8x8 patch grid, 6 KB on
  16x16), so the frozen ViT runs once per distinct slice. It pays off whenever the very same slice
  tensor comes back: the validation pass repeated every epoch (same padded, z-scored slices),
  re-evaluation, training without augmentation. With random augmentation every training slice is new
  and the cache only costs a hash per slice (the ViT then runs on every step).

Presets: ``default`` (paper-like: 5 levels 64..1024, DINO ViT-S/16 at 224), ``hippocampus`` (4 levels
12..96, attention branch 8..64, a small ViT trained at 64x64 / patch 8 that a DINO teacher folder
replaces, maps computed at 128x128, i.e. on a 16x16 patch grid), ``hippocampus_no_attention`` (the
ablation) and ``tiny`` (tests). ``vit_input="pad"`` centres the slice in the ViT's square instead of
resizing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError
from hybrids.shared_blocks.conv import ConvNormAct

__all__ = ["DIAMANT", "DIAMANTConfig", "load_attention_encoder", "read_attention_encoder"]

_VIT_FIELDS = {
    "img_size": "vit_img_size",
    "patch_size": "vit_patch_size",
    "in_chans": "vit_in_chans",
    "embed_dim": "vit_embed_dim",
    "depth": "vit_depth",
    "num_heads": "vit_heads",
}


@dataclass
class DIAMANTConfig(ModelConfig):
    """DIAMANT configuration; field defaults are the paper-like model (DINO ViT-S/16 at 224x224, a
    5-level U-Net image encoder)."""

    spatial_dims: int = 2
    in_channels: int = 1
    num_classes: int = 2
    encoder_channels: tuple[int, ...] = (64, 128, 256, 512, 1024)
    attention_channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    attention_branch: bool = True
    fusion: str = "concat"
    norm: str = "batch"
    # the frozen ViT (DINO parameter names) and the input size it sees
    vit_img_size: int = 224
    vit_patch_size: int = 16
    vit_in_chans: int = 3
    vit_embed_dim: int = 384
    vit_depth: int = 12
    vit_heads: int = 6
    vit_mlp_ratio: float = 4.0
    vit_input: str = "resize"  # resize: slice resized to vit_img_size^2; pad: centred zero padding
    # ViT input side for the maps (0: vit_img_size). DINO's visualize_attention.py shows models trained
    # at 224 on 480x480 inputs: a finer patch grid (position embeddings interpolated) resolves anatomy
    vit_map_size: int = 0
    attention_cache: int = 0  # slices whose maps are kept (0: no cache)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "hippocampus": {
            "num_classes": 3,
            "encoder_channels": (12, 24, 48, 96),
            "attention_channels": (8, 16, 32, 64),
            "vit_img_size": 64,
            "vit_patch_size": 8,
            "vit_in_chans": 1,
            "vit_embed_dim": 192,
            "vit_depth": 6,
            "vit_heads": 6,
            "vit_map_size": 128,
            "attention_cache": 4096,
        },
        "hippocampus_no_attention": {
            "num_classes": 3,
            "encoder_channels": (12, 24, 48, 96),
            "attention_channels": (8, 16, 32, 64),
            "attention_branch": False,
        },
        "tiny": {
            "encoder_channels": (8, 16),
            "attention_channels": (4, 8),
            "vit_img_size": 32,
            "vit_patch_size": 8,
            "vit_in_chans": 1,
            "vit_embed_dim": 24,
            "vit_depth": 1,
            "vit_heads": 2,
            "attention_cache": 64,
        },
    }

    def validate(self) -> None:
        if self.spatial_dims != 2:
            raise InputError(f"DIAMANTConfig: DIAMANT is 2-D, got spatial_dims={self.spatial_dims}")
        if not self.encoder_channels or any(c < 1 for c in self.encoder_channels):
            raise InputError(f"DIAMANTConfig: encoder_channels must be positive, got {self.encoder_channels}")
        if self.attention_branch and len(self.attention_channels) != len(self.encoder_channels):
            raise InputError(
                "DIAMANTConfig: attention_channels needs one width per encoder level "
                f"({len(self.encoder_channels)}), got {len(self.attention_channels)}"
            )
        if self.fusion not in ("concat", "add"):
            raise InputError(f"DIAMANTConfig: fusion must be concat or add, got {self.fusion!r}")
        if self.in_channels < 1 or self.num_classes < 2:
            raise InputError("DIAMANTConfig: in_channels >= 1 and num_classes >= 2")
        if self.vit_input not in ("resize", "pad"):
            raise InputError(f"DIAMANTConfig: vit_input must be resize or pad, got {self.vit_input!r}")
        if self.vit_map_size < 0 or self.vit_map_size % self.vit_patch_size:
            raise InputError(
                "DIAMANTConfig: vit_map_size must be 0 or a multiple of vit_patch_size, "
                f"got {self.vit_map_size}"
            )
        if self.vit_img_size % self.vit_patch_size or self.vit_embed_dim % self.vit_heads:
            raise InputError(
                "DIAMANTConfig: vit_img_size must be a multiple of vit_patch_size, vit_embed_dim of vit_heads"
            )

    @property
    def map_size(self) -> int:
        """Side of the square ViT input the attention maps are computed on."""
        return self.vit_map_size or self.vit_img_size

    def vit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``hybrids.shared_blocks.vit.VisionTransformer``."""
        kwargs = {key: getattr(self, field) for key, field in _VIT_FIELDS.items()}
        kwargs["mlp_ratio"] = self.vit_mlp_ratio
        return kwargs


def _double_conv(cin: int, cout: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        ConvNormAct(cin, cout, 3, spatial_dims=2, norm=norm, act="relu"),
        ConvNormAct(cout, cout, 3, spatial_dims=2, norm=norm, act="relu"),
    )


class _Encoder(nn.Module):
    """U-Net encoder: ``(b, cin, H, W) -> [(b, c0, H, W), (b, c1, H/2, W/2), ...]``."""

    def __init__(self, cin: int, widths: tuple[int, ...], norm: str) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for i, width in enumerate(widths):
            self.levels.append(_double_conv(cin if i == 0 else widths[i - 1], width, norm))

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


class _UpBlock(nn.Module):
    """Upsample to the skip's size, concatenate it, double conv:
    ``(b, cin, h, w), (b, cs, 2h, 2w) -> (b, cout, 2h, 2w)``."""

    def __init__(self, cin: int, cskip: int, cout: int, norm: str) -> None:
        super().__init__()
        self.conv = _double_conv(cin + cskip, cout, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class DIAMANT(nn.Module):
    """``forward(x (b, in_channels, H, W)) -> logits (b, num_classes, H, W)``; H and W must be multiples
    of ``size_divisor``. ``attention_maps(x) -> (b, heads, H, W)`` are the maps the second branch reads."""

    def __init__(self, config: DIAMANTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.spatial_dims = 2
        self.in_channels = config.in_channels
        self.num_classes = config.num_classes
        self.size_divisor = 2 ** (len(config.encoder_channels) - 1)
        widths = tuple(config.encoder_channels)
        self.image_encoder = _Encoder(config.in_channels, widths, config.norm)
        self.attention_encoder: nn.Module | None = None
        self.attention_branch: _Encoder | None = None
        self.fusion: nn.Module | None = None
        if config.attention_branch:
            self._build_attention_side()
        self.decoder = nn.ModuleList(
            _UpBlock(widths[i + 1], widths[i], widths[i], config.norm)
            for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], config.num_classes, 1)
        self._cache: OrderedDict[bytes, Tensor] = OrderedDict()
        self.cache_hits = self.cache_misses = 0

    # -- the frozen ViT and the attention branch -----------------------------------------------------------
    def _build_attention_side(self) -> None:
        from hybrids.shared_blocks.vit import VisionTransformer

        config = self.config
        vit = VisionTransformer(**config.vit_kwargs())
        vit.requires_grad_(False)
        self.attention_encoder = vit.eval()
        self.attention_branch = _Encoder(config.vit_heads, tuple(config.attention_channels), config.norm)
        deep, adeep = config.encoder_channels[-1], config.attention_channels[-1]
        if config.fusion == "concat":
            self.fusion = ConvNormAct(deep + adeep, deep, 1, spatial_dims=2, norm=config.norm, act="relu")
        else:
            self.fusion = nn.Conv2d(adeep, deep, 1)
        self._cache = OrderedDict()

    def set_attention_encoder(self, vit_config: dict[str, Any], state_dict: dict[str, Tensor]) -> None:
        """Replace the ViT by one of ``vit_config`` (keys of :attr:`DIAMANTConfig` ``vit_*`` fields)
        holding ``state_dict``; rebuilds the attention branch and the fusion (fresh weights) when the
        ViT's shape changes, so call it before training."""
        if not self.config.attention_branch:
            raise InputError("DIAMANT: this model has no attention branch (attention_branch=False)")
        new = self.config.replace(**vit_config)
        if new != self.config:
            self.config = new
            new.validate()
            self._build_attention_side()
        try:
            missing, unexpected = self.attention_encoder.load_state_dict(state_dict, strict=False)
        except RuntimeError as exc:  # size mismatches
            first = str(exc).strip().splitlines()[-1].strip()
            raise InputError(f"DIAMANT: ViT weights do not fit ViT {new.vit_kwargs()}: {first}") from None
        if missing or unexpected:
            raise InputError(
                f"DIAMANT: ViT weights do not fit ViT {new.vit_kwargs()}: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )
        self.attention_encoder.requires_grad_(False).eval()
        self._cache.clear()

    def train(self, mode: bool = True) -> DIAMANT:
        super().train(mode)
        if self.attention_encoder is not None:
            self.attention_encoder.eval()  # frozen: dropout off, no statistics updated
        return self

    def _padding(self, h: int, w: int) -> tuple[int, int, int, int] | None:
        """``F.pad`` widths centring an ``h x w`` slice in the ViT's square, or None (resize instead)."""
        s = self.config.map_size
        if self.config.vit_input != "pad" or h > s or w > s:
            return None
        top, left = (s - h) // 2, (s - w) // 2
        return (left, s - w - left, top, s - h - top)

    @torch.no_grad()
    def _patch_maps(self, x: Tensor) -> Tensor:
        """``(b, C, H, W) -> (b, heads, s/p, s/p)``: DINO's patch-level maps of channel 0 (repeated to
        ``vit_in_chans``) resized or padded to the square ViT input ``s x s`` (``s = map_size``)."""
        s, (h, w) = self.config.map_size, x.shape[2:]
        v = x[:, :1].float()
        pad = self._padding(h, w)
        v = (
            F.interpolate(v, size=(s, s), mode="bilinear", align_corners=False)
            if pad is None
            else F.pad(v, pad)
        )
        vit_in = v.expand(-1, self.config.vit_in_chans, -1, -1)
        return self.attention_encoder.attention_maps(vit_in, upsample=False).float()

    def _to_slice(self, maps: Tensor, h: int, w: int) -> Tensor:
        """Patch-level maps -> ``(b, heads, h, w)``: nearest upsampling by p (DINO's visualisation),
        then bilinear resizing (``vit_input="resize"``) or cropping (``"pad"``) back to the slice."""
        p = self.config.vit_patch_size
        maps = maps.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
        pad = self._padding(h, w)
        if pad is None:
            return F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
        return maps[:, :, pad[2] : pad[2] + h, pad[0] : pad[0] + w]

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> Tensor:
        """DINO attention maps of each slice: ``(b, C, H, W) -> (b, heads, H, W)``. With
        ``attention_cache > 0`` the patch-level maps (``heads x (s/p)^2`` floats, 1.5 KB for 6 heads
        on 8x8 patches) are kept per slice; the upsampling is redone on every call."""
        if self.attention_encoder is None:
            raise InputError("DIAMANT: this model has no attention branch (attention_branch=False)")
        h, w = x.shape[2:]
        limit = self.config.attention_cache
        if limit <= 0:
            return self._to_slice(self._patch_maps(x), h, w)
        keys = [self._key(s) for s in x]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        self.cache_hits += len(keys) - len(todo)
        self.cache_misses += len(todo)
        if todo:
            fresh = self._patch_maps(x[todo]).cpu()
            for i, m in zip(todo, fresh, strict=True):
                self._cache[keys[i]] = m
        out = torch.stack([self._cache[k] for k in keys]).to(x.device)
        for k in keys:
            self._cache.move_to_end(k)
        while len(self._cache) > limit:
            self._cache.popitem(last=False)
        return self._to_slice(out, h, w)

    @staticmethod
    def _key(s: Tensor) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(str((tuple(s.shape), s.dtype)).encode())
        h.update(s.detach().cpu().contiguous().numpy().tobytes())
        return h.digest()

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DIAMANT: expected (b, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if any(n % self.size_divisor for n in x.shape[2:]):
            raise ValueError(
                f"DIAMANT: spatial size {tuple(x.shape[2:])} must be a multiple of {self.size_divisor}"
            )
        feats = self.image_encoder(x)
        y = feats[-1]
        if self.attention_branch is not None:
            maps = self.attention_maps(x).to(x.dtype)
            a = self.attention_branch(maps)[-1]
            if self.config.fusion == "concat":
                y = self.fusion(torch.cat([y, a], dim=1))
            else:
                y = y + self.fusion(a)
        for block, skip in zip(self.decoder, feats[-2::-1], strict=True):
            y = block(y, skip)
        return self.head(y)

    def load_attention_encoder(self, path: str | Path) -> None:
        """Method form of :func:`load_attention_encoder` (the ``--init-attention-encoder`` hook)."""
        load_attention_encoder(self, path)


# -- loading DINO weights -----------------------------------------------------------------------------------
def read_attention_encoder(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(vit_* config fields, ViT state dict)`` of a DINO teacher: a ``pretrain-dino`` teacher folder (a
    ``medical/dino_vit`` checkpoint) or its ``model.safetensors``, or an official DINO ``.pth`` / full
    training checkpoint (read safely; its shape from its tensors): see
    :func:`hybrids.apps.medical.dino_vit.load_teacher`. A teacher folder also gives the input size
    (``image_size``, which must be the ViT's ``img_size``) and ``vit_input`` (resize / pad)."""
    from hybrids.apps.medical.dino_vit import VIT_INPUTS, load_teacher

    vit, info = load_teacher(path)
    cfg = vit.config
    size = info.get("image_size", cfg.img_size)
    if int(size) != cfg.img_size:
        raise InputError(f"{path}: image_size {size} differs from the ViT's img_size {cfg.img_size}")
    out: dict[str, Any] = {field: int(getattr(cfg, key)) for key, field in _VIT_FIELDS.items()}
    out["vit_mlp_ratio"] = float(cfg.mlp_ratio)
    mode = info.get("vit_input")
    if mode is not None:
        if mode not in VIT_INPUTS:
            raise InputError(f"{path}: vit_input must be resize or pad, got {mode!r}")
        out["vit_input"] = mode
    return out, vit.state_dict()


def load_attention_encoder(model: DIAMANT, path: str | Path) -> DIAMANT:
    """Load the frozen ViT of ``model`` from a DINO teacher folder / file (see
    :func:`read_attention_encoder`); the model's config takes the teacher's ViT shape and input size."""
    vit_config, state = read_attention_encoder(path)
    model.set_attention_encoder(vit_config, state)
    return model
