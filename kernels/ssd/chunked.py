"""Chunked SSD: the fast pure-torch path (Dao & Gu 2024, "Transformers are SSMs", §6, "SSD algorithm").

The sequence is cut into chunks of ``Q`` tokens. Per chunk (all chunks at once, batched matmuls):

1. *intra-chunk outputs* (diagonal blocks): the quadratic "attention" form inside the chunk,
   ``Y_diag = (exp(segsum(ΔA)) ∘ C Bᵀ) (Δ x)`` with a −inf-masked segment sum;
2. *chunk states* (right factor of the off-diagonal blocks): the state each chunk would produce from
   a zero start, ``S_c = Σ_s exp(ΔA_{s+1..Q}) Δ_s x_s ⊗ B_s``;
3. *state passing* (middle factor): ``H_{c+1} = exp(ΔA_{1..Q}) H_c + S_c``, a sequential loop over
   chunks on ``(b, h, p, n)`` states, so the cost stays linear in the number of chunks (no
   ``nchunks × nchunks`` decay matrix);
4. *outputs from carried states* (left factor): ``Y_off_t = exp(ΔA_{1..t}) C_t · H_c``.

Work is done over segments of :data:`SEGMENT_TOKENS` tokens at a time (the carried state links
them): the temporaries — ``(b, h, Q, Q)`` decay matrices, ``(b, h, p, n)`` per-chunk states — stay
bounded and cache-sized, and the allocator reuses them instead of page-faulting fresh memory. The
states are kept as ``(b, g, n, heads_per_group · p)`` so that both state products (2 and 4) are
single large matmuls per group. Without autograd, temporaries are updated in place.

Numerics: the within-chunk cumulative decay is summed in float64 and, for float32, split into the
rounded value plus a tiny remainder whose exponential factorises, so ``exp(acs_t - acs_s)`` suffers
no cancellation (the float32 error matches the sequential reference's at any chunk size). Decays
below ``e^-60`` (float32; ``e^-600`` in float64) are flushed to exactly 0: CPUs slow down 10-20x on
subnormal numbers and on ``exp(-inf)``.

Sequences of any length are zero-padded to a multiple of ``Q`` with ``Δ = 0`` (decay 1, no input),
so the final state is exact.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrids.kernels.ssd.common import check_scan_args, compute_dtype, finish_output, prepare_dt

__all__ = ["DEFAULT_CHUNK_SIZE", "SEGMENT_TOKENS", "ssd_scan_chunked"]

#: Default chunk length on CPU (the best in `hybrids bench kernels --only ssd`; mamba-ssm GPU: 256).
DEFAULT_CHUNK_SIZE = 64
#: Tokens processed per segment (rounded to whole chunks): bounds the temporaries' memory.
SEGMENT_TOKENS = 1024


def ssd_scan_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    chunk_size: int | None = None,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked SSD scan (Dao & Gu 2024, "Transformers are SSMs", §6), linear in the sequence length.

    Args:
        x: ``(b, l, h, p)``; dt: ``(b, l, h)``; A: ``(h,)``; B, C: ``(b, l, g, n)`` (head ``i`` uses
            group ``i // (h // g)``); D: ``(h,)`` or ``(h, p)``; z: ``(b, l, h, p)`` gate
            (``y * silu(z)``); dt_bias: ``(h,)``; initial_states: ``(b, h, p, n)``.
        chunk_size: tokens per chunk (default :data:`DEFAULT_CHUNK_SIZE`); any ``l`` is accepted.

    Returns:
        ``y (b, l, h, p)`` in ``x``'s dtype; with ``return_final_states`` also the final state
        ``(b, h, p, n)`` in the accumulation dtype (float32, or float64 for float64 inputs).
        Differentiable with respect to every tensor argument.
    """
    b, l, h, p, g, n = check_scan_args(x, dt, A, B, C, D, z, dt_bias, initial_states)
    Q = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    if Q <= 0:
        raise ValueError(f"ssd_scan: chunk_size must be positive, got {chunk_size}")
    dtype = compute_dtype(x.dtype)
    hpg = h // g
    dt = prepare_dt(dt, dt_bias, dt_softplus, dt_limit, dtype)  # (b, l, h)
    A = A.to(dtype)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, D, z, initial_states)
    )

    # The carried state, laid out (b, g, n, hpg, p): state[b, head, p, n] = H[b, g, n, head % hpg, p].
    if initial_states is None:
        H = x.new_zeros((b, g, n, hpg, p), dtype=dtype)
    else:
        H = initial_states.to(dtype).view(b, g, hpg, p, n).permute(0, 1, 4, 2, 3)

    seg_len = max(1, SEGMENT_TOKENS // Q) * Q
    # Without autograd, each segment is finished (D, gate) and copied into one preallocated output,
    # so that the segments' temporaries are reused from the allocator instead of all kept alive.
    out = None if needs_grad else x.new_empty((b, l, h, p))
    ys = []
    for t0 in range(0, l, seg_len):
        t1 = min(l, t0 + seg_len)
        y_seg, H = _segment(x[:, t0:t1], dt[:, t0:t1], A, B[:, t0:t1], C[:, t0:t1], H, Q, needs_grad)
        z_seg = None if z is None else z[:, t0:t1]
        y_seg = finish_output(y_seg[:, : t1 - t0], x[:, t0:t1], D, z_seg, inplace=not needs_grad)
        if out is None:
            ys.append(y_seg)
        else:
            out[:, t0:t1] = y_seg
    if out is None:
        y = torch.cat(ys, dim=1).to(x.dtype) if ys else x.new_zeros((b, 0, h, p))
    else:
        y = out
    if not return_final_states:
        return y
    final = H.permute(0, 1, 3, 4, 2).reshape(b, h, p, n)
    return y, final


def _segment(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, H: Tensor, Q: int, needs_grad: bool
) -> tuple[Tensor, Tensor]:
    """One segment of whole chunks: returns ``y (b, k·Q, h, p)`` (padding included) and the new state.

    Without autograd, temporaries are updated in place (fresh large allocations page-fault).
    """
    dtype = dt.dtype
    b, T, h, p = x.shape
    g, n = B.shape[2:]
    hpg = h // g
    pad = (-T) % Q
    floor = _EXP_FLOOR[dtype == torch.float64]
    x = x.to(dtype)
    B = B.to(dtype)
    C = C.to(dtype)
    if pad:  # Δ = 0 in the padding: decay exp(0) = 1 and no input, so the state passes through exactly
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    k = (T + pad) // Q

    # Cumulative log-decay inside each chunk, (b, k, h, Q): acs[..., t] = ΔA_1 + ... + ΔA_t, summed
    # in float64. In float32 it is split as acs = hi + lo (hi = acs rounded): differences of nearby
    # hi values are exact, and exp(lo_t - lo_s) = exp(lo_t) exp(-lo_s) factorises stably (|lo| is
    # tiny), so the intra-chunk decays lose nothing to cancellation without float64 (Q, Q) tensors.
    dA = dt.to(torch.float64) * A.to(torch.float64)
    acs64 = torch.cumsum(dA.view(b, k, Q, h).transpose(2, 3), dim=-1)
    hi = acs64.to(dtype)
    lo_scale = None  # exp(lo), (b, k, h, Q)
    if dtype != torch.float64:
        lo = (acs64 - hi.to(torch.float64)).to(dtype)
        lo_scale = torch.exp(lo)
        dt = dt * torch.exp(-lo).transpose(2, 3).reshape(b, k * Q, h)  # Δ_s exp(-lo_s)
    x_chunks = (x * dt[..., None]).view(b, k, Q, h, p)  # Δx
    B_gqn = B.view(b, k, Q, g, n).transpose(2, 3)  # (b, k, g, Q, n)
    C_gqn = C.view(b, k, Q, g, n).transpose(2, 3)

    # 1. Intra-chunk outputs: M[t, s] = (C_t · B_s) exp(acs_t - acs_s) for s <= t, then M @ (Δx).
    # The causal mask (the -inf of the segment sum) is applied to C Bᵀ, which is per group and
    # smaller than the per-head decay, so that exp() never sees -inf (see _exp).
    CB = torch.matmul(C_gqn, B_gqn.transpose(-1, -2)).masked_fill_(_upper(Q, x.device), 0)  # (b,k,g,Q,Q)
    decay = _exp(torch.sub(hi[..., :, None], hi[..., None, :]), floor, needs_grad)  # (b, k, h, Q, Q)
    decay = decay.view(b, k, g, hpg, Q, Q)
    M = decay * CB[:, :, :, None] if needs_grad else decay.mul_(CB[:, :, :, None])
    x_heads = x_chunks.permute(0, 1, 3, 2, 4)  # (b, k, h, Q, p)
    y_diag = torch.matmul(M.view(b, k, h, Q, Q), x_heads)  # (b, k, h, Q, p), to be scaled by exp(lo_t)

    # 2. Chunk states from a zero start: S = Bᵀ (exp(acs_Q - acs_s) Δx), (b, k, g, n, hpg·p).
    exp_acs = _exp(hi.clone(), floor, needs_grad)  # (b, k, h, Q): exp(acs_t), no cancellation
    to_end = (acs64[..., -1:] - (acs64 if lo_scale is None else hi.to(torch.float64))).to(dtype)
    to_end = _exp(to_end, floor, needs_grad).transpose(2, 3)  # (b, k, Q, h)
    x_to_end = (x_chunks * to_end[..., None]).view(b, k, Q, g, hpg * p).transpose(2, 3)
    S = torch.matmul(B_gqn.transpose(-1, -2), x_to_end).view(b, k, g, n, hpg, p)

    # 3. State passing, sequential over chunks (linear): H_{c+1} = exp(acs_Q) H_c + S_c.
    chunk_decay = exp_acs[..., -1].view(b, k, g, 1, hpg, 1)
    if needs_grad:
        starts = []
        for c in range(k):
            starts.append(H)
            H = torch.addcmul(S[:, c], chunk_decay[:, c], H)
        H_start = torch.stack(starts, dim=1)
    else:
        H_all = S.new_empty((b, k + 1, g, n, hpg, p))
        H_all[:, 0] = H
        for c in range(k):
            torch.addcmul(S[:, c], chunk_decay[:, c], H_all[:, c], out=H_all[:, c + 1])
        H_start, H = H_all[:, :k], H_all[:, k].clone()

    # 4. Outputs from the carried states: exp(acs_t) C_t · H_c, (b, k, g, Q, hpg, p).
    y_off = torch.matmul(C_gqn, H_start.reshape(b, k, g, n, hpg * p)).view(b, k, g, Q, hpg, p)
    from_start = exp_acs.view(b, k, g, hpg, Q).transpose(-1, -2)[..., None]  # (b, k, g, Q, hpg, 1)
    y_diag = y_diag.view(b, k, g, hpg, Q, p).transpose(3, 4)
    if lo_scale is None:
        y = y_off * from_start + y_diag if needs_grad else y_off.mul_(from_start).add_(y_diag)
    else:  # the exp(lo_t) row scale of the intra-chunk part, fused into the sum
        lo_t = lo_scale.view(b, k, g, hpg, Q).transpose(-1, -2)[..., None]
        if needs_grad:
            y = y_off * from_start + y_diag * lo_t
        else:
            y = y_off.mul_(from_start).addcmul_(y_diag, lo_t)
    # (b, k, g, Q, hpg, p) -> (b, k·Q, h, p)
    y = y.permute(0, 1, 3, 2, 4, 5).reshape(b, k * Q, h, p)
    return y, H


@functools.lru_cache(maxsize=16)
def _upper(Q: int, device: torch.device) -> Tensor:
    """Strictly-upper-triangular (acausal) mask of a chunk, ``(Q, Q)`` bool.

    Built outside inference mode: the cached tensor outlives the call, and an inference tensor could
    not be saved for backward by a later training step in the same process."""
    with torch.inference_mode(False):
        return torch.ones(Q, Q, dtype=torch.bool, device=device).triu(1)


#: exp() arguments below this give exactly 0 (float32/16 and float64 respectively).
_EXP_FLOOR = (-60.0, -600.0)


def _exp(arg: Tensor, floor: float, needs_grad: bool) -> Tensor:
    """``exp(arg)`` computed in place on ``arg`` (a fresh temporary), with decays below ``exp(floor)``
    set to exactly 0.

    CPUs take a slow path for -inf and for subnormal numbers (10-20x slower per element), and a
    decay of ~1e-35 times an ordinary value is subnormal, slowing every later multiply and matmul.
    So the exponent is clamped to ``[floor, -floor]`` (exp stays fast and finite; the ceiling only
    touches acausal entries, which are masked to 0 elsewhere, when ``A <= 0``) and results at the
    floor are flushed to 0. A dropped decay is below 1e-26 (float32) or 1e-260 (float64): far
    below the resolution of the O(1) terms it is summed with.
    """
    out = arg.clamp_(floor, -floor).exp_()
    cutoff = math.exp(floor + 1.0)
    return F.threshold(out, cutoff, 0.0) if needs_grad else F.threshold_(out, cutoff, 0.0)
