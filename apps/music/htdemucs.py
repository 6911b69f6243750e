"""Hybrid Transformer Demucs (HT Demucs), numerically equivalent to Meta's ``demucs`` 4.1.0.

Rouard, Massa, Défossez, "Hybrid Transformers for Music Source Separation", ICASSP 2023
(arXiv:2211.08553), built on Hybrid Demucs (Défossez, ISMIR MDX workshop 2021, arXiv:2111.03600).

The model is a dual U-Net (paper Fig. 1):

- a **spectral branch**: STFT of the mix with complex-as-channels (CaC, Choi et al. 2020), i.e. the
  real and imaginary parts of every audio channel become two input channels; ``depth`` encoder
  layers convolve along frequency only (stride 4), each followed by a residual DConv branch that
  mixes information along time; a learnt frequency embedding is added after the first layer;
- a **temporal branch**: the same encoder layers as 1-D convolutions over the waveform;
- a **cross-domain transformer encoder** (paper section "Architecture") between the two encoders and decoders:
  layers alternate self-attention within each domain and cross-attention from one domain to the
  other; each uses pre-norm, layer scale (Touvron et al. 2021), a GELU feed-forward and a final
  group norm; the spectral tokens get a 2-D sinusoidal embedding, the temporal ones a 1-D one;
- mirrored **decoders** with skip connections; the spectral output is turned back into a
  waveform with the inverse STFT and the two branches are summed.

Parameter names follow demucs exactly, so ``demucs.htdemucs.HTDemucs.state_dict()`` (and the
official ``.th`` packages, see ``weights.py``) load with ``strict=True``.

Shapes: ``forward(mix (b, audio_channels, samples)) -> (b, sources, audio_channels, samples)``.

Inference without autograd (``torch.no_grad`` / ``inference_mode``) takes faster CPU paths with
the same maths (float32 within ~2e-5 of the plain path, which autograd always uses, and nearer a
float64 forward than it): oneDNN linear layers with fused GELU and residual sums and blocked
attention (``hybrids.kernels``), the attention biases, score scale and layer scales folded into the
projections, a channels-last spectral branch, per-frequency-bin blocks that stay in cache, in-place
DConv residuals whose group norms take their statistics from the hidden input's moments,
transposed convs as phase convolutions, blocked layout changes around the (i)STFT, an inverse STFT
as slab-wise overlap-adds. Under ``torch.autocast`` (bfloat16) the temporal branch is kept in
float32 (see ``forward``), and the folded transformer weights are cast once and cached per module
(rebuilt when a parameter changes; ``_folded``).
In eval mode, as in demucs, an input shorter than the training segment is zero-padded to it and
the output trimmed back; a longer one must be split into segments by the caller.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError
from hybrids.kernels.attention.blocked import blocked_attention, preferred_impl
from hybrids.kernels.attention.sdpa import attention
from hybrids.kernels.linear import compute_dtype, linear, onednn_available
from hybrids.kernels.stft import istft, stft
from hybrids.shared_blocks.positional import sinusoidal_embedding_1d, sinusoidal_embedding_2d
from hybrids.shared_blocks.transformer import LayerScale

__all__ = [
    "SOURCES_4",
    "SOURCES_6",
    "CrossDomainTransformer",
    "DConv",
    "DecoderLayer",
    "EncoderLayer",
    "HTDemucs",
    "HTDemucsConfig",
    "Level",
    "istft",
    "plan_levels",
    "skip_init",
    "stft",
]

SOURCES_4 = ("drums", "bass", "other", "vocals")
SOURCES_6 = ("drums", "bass", "other", "vocals", "guitar", "piano")

# demucs 4.1.0 ``HTDemucs.__init__``'s defaults (every keyword but the required ``sources``): what a
# kwarg omitted from ``HTDemucs(**kwargs)`` (e.g. a ``.th`` package's ``kwargs``) takes. They are not
# the released recipe (``HTDemucsConfig``'s defaults): e.g. dconv_mode=1, bottom_channels=0, segment=10.
_DEMUCS_DEFAULTS: dict[str, Any] = {
    "audio_channels": 2,
    "channels": 48,
    "channels_time": None,
    "growth": 2,
    "nfft": 4096,
    "wiener_iters": 0,
    "end_iters": 0,
    "wiener_residual": False,
    "cac": True,
    "depth": 4,
    "rewrite": True,
    "multi_freqs": None,
    "multi_freqs_depth": 3,
    "freq_emb": 0.2,
    "emb_scale": 10,
    "emb_smooth": True,
    "kernel_size": 8,
    "time_stride": 2,
    "stride": 4,
    "context": 1,
    "context_enc": 0,
    "norm_starts": 4,
    "norm_groups": 4,
    "dconv_mode": 1,
    "dconv_depth": 2,
    "dconv_comp": 8,
    "dconv_init": 1e-3,
    "bottom_channels": 0,
    "t_layers": 5,
    "t_emb": "sin",
    "t_hidden_scale": 4.0,
    "t_heads": 8,
    "t_dropout": 0.0,
    "t_max_positions": 10000,
    "t_norm_in": True,
    "t_norm_in_group": False,
    "t_group_norm": False,
    "t_norm_first": True,
    "t_norm_out": True,
    "t_max_period": 10000.0,
    "t_weight_decay": 0.0,
    "t_lr": None,
    "t_layer_scale": True,
    "t_gelu": True,
    "t_weight_pos_embed": 1.0,
    "t_sin_random_shift": 0,
    "t_cape_mean_normalize": True,
    "t_cape_augment": True,
    "t_cape_glob_loc_scale": (5000.0, 1.0, 1.4),
    "t_sparse_self_attn": False,
    "t_sparse_cross_attn": False,
    "t_mask_type": "diag",
    "t_mask_random_seed": 42,
    "t_sparse_attn_window": 500,
    "t_global_window": 100,
    "t_sparsity": 0.95,
    "t_auto_sparsity": False,
    "t_cross_first": False,
    "rescale": 0.1,
    "samplerate": 44100,
    "segment": 10,
    "use_train_segment": True,
}
# demucs HTDemucs kwargs we do not implement, with their (inert) defaults, which the releases keep.
_UNSUPPORTED_DEMUCS_KWARGS: dict[str, Any] = {
    key: _DEMUCS_DEFAULTS[key]
    for key in (
        "wiener_iters",
        "end_iters",
        "wiener_residual",
        "multi_freqs",
        "t_emb",
        "t_sin_random_shift",
        "t_sparse_self_attn",
        "t_sparse_cross_attn",
        "t_auto_sparsity",
    )
}
# demucs kwargs that change nothing at inference or in the parameters (training-only settings).
_IGNORED_DEMUCS_KWARGS = {
    "t_max_positions",  # only for t_emb="scaled"
    "t_cape_mean_normalize",
    "t_cape_augment",
    "t_cape_glob_loc_scale",
    "t_mask_type",
    "t_mask_random_seed",
    "t_sparse_attn_window",
    "t_global_window",
    "t_sparsity",
    "t_weight_decay",
    "t_lr",
    "multi_freqs_depth",
}


@dataclass
class HTDemucsConfig(ModelConfig):
    """Hyper-parameters of HT Demucs; field names are demucs's ``HTDemucs`` kwargs.

    Defaults are the released ``htdemucs`` model (package ``955717e8``: 41,984,456 parameters), not
    demucs's ``HTDemucs`` class defaults (``_DEMUCS_DEFAULTS``, used by :meth:`from_demucs_kwargs`).
    ``segment`` is the training segment in seconds, either an exact fraction ``(num, den)`` (the
    released models use 39/5 s) or a float. Groups fields (``t_norm_in_group``, ``t_group_norm``,
    ``t_norm_out``) are numbers of groups, 0 = off; demucs passes booleans (True = 1 group).
    """

    # Data
    sources: tuple[str, ...] = SOURCES_4
    audio_channels: int = 2
    samplerate: int = 44100
    segment: tuple[int, int] | float = (39, 5)
    use_train_segment: bool = True
    # Channels
    channels: int = 48
    channels_time: int | None = None
    growth: int = 2
    # STFT
    nfft: int = 4096
    cac: bool = True
    # Main structure
    depth: int = 4
    rewrite: bool = True
    # Frequency branch
    freq_emb: float = 0.2
    emb_scale: float = 10.0
    emb_smooth: bool = True
    # Convolutions
    kernel_size: int = 8
    time_stride: int = 2
    stride: int = 4
    context: int = 1
    context_enc: int = 0
    # Normalisation
    norm_starts: int = 4
    norm_groups: int = 4
    # DConv residual branch
    dconv_mode: int = 3
    dconv_depth: int = 2
    dconv_comp: float = 8.0
    dconv_init: float = 1e-3
    # Before the transformer
    bottom_channels: int = 512
    # Cross-domain transformer
    t_layers: int = 5
    t_hidden_scale: float = 4.0
    t_heads: int = 8
    t_dropout: float = 0.02
    t_norm_in: bool = True
    t_norm_in_group: int = 0
    t_group_norm: int = 0
    t_norm_first: bool = True
    t_norm_out: int = 1
    t_max_period: float = 10000.0
    t_layer_scale: bool = True
    t_gelu: bool = True
    t_weight_pos_embed: float = 1.0
    t_cross_first: bool = False
    # Weight init
    rescale: float = 0.1

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "htdemucs": {},
        # No bottom_channels: 27,414,996 parameters, which fits the released file's size (54,996,327
        # bytes of float16); its kwargs are not published outside the file.
        "htdemucs_6s": {"sources": SOURCES_6, "bottom_channels": 0},
        # ~160k parameters; 1 s of stereo audio at 44.1 kHz in well under a second on one CPU core.
        "tiny": {
            "segment": (1, 1),
            "channels": 8,
            "nfft": 512,
            "depth": 3,
            "norm_starts": 2,
            "dconv_comp": 4.0,
            "bottom_channels": 32,
            "t_layers": 3,
            "t_heads": 2,
        },
    }

    # -- derived quantities --------------------------------------------------------------------
    @property
    def segment_seconds(self) -> Fraction | float:
        """The training segment: a ``Fraction`` when given as ``(num, den)``, else a float."""
        if isinstance(self.segment, tuple):
            return Fraction(*self.segment)
        return self.segment

    @property
    def segment_length(self) -> int:
        """Training segment in samples, ``int(segment * samplerate)`` as demucs computes it."""
        return int(self.segment_seconds * self.samplerate)

    @property
    def transformer_channels(self) -> int:
        """Width of the cross-domain transformer (``bottom_channels`` when set)."""
        return self.bottom_channels or self.channels * self.growth ** (self.depth - 1)

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        name = type(self).__name__
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise InputError(f"{name}: sources must be non-empty and distinct, got {self.sources}")
        if isinstance(self.segment, tuple):
            if len(self.segment) != 2 or not all(isinstance(v, int) and v > 0 for v in self.segment):
                raise InputError(f"{name}: segment must be (num, den) positive integers, got {self.segment}")
        elif not (isinstance(self.segment, int | float) and self.segment > 0):
            raise InputError(f"{name}: segment must be positive, got {self.segment!r}")
        for field in ("audio_channels", "samplerate", "channels", "depth", "kernel_size", "stride"):
            if getattr(self, field) < 1:
                raise InputError(f"{name}: {field} must be >= 1, got {getattr(self, field)}")
        if not self.cac:
            raise InputError(
                f"{name}: only complex-as-channels (cac=True) is implemented, as in every released HT Demucs"
            )
        if self.nfft < 8 or self.nfft % 8 != 0:
            raise InputError(f"{name}: nfft must be a positive multiple of 8, got {self.nfft}")
        if self.dconv_mode not in (0, 1, 2, 3):
            raise InputError(f"{name}: dconv_mode must be 0, 1, 2 or 3, got {self.dconv_mode}")
        levels = plan_levels(self)
        if self.dconv_mode and self.dconv_depth:
            narrowest = min(min(lv.out_f, lv.out_t) for lv in levels)
            if int(narrowest / self.dconv_comp) < 1:
                raise InputError(
                    f"{name}: dconv_comp={self.dconv_comp} leaves no hidden channel for a layer of "
                    f"{narrowest} channels; lower dconv_comp or raise channels"
                )
        for lv in levels:
            if lv.merge and self.stride ** (lv.index + 1) != self.nfft // 4:
                raise InputError(
                    f"{name}: the frequency axis collapses at layer {lv.index}, where the time branch "
                    f"(stride {self.stride ** (lv.index + 1)}) does not match the STFT hop ({self.nfft // 4})"
                )
        if self.t_layers > 0:
            if any(not lv.freq for lv in levels):
                raise InputError(
                    f"{name}: depth={self.depth} runs out of frequency bins before the transformer "
                    f"(nfft={self.nfft}); lower depth or set t_layers=0"
                )
            if levels[-1].out_t != levels[-1].out_f:
                raise InputError(
                    f"{name}: the transformer needs both branches equally wide at the bottom, got "
                    f"{levels[-1].out_f} (spectral) and {levels[-1].out_t} (temporal); check channels_time"
                )
            dim = self.transformer_channels
            if dim % 4 != 0 or dim % self.t_heads != 0:
                raise InputError(
                    f"{name}: the transformer width {dim} must be a multiple of 4 and of "
                    f"t_heads={self.t_heads}"
                )

    # -- demucs interoperability ---------------------------------------------------------------
    def to_demucs_kwargs(self) -> dict[str, Any]:
        """Keyword arguments building the same model with ``demucs.htdemucs.HTDemucs``."""
        kwargs = self.to_dict()
        kwargs["sources"] = list(self.sources)
        kwargs["segment"] = self.segment_seconds
        kwargs["t_norm_out"] = bool(self.t_norm_out) if self.t_norm_out in (0, 1) else self.t_norm_out
        return kwargs

    @classmethod
    def from_demucs_kwargs(cls, kwargs: dict[str, Any]) -> HTDemucsConfig:
        """The config of a demucs ``HTDemucs(**kwargs)`` (e.g. a ``.th`` package's ``kwargs``).

        A kwarg left out takes demucs's class default (``_DEMUCS_DEFAULTS``), as in demucs, not this
        config's (the released recipe's); ``sources`` is required. Settings this implementation lacks
        (Wiener filtering, multi-band layers, sparse attention, non-sinusoidal embeddings) raise
        ``InputError`` unless they hold their inert value.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {k: v for k, v in _DEMUCS_DEFAULTS.items() if k in fields}
        for key, value in kwargs.items():
            if key in fields:
                values[key] = value
            elif key in _UNSUPPORTED_DEMUCS_KWARGS:
                inert = _UNSUPPORTED_DEMUCS_KWARGS[key]
                if value != inert and not (key == "multi_freqs" and not value):
                    raise InputError(f"demucs HTDemucs: {key}={value!r} is not supported (only {inert!r})")
            elif key not in _IGNORED_DEMUCS_KWARGS:
                raise InputError(f"demucs HTDemucs: unknown keyword argument {key!r}")
        if "sources" not in kwargs:
            raise InputError("demucs HTDemucs: 'sources' is required (demucs has no default for it)")
        if not isinstance(values["sources"], list | tuple):
            raise InputError(f"demucs HTDemucs: sources must be a list of names, got {values['sources']!r}")
        values["sources"] = tuple(values["sources"])
        segment = values.get("segment")
        if isinstance(segment, Fraction):
            values["segment"] = (segment.numerator, segment.denominator)
        elif isinstance(segment, int) and not isinstance(segment, bool):
            values["segment"] = (segment, 1)
        for key in ("t_norm_in_group", "t_group_norm", "t_norm_out"):
            if key in values:
                values[key] = int(values[key])
        return cls.from_dict(values)


