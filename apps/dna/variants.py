"""Variant effect scores from a DNA language model: ``hybrids dna score-variants``.

    hybrids dna score-variants -m runs/hybridna/best --fasta ref.fa --variants variants.tsv -o scored.tsv

Input: a tab-separated file whose header names the columns ``chrom``, ``pos``, ``ref`` and ``alt``
(case-insensitive; a VCF's ``#CHROM POS ID REF ALT ...`` header works, ``##`` lines are skipped);
``pos`` is 1-based, ``ref``/``alt`` are the alleles as in a VCF (SNVs, MNVs and indels; one ``alt``
per row). The ``ref`` allele must match the reference FASTA at ``pos``.

Score: a window of ``--window`` reference bases around the variant (centred on the ref allele,
shifted where the record ends) is scored as ``<bos>`` + window, once with the reference allele
and once with the alternative allele substituted; ``loglik = sum_t log p(x_t | <bos>, x_<t)`` over
all bases of the window (natural log), and ``llr = alt_loglik - ref_loglik`` (negative: the model
finds the alternative less likely). For indels the two windows differ in length by the allele
lengths' difference. ``--rc-average`` averages each log-likelihood over both strands.

Output: the input rows (all columns kept) with ``ref_loglik``, ``alt_loglik`` and ``llr`` appended.
Any malformed row, unknown chromosome, position outside the record or mismatching ref allele is
one error line naming the file and line.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from hybrids.apps.core.errors import InputError
from hybrids.datasets.dna import BOS_ID, PAD_ID, DNAFormatError, normalize_dna, read_sequences

logger = logging.getLogger("hybrids.dna.variants")

REQUIRED = ("chrom", "pos", "ref", "alt")


class Variant(NamedTuple):
    chrom: str
    pos: int  # 1-based
    ref: str
    alt: str
    line: int
    row: list[str]


def read_variants(path: str | Path) -> tuple[list[str], list[Variant]]:
    """``(header, variants)`` of a VCF-like TSV (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such variants file")
    header: list[str] | None = None
    variants: list[Variant] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("##"):
                continue
            fields = line.split("\t")
            if header is None:
                header = fields
                names = [h.strip().lstrip("#").lower() for h in header]
                missing = [c for c in REQUIRED if c not in names]
                if missing:
                    raise InputError(
                        f"{path}: line {line_no}: header lacks {', '.join(missing)} "
                        f"(expected tab-separated columns chrom, pos, ref, alt; got {', '.join(header)})"
                    )
                cols = [names.index(c) for c in REQUIRED]
                continue
            if len(fields) < len(header):
                raise InputError(f"{path}: line {line_no}: {len(fields)} fields, header has {len(header)}")
            chrom, pos, ref, alt = (fields[c].strip() for c in cols)
            try:
                position = int(pos)
            except ValueError:
                raise InputError(f"{path}: line {line_no}: position {pos!r} is not an integer") from None
            if position < 1:
                raise InputError(f"{path}: line {line_no}: position {position} must be >= 1 (1-based)")
            if "," in alt:
                raise InputError(f"{path}: line {line_no}: several ALT alleles {alt!r}; put one per row")
            try:
                ref_n = normalize_dna(ref, source=f"{path}: line {line_no}: REF")
                alt_n = normalize_dna(alt, source=f"{path}: line {line_no}: ALT")
            except DNAFormatError as exc:
                raise InputError(f"{exc} (symbolic alleles such as <DEL> or * are not supported)") from None
            if not ref_n or not alt_n:
                raise InputError(f"{path}: line {line_no}: empty REF or ALT allele")
            variants.append(Variant(chrom, position, ref_n, alt_n, line_no, fields))
    if header is None:
        raise InputError(f"{path}: empty file (expected a header with chrom, pos, ref, alt)")
    return header, variants


def variant_windows(sequence: str, variant: Variant, window: int, source: str) -> tuple[str, str]:
    """The reference and alternative windows around ``variant`` in ``sequence`` (a whole record)."""
    start = variant.pos - 1
    end = start + len(variant.ref)
    if end > len(sequence):
        raise InputError(
            f"{source}: line {variant.line}: {variant.chrom}:{variant.pos} ({variant.ref}) runs past the end "
            f"of the record ({len(sequence)} bases)"
        )
    found = sequence[start:end]
    if found != variant.ref:
        raise InputError(
            f"{source}: line {variant.line}: REF {variant.ref} does not match the reference "
            f"{variant.chrom}:{variant.pos} ({found}); wrong genome build or 0-based positions?"
        )
    flank = max(0, window - len(variant.ref))
    left = flank // 2
    lo = max(0, start - left)
    hi = min(len(sequence), lo + max(window, len(variant.ref)))
    lo = max(0, min(lo, hi - max(window, len(variant.ref))))
    ref_win = sequence[lo:hi]
    alt_win = sequence[lo:start] + variant.alt + sequence[end:hi]
    return ref_win, alt_win


@torch.no_grad()
def sequence_logliks(
    model: torch.nn.Module, tokens: Sequence[torch.Tensor], batch_size: int = 8
) -> list[float]:
    """``sum_t log p(x_t | <bos>, x_<t)`` (natural log) of each base-token sequence."""
    device = next(model.parameters()).device
    out = [0.0] * len(tokens)
    order = sorted(range(len(tokens)), key=lambda i: -len(tokens[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = torch.nn.utils.rnn.pad_sequence(
            [tokens[i] for i in idx], batch_first=True, padding_value=PAD_ID
        )
        batch = batch.to(device)
        bos = torch.full((batch.shape[0], 1), BOS_ID, dtype=batch.dtype, device=device)
        logits = model(torch.cat([bos, batch], 1)[:, :-1]).float()
        logp = torch.log_softmax(logits, -1).gather(-1, batch.unsqueeze(-1)).squeeze(-1)
        logp = logp.masked_fill(batch == PAD_ID, 0.0).double().sum(1)
        for i, v in zip(idx, logp.tolist()):
            out[i] = v
    return out


def score_variants(
    model: torch.nn.Module,
    tokenizer,
    genome: dict[str, str],
    variants: Sequence[Variant],
    *,
    window: int = 1024,
    rc_average: bool = False,
    batch_size: int = 8,
    source: str = "variants",
) -> list[tuple[float, float, float]]:
    """``(ref_loglik, alt_loglik, llr)`` of every variant."""
    from hybrids.datasets.dna import reverse_complement

    if window < 1:
        raise InputError(f"--window must be >= 1, got {window}")
    seqs: list[torch.Tensor] = []
    for v in variants:
        if v.chrom not in genome:
            known = ", ".join(list(genome)[:5])
            raise InputError(
                f"{source}: line {v.line}: chromosome {v.chrom!r} is not in the FASTA (records: {known})"
            )
        ref_win, alt_win = variant_windows(genome[v.chrom], v, window, source)
        for w in (ref_win, alt_win):
            t = tokenizer.encode(w)
            seqs.append(t)
            if rc_average:
                seqs.append(reverse_complement(t))
    ll = sequence_logliks(model, seqs, batch_size)
    per = 4 if rc_average else 2
    out = []
    for i in range(len(variants)):
        vals = ll[i * per : (i + 1) * per]
        ref_ll, alt_ll = (
            ((vals[0] + vals[1]) / 2, (vals[2] + vals[3]) / 2) if rc_average else (vals[0], vals[1])
        )
        out.append((ref_ll, alt_ll, alt_ll - ref_ll))
    return out


def score_variants_file(
    model_path: str | Path,
    fasta: str | Path,
    variants_path: str | Path,
    out: str | Path | None,
    *,
    window: int = 1024,
    rc_average: bool = False,
    batch_size: int = 8,
    device: str = "cpu",
) -> int:
    """Score ``variants_path`` against ``fasta``; writes the TSV to ``out`` (atomically) or stdout."""
    import io
    import sys

    from hybrids.apps.dna.embed import load_model
    from hybrids.datasets.atomic import atomic_write_text

    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    header, variants = read_variants(variants_path)
    model, tokenizer = load_model(model_path, device)
    wanted = {v.chrom for v in variants}
    genome: dict[str, str] = {}
    names: list[str] = []
    try:
        for rec in read_sequences(fasta):
            names.append(rec.id)
            # an NCBI-style id (gi|45478711|ref|NC_005816.1|) also answers to each of its parts
            for alias in {rec.id, *(p for p in rec.id.split("|") if p)}:
                if alias in wanted and alias not in genome:
                    genome[alias] = rec.sequence
    except DNAFormatError as exc:
        raise InputError(str(exc)) from None
    missing = next((v for v in variants if v.chrom not in genome), None)
    if missing is not None:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise InputError(
            f"{variants_path}: line {missing.line}: chromosome {missing.chrom!r} is not in {fasta} "
            f"(records: {shown})"
        )
    scores = score_variants(
        model,
        tokenizer,
        genome,
        variants,
        window=window,
        rc_average=rc_average,
        batch_size=batch_size,
        source=str(variants_path),
    )
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow([*header, "ref_loglik", "alt_loglik", "llr"])
    for v, (r, a, llr) in zip(variants, scores):
        writer.writerow([*v.row, f"{r:.4f}", f"{a:.4f}", f"{llr:.4f}"])
    if out is None:
        sys.stdout.write(buf.getvalue())
    else:
        atomic_write_text(out, buf.getvalue())
    return len(variants)
