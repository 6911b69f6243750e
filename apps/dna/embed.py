"""Inference with a pretrained HybriDNA: echo embeddings of FASTA records (``hybrids dna embed``) and
sampling (``hybrids dna generate``).

    hybrids dna embed -m runs/hybridna/best --fasta seqs.fa -o emb/ [--window 4096] [--per-token]

Embeddings: each record is cut into consecutive windows of at most ``--window`` bases (the last one
shorter); each window is read as ``<bos> x x`` and the final hidden states of the second copy are
its per-token embeddings (echo embedding: every position has seen the whole window). A record's
per-token embeddings are its windows' concatenated, ``(L, d_model)``; its sequence embedding is
their mean over the bases. ``--no-echo`` uses the causal states of one pass instead.

Output folder: ``sequences.npy`` ``(records, d_model)`` float32 (rows in file order),
``sequences.safetensors`` (the same, keyed by record id), ``ids.txt`` (one id per row) and, with
``--per-token``, ``tokens.safetensors`` (one ``(L, d_model)`` float32 tensor per record id; ids
repeated in the file get ``#2``, ``#3`` ... suffixes). Files are written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybrids.apps.core.errors import InputError
from hybrids.datasets.atomic import make_output_folder
from hybrids.datasets.dna import (
    BOS_ID,
    PAD_ID,
    DNAFormatError,
    DNATokenizer,
    count_scored_bases,
    read_sequences,
)

logger = logging.getLogger("hybrids.dna.embed")


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, DNATokenizer]:
    """A HybriDNA checkpoint folder and its tokenizer, in eval mode on ``device``."""
    from hybrids.apps.dna.models import load_lm

    model = load_lm(path)
    try:
        model = model.to(torch.device(device)).eval()
    except (RuntimeError, AssertionError) as exc:
        raise InputError(f"--device {device}: not usable here ({exc})") from None
    tok_info = (getattr(model, "preprocessing", None) or {}).get("tokenizer")
    return model, DNATokenizer.from_dict(tok_info) if tok_info else DNATokenizer()


@torch.no_grad()
def embed_tokens(
    model: torch.nn.Module, tokens: list[torch.Tensor], *, echo: bool = True
) -> list[torch.Tensor]:
    """Per-token embeddings ``(l_i, d_model)`` of a batch of base-token windows (any lengths)."""
    from hybrids.apps.dna.classifier import echo_embeddings

    device = next(model.parameters()).device
    padded = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True, padding_value=PAD_ID).to(device)
    if echo:
        h = echo_embeddings(model, padded)
    else:
        bos = torch.full((padded.shape[0], 1), BOS_ID, dtype=padded.dtype, device=device)
        h = model.hidden_states(torch.cat([bos, padded], 1))[:, 1:]
    return [h[i, : len(t)].float().cpu() for i, t in enumerate(tokens)]


def embed_fasta(
    model_path: str | Path,
    fasta: str | Path,
    out: str | Path,
    *,
    window: int = 4096,
    per_token: bool = False,
    echo: bool = True,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, Any]:
    """Embed every record of ``fasta`` into the folder ``out`` (module docstring)."""
    from safetensors.torch import save_file

    from hybrids.datasets.atomic import atomic_write_path, atomic_write_text

    if window < 1 or batch_size < 1:
        raise InputError(f"--window and --batch-size must be >= 1, got {window} and {batch_size}")
    model, tokenizer = load_model(model_path, device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    ids: list[str] = []
    seq_emb: list[np.ndarray] = []
    tok_emb: dict[str, torch.Tensor] = {}
    bases = 0
    try:
        records = list(read_sequences(fasta))
    except DNAFormatError as exc:
        raise InputError(str(exc)) from None
    # windows of all records, embedded in batches
    pieces: list[tuple[int, torch.Tensor]] = []
    unknown_only = []
    for r, rec in enumerate(records):
        tokens = tokenizer.encode(rec.sequence, source=f"{fasta}: record {rec.id!r}")
        bases += len(tokens)
        if not count_scored_bases(tokens):
            unknown_only.append(rec.id)
        pieces.extend((r, tokens[s : s + window]) for s in range(0, len(tokens), window))
    if len(unknown_only) == len(records):
        raise InputError(f"{fasta}: no A, C, G or T in any record (only N or ambiguity codes)")
    if unknown_only:
        logger.warning(
            "%s: %d record(s) hold only N or ambiguity codes (e.g. %r); their embeddings carry no sequence",
            fasta,
            len(unknown_only),
            unknown_only[0],
        )
    by_piece: dict[int, torch.Tensor] = {}
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i][1]))  # similar lengths together
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for i, h in zip(batch, embed_tokens(model, [pieces[i][1] for i in batch], echo=echo)):
            by_piece[i] = h
    placed: list[list[torch.Tensor]] = [[] for _ in records]
    for i, (r, _) in enumerate(pieces):  # pieces of a record are in sequence order
        placed[r].append(by_piece.pop(i))
    seen: dict[str, int] = {}
    for rec, parts in zip(records, placed):
        h = torch.cat(parts, 0)
        seen[rec.id] = seen.get(rec.id, 0) + 1
        key = rec.id if seen[rec.id] == 1 else f"{rec.id}#{seen[rec.id]}"
        ids.append(key)
        seq_emb.append(h.mean(0).numpy())
        if per_token:
            tok_emb[key] = h.contiguous()
    matrix = np.stack(seq_emb).astype(np.float32)
    make_output_folder(out)
    with atomic_write_path(out / "sequences.npy") as tmp:
        np.save(tmp, matrix)
    with atomic_write_path(out / "sequences.safetensors") as tmp:
        save_file({k: torch.from_numpy(v.copy()) for k, v in zip(ids, matrix)}, str(tmp))
    atomic_write_text(out / "ids.txt", "".join(f"{i}\n" for i in ids))
    if per_token:
        with atomic_write_path(out / "tokens.safetensors") as tmp:
            save_file(tok_emb, str(tmp), metadata={"echo": str(echo), "window": str(window)})
    return {"records": len(records), "bases": bases, "dim": int(matrix.shape[1])}


# -- sampling --------------------------------------------------------------------------------------------


def generate_sequences(
    model_path: str | Path,
    prompt: str,
    length: int,
    *,
    num: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> list[str]:
    """``num`` continuations of ``prompt`` (read after ``<bos>``), ``length`` new bases each, sampled
    with the model's cache (``hybrids.apps.dna.generation.generate``); only A, C, G, T are drawn."""
    from hybrids.apps.dna.generation import generate

    if length < 1 or num < 1:
        raise InputError(f"--length and --num must be >= 1, got {length} and {num}")
    if temperature < 0 or top_k < 0:
        raise InputError(f"--temperature and --top-k must be >= 0, got {temperature} and {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"--top-p must be in (0, 1], got {top_p}")
    model, tokenizer = load_model(model_path, device)
    try:
        prompt_ids = tokenizer.encode(prompt, source="--prompt")
    except DNAFormatError as exc:
        raise InputError(str(exc)) from None
    allowed = [tokenizer.token_to_id(b) for b in "ACGT"]
    result = generate(
        model,
        prompt_ids,
        length,
        label_tokens=[BOS_ID],
        batch_size=num,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p,
        allowed_tokens=allowed,
        seed=seed,
    )
    return [tokenizer.decode(prompt_ids) + tokenizer.decode(row) for row in result.new_tokens.cpu()]