@dataclass(frozen=True)
class Level:
    """Shapes of one encoder/decoder level, as demucs lays them out (index 0 is outermost).

    ``freq``: a spectral (2-D, stride along frequency) layer, else a time-only layer on the merged
    branches; ``merge``: the layer collapsing the last frequency bins, where the temporal encoder
    output is injected into the spectral one (the temporal layers of this level are ``empty``).
    ``*_f`` are spectral-branch channels, ``*_t`` temporal ones.
    """

    index: int
    freq: bool
    kernel: int
    stride: int
    pad: bool
    merge: bool
    norm: bool
    in_f: int
    out_f: int
    in_t: int
    out_t: int
    dec_out_f: int
    dec_out_t: int
    bins_out: int


def plan_levels(cfg: HTDemucsConfig) -> list[Level]:
    """Per-level channels, kernels and strides (demucs ``HTDemucs.__init__``'s loop, made explicit)."""
    cac = 2 if cfg.cac else 1
    n_sources = len(cfg.sources)
    in_t, in_f = cfg.audio_channels, cfg.audio_channels * cac
    out_t, out_f = cfg.channels_time or cfg.channels, cfg.channels
    bins = cfg.nfft // 2
    levels = []
    for index in range(cfg.depth):
        freq = bins > 1
        kernel, stride = (cfg.kernel_size, cfg.stride) if freq else (2 * cfg.time_stride, cfg.time_stride)
        merge = freq and bins <= cfg.kernel_size
        if merge:  # one last convolution over all remaining bins; both branches get one width
            kernel = bins
            out_f = out_t = max(out_t, out_f)
        if freq:
            bins = 1 if bins <= cfg.kernel_size else bins // cfg.stride
        scale = n_sources if index == 0 else 1
        levels.append(
            Level(
                index=index,
                freq=freq,
                kernel=kernel,
                stride=stride,
                pad=not merge,
                merge=merge,
                norm=index >= cfg.norm_starts,
                in_f=in_f,
                out_f=out_f,
                in_t=in_t,
                out_t=out_t,
                dec_out_f=in_f * scale,
                dec_out_t=in_t * scale,
                bins_out=bins,
            )
        )
        in_t, in_f = out_t, out_f
        out_t, out_f = int(cfg.growth * out_t), int(cfg.growth * out_f)
    return levels


