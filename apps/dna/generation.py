"""Sampling DNA from a :class:`~hybrids.apps.dna.hybridna.HybriDNA` with its inference cache.

``generate(model, prompt, max_new_tokens, ...)``: the prompt (optionally preceded by label/control
tokens such as a species or activity tag, as the paper's prompt tokens for CRE design) is prefilled
in one parallel pass, then each new token costs one recurrent step (Mamba2 conv + SSM states,
attention KV cache). Sampling: temperature (0 = greedy), top-k, top-p (nucleus), an optional set of
allowed tokens (e.g. only ``A C G T``), and a seed for reproducible draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hybrids.apps.core.errors import InputError
from hybrids.apps.dna.hybridna import HybriDNA

__all__ = ["GenerationOutput", "generate", "sample_next", "filter_logits"]


@dataclass
class GenerationOutput:
    """``sequences (b, n_label + l_prompt + n_new)``: label tokens, prompt and new tokens;
    ``new_tokens (b, n_new)``; ``logits (b, n_new, vocab)`` (the distributions the new tokens were
    drawn from, before filtering) when requested, else ``None``."""

    sequences: Tensor
    new_tokens: Tensor
    logits: Tensor | None = None


def filter_logits(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allowed_tokens: Tensor | None = None,
) -> Tensor:
    """``logits (b, vocab)`` -> scaled logits with excluded tokens at ``-inf``.

    Order: allowed set, temperature, top-k (keep the k largest), top-p (keep the smallest set of
    most likely tokens whose probability reaches ``top_p``; the most likely token is always kept).
    """
    logits = logits.float()
    if allowed_tokens is not None:
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        keep[allowed_tokens.to(logits.device)] = True
        logits = logits.masked_fill(~keep, float("-inf"))
    if temperature > 0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= top_p  # the first token has before = 0 and is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allowed_tokens: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row from ``logits (b, vocab)`` -> ``(b,)`` int64 (greedy when temperature is 0)."""
    filtered = filter_logits(
        logits, temperature=temperature, top_k=top_k, top_p=top_p, allowed_tokens=allowed_tokens
    )
    if temperature == 0:
        return filtered.argmax(dim=-1)
    probs = torch.softmax(filtered, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.inference_mode()
def generate(
    model: HybriDNA,
    prompt: Tensor | Sequence[int] | None,
    max_new_tokens: int,
    *,
    label_tokens: Sequence[int] | Tensor | None = None,
    batch_size: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allowed_tokens: Sequence[int] | Tensor | None = None,
    seed: int | None = None,
    eos_token: int | None = None,
    return_logits: bool = False,
) -> GenerationOutput:
    """Sample ``max_new_tokens`` tokens after ``label_tokens + prompt`` with the model's cache.

    Args:
        prompt: ``(b, l)`` or ``(l,)`` token ids (``l`` may be 0), a list of ids, or ``None``.
        label_tokens: ids prepended to every row (label/control tokens); needed when the prompt is
            empty, since generation starts from at least one token.
        batch_size: rows to draw when the prompt is 1-D or ``None`` (default 1).
        temperature: ``0`` picks the argmax; otherwise logits are divided by it.
        top_k, top_p: nucleus / top-k filtering (``None`` = off).
        allowed_tokens: ids that may be drawn (e.g. the four bases); others get probability 0.
        seed: seeds a private generator, so equal seeds give equal samples (global RNG untouched).
        eos_token: rows stop (and are padded with it) after drawing this id.
        return_logits: also return the unfiltered logits each new token was drawn from.
    """
    if max_new_tokens < 0:
        raise InputError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise InputError(f"generate: temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise InputError(f"generate: top_k must be positive, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"generate: top_p must be in (0, 1], got {top_p}")
    device = model.embedding.weight.device
    vocab = model.config.vocab_size

    prompt_t = torch.as_tensor([] if prompt is None else prompt, dtype=torch.int64, device=device)
    if prompt_t.dim() == 1:
        prompt_t = prompt_t[None].expand(batch_size or 1, -1)
    elif prompt_t.dim() != 2:
        raise InputError(
            f"generate: prompt must be (batch, length) or (length,), got {tuple(prompt_t.shape)}"
        )
    elif batch_size is not None and batch_size != prompt_t.shape[0]:
        raise InputError(f"generate: batch_size {batch_size} != prompt batch {prompt_t.shape[0]}")
    b = prompt_t.shape[0]
    labels = torch.as_tensor([] if label_tokens is None else label_tokens, dtype=torch.int64, device=device)
    if labels.dim() != 1:
        raise InputError(f"generate: label_tokens must be a 1-D list of ids, got shape {tuple(labels.shape)}")
    context = torch.cat([labels[None].expand(b, -1), prompt_t], dim=1)
    if context.shape[1] == 0:
        raise InputError("generate: give a prompt or label_tokens (generation needs at least one token)")
    allowed = None
    if allowed_tokens is not None:
        allowed = torch.as_tensor(allowed_tokens, dtype=torch.int64, device=device).reshape(-1)
        if allowed.numel() == 0 or int(allowed.min()) < 0 or int(allowed.max()) >= vocab:
            raise InputError(f"generate: allowed_tokens must be non-empty ids in [0, {vocab})")

    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    was_training = model.training
    model.eval()
    try:
        cache = model.allocate_cache(b)
        logits = model(context, cache)[:, -1]
        new, kept_logits = [], []
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for i in range(max_new_tokens):
            if return_logits:
                kept_logits.append(logits.float())
            token = sample_next(
                logits, temperature=temperature, top_k=top_k, top_p=top_p,
                allowed_tokens=allowed, generator=generator,
            )
            if eos_token is not None:
                token = token.masked_fill(done, eos_token)
                done |= token == eos_token
            new.append(token)
            if i + 1 == max_new_tokens or (eos_token is not None and bool(done.all())):
                break
            logits = model(token[:, None], cache)[:, -1]
    finally:
        model.train(was_training)
    new_tokens = torch.stack(new, 1) if new else context.new_zeros(b, 0)
    if eos_token is not None and new_tokens.shape[1] < max_new_tokens:
        pad = new_tokens.new_full((b, max_new_tokens - new_tokens.shape[1]), eos_token)
        new_tokens = torch.cat([new_tokens, pad], 1)
    out_logits = None
    if return_logits:
        out_logits = torch.stack(kept_logits, 1) if kept_logits else logits.new_zeros(b, 0, vocab)
    return GenerationOutput(torch.cat([context, new_tokens], 1), new_tokens, out_logits)
