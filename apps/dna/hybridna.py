"""HybriDNA (Ma et al. 2025, arXiv 2502.10807): a decoder-only DNA language model at single-nucleotide
resolution whose blocks interleave Mamba2 and grouped-query attention (7 Mamba2 : 1 attention).

Each block is pre-norm with a residual MLP::

    x = x + mixer(RMSNorm(x))      # mixer: Mamba2 (SSD) or causal GQA attention with RoPE
    x = x + MLP(RMSNorm(x))        # SwiGLU (or a GELU MLP); d_intermediate = 0 drops it

``tokens (b, l) -> embedding -> blocks -> RMSNorm -> lm_head -> logits (b, l, vocab)``, the head
optionally tied to the embedding. Token ids are :class:`hybrids.datasets.dna.DNATokenizer`'s
(specials, ``A C G T N`` = 5..9, then label/control tokens), hence the default ``vocab_size = 16``.

Decoding: ``cache = model.allocate_cache(b)``; ``model(prompt, cache)`` (prefill) then
``model(token[:, None], cache)`` per new token: Mamba2 layers carry their conv + SSM states, attention
layers a KV cache; the logits equal those of one parallel forward over the whole sequence.

``embed(tokens, echo=True)`` is the paper's echo embedding for understanding tasks: the sequence is
fed twice and the hidden states of the second copy (which has seen the whole first copy) are returned.

Without autograd (inference), the MLPs and the head run over chunks of ``seq_chunk`` positions so
that a 131,072-token forward keeps a bounded footprint; attention uses torch's fused causal SDPA
and the Mamba2 layers the chunked SSD scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hybrids.apps.core.config import ModelConfig
from hybrids.apps.core.errors import InputError
from hybrids.shared_blocks.attention import KVCache, MultiHeadAttention
from hybrids.shared_blocks.mamba2 import Mamba2, Mamba2Cache
from hybrids.shared_blocks.mlp import Mlp, SwiGLU
from hybrids.shared_blocks.norms import RMSNorm

__all__ = ["HybriDNA", "HybriDNABlock", "HybriDNACache", "HybriDNAConfig"]

MAMBA, ATTENTION = "M", "A"


@dataclass
class HybriDNAConfig(ModelConfig):
    """Shape of a HybriDNA model.

    ``block_pattern`` (letters ``M`` = Mamba2, ``A`` = attention) is tiled over ``n_layers``; the
    default ``"MMMMMMMA"`` is the paper's group of 7 Mamba2 blocks and 1 attention block.

    The published presets fix ``d_model``/``n_layers`` (1024/24, 4096/16, 4096/32: the authors'
    model cards); heads, KV heads, Mamba2 state size and MLP width are not stated there and follow
    the Jamba/Mamba2 conventions (head_dim 128 with 8 KV heads, ``d_state = 128``, ``expand = 2``,
    Mamba2 head dim 64, SwiGLU) with the MLP width chosen so the counts land on the nominal sizes
    (``d_intermediate`` 2048 / 8192 / 10240), giving 302,245,088 / 3,126,717,184 / 7,058,671,104
    parameters (tied embeddings, vocab 16; checked in ``tests/apps/dna/test_hybridna.py``).
    """

    vocab_size: int = 16
    d_model: int = 256
    n_layers: int = 8
    block_pattern: str = "MMMMMMMA"
    # attention
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None
    rope_base: float = 10000.0
    # Mamba2
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    mamba_headdim: int = 64
    ngroups: int = 1
    chunk_size: int | None = None
    # MLP
    d_intermediate: int = 512
    mlp: str = "swiglu"
    # the rest
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int = 131072
    init_std: float = 0.02
    seq_chunk: int = 16384

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Test size: one block of each kind, small enough for exact cache-parity tests.
        "tiny": {
            "d_model": 32,
            "n_layers": 2,
            "block_pattern": "MA",
            "n_heads": 4,
            "n_kv_heads": 2,
            "d_state": 16,
            "mamba_headdim": 16,
            "d_intermediate": 64,
            "chunk_size": 8,
        },
        # Sized to pretrain on a CPU: 7 Mamba2 + 1 attention, 1.6M parameters (d_model 128; 256 costs
        # about 3.5x the time per token).
        "small": {
            "d_model": 128,
            "n_layers": 8,
            "n_heads": 2,
            "n_kv_heads": 1,
            "d_state": 32,
            "mamba_headdim": 32,
            "d_intermediate": 256,
        },
        # Published shapes (d_model, n_layers from the authors' model cards; see the class docstring).
        "300m": {
            "d_model": 1024,
            "n_layers": 24,
            "n_heads": 8,
            "n_kv_heads": 8,
            "head_dim": 128,
            "d_state": 128,
            "mamba_headdim": 64,
            "d_intermediate": 2048,
        },
        "3b": {
            "d_model": 4096,
            "n_layers": 16,
            "n_heads": 32,
            "n_kv_heads": 8,
            "head_dim": 128,
            "d_state": 128,
            "mamba_headdim": 64,
            "d_intermediate": 8192,
        },
        "7b": {
            "d_model": 4096,
            "n_layers": 32,
            "n_heads": 32,
            "n_kv_heads": 8,
            "head_dim": 128,
            "d_state": 128,
            "mamba_headdim": 64,
            "d_intermediate": 10240,
        },
    }

    def validate(self) -> None:
        name = type(self).__name__
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_state", "d_conv",
                    "expand", "mamba_headdim", "ngroups", "max_seq_len", "seq_chunk"):
            if getattr(self, key) <= 0:
                raise InputError(f"{name}: {key} must be positive, got {getattr(self, key)}")
        if self.d_intermediate < 0:
            raise InputError(f"{name}: d_intermediate must be >= 0 (0 = no MLP), got {self.d_intermediate}")
        if not self.block_pattern or set(self.block_pattern) - {MAMBA, ATTENTION}:
            raise InputError(
                f"{name}: block_pattern must be a non-empty string of 'M' (Mamba2) and 'A' (attention), "
                f"got {self.block_pattern!r}"
            )
        if self.mlp not in ("swiglu", "gelu"):
            raise InputError(f"{name}: mlp must be 'swiglu' or 'gelu', got {self.mlp!r}")
        if self.n_heads % self.n_kv_heads != 0:
            raise InputError(
                f"{name}: n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}"
            )
        head_dim = self.attn_head_dim
        if ATTENTION in self.layer_types and (head_dim <= 0 or head_dim % 2 != 0):
            raise InputError(f"{name}: attention head_dim must be positive and even (RoPE), got {head_dim}")
        if MAMBA in self.layer_types and (self.expand * self.d_model) % self.mamba_headdim != 0:
            raise InputError(
                f"{name}: expand * d_model = {self.expand * self.d_model} must be a multiple of "
                f"mamba_headdim {self.mamba_headdim}"
            )

    @property
    def layer_types(self) -> str:
        """One letter per layer (``M`` or ``A``): ``block_pattern`` tiled to ``n_layers``."""
        reps = -(-self.n_layers // len(self.block_pattern))
        return (self.block_pattern * reps)[: self.n_layers]

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads


# -- cache ----------------------------------------------------------------------------------------


@dataclass
class HybriDNACache:
    """Decoding state of a :class:`HybriDNA`: one :class:`Mamba2Cache` or :class:`KVCache` per layer.

    ``seqlen_offset``: tokens consumed so far (the position of the next token).
    """

    layers: list[Mamba2Cache | KVCache] = field(default_factory=list)
    seqlen_offset: int = 0


# -- blocks ---------------------------------------------------------------------------------------


class HybriDNABlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``; ``(b, l, d) -> (b, l, d)``.

    ``kind``: ``"M"`` (Mamba2 mixer) or ``"A"`` (causal GQA self-attention with RoPE).
    """

    def __init__(self, config: HybriDNAConfig, kind: str, layer_idx: int) -> None:
        super().__init__()
        c = config
        self.kind = kind
        self.norm = RMSNorm(c.d_model, eps=c.norm_eps)
        if kind == MAMBA:
            self.mixer: nn.Module = Mamba2(
                c.d_model,
                d_state=c.d_state,
                d_conv=c.d_conv,
                expand=c.expand,
                headdim=c.mamba_headdim,
                ngroups=c.ngroups,
                chunk_size=c.chunk_size,
                norm_eps=c.norm_eps,
                layer_idx=layer_idx,
            )
        else:
            self.mixer = MultiHeadAttention(
                c.d_model,
                c.n_heads,
                num_kv_heads=c.n_kv_heads,
                head_dim=c.attn_head_dim,
                qkv_bias=False,
                out_bias=False,
                rope=True,
                rope_base=c.rope_base,
                causal=True,
                layout="separate",  # q_proj / k_proj / v_proj / out_proj: the keys of our checkpoints
            )
        self.mlp_norm: RMSNorm | None = None
        self.mlp: nn.Module | None = None
        if c.d_intermediate > 0:
            self.mlp_norm = RMSNorm(c.d_model, eps=c.norm_eps)
            if c.mlp == "swiglu":
                self.mlp = SwiGLU(c.d_model, c.d_intermediate)
            else:
                self.mlp = Mlp(c.d_model, c.d_intermediate, activation="gelu", bias=False)
        self.seq_chunk = c.seq_chunk

    def allocate_cache(self, batch_size: int, device: torch.device | None = None) -> Mamba2Cache | KVCache:
        if self.kind == MAMBA:
            return self.mixer.allocate_cache(batch_size, device=device)
        return KVCache()

    def forward(self, x: Tensor, cache: Mamba2Cache | KVCache | None = None) -> Tensor:
        h = self.norm(x)
        if self.kind == MAMBA:
            if cache is not None and x.shape[1] == 1:
                h = self.mixer.step(h, cache)
            else:
                h = self.mixer(h, cache)
        else:
            h = self.mixer(h, kv_cache=cache)
        x = x + h
        del h
        if self.mlp is None:
            return x
        if torch.is_grad_enabled() or x.shape[1] <= self.seq_chunk:
            return x + self.mlp(self.mlp_norm(x))
        for start in range(0, x.shape[1], self.seq_chunk):  # inference: bounded MLP intermediates
            part = x[:, start : start + self.seq_chunk]
            part += self.mlp(self.mlp_norm(part))
        return x