# -- inference fast paths (CPU) -------------------------------------------------------------------
# Measured on the project's 2-core AMD EPYC (Zen 5, AVX-512, avx512_bf16, no AMX), torch 2.13: MKL's
# sgemm runs at ~110 GFLOP/s per core there, oneDNN at ~200-250 GFLOP/s (float32) and ~450 GFLOP/s
# (bfloat16), so the transformer's products go through the oneDNN kernels of ``hybrids.kernels``
# (``linear`` with fused GELU / residual sum, ``blocked_attention``) when nothing needs a gradient.
def _autocast_off(device_type: str) -> Any:
    """A context disabling autocast on ``device_type`` when it is on (else a no-op context)."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.autocast(device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        pass
    return contextlib.nullcontext()


def fast_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, gelu: bool = False) -> Tensor:
    """``F.linear(x, weight, bias)``, then the exact GELU when ``gelu`` (:func:`hybrids.kernels.linear`)."""
    return linear(x, weight, bias, activation="gelu" if gelu else "none")


# module -> {(key, dtype): (stamp of the source parameters, folded weights)}; kept beside the
# modules (not in their __dict__) so that deepcopy, pickling and state dicts never see it.
_FOLDED: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()


# -- private torch calls, each behind a probe with a public fallback ------------------------------
def _probe_gelu_inplace() -> Any:
    """torch's in-place exact GELU (``torch._C._nn.gelu_``, private) when it exists here and computes
    what ``F.gelu`` does, else ``None``."""
    fn = getattr(getattr(torch._C, "_nn", None), "gelu_", None)
    if fn is None:
        return None
    try:
        probe = torch.linspace(-4.0, 4.0, 17)
        expected = F.gelu(probe)
        fn(probe)
        return fn if torch.equal(probe, expected) else None
    except (RuntimeError, TypeError):
        return None


def _probe_tensor_version() -> bool:
    """Whether tensors expose their in-place update counter (``Tensor._version``, private)."""
    try:
        t = torch.zeros(1)
        before = t._version
        t.add_(1)
        return isinstance(before, int) and t._version > before
    except (AttributeError, RuntimeError, TypeError):
        return False


_GELU_INPLACE = _probe_gelu_inplace()
_TENSOR_VERSION = _probe_tensor_version()


def gelu_(x: Tensor) -> Tensor:
    """Exact GELU of ``x`` in place (no second buffer where torch's private in-place kernel exists;
    the public ``F.gelu`` then a copy otherwise). Returns ``x``."""
    if _GELU_INPLACE is not None:
        _GELU_INPLACE(x)
        return x
    return x.copy_(F.gelu(x))


def _folded(owner: nn.Module, key: str, dtype: torch.dtype, sources: tuple[Tensor, ...], build: Any) -> Any:
    """``build()`` (inference weights folded from ``sources``), cast to ``dtype`` and kept for ``owner``.

    Under autocast (bfloat16) the folded transformer weights are cast once and reused by every
    segment until a source parameter changes (new storage, dtype or in-place update, e.g.
    ``load_state_dict``); in the parameters' own dtype they are rebuilt on each call (no second
    copy of the weights in memory). ``build() -> tuple[Tensor | None, ...]``.
    """
    if all(t.dtype == dtype for t in sources):
        return build()
    if not _TENSOR_VERSION:  # an in-place update could not be seen: fold on every call, keep nothing
        with _autocast_off(sources[0].device.type):
            return tuple(None if t is None else t.to(dtype) for t in build())
    stamp = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
    cache = _FOLDED.setdefault(owner, {})
    hit = cache.get((key, dtype))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with _autocast_off(sources[0].device.type):  # folded in the parameters' precision, rounded once
        value = tuple(None if t is None else t.to(dtype) for t in build())
    cache[(key, dtype)] = (stamp, value)
    return value


def _inference(x: Tensor) -> bool:
    """Whether the oneDNN transformer path applies to ``x`` (CPU, no autograd, float32/bfloat16)."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and onednn_available(compute_dtype(x))


# -- signal helpers -----------------------------------------------------------------------------
def reflect_pad(x: Tensor, left: int, right: int) -> Tensor:
    """Reflect-pad the last axis, first zero-padding inputs too short to reflect (demucs ``pad1d``)."""
    length = x.shape[-1]
    widest = max(left, right)
    if length <= widest:
        extra = widest - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        x = F.pad(x, (extra_left, extra_right))
        left, right = left - extra_left, right - extra_right
    return F.pad(x, (left, right), mode="reflect")


# -- convolutional blocks -----------------------------------------------------------------------
class ChannelScale(nn.Module):
    """Layer scale over channels-first tensors: ``(b, c, t) -> scale[c] * x`` (DConv's LayerScale)."""

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale[:, None] * x


class DConv(nn.Module):
    """Residual branch of dilated 1-D convolutions over time (Hybrid Demucs, Défossez 2021).

    Each of ``depth`` residual steps: ``conv3 (dilation 2^d, channels -> channels/compress)``,
    ``GroupNorm(1)``, GELU, ``conv1 -> 2 channels``, ``GroupNorm(1)``, GLU, layer scale. A negative
    ``depth`` disables dilation. ``(n, channels, t) -> (n, channels, t)``.
    """

    def __init__(self, channels: int, compress: float, depth: int, init: float) -> None:
        super().__init__()
        hidden = int(channels / compress)
        dilate = depth > 0
        self.layers = nn.ModuleList()
        for d in range(abs(depth)):
            dilation = 2**d if dilate else 1
            self.layers.append(
                nn.Sequential(  # indices 0..6 are the demucs parameter names
                    nn.Conv1d(channels, hidden, 3, dilation=dilation, padding=dilation),
                    nn.GroupNorm(1, hidden),
                    nn.GELU(),
                    nn.Conv1d(hidden, 2 * channels, 1),
                    nn.GroupNorm(1, 2 * channels),
                    nn.GLU(1),
                    ChannelScale(channels, init),
                )
            )

    def forward(self, x: Tensor, *, inplace: bool = False) -> Tensor:
        """``inplace=True`` lets inference (no autograd) overwrite ``x`` instead of allocating."""
        if torch.is_grad_enabled():
            for step in self.layers:
                x = x + step(x)
            return x
        if not inplace:
            x = x.clone()
        for step in self.layers:
            conv1, norm1, _, conv2, norm2, _, scale = step
            h = norm1(conv1(x))
            gelu_(h)  # exact GELU, in place
            if isinstance(norm2, nn.GroupNorm) and norm2.num_groups == 1 and norm2.affine:
                _glu_residual_from_statistics(x, h, conv2, norm2, scale.scale)
            else:
                # x += scale * GLU(...), rounded as the reference path (product, then sum)
                x.add_(F.glu(norm2(conv2(h)), 1).mul_(scale.scale[:, None]))
        return x


# A DConv step's 1x1 conv expands its few hidden channels (c / 8) to 2c, then a group norm reads that
# twice and the GLU once more: over the temporal branch's long sequences (48-96 channels x 86k steps
# per segment) that is tens of MB streamed through RAM, and in the per-bin blocks a product with a
# tiny inner dimension that oneDNN runs slowly (bfloat16 above all). In inference the group norm's
# statistics come from the hidden input's moments instead, the norm folds into the 1x1 conv, and
# the rest runs in cache-sized blocks of time steps (measured on one core: level-0 temporal DConv
# 87 ms -> 27 ms; per-bin DConvs 0-20 % faster in float32, 15-35 % in bfloat16).
_TIME_BLOCK = 4096


def _glu_residual_from_statistics(
    x: Tensor, h: Tensor, conv: nn.Conv1d, norm: nn.GroupNorm, layer_scale: Tensor
) -> None:
    """``x += layer_scale * GLU(norm(conv(h)))`` in place, ``conv`` 1x1, ``norm`` one group, without
    materialising ``conv(h)``.

    ``x (n, c, t)``, ``h (n, k, t)``. The mean and variance of ``g = W h + b`` over its ``2c`` channels
    and ``t`` steps follow from the moments of ``h`` (float64): ``sum g = sum_c (W_c . m + t b_c)`` and
    ``sum g^2 = sum_c (W_c S W_c^T + 2 b_c W_c . m + t b_c^2)`` with ``m = sum_t h_t``,
    ``S = sum_t h_t h_t^T``. The normalisation, its affine map and the layer scale then fold into
    the 1x1 conv's weights, one set per sample.
    """
    n, c, t = x.shape
    weight = conv.weight[..., 0].double()  # (2c, k)
    bias = conv.bias.double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    hd = h.double()
    m = hd.sum(-1)  # (n, k)
    gram = torch.bmm(hd, hd.transpose(1, 2))  # (n, k, k)
    count = weight.shape[0] * t
    total = m @ weight.sum(0) + t * bias.sum()
    squares = (gram * (weight.T @ weight)).sum((1, 2)) + 2 * (m @ (weight.T @ bias)) + t * bias.square().sum()
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0.0)
    factor = torch.rsqrt(var + norm.eps)[:, None] * norm.weight.double()  # (n, 2c)
    shift = factor * (bias - mean[:, None]) + norm.bias.double()  # (n, 2c)
    folded = factor[:, :, None] * weight  # (n, 2c, k)
    ls = layer_scale.double()
    folded[:, :c] *= ls[:, None]
    shift[:, :c] *= ls
    folded, shift = folded.to(x.dtype), shift.to(x.dtype)[:, :, None]
    for start in range(0, t, _TIME_BLOCK):
        g = torch.baddbmm(shift, folded, h[:, :, start : start + _TIME_BLOCK])  # (n, 2c, block)
        x[:, :, start : start + _TIME_BLOCK].addcmul_(g[:, :c], g[:, c:].sigmoid_())


