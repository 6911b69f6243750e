"""Mamba2 block (Dao & Gu 2024, "Transformers are SSMs", §7): the SSD layer with its projections,
short causal convolution and gated RMSNorm, with a cache for recurrent decoding.

Parameter names and shapes follow mamba-ssm's ``mamba_ssm.modules.mamba2.Mamba2`` (``in_proj``,
``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm.weight``, ``out_proj``), so its state dicts load
(for ``d_ssm = d_inner``, ``D_has_hdim=False``, no tensor parallelism).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrids.kernels.ssd import ssd_scan, ssd_step
from hybrids.shared_blocks.norms import GatedRMSNorm

__all__ = ["Mamba2", "Mamba2Cache"]


@dataclass
class Mamba2Cache:
    """Decoding state of one :class:`Mamba2` block.

    Attributes:
        conv_state: ``(b, conv_dim, d_conv)``, the last ``d_conv`` inputs of the causal convolution
            (``conv_dim = d_inner + 2 · ngroups · d_state``), oldest first.
        ssm_state: ``(b, nheads, headdim, d_state)``, the SSD state after the last token.
        seqlen_offset: tokens consumed so far.
    """

    conv_state: Tensor
    ssm_state: Tensor
    seqlen_offset: int = 0


class Mamba2(nn.Module):
    """The Mamba2 mixer (Dao & Gu 2024, "Transformers are SSMs", §7, Fig. 6).

    ``u (b, l, d_model)`` -> ``in_proj`` -> split ``[z, x, B, C, dt]`` -> causal depthwise conv
    (kernel ``d_conv``, SiLU) over ``[x, B, C]`` -> SSD scan (:func:`hybrids.kernels.ssd.ssd_scan`,
    ``A = -exp(A_log)``, ``dt = softplus(dt + dt_bias)`` clamped to ``dt_limit``, skip ``D``) ->
    gated RMSNorm ``norm(y · silu(z))`` per group of ``d_inner / ngroups`` channels -> ``out_proj``.

    ``d_inner = expand · d_model`` channels form ``nheads = d_inner / headdim`` heads; ``B`` and ``C``
    (``d_state`` each) have ``ngroups`` groups shared by consecutive heads.

    Decoding: ``cache = block.allocate_cache(b)``; ``block(prompt, cache)`` (prefill; it continues
    from the cache's state, zeros for a fresh cache); then ``block.step(token, cache)`` per token.
    The cache carries no gradient.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int | None = None,
        bias: bool = False,
        conv_bias: bool = True,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        rmsnorm: bool = True,
        norm_eps: float = 1e-5,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        if d_model <= 0 or expand <= 0 or d_state <= 0 or d_conv <= 0 or headdim <= 0 or ngroups <= 0:
            raise ValueError(
                "Mamba2: d_model, expand, d_state, d_conv, headdim and ngroups must be positive, got "
                f"{d_model}, {expand}, {d_state}, {d_conv}, {headdim}, {ngroups}"
            )
        if d_inner % headdim != 0:
            raise ValueError(
                f"Mamba2: d_inner = expand * d_model = {d_inner} must be a multiple of headdim {headdim}"
            )
        nheads = d_inner // headdim
        if nheads % ngroups != 0:
            raise ValueError(f"Mamba2: nheads {nheads} must be a multiple of ngroups {ngroups}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba2: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"Mamba2: chunk_size must be positive, got {chunk_size}")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.headdim = headdim
        self.ngroups = ngroups
        self.d_inner = d_inner
        self.nheads = nheads
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.chunk_size = chunk_size
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.rmsnorm = rmsnorm
        self.layer_idx = layer_idx

        # Order of the projection: [z, x, B, C, dt].
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            kernel_size=d_conv,
            groups=self.conv_dim,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        # dt_bias = softplus⁻¹(dt) for dt log-uniform in [dt_min, dt_max] (floored at dt_init_floor).
        dt = torch.exp(
            torch.rand(nheads, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).to(dtype))
        # A = -exp(A_log) with -A uniform in [1, 16].
        A = torch.empty(nheads, dtype=torch.float32, device=device).uniform_(1.0, 16.0)
        self.A_log = nn.Parameter(torch.log(A).to(dtype))
        self.D = nn.Parameter(torch.ones(nheads, device=device))
        for param in (self.dt_bias, self.A_log, self.D):
            param._no_weight_decay = True  # as mamba-ssm; optimizers' param grouping may read it
        self.norm = None
        if rmsnorm:
            self.norm = GatedRMSNorm(
                d_inner, eps=norm_eps, group_size=d_inner // ngroups, norm_before_gate=False
            )
            self.norm.to(device=device, dtype=dtype)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **factory)

    # -- cache -------------------------------------------------------------------------------------

    def allocate_cache(
        self, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Mamba2Cache:
        """A zeroed decoding cache for ``batch_size`` sequences.

        ``conv_state (b, conv_dim, d_conv)`` takes ``dtype`` (default: the conv weight's dtype);
        ``ssm_state (b, nheads, headdim, d_state)`` takes ``dtype`` if given, else float32 (float64
        for a float64 block): the scan accumulates in that precision.
        """
        device = self.in_proj.weight.device if device is None else device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        ssm_dtype = torch.promote_types(self.in_proj.weight.dtype, torch.float32) if dtype is None else dtype
        return Mamba2Cache(
            conv_state=torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=conv_dtype),
            ssm_state=torch.zeros(
                batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=ssm_dtype
            ),
        )

    # -- parallel (training / prefill) -------------------------------------------------------------

    def forward(self, u: Tensor, cache: Mamba2Cache | None = None) -> Tensor:
        """``u (b, l, d_model)`` -> ``(b, l, d_model)``.

        With ``cache``, the sequence continues from the cache's conv and SSM states (zeros for a
        fresh cache: a prefill) and the cache is updated in place to the state after ``u``.
        """
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"Mamba2: expected u of shape (b, l, {self.d_model}), got {tuple(u.shape)}")
        b, l, _ = u.shape
        self._check_cache(cache, b)
        zxbcdt = self.in_proj(u)
        z, xBC, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        context = None if cache is None else _snapshot(cache.conv_state)
        new_conv_state = None if context is None else _last_inputs(context, xBC, self.d_conv)
        xBC = self._causal_conv(xBC, context)  # reads the context before the cache is overwritten
        if cache is not None:
            cache.conv_state.copy_(new_conv_state.detach())
        x, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        h, p, g, n = self.nheads, self.headdim, self.ngroups, self.d_state
        result = ssd_scan(
            x.reshape(b, l, h, p),
            dt,
            -torch.exp(self.A_log.float()),
            B.reshape(b, l, g, n),
            C.reshape(b, l, g, n),
            chunk_size=self.chunk_size,
            D=self.D,
            z=None if self.rmsnorm else z.reshape(b, l, h, p),
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=self.dt_limit,
            initial_states=None if cache is None else _snapshot(cache.ssm_state),
            return_final_states=cache is not None,
        )
        del xBC, x, B, C
        if cache is not None:
            y, final = result
            cache.ssm_state.copy_(final.detach())
            cache.seqlen_offset += l
        else:
            y = result
        y = y.reshape(b, l, self.d_inner)
        if self.norm is not None:
            y = self.norm(y, z)
        return self.out_proj(y)

    def _causal_conv(self, xBC: Tensor, context: Tensor | None) -> Tensor:
        """Depthwise causal conv + SiLU on channels-last ``xBC (b, l, conv_dim)``.

        ``context (b, conv_dim, d_conv)``: earlier inputs (its last ``d_conv - 1`` are used), or
        ``None`` for zeros. Computed as a sum of shifted products, without padded copies.
        """
        weight = self.conv1d.weight[:, 0, :]  # (conv_dim, d_conv); [:, -1] multiplies the current token
        bias = self.conv1d.bias
        K = self.d_conv
        l = xBC.shape[1]
        out = xBC * weight[:, -1] if bias is None else torch.addcmul(bias, xBC, weight[:, -1])
        for k in range(K - 1):
            shift = K - 1 - k  # weight[:, k] multiplies the token `shift` steps back
            if shift < l:
                out[:, shift:].addcmul_(xBC[:, : l - shift], weight[:, k])
        if context is not None:
            ctx = context.to(xBC.dtype)
            # Output t reads the token t - (K - 1 - k) through weight[:, k]; for k < K - 1 - t that
            # token precedes the sequence and sits at context[..., t + k + 1].
            for t in range(min(l, K - 1)):
                for k in range(K - 1 - t):
                    out[:, t].addcmul_(ctx[:, :, t + k + 1], weight[:, k])
        return F.silu(out, inplace=not torch.is_grad_enabled())

    # -- recurrent decoding ------------------------------------------------------------------------

    def step(self, u: Tensor, cache: Mamba2Cache) -> Tensor:
        """Decode one token: ``u (b, 1, d_model)`` or ``(b, d_model)`` -> the same shape; ``cache``
        (from :meth:`allocate_cache`, after an optional prefill) is updated in place."""
        squeeze = u.dim() == 2
        if squeeze:
            u = u[:, None]
        if u.dim() != 3 or u.shape[1] != 1 or u.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba2.step: expected u of shape (b, 1, {self.d_model}) or (b, {self.d_model})"
            )
        b = u.shape[0]
        self._check_cache(cache, b)
        zxbcdt = self.in_proj(u[:, 0])
        z, xBC, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

        window = torch.cat(
            [_snapshot(cache.conv_state)[..., 1:], xBC[..., None].to(cache.conv_state.dtype)], -1
        )
        cache.conv_state.copy_(window.detach())
        weight = self.conv1d.weight[:, 0, :]
        xBC = (window.to(xBC.dtype) * weight).sum(-1)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        xBC = F.silu(xBC)

        x, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        h, p, g, n = self.nheads, self.headdim, self.ngroups, self.d_state
        y, state = ssd_step(
            _snapshot(cache.ssm_state),
            x.reshape(b, h, p),
            dt,
            -torch.exp(self.A_log.float()),
            B.reshape(b, g, n),
            C.reshape(b, g, n),
            D=self.D,
            z=None if self.rmsnorm else z.reshape(b, h, p),
            dt_bias=self.dt_bias,
            dt_softplus=True,
            dt_limit=self.dt_limit,
        )
        cache.ssm_state.copy_(state.detach())
        cache.seqlen_offset += 1
        y = y.reshape(b, self.d_inner)
        if self.norm is not None:
            y = self.norm(y, z)
        out = self.out_proj(y)
        return out if squeeze else out[:, None]

    def _check_cache(self, cache: Mamba2Cache | None, batch: int) -> None:
        if cache is None:
            return
        conv = (batch, self.conv_dim, self.d_conv)
        ssm = (batch, self.nheads, self.headdim, self.d_state)
        if tuple(cache.conv_state.shape) != conv or tuple(cache.ssm_state.shape) != ssm:
            raise ValueError(
                f"Mamba2: cache shapes {tuple(cache.conv_state.shape)}, {tuple(cache.ssm_state.shape)} "
                f"do not match {conv}, {ssm}; use allocate_cache({batch})"
            )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"headdim={self.headdim}, nheads={self.nheads}, ngroups={self.ngroups}, rmsnorm={self.rmsnorm}"
        )


def _snapshot(state: Tensor) -> Tensor:
    """The cache tensor itself, or a copy when autograd may save it (the cache is updated in place)."""
    return state.clone() if torch.is_grad_enabled() else state


def _last_inputs(context: Tensor, xBC: Tensor, d_conv: int) -> Tensor:
    """The last ``d_conv`` conv inputs after ``xBC (b, l, c)`` follows ``context (b, c, d_conv)``."""
    l = xBC.shape[1]
    recent = xBC[:, -d_conv:].transpose(1, 2).to(context.dtype)
    if l >= d_conv:
        return recent
    return torch.cat([context[..., l:], recent], dim=-1)