# -- model ----------------------------------------------------------------------------------------


class HybriDNA(nn.Module):
    """HybriDNA language model: ``forward(tokens (b, l) int64, cache=None) -> logits (b, l, vocab)``."""

    def __init__(self, config: HybriDNAConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(
            HybriDNABlock(config, kind, i) for i, kind in enumerate(config.layer_types)
        )
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def _init_weights(self) -> None:
        """Embedding and head ~ N(0, init_std); residual output projections scaled by 1/sqrt(2 n_layers)
        (GPT-2 / mamba-ssm's prenorm-residual rescaling). Mamba2's dt/A/D keep their own init."""
        std = self.config.init_std
        nn.init.normal_(self.embedding.weight, std=std)
        nn.init.normal_(self.lm_head.weight, std=std)
        scale = 1.0 / math.sqrt(2 * self.config.n_layers)
        for layer in self.layers:
            out_proj = layer.mixer.out_proj
            with torch.no_grad():
                out_proj.weight.mul_(scale)
            if isinstance(layer.mlp, SwiGLU):
                with torch.no_grad():
                    layer.mlp.w2.weight.mul_(scale)
            elif isinstance(layer.mlp, Mlp):
                with torch.no_grad():
                    layer.mlp.fc2.weight.mul_(scale)

    # -- cache --------------------------------------------------------------------------------------

    def allocate_cache(self, batch_size: int, device: torch.device | str | None = None) -> HybriDNACache:
        """A fresh decoding cache (zero Mamba2 states, empty KV caches) for ``batch_size`` sequences."""
        device = self.embedding.weight.device if device is None else torch.device(device)
        return HybriDNACache([layer.allocate_cache(batch_size, device) for layer in self.layers])

    # -- forward ------------------------------------------------------------------------------------

    def hidden_states(self, tokens: Tensor, cache: HybriDNACache | None = None) -> Tensor:
        """``tokens (b, l)`` -> final-normed hidden states ``(b, l, d_model)``; ``cache`` as in
        :meth:`forward`."""
        self._check_tokens(tokens)
        if cache is not None and len(cache.layers) != len(self.layers):
            raise InputError(
                f"HybriDNA: cache has {len(cache.layers)} layers, the model {len(self.layers)}; "
                "use model.allocate_cache(batch_size)"
            )
        x = self.embedding(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, None if cache is None else cache.layers[i])
        if cache is not None:
            cache.seqlen_offset += tokens.shape[1]
        return self.norm_f(x)

    def forward(self, tokens: Tensor, cache: HybriDNACache | None = None) -> Tensor:
        """``tokens (b, l)`` int64 -> logits ``(b, l, vocab_size)`` (float32 for a float32 model).

        With ``cache`` (from :meth:`allocate_cache`), ``tokens`` continue the cached sequence (a fresh
        cache: a prefill) and the cache is updated in place; a ``(b, 1)`` input is one decoding step.
        """
        h = self.hidden_states(tokens, cache)
        return self.logits(h)

    def logits(self, hidden: Tensor) -> Tensor:
        """``hidden (b, l, d_model)`` (already final-normed) -> ``(b, l, vocab_size)``."""
        chunk = self.config.seq_chunk
        if torch.is_grad_enabled() or hidden.shape[1] <= chunk:
            return self.lm_head(hidden)
        starts = range(0, hidden.shape[1], chunk)
        return torch.cat([self.lm_head(hidden[:, s : s + chunk]) for s in starts], 1)

    def embed(self, tokens: Tensor, echo: bool = True) -> Tensor:
        """Per-token representations ``(b, l, d_model)`` for understanding tasks.

        ``echo=True`` (the paper's echo embedding): the model reads ``[tokens, tokens]`` and the hidden
        states of the second copy are returned, so every position has seen the whole sequence.
        ``echo=False``: the causal hidden states of a single pass.
        """
        self._check_tokens(tokens)
        if not echo:
            return self.hidden_states(tokens)
        l = tokens.shape[1]
        return self.hidden_states(torch.cat([tokens, tokens], dim=1))[:, l:]

    def _check_tokens(self, tokens: Tensor) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise InputError(
                f"HybriDNA: expected integer token ids of shape (batch, length), got "
                f"{tuple(tokens.shape)} {tokens.dtype}"
            )
        if tokens.numel() and tokens.device.type != "meta":
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise InputError(
                    f"HybriDNA: token id {lo if lo < 0 else hi} is outside the vocabulary "
                    f"(size {self.config.vocab_size})"
                )

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights once); optionally without the embedding/head."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.embedding.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total