# Inference on CPU is memory-bound outside the transformer: at the outer levels every activation
# is tens of MB (48-96 channels x 512 bins x 336 frames per segment), each op streams it through
# RAM, and glibc serves buffers above 32 MB with fresh mmap()s whose pages fault in on first touch.
# Where an op sequence works on each frequency bin independently (DConv, 1x1 convs, GLU, GELU),
# it runs on blocks of bins of about this size, which stay in cache and reuse the same small
# buffers (measured on one core: the level-0 DConv of one segment 256 ms -> 40 ms).
# Between those blocks the spectral branch is kept channels-last (memory ``(b, bins, frames, c)``):
# oneDNN's convolutions run on that layout without reordering their input and output, measured
# 1.4-2x faster in float32 and 2-4x in bfloat16 for the outer levels' strided, 3x3 and phase convs.
_BLOCK_BYTES = 4 << 20
_CHANNELS_LAST = torch.channels_last


def _channels_last(x: Tensor) -> Tensor:
    """``x (b, c, bins, t)`` in channels-last memory (a no-op when it already is)."""
    return x.contiguous(memory_format=_CHANNELS_LAST)


def _map_bins(fn: Any, y: Tensor, out_channels: int, add: Tensor | None = None) -> Tensor:
    """``fn`` applied to every frequency bin of ``y (b, c, bins, t)``: ``(b, out_channels, bins, t)``.

    ``fn`` maps ``(rows, c, t) -> (rows, out_channels, t)`` (rows = bins, independently) and may
    overwrite its input; bins are fed in cache-sized blocks (inference only). ``add (out_channels,
    bins)`` is added to the result (broadcast over time).
    """
    b, c, bins, t = y.shape
    rows = max(1, _BLOCK_BYTES // (2 * max(c, out_channels) * t * y.element_size()))
    layout = _CHANNELS_LAST if y.is_contiguous(memory_format=_CHANNELS_LAST) else torch.contiguous_format
    out: Tensor | None = None
    for i in range(b):
        for start in range(0, bins, rows):
            block = fn(y[i, :, start : start + rows].transpose(0, 1).contiguous())
            if add is not None:
                block += add[:, start : start + rows].t()[:, :, None]
            if out is None:
                out = torch.empty(
                    b, out_channels, bins, t, dtype=block.dtype, device=block.device, memory_format=layout
                )
            out[i, :, start : start + rows] = block.transpose(0, 1)
    assert out is not None
    return out


def _conv_transpose_freq(conv: nn.ConvTranspose2d, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``conv(x)`` for a transposed conv along frequency (kernel ``(k, 1)``, stride ``(s, 1)``,
    ``k`` a multiple of ``s``) as one stride-1 conv computing the ``s`` output phases, interleaved.

    Output row ``s * i + r`` is ``sum_j W[:, :, r + s * j] x[i - j]`` (``j < k / s``): a regular
    ``(k / s, 1)`` convolution of the zero-padded input with ``s * c_out`` filters. torch runs
    these transposed convolutions on CPU through a slower path (measured 1.3-2.6x at the outer
    level); the sums are the same up to float rounding. ``dtype``: the result's (default: the conv's,
    which is autocast's), converted in the interleaving copy.
    """
    (k, _), (s, _) = conv.kernel_size, conv.stride
    c_in, c_out = conv.in_channels, conv.out_channels
    taps = k // s
    # weight (c_in, c_out, k, 1) -> (s * c_out, c_in, taps, 1);
    # tap t of phase r is W[..., r + s * (taps - 1 - t)]
    weight = conv.weight[..., 0].view(c_in, c_out, taps, s).flip(2).permute(3, 1, 0, 2)
    weight = weight.reshape(s * c_out, c_in, taps, 1)
    bias = None if conv.bias is None else conv.bias.repeat(s)
    if x.is_contiguous(memory_format=_CHANNELS_LAST):
        weight = weight.contiguous(memory_format=_CHANNELS_LAST)
    y = F.conv2d(x, weight, bias, padding=(taps - 1, 0))  # (b, s * c_out, rows, t)
    b, _, rows, t = y.shape
    if y.is_contiguous(memory_format=_CHANNELS_LAST):  # (b, rows, t, s, c_out) -> (b, rows, s, t, c_out)
        out = y.new_empty(b, rows, s, t, c_out, dtype=dtype or y.dtype)
        out.copy_(y.permute(0, 2, 3, 1).view(b, rows, t, s, c_out).transpose(2, 3))
        return out.view(b, rows * s, t, c_out).permute(0, 3, 1, 2)
    y = y.view(b, s, c_out, rows, t).permute(0, 2, 3, 1, 4).reshape(b, c_out, rows * s, t)
    return y if dtype is None else y.to(dtype)


def _conv_transpose_time(conv: nn.ConvTranspose1d, x: Tensor) -> Tensor:
    """``conv(x)`` for a 1-D transposed conv (``kernel`` a multiple of ``stride``) as the phase
    convolution of :func:`_conv_transpose_freq`: ``(b, c_in, t) -> (b, c_out, (t - 1) * s + k)``."""
    k, s = conv.kernel_size[0], conv.stride[0]
    c_in, c_out = conv.in_channels, conv.out_channels
    taps = k // s
    weight = conv.weight.view(c_in, c_out, taps, s).flip(2).permute(3, 1, 0, 2).reshape(s * c_out, c_in, taps)
    bias = None if conv.bias is None else conv.bias.repeat(s)
    y = F.conv1d(x, weight, bias, padding=taps - 1)  # (b, s * c_out, t + taps - 1)
    b, _, rows = y.shape
    return y.view(b, s, c_out, rows).permute(0, 2, 3, 1).reshape(b, c_out, rows * s)


def _phases_apply(conv: nn.Module) -> bool:
    """Whether :func:`_conv_transpose_freq` (2-D) or :func:`_conv_transpose_time` (1-D) computes
    ``conv`` (inference only)."""
    if isinstance(conv, nn.ConvTranspose1d):  # measured faster only with few output channels
        return (
            not torch.is_grad_enabled()
            and conv.out_channels * conv.stride[0] <= conv.in_channels
            and conv.kernel_size[0] % conv.stride[0] == 0
            and conv.padding == (0,)
            and conv.output_padding == (0,)
            and conv.dilation == (1,)
            and conv.groups == 1
        )
    return (
        isinstance(conv, nn.ConvTranspose2d)
        and not torch.is_grad_enabled()
        and conv.kernel_size[1] == 1
        and conv.stride[1] == 1
        and conv.kernel_size[0] % conv.stride[0] == 0
        and conv.padding == (0, 0)
        and conv.output_padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def _dconv_over_bins(dconv: DConv, y: Tensor, *, glu: bool = False) -> Tensor:
    """Apply a DConv along time to every frequency bin of ``y (b, c, bins, t)`` independently;
    ``glu=True`` applies ``F.glu(y, 1)`` first (``y`` then has ``2 c`` channels)."""
    if glu and not torch.is_grad_enabled():
        return _map_bins(lambda rows: dconv(F.glu(rows, 1), inplace=True), y, y.shape[1] // 2)
    if glu:
        y = F.glu(y, 1)
    b, c, bins, t = y.shape
    if not torch.is_grad_enabled():
        return _map_bins(lambda rows: dconv(rows, inplace=True), y, c)
    flat = y.permute(0, 2, 1, 3).reshape(b * bins, c, t)
    return dconv(flat).view(b, bins, c, t).permute(0, 2, 1, 3)


def _norm(enabled: bool, groups: int, channels: int) -> nn.Module:
    return nn.GroupNorm(groups, channels) if enabled else nn.Identity()


class EncoderLayer(nn.Module):
    """One encoder level (Hybrid Demucs Fig. 2): strided conv, norm, GELU, DConv, 1x1 conv + GLU.

    ``freq=True``: ``(b, c_in, bins, t) -> (b, c_out, bins', t)`` with a ``(kernel, 1)`` conv along
    frequency; ``freq=False``: ``(b, c_in, t) -> (b, c_out, t')``, the input right-padded to a
    multiple of the stride. ``empty`` keeps only the first conv (temporal layer of the merge level).
    ``inject`` (the temporal encoder output, at the merge level) is added after the first conv.
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        *,
        kernel: int,
        stride: int,
        freq: bool,
        pad: bool,
        norm: bool,
        norm_groups: int,
        context: int,
        rewrite: bool,
        dconv: DConv | None,
        empty: bool = False,
    ) -> None:
        super().__init__()
        self.freq, self.stride, self.empty = freq, stride, empty
        padding = kernel // 4 if pad else 0
        if freq:
            self.conv = nn.Conv2d(chin, chout, (kernel, 1), (stride, 1), (padding, 0))
        else:
            self.conv = nn.Conv1d(chin, chout, kernel, stride, padding)
        if empty:
            return
        conv = nn.Conv2d if freq else nn.Conv1d
        self.norm1 = _norm(norm, norm_groups, chout)
        self.rewrite = conv(chout, 2 * chout, 1 + 2 * context, 1, context) if rewrite else None
        if rewrite:
            self.norm2 = _norm(norm, norm_groups, 2 * chout)
        self.dconv = dconv

    def forward(self, x: Tensor, inject: Tensor | None = None, add: Tensor | None = None) -> Tensor:
        """``add (c_out, bins)``, for a ``freq`` layer: added to the output (frequency embedding)."""
        if not self.freq:
            if x.dim() == 4:  # (b, c, 1, t) after the merge level
                x = x.flatten(1, 2)
            remainder = x.shape[-1] % self.stride
            if remainder:
                x = F.pad(x, (0, self.stride - remainder))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:
            if inject.shape[-1] != y.shape[-1]:
                raise RuntimeError(f"cannot merge branches of lengths {inject.shape[-1]} and {y.shape[-1]}")
            y = y + (inject[:, :, None] if inject.dim() == 3 and y.dim() == 4 else inject)
        y = self.norm1(y)
        if self.freq and not torch.is_grad_enabled() and self._per_bin_tail():
            return _map_bins(self._tail_per_bin, y, self.conv.out_channels, add)
        y = self._tail(y)
        return y if add is None else y + add[None, :, :, None]

    def _tail(self, y: Tensor) -> Tensor:
        y = F.gelu(y)
        if self.dconv is not None:
            y = _dconv_over_bins(self.dconv, y) if self.freq else self.dconv(y, inplace=True)
        if self.rewrite is None:
            return y
        if not self.freq and not torch.is_grad_enabled() and self._per_bin_tail():
            return _pointwise_glu(self.rewrite, y)
        return F.glu(self.norm2(self.rewrite(y)), dim=1)

    def _per_bin_tail(self) -> bool:
        """Whether GELU, DConv, rewrite and GLU act on each frequency bin alone (1x1 rewrite, no
        group norm after it), so that they can run block by block (:func:`_map_bins`)."""
        return self.rewrite is None or (
            self.rewrite.kernel_size in ((1, 1), (1,)) and isinstance(self.norm2, nn.Identity)
        )

    def _tail_per_bin(self, rows: Tensor) -> Tensor:
        """GELU, DConv, 1x1 rewrite conv and GLU on ``(bins, c, t)`` rows (overwrites ``rows``)."""
        gelu_(rows)
        if self.dconv is not None:
            rows = self.dconv(rows, inplace=True)
        if self.rewrite is not None:
            rows = F.glu(F.conv1d(rows, self.rewrite.weight[..., 0], self.rewrite.bias), dim=1)
        return rows


def _pointwise_glu(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """``F.glu(conv(x), 1)`` for a 1x1 ``conv`` on ``x (b, c, t)``, in cache-sized blocks of time
    steps (inference): ``(b, c_out / 2, t)``."""
    b, _, t = x.shape
    weight, bias = conv.weight[..., 0], conv.bias
    half = weight.shape[0] // 2
    out = x.new_empty(b, half, t)
    for i in range(b):
        for start in range(0, t, _TIME_BLOCK):
            block = x[i, :, start : start + _TIME_BLOCK]
            g = torch.mm(weight, block) if bias is None else torch.addmm(bias[:, None], weight, block)
            torch.mul(g[:half], g[half:].sigmoid_(), out=out[i, :, start : start + _TIME_BLOCK])
    return out


class DecoderLayer(nn.Module):
    """One decoder level, the mirror of :class:`EncoderLayer`.

    ``forward(x, skip, length) -> (out, pre)``: adds the skip connection, applies 1x1 conv + GLU
    and DConv, then a transposed strided conv; ``pre`` is the tensor before that last conv (the
    merge level hands it to the temporal decoder). ``freq=True`` crops ``kernel // 4`` bins on
    each side; ``freq=False`` crops the time axis to ``length``. No GELU after the ``last``
    (outermost) level. ``empty`` keeps only the transposed conv and its norm.
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        *,
        kernel: int,
        stride: int,
        freq: bool,
        pad: bool,
        norm: bool,
        norm_groups: int,
        context: int,
        rewrite: bool,
        dconv: DConv | None,
        last: bool,
        empty: bool = False,
    ) -> None:
        super().__init__()
        self.freq, self.chin, self.last, self.empty = freq, chin, last, empty
        self.pad = kernel // 4 if pad else 0
        if freq:
            self.conv_tr = nn.ConvTranspose2d(chin, chout, (kernel, 1), (stride, 1))
        else:
            self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel, stride)
        self.norm2 = _norm(norm, norm_groups, chout)
        if empty:
            return
        conv = nn.Conv2d if freq else nn.Conv1d
        self.rewrite = conv(chin, 2 * chin, 1 + 2 * context, 1, context) if rewrite else None
        if rewrite:
            self.norm1 = _norm(norm, norm_groups, 2 * chin)
        self.dconv = dconv

    def forward(self, x: Tensor, skip: Tensor | None, length: int) -> tuple[Tensor, Tensor]:
        if self.freq and x.dim() == 3:  # coming from a time-only level: restore the bins axis
            x = x.view(x.shape[0], self.chin, -1, x.shape[-1])
        if self.freq and not torch.is_grad_enabled():
            x = _channels_last(x)  # (see _BLOCK_BYTES); after the transformer it is token-major
        if self.empty:
            y = x
        else:
            x = x + skip
            if self.freq and self.dconv is not None and not torch.is_grad_enabled():
                # inference: GLU and DConv on per-bin blocks (GLU is slow on channels-last tensors)
                if self.rewrite is None:
                    y = _dconv_over_bins(self.dconv, x)
                else:
                    y = _dconv_over_bins(self.dconv, self.norm1(self.rewrite(x)), glu=True)
            else:
                y = F.glu(self.norm1(self.rewrite(x)), dim=1) if self.rewrite is not None else x
                if self.dconv is not None:
                    y = _dconv_over_bins(self.dconv, y) if self.freq else self.dconv(y, inplace=True)
        if not _phases_apply(self.conv_tr):
            z = self.conv_tr(y)
        elif self.freq:  # the last level's output goes to the inverse STFT in the parameters' dtype
            z = _conv_transpose_freq(self.conv_tr, y, self.conv_tr.weight.dtype if self.last else None)
        else:
            z = _conv_transpose_time(self.conv_tr, y)
        z = self.norm2(z)
        if self.freq:
            if self.pad:
                z = z[..., self.pad : -self.pad, :]
        else:
            z = z[..., self.pad : self.pad + length]
        if not self.last:
            z = F.gelu(z)
        return z, y


class FrequencyEmbedding(nn.Module):
    """Learnt embedding of frequency bins (Isik et al. 2020), boosted by ``scale``.

    ``forward(bins (n,)) -> (n, dim)`` equals ``embedding(bins) * scale``; the table is stored
    divided by ``scale`` (an effective learning-rate boost) and, with ``smooth``, initialised as a
    normalised cumulative sum so neighbouring bins start close.
    """

    def __init__(self, num_bins: int, dim: int, scale: float, smooth: bool) -> None:
        super().__init__()
        self.scale = scale
        self.embedding = nn.Embedding(num_bins, dim)
        if _SKIP_INIT.get():  # values to be loaded (see skip_init)
            return
        with torch.no_grad():
            weight = self.embedding.weight
            if smooth:
                counts = torch.arange(1, num_bins + 1, device=weight.device, dtype=weight.dtype)
                weight.copy_(weight.cumsum(dim=0) / counts.sqrt()[:, None])
            weight.div_(scale)

    def forward(self, bins: Tensor) -> Tensor:
        return self.embedding(bins) * self.scale


def _rescale_convs(module: nn.Module, reference: float) -> None:
    """Demucs's init trick: divide each conv's weight and bias by ``sqrt(std(weight) / reference)``."""
    convs = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, convs):
                factor = (sub.weight.std() / reference) ** 0.5
                sub.weight.div_(factor)
                if sub.bias is not None:
                    sub.bias.div_(factor)


# -- cross-domain transformer (paper section "Architecture", Fig. 1) ------------------------------------
class TokenGroupNorm(nn.GroupNorm):
    """GroupNorm over ``(b, tokens, c)`` sequences: with 1 group, one mean/var per sample over all
    tokens and channels (demucs ``MyGroupNorm``)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():  # (torch 2.13's CPU group norm backward crashes on the view below)
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        # inference: (b, c, n, 1) channels-last is x's own memory, no transposed copy in or out
        return super().forward(x.unsqueeze(2).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).squeeze(2)


class PackedMultiheadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters (packed ``in_proj_weight``
    ``(3 dim, dim)``, ``in_proj_bias``, ``out_proj``), computed by :func:`hybrids.kernels.attention`.

    ``forward(query (b, lq, dim), context (b, lk, dim) | None) -> (b, lq, dim)``; ``context=None``
    is self-attention.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(self, query: Tensor, context: Tensor | None = None) -> Tensor:
        d = self.dim
        if context is None:  # one GEMM for q, k and v
            q, k, v = fast_linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            q = fast_linear(query, self.in_proj_weight[:d], self.in_proj_bias[:d])
            k, v = fast_linear(context, self.in_proj_weight[d:], self.in_proj_bias[d:]).chunk(2, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        dropout = self.dropout if self.training else 0.0
        if not dropout and _inference(q):
            out = blocked_attention(q, k, v, impl=preferred_impl()).transpose(1, 2)  # (b, lq, heads, d / h)
        else:
            out = attention(q, k, v, dropout_p=dropout).transpose(1, 2)  # (b, lq, heads, dim / heads)
        b, lq = out.shape[:2]
        return fast_linear(out.reshape(b, lq, d), self.out_proj.weight, self.out_proj.bias)

    def add_to(
        self, residual: Tensor, query: Tensor, context: Tensor | None = None, gamma: Tensor | None = None
    ) -> Tensor:
        """``residual + gamma * self(query, context)`` (``gamma (dim,)`` or None) in eval mode.

        Inference (no autograd, CPU, oneDNN) takes a path with the same maths: the score scale is
        folded into the query projection; the key bias is dropped (it adds ``q . b_k`` to all scores
        of a query, which softmax ignores); the value bias moves behind the attention into the
        output bias (each row of probabilities sums to 1); values are projected straight into the
        ``(dim, keys)`` layout the attention reads; ``gamma`` is folded into the output projection
        and the residual sum fused into it.
        """
        if self.training or not _inference(query):
            out = self(query, context)
            return residual + (out if gamma is None else out * gamma)
        d, heads = self.dim, self.heads
        source = query if context is None else context
        w_qk, b_qk, w_v, w_out, b_out = self._folded_weights(compute_dtype(query), gamma)
        if context is None:  # q and k from one GEMM
            qk = linear(query, w_qk, b_qk)
            q, k = qk[..., :d], qk[..., d:]
        else:
            q = linear(query, w_qk[:d], b_qk[:d])
            k = linear(context, w_qk[d:])
        b, lk = source.shape[:2]
        # v^T = W_v source^T: (b, dim, lk), i.e. (b, heads, dim / heads, lk) rows
        vt = torch.stack([linear(w_v, source[i]) for i in range(b)]) if b > 1 else None
        vt = linear(w_v, source[0])[None] if vt is None else vt
        out = blocked_attention(
            self._heads(q),
            self._heads(k),
            vt.view(b, heads, d // heads, lk).transpose(-2, -1),
            scale=1.0,
            impl=preferred_impl(),
        )
        lq = out.shape[2]
        out = out.transpose(1, 2).reshape(b, lq, d)
        return linear(out, w_out, b_out, residual=residual)

    def _folded_weights(self, dtype: torch.dtype, gamma: Tensor | None) -> tuple[Tensor, ...]:
        """``(w_qk, b_qk, w_v, w_out, b_out)`` of :meth:`add_to` in ``dtype``: the score scale folded
        into the query rows, the key bias dropped, the value bias moved into ``b_out``, ``gamma``
        folded into the output projection (cached across calls under autocast, see :func:`_folded`)."""
        d = self.dim
        weight, bias = self.in_proj_weight, self.in_proj_bias

        def build() -> tuple[Tensor, ...]:
            scale = 1.0 / math.sqrt(d // self.heads)
            w_qk = torch.cat([weight[:d] * scale, weight[d : 2 * d]])
            b_qk = torch.cat([bias[:d] * scale, bias.new_zeros(d)])
            w_out = self.out_proj.weight
            b_out = torch.addmv(self.out_proj.bias, w_out, bias[2 * d :])
            if gamma is not None:
                w_out, b_out = w_out * gamma[:, None], b_out * gamma
            return w_qk, b_qk, weight[2 * d :], w_out, b_out

        sources = (weight, bias, self.out_proj.weight, self.out_proj.bias)
        if gamma is not None:
            sources += (gamma,)
        return _folded(self, f"attention:{gamma is not None}", dtype, sources, build)


class _TransformerLayerBase(nn.Module):
    """Feed-forward, dropouts, norms and layer scales shared by the self- and cross-attention layers."""

    def __init__(self, cfg: HTDemucsConfig, dim: int, n_norms: int) -> None:
        super().__init__()
        hidden = int(dim * cfg.t_hidden_scale)
        self.norm_first = cfg.t_norm_first
        self.activation = F.gelu if cfg.t_gelu else F.relu
        self.linear1 = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(cfg.t_dropout)
        self.linear2 = nn.Linear(hidden, dim)
        for i in range(1, n_norms + 1):
            norm = TokenGroupNorm(cfg.t_group_norm, dim) if cfg.t_group_norm else nn.LayerNorm(dim)
            self.add_module(f"norm{i}", norm)
        self.norm_out = TokenGroupNorm(cfg.t_norm_out, dim) if cfg.t_norm_first and cfg.t_norm_out else None
        self.gamma_1 = LayerScale(dim, 1e-4) if cfg.t_layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(dim, 1e-4) if cfg.t_layer_scale else nn.Identity()
        self.dropout1 = nn.Dropout(cfg.t_dropout)
        self.dropout2 = nn.Dropout(cfg.t_dropout)

    def _feed_forward(self, x: Tensor) -> Tensor:
        if self.activation is F.gelu and not self.training:  # eval: dropouts are identities
            h = fast_linear(x, self.linear1.weight, self.linear1.bias, gelu=True)
            return fast_linear(h, self.linear2.weight, self.linear2.bias)
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def _fast(self, x: Tensor) -> bool:
        """Whether the pre-norm inference path (fused residual sums, :meth:`PackedMultiheadAttention.add_to`)
        applies: eval mode, GELU, no autograd, oneDNN on CPU."""
        return self.norm_first and not self.training and self.activation is F.gelu and _inference(x)

    def _gamma(self, index: int) -> Tensor | None:
        scale = getattr(self, f"gamma_{index}")
        return scale.scale if isinstance(scale, LayerScale) else None

    def _feed_forward_add(self, x: Tensor, h: Tensor) -> Tensor:
        """``x + gamma_2 * FF(h)`` in inference, gamma folded into ``linear2``, the sum fused into it."""
        gamma = self._gamma(2)

        def build() -> tuple[Tensor, ...]:
            w, b = self.linear2.weight, self.linear2.bias
            if gamma is not None:
                w, b = w * gamma[:, None], b * gamma
            return self.linear1.weight, self.linear1.bias, w, b

        sources = (self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias)
        if gamma is not None:
            sources += (gamma,)
        w1, b1, w2, b2 = _folded(self, "feed_forward", compute_dtype(h), sources, build)
        h = linear(h, w1, b1, activation="gelu")
        return linear(h, w2, b2, residual=x)

    def _finish(self, x: Tensor) -> Tensor:
        return x if self.norm_out is None else self.norm_out(x)


class SelfAttentionLayer(_TransformerLayerBase):
    """Transformer encoder layer within one domain: ``(b, n, dim) -> (b, n, dim)``.

    Pre-norm (``t_norm_first``): ``x + g1 * SA(norm1 x)``, then ``x + g2 * FF(norm2 x)``, then the
    output group norm; post-norm otherwise. Parameter names match ``nn.TransformerEncoderLayer``.
    """

    def __init__(self, cfg: HTDemucsConfig, dim: int) -> None:
        super().__init__(cfg, dim, n_norms=2)
        self.self_attn = PackedMultiheadAttention(dim, cfg.t_heads, cfg.t_dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self._fast(x):
            x = self.self_attn.add_to(x, self.norm1(x), gamma=self._gamma(1))
            return self._finish(self._feed_forward_add(x, self.norm2(x)))
        if self.norm_first:
            x = x + self.gamma_1(self.dropout1(self.self_attn(self.norm1(x))))
            x = x + self.gamma_2(self._feed_forward(self.norm2(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
            return x
        x = self.norm1(x + self.gamma_1(self.dropout1(self.self_attn(x))))
        return self.norm2(x + self.gamma_2(self._feed_forward(x)))


class CrossAttentionLayer(_TransformerLayerBase):
    """Cross-domain layer: tokens of one branch attend to those of the other.

    ``forward(x (b, n, dim), other (b, m, dim)) -> (b, n, dim)``; pre-norm:
    ``x + g1 * CA(norm1 x, norm2 other)``, then ``x + g2 * FF(norm3 x)``, then the output norm.
    """

    def __init__(self, cfg: HTDemucsConfig, dim: int) -> None:
        super().__init__(cfg, dim, n_norms=3)
        self.cross_attn = PackedMultiheadAttention(dim, cfg.t_heads, cfg.t_dropout)

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        if self._fast(x):
            x = self.cross_attn.add_to(x, self.norm1(x), self.norm2(other), gamma=self._gamma(1))
            return self._finish(self._feed_forward_add(x, self.norm3(x)))
        if self.norm_first:
            x = x + self.gamma_1(self.dropout1(self.cross_attn(self.norm1(x), self.norm2(other))))
            x = x + self.gamma_2(self._feed_forward(self.norm3(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
            return x
        x = self.norm1(x + self.gamma_1(self.dropout1(self.cross_attn(x, other))))
        return self.norm2(x + self.gamma_2(self._feed_forward(x)))


class CrossDomainTransformer(nn.Module):
    """The cross-domain transformer encoder (paper section "Architecture", Fig. 1).

    ``forward(x (b, c, bins, frames), xt (b, c, t)) -> same shapes``. Spectral tokens are ordered
    frame-major ``(frames * bins)`` and get a 2-D sinusoidal embedding, temporal tokens a 1-D one
    (both after ``norm_in``, scaled by ``t_weight_pos_embed``). Layer ``i`` is self-attention in
    both branches when ``i % 2 == (1 if t_cross_first else 0)``, else cross-attention, the
    temporal branch attending to the spectral tokens from before the layer.
    """

    def __init__(self, cfg: HTDemucsConfig, dim: int) -> None:
        super().__init__()
        self.max_period = cfg.t_max_period
        self.weight_pos_embed = cfg.t_weight_pos_embed
        self.self_parity = 1 if cfg.t_cross_first else 0
        if cfg.t_norm_in:
            self.norm_in, self.norm_in_t = nn.LayerNorm(dim), nn.LayerNorm(dim)
        elif cfg.t_norm_in_group:
            self.norm_in = TokenGroupNorm(cfg.t_norm_in_group, dim)
            self.norm_in_t = TokenGroupNorm(cfg.t_norm_in_group, dim)
        else:
            self.norm_in, self.norm_in_t = nn.Identity(), nn.Identity()
        self.layers = nn.ModuleList()  # spectral branch
        self.layers_t = nn.ModuleList()  # temporal branch
        for index in range(cfg.t_layers):
            layer = SelfAttentionLayer if index % 2 == self.self_parity else CrossAttentionLayer
            self.layers.append(layer(cfg, dim))
            self.layers_t.append(layer(cfg, dim))

    def forward(self, x: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
        b, c, bins, frames = x.shape
        pos_2d = sinusoidal_embedding_2d(c, bins, frames, self.max_period, device=x.device)
        pos_2d = pos_2d.permute(2, 1, 0).reshape(frames * bins, c).to(x.dtype)
        x = x.permute(0, 3, 2, 1).reshape(b, frames * bins, c)
        x = self.norm_in(x) + self.weight_pos_embed * pos_2d

        steps = xt.shape[-1]
        pos_1d = sinusoidal_embedding_1d(steps, c, max_period=self.max_period, device=xt.device).to(xt.dtype)
        xt = self.norm_in_t(xt.transpose(1, 2)) + self.weight_pos_embed * pos_1d

        for index, (layer, layer_t) in enumerate(zip(self.layers, self.layers_t)):
            if index % 2 == self.self_parity:
                x, xt = layer(x), layer_t(xt)
            else:
                x, xt = layer(x, xt), layer_t(xt, x)
        x = x.view(b, frames, bins, c).permute(0, 3, 2, 1)
        return x, xt.transpose(1, 2)


# -- the model ------------------------------------------------------------------------------------
_SKIP_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("hybrids_htdemucs_skip_init", default=False)


class _NoRandomInit(TorchFunctionMode):
    """Makes the random initialisers of ``torch.nn.init`` and the in-place random fills no-ops.

    A torch function mode, so it applies to the current thread only. (Building on the meta device
    instead would import torch's symbolic-shape machinery, sympy included, on first use.)
    """

    _SKIPPED = frozenset(
        {
            nn.init.uniform_,
            nn.init.normal_,
            nn.init.trunc_normal_,
            nn.init.kaiming_uniform_,
            nn.init.kaiming_normal_,
            nn.init.xavier_uniform_,
            nn.init.xavier_normal_,
            torch.Tensor.uniform_,
            torch.Tensor.normal_,
        }
    )

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in self._SKIPPED:  # the tensor to fill, left as it is
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Within this context (in this thread), :class:`HTDemucs` models, and bags of them, are built
    without initial values: parameters are allocated (``torch.empty``) but neither randomly
    initialised nor rescaled, so they hold whatever the memory held.

    Only for a caller that then loads *every* parameter and buffer, e.g. ``load_state_dict`` with
    ``strict=True`` (HT Demucs has no non-persistent buffers): a model built here and not loaded
    holds garbage. ``Separator`` loads its model this way, since every path of
    ``load_separation_model`` loads strictly.
    """
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


class HTDemucs(nn.Module):
    """Hybrid Transformer Demucs: ``(b, audio_channels, samples) -> (b, sources, audio_channels, samples)``.

    Attributes ``sources``, ``samplerate``, ``audio_channels`` and ``segment`` (seconds, a
    ``Fraction`` for the released models) mirror demucs's, so segment-wise inference code written
    for demucs models works unchanged.
    """

    def __init__(self, config: HTDemucsConfig) -> None:
        super().__init__()
        cfg = config
        self.config = cfg
        self.sources = list(cfg.sources)
        self.samplerate = cfg.samplerate
        self.audio_channels = cfg.audio_channels
        self.segment = cfg.segment_seconds
        self.nfft = cfg.nfft
        self.hop_length = cfg.nfft // 4
        self.depth = cfg.depth
        self.bottom_channels = cfg.bottom_channels

        skip = _SKIP_INIT.get()
        with _NoRandomInit() if skip else contextlib.nullcontext():
            self._build(cfg, rescale=not skip)

    def _build(self, cfg: HTDemucsConfig, *, rescale: bool) -> None:
        self.encoder = nn.ModuleList()  # spectral branch, outermost first
        self.decoder = nn.ModuleList()  # spectral branch, innermost first
        self.tencoder = nn.ModuleList()  # temporal branch, outermost first
        self.tdecoder = nn.ModuleList()  # temporal branch, innermost first
        self.freq_emb: FrequencyEmbedding | None = None
        levels = plan_levels(cfg)
        for lv in levels:
            self._add_level(cfg, lv)
            if lv.index == 0 and cfg.freq_emb:
                self.freq_emb = FrequencyEmbedding(lv.bins_out, lv.out_f, cfg.emb_scale, cfg.emb_smooth)
                self.freq_emb_scale = cfg.freq_emb
        if cfg.rescale and rescale:
            for branch in (self.encoder, self.decoder, self.tencoder, self.tdecoder):
                _rescale_convs(branch, cfg.rescale)

        width = cfg.channels * cfg.growth ** (cfg.depth - 1)
        if cfg.bottom_channels:
            self.channel_upsampler = nn.Conv1d(width, cfg.bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(cfg.bottom_channels, width, 1)
            self.channel_upsampler_t = nn.Conv1d(width, cfg.bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(cfg.bottom_channels, width, 1)
        self.crosstransformer = (
            CrossDomainTransformer(cfg, cfg.transformer_channels) if cfg.t_layers > 0 else None
        )

    def _add_level(self, cfg: HTDemucsConfig, lv: Level) -> None:
        def dconv(channels: int, enabled: int) -> DConv | None:
            return DConv(channels, cfg.dconv_comp, cfg.dconv_depth, cfg.dconv_init) if enabled else None

        common = {"norm": lv.norm, "norm_groups": cfg.norm_groups, "rewrite": cfg.rewrite}
        shape = {"kernel": lv.kernel, "stride": lv.stride, "freq": lv.freq, "pad": lv.pad}
        # time layers of a spectral level: always the regular kernel/stride, padded
        time_shape = {"kernel": cfg.kernel_size, "stride": cfg.stride, "freq": False, "pad": True}
        enc_dconv, dec_dconv = cfg.dconv_mode & 1, cfg.dconv_mode & 2
        self.encoder.append(
            EncoderLayer(
                lv.in_f,
                lv.out_f,
                context=cfg.context_enc,
                dconv=dconv(lv.out_f, enc_dconv),
                **shape,
                **common,
            )
        )
        self.decoder.insert(
            0,
            DecoderLayer(
                lv.out_f,
                lv.dec_out_f,
                context=cfg.context,
                dconv=dconv(lv.out_f, dec_dconv),
                last=lv.index == 0,
                **shape,
                **common,
            ),
        )
        if lv.freq:
            self.tencoder.append(
                EncoderLayer(
                    lv.in_t,
                    lv.out_t,
                    context=cfg.context_enc,
                    dconv=None if lv.merge else dconv(lv.out_t, enc_dconv),
                    empty=lv.merge,
                    **time_shape,
                    **common,
                )
            )
            self.tdecoder.insert(
                0,
                DecoderLayer(
                    lv.out_t,
                    lv.dec_out_t,
                    context=cfg.context,
                    dconv=None if lv.merge else dconv(lv.out_t, dec_dconv),
                    last=lv.index == 0,
                    empty=lv.merge,
                    **time_shape,
                    **common,
                ),
            )

    # -- spectrogram front end and back end --------------------------------------------------------
    def _spectrogram(self, mix: Tensor) -> Tensor:
        """``(b, c, samples) -> (b, c, nfft // 2, ceil(samples / hop))`` complex.

        The signal is reflect-padded by ``3 hop / 2`` on the left (and up to a multiple of the hop
        on the right) so that frame ``k`` covers samples around ``k * hop``; the Nyquist bin and
        the two extra frames on each side are dropped.
        """
        hop = self.hop_length
        frames = math.ceil(mix.shape[-1] / hop)
        pad = hop // 2 * 3
        padded = reflect_pad(mix, pad, pad + frames * hop - mix.shape[-1])
        z = stft(padded, self.nfft, hop)[..., :-1, :]
        return z[..., 2 : 2 + frames]

    def _waveform(self, x: Tensor, std: Tensor, mean: Tensor, length: int) -> Tensor:
        """Inverse of :meth:`_spectrogram` for the decoder's complex-as-channels output.

        ``x (b, s, c, 2, bins, frames)`` (real and imaginary parts), denormalised as
        ``x * std + mean`` (``std``, ``mean``: ``(b,)``-broadcastable) -> ``(b, s, c, length)``.
        One strided copy writes the denormalised values into a frame-major complex buffer that
        already holds the zeros of the dropped frames and Nyquist bin, which is the layout the
        inverse FFT reads (no transposed copy of the spectrogram inside ``torch.istft``).
        """
        hop = self.hop_length
        b, s, c, _, bins, frames = x.shape
        buf = x.new_empty(b, s, c, frames + 4, bins + 1, 2, dtype=torch.promote_types(x.dtype, std.dtype))
        buf[:, :, :, :2].zero_()  # the two frames dropped on each side
        buf[:, :, :, -2:].zero_()
        buf[:, :, :, 2:-2, -1].zero_()  # the Nyquist bin
        scale, shift = std.view(b, 1, 1, 1, 1, 1), mean.view(b, 1, 1, 1, 1, 1)
        values = x.permute(0, 1, 2, 5, 4, 3)  # (b, s, c, frames, bins, re/im)
        if torch.is_grad_enabled():  # out= has no autograd
            buf[:, :, :, 2:-2, :-1] = values * scale + shift
        elif x.stride(-1) != 1 and values.stride(-1) == 1:
            # channels-last decoder output, memory (b, bins, frames, s, c, re/im): a transposing
            # copy of complex numbers in blocks of bins (cache-sized, ~8x faster than one strided
            # copy), then the denormalisation in place
            dest = torch.view_as_complex(buf[:, :, :, 2:-2, :-1])
            source = torch.view_as_complex(values.to(buf.dtype))  # the layout is kept
            for start in range(0, bins, 64):
                dest[..., start : start + 64].copy_(source[..., start : start + 64])
            region = buf[:, :, :, 2:-2, :-1]
            region.mul_(scale).add_(shift)
        else:
            torch.addcmul(shift, values, scale, out=buf[:, :, :, 2:-2, :-1])
        z = torch.view_as_complex(buf).transpose(-1, -2)  # (b, s, c, bins + 1, frames + 4)
        pad = hop // 2 * 3
        wav = istft(z, hop, hop * math.ceil(length / hop) + 2 * pad)
        return wav[..., pad : pad + length]

    @property
    def segment_length(self) -> int:
        """Training segment in samples (eval inputs are padded to it)."""
        return self.config.segment_length

    def valid_length(self, length: int) -> int:
        """The input length the model computes on in eval mode (demucs semantics)."""
        if not self.config.use_train_segment:
            return length
        if length > self.segment_length:
            raise InputError(
                f"input of {length} samples is longer than the model's segment ({self.segment_length} "
                "samples); split it into segments (chunked inference)"
            )
        return self.segment_length

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, mix: Tensor) -> Tensor:
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise InputError(
                f"HTDemucs expects a mix of shape (batch, {self.audio_channels}, samples), "
                f"got {tuple(mix.shape)}"
            )
        length = mix.shape[-1]
        work_length = length if self.training else self.valid_length(length)
        if work_length > length:
            mix = F.pad(mix, (0, work_length - length))

        # Spectral branch input: CaC spectrogram (b, 2c, bins, frames), normalised per example.
        z = self._spectrogram(mix)
        b, c, bins, frames = z.shape
        if torch.is_grad_enabled():
            x = torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(b, 2 * c, bins, frames)
        else:  # inference: the spectral branch runs channels-last (see _BLOCK_BYTES)
            # (b, bins, frames, c) complex, copied in cache-sized blocks of bins (as in _waveform)
            x = z.new_empty(b, bins, frames, c)
            for start in range(0, bins, 64):
                x[:, start : start + 64].copy_(z[:, :, start : start + 64].permute(0, 2, 3, 1))
            x = torch.view_as_real(x).view(b, bins, frames, 2 * c).permute(0, 3, 1, 2)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        # Temporal branch input: the waveform, normalised per example.
        mean_t = mix.mean(dim=(1, 2), keepdim=True)
        std_t = mix.std(dim=(1, 2), keepdim=True)
        xt = (mix - mean_t) / (1e-5 + std_t)

        # Under autocast (``precision="bf16"``), the temporal branch stays in float32: its stack of
        # strided convs, DConvs and GLUs amplifies rounding errors level by level (with every
        # branch active, bfloat16 there alone costs ~20 dB of SNR against float32), while the
        # spectral branch and the transformer lose little (~1-2 %) and hold most of the compute.
        full_precision = _autocast_off(mix.device.type)
        skips, skips_t, lengths, lengths_t = [], [], [], []
        for index, encode in enumerate(self.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if index < len(self.tencoder):
                lengths_t.append(xt.shape[-1])
                tencode = self.tencoder[index]
                with full_precision:
                    xt = tencode(xt)
                if tencode.empty:
                    inject = xt  # merge level: the temporal features join the spectral branch
                else:
                    skips_t.append(xt)
            add = None
            if index == 0 and self.freq_emb is not None:
                bins_out = self.freq_emb.embedding.num_embeddings
                emb = self.freq_emb(torch.arange(bins_out, device=x.device))  # (bins, c)
                add = (self.freq_emb_scale * emb).t()  # (c, bins), scaled before broadcasting
            x = encode(x, inject, add)
            skips.append(x)

        if self.crosstransformer is not None:
            if self.bottom_channels:
                f = x.shape[2]
                x = self.channel_upsampler(x.flatten(2)).unflatten(2, (f, -1))
                xt = self.channel_upsampler_t(xt)
            x, xt = self.crosstransformer(x, xt)
            if self.bottom_channels:
                x = self.channel_downsampler(x.flatten(2)).unflatten(2, (f, -1))
                xt = self.channel_downsampler_t(xt)

        offset = self.depth - len(self.tdecoder)
        for index, decode in enumerate(self.decoder):
            x, pre = decode(x, skips.pop(), lengths.pop())
            if index >= offset:
                tdecode = self.tdecoder[index - offset]
                with full_precision:
                    if tdecode.empty:  # merge level: the temporal branch restarts from the spectral one
                        xt, _ = tdecode(pre[:, :, 0].to(mix.dtype), None, lengths_t.pop())
                    else:
                        xt, _ = tdecode(xt.to(mix.dtype), skips_t.pop(), lengths_t.pop())

        n_sources = len(self.sources)
        # CaC back to complex: channels (s, c, re/im) of (b, s * c * 2, bins, frames)
        spec_out = self._waveform(x.unflatten(1, (n_sources, -1, 2)), std, mean, work_length)
        time_out = xt.view(b, n_sources, -1, work_length) * std_t[:, None] + mean_t[:, None]
        return (time_out + spec_out)[..., :length]
