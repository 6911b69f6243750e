"""Order-k Markov baseline for DNA language modelling: bits per base over A/C/G/T.

Smoothing (``smoothing=``):
- ``"kn"`` (default): interpolated modified Kneser-Ney (Chen & Goodman 1998): three absolute
  discounts ``D1, D2, D3+`` per order estimated from count-of-counts, raw counts at the top order
  and continuation counts (number of distinct one-base left extensions) below it;
- ``"ad"``: the same interpolated modified absolute discounting, but raw counts at every order;
- ``"wb"``: interpolated Witten-Bell.
Every order interpolates down to order 0 and then to the uniform 1/4, so no base gets zero
probability. ``both_strands=True`` also counts the reverse complement of the training sequences
(DNA is read on both strands; the neural model gets reverse-complement augmentation too).

Counts live in numpy: at each order, the distinct (context, base) codes of the training data
(``context * 4 + base``, int64, so any order up to 30 fits) are sorted once and looked up with
``searchsorted``; memory grows with the number of distinct contexts, not with ``4^k``.

``N`` (and any ambiguity code, read as N) is never predicted and breaks the context: positions whose
target is N are not scored and contexts never span an N (the context after an N restarts empty).
The first bases of a sequence are scored with the shorter context they have. Input is a DNA string,
or token ids from ``hybrids.datasets.dna.DNATokenizer`` (5..9 for A C G T N).

``python -m hybrids.apps.dna.markov GENOME`` runs the held-out benchmark (``benchmark_holdout``):
last 10% held out, order chosen on a dev slice at the end of the first 90%, then every order refit
on the full 90% and scored on the held-out part.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from hybrids.apps.core.errors import InputError
from hybrids.datasets.dna import BASE_IDS, DNAFormatError, normalize_dna, read_sequences, split_holdout

__all__ = ["MarkovModel", "NgramCounts", "benchmark_holdout", "select_order", "to_base_codes"]

N_CODE = 4
SMOOTHINGS = ("kn", "ad", "wb")
MAX_ORDER = 30  # (order + 1) bases of 2 bits must fit in an int64 code
_ASCII_TO_CODE = np.full(256, 255, dtype=np.uint8)
for _i, _b in enumerate("ACGTN"):
    _ASCII_TO_CODE[ord(_b)] = _i


def to_base_codes(tokens: str | bytes | np.ndarray | torch.Tensor, *, source: str = "sequence") -> np.ndarray:
    """``(L,)`` uint8 codes 0..3 for A C G T and 4 for N, from a DNA string or tokenizer ids."""
    if isinstance(tokens, str | bytes):
        try:
            text = normalize_dna(tokens, source=source)
        except DNAFormatError as err:
            raise InputError(str(err)) from None
        return _ASCII_TO_CODE[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens).reshape(-1).astype(np.int64)
    codes = arr - BASE_IDS["A"]
    if codes.size and (codes.min() < 0 or codes.max() > N_CODE):
        bad = int(arr[(codes < 0) | (codes > N_CODE)][0])
        raise InputError(f"{source}: token id {bad} is not a base (expected ids 5..9 for A C G T N)")
    return codes.astype(np.uint8)


def _reverse_complement_codes(codes: np.ndarray) -> np.ndarray:
    rc = np.where(codes == N_CODE, N_CODE, 3 - codes.astype(np.int64)).astype(np.uint8)
    return rc[::-1].copy()


def _run_lengths(codes: np.ndarray) -> np.ndarray:
    """``run[i]``: number of consecutive non-N codes ending at ``i`` (0 where ``codes[i]`` is N)."""
    idx = np.arange(len(codes), dtype=np.int64)
    last_n = np.maximum.accumulate(np.where(codes == N_CODE, idx, -1)) if len(codes) else idx
    return idx - last_n


def _histories(codes: np.ndarray, max_order: int) -> Iterable[tuple[int, np.ndarray]]:
    """Yield ``(j, H_j)`` for ``j = 0..max_order``: ``H_j[i]`` codes the ``j`` bases before ``i``
    (base 4 number, oldest first; only meaningful where they exist and hold no N)."""
    base = np.where(codes == N_CODE, 0, codes).astype(np.int64)
    hist = np.zeros(len(codes), dtype=np.int64)
    yield 0, hist
    for j in range(1, max_order + 1):
        hist = hist.copy()
        if j < len(codes):
            hist[j:] += base[:-j] << (2 * (j - 1))
        yield j, hist


class _Level:
    """One order's table: sorted distinct contexts ``ctx (m,)``, counts ``(m, 4)`` and what the
    smoothing needs per context (total, discount mass, number of distinct followers)."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray) -> None:
        ctx = keys >> 2
        new = np.ones(len(ctx), dtype=bool)
        new[1:] = ctx[1:] != ctx[:-1]
        self.ctx = ctx[new]
        inverse = np.cumsum(new) - 1
        self.counts = np.zeros((len(self.ctx), 4), dtype=np.int64)
        self.counts[inverse, keys & 3] = counts
        self.total = self.counts.sum(axis=1).astype(np.float64)
        self.n_followers = (self.counts > 0).sum(axis=1).astype(np.float64)
        self.discounts = _modified_kn_discounts(counts)
        self.discount_mass = self.discounts[np.minimum(self.counts, 3)].sum(axis=1)

    def lookup(self, hist: np.ndarray) -> np.ndarray:
        """Row of each context code in ``hist``, ``-1`` where it was never seen."""
        pos = np.searchsorted(self.ctx, hist)
        pos = np.minimum(pos, len(self.ctx) - 1)
        return np.where(self.ctx[pos] == hist, pos, -1)


def _modified_kn_discounts(counts: np.ndarray) -> np.ndarray:
    """``[0, D1, D2, D3+]`` from the count-of-counts ``n1..n4`` (Chen & Goodman), each clipped to
    ``[0.05, r]``; a fallback of ``0.5 r`` where a count-of-count is zero."""
    n = np.bincount(np.minimum(counts, 5), minlength=6)[1:5].astype(np.float64)
    d = np.array([0.0, 0.5, 1.0, 1.5])
    if n[0] > 0 and n[1] > 0:
        y = n[0] / (n[0] + 2 * n[1])
        for r in (1, 2, 3):
            if n[r - 1] > 0:
                d[r] = r - (r + 1) * y * n[r] / n[r - 1]
    # A discount of 0 would leave no mass for unseen bases (a zero probability): floor at 0.05.
    return np.clip(d, [0.0, 0.05, 0.05, 0.05], [0.0, 1.0, 2.0, 3.0])


class NgramCounts:
    """Distinct (context, base) counts of orders ``0..max_order`` over training sequences, with the
    per-order tables built lazily and cached (shared by models of every order up to ``max_order``)."""

    def __init__(self, sequences: Sequence[np.ndarray], max_order: int, *, both_strands: bool = True) -> None:
        if not 0 <= max_order <= MAX_ORDER:
            raise InputError(f"Markov order must be in 0..{MAX_ORDER}, got {max_order}")
        seqs = list(sequences)
        if both_strands:
            seqs += [_reverse_complement_codes(s) for s in seqs]
        self.max_order, self.both_strands = max_order, both_strands
        self.n_bases = int(sum(int((s != N_CODE).sum()) for s in seqs))
        if self.n_bases == 0:
            raise InputError("no A/C/G/T base to train the Markov model on")
        # keys[j], counts[j]: sorted distinct codes (context_j * 4 + base) and their raw counts
        per_seq: list[list[np.ndarray]] = [[] for _ in range(max_order + 1)]
        for codes in seqs:
            run = _run_lengths(codes)
            for j, hist in _histories(codes, max_order):
                ok = run >= j + 1
                per_seq[j].append((hist[ok] << 2) | codes[ok].astype(np.int64))
        self._keys, self._counts = [], []
        for j in range(max_order + 1):
            keys, counts = np.unique(np.concatenate(per_seq[j]), return_counts=True)
            per_seq[j] = []
            self._keys.append(keys)
            self._counts.append(counts)
        self._raw: dict[int, _Level] = {}
        self._cont: dict[int, _Level] = {}

    def raw(self, j: int) -> _Level:
        if j not in self._raw:
            self._raw[j] = _Level(self._keys[j], self._counts[j])
        return self._raw[j]

    def continuation(self, j: int) -> _Level:
        """Order-``j`` table of continuation counts N1+(. h x), from the distinct order-``j+1`` keys."""
        if j >= self.max_order:
            raise ValueError(f"continuation counts of order {j} need order {j + 1} counts")
        if j not in self._cont:
            suffix = self._keys[j + 1] & ((1 << (2 * (j + 1))) - 1)
            keys, counts = np.unique(suffix, return_counts=True)
            self._cont[j] = _Level(keys, counts)
        return self._cont[j]


class MarkovModel:
    """Order-``k`` Markov model over A/C/G/T with interpolated smoothing (module docstring).

    ``fit(tokens)`` takes one sequence or a list of them (strings or tokenizer ids);
    ``bits_per_base(tokens)`` is the mean ``-log2 p`` over the scored (non-N) bases.
    """

    def __init__(self, order: int = 8, *, smoothing: str = "kn", both_strands: bool = True) -> None:
        if smoothing not in SMOOTHINGS:
            raise InputError(f"unknown smoothing {smoothing!r} (choose from {', '.join(SMOOTHINGS)})")
        if not 0 <= int(order) <= MAX_ORDER:
            raise InputError(f"Markov order must be in 0..{MAX_ORDER}, got {order}")
        self.order, self.smoothing, self.both_strands = int(order), smoothing, both_strands
        self.counts: NgramCounts | None = None

    @staticmethod
    def _sequences(tokens) -> list[np.ndarray]:
        if isinstance(tokens, str | bytes | np.ndarray | torch.Tensor):
            tokens = [tokens]
        return [to_base_codes(t, source=f"sequence {i}") for i, t in enumerate(tokens)]

    def fit(self, tokens) -> MarkovModel:
        self.counts = NgramCounts(self._sequences(tokens), self.order, both_strands=self.both_strands)
        return self

    @classmethod
    def from_counts(cls, counts: NgramCounts, order: int, *, smoothing: str = "kn") -> MarkovModel:
        """A model of any ``order <= counts.max_order`` sharing already computed counts."""
        if order > counts.max_order:
            raise InputError(f"order {order} exceeds the counted maximum {counts.max_order}")
        model = cls(order, smoothing=smoothing, both_strands=counts.both_strands)
        model.counts = counts
        return model

    def _table(self, j: int) -> _Level:
        assert self.counts is not None
        if self.smoothing == "kn" and j < self.order:
            return self.counts.continuation(j)
        return self.counts.raw(j)

    def log2_probs(self, tokens) -> np.ndarray:
        """``(n_scored,)`` float64 ``log2 p(base | context)`` of every non-N base, in order."""
        if self.counts is None:
            raise InputError("the Markov model is not fitted; call fit() first")
        out = [self._log2_probs(codes) for codes in self._sequences(tokens)]
        return np.concatenate(out) if out else np.zeros(0)

    def _log2_probs(self, codes: np.ndarray) -> np.ndarray:
        run = _run_lengths(codes)
        scored = codes != N_CODE
        target = codes[scored].astype(np.int64)
        avail = np.minimum(run[scored] - 1, self.order)  # context bases available at each position
        prob = np.full(len(target), 0.25)
        for j, hist in _histories(codes, self.order):
            sel = np.flatnonzero(avail >= j)
            if sel.size == 0:
                break
            table = self._table(j)
            row = table.lookup(hist[scored][sel])
            seen = row >= 0
            sel, row = sel[seen], row[seen]
            c_hx = table.counts[row, target[sel]]
            if self.smoothing == "wb":
                n1 = table.n_followers[row]
                prob[sel] = (c_hx + n1 * prob[sel]) / (table.total[row] + n1)
            else:
                kept = np.maximum(c_hx - table.discounts[np.minimum(c_hx, 3)], 0.0)
                prob[sel] = (kept + table.discount_mass[row] * prob[sel]) / table.total[row]
        return np.log2(prob)

    def bits_per_base(self, tokens) -> float:
        lp = self.log2_probs(tokens)
        if lp.size == 0:
            raise InputError("no A/C/G/T base to score")
        return float(-lp.mean())

    def next_base_probs(self, context: str | np.ndarray | torch.Tensor) -> np.ndarray:
        """``(4,)`` probabilities of A, C, G, T after ``context`` (they sum to 1)."""
        ctx = to_base_codes(context, source="context")
        rows = [self._log2_probs(np.append(ctx, np.uint8(b)))[-1] for b in range(4)]
        return np.exp2(np.array(rows))


def select_order(
    train,
    dev,
    orders: Iterable[int] = range(1, 13),
    *,
    smoothing: str = "kn",
    both_strands: bool = True,
) -> tuple[int, dict[int, float]]:
    """Fit on ``train``, score every order on ``dev``; returns ``(best order, {order: dev bpb})``."""
    orders = sorted({int(k) for k in orders})
    if not orders:
        raise InputError("no Markov order to select from")
    counts = NgramCounts(MarkovModel._sequences(train), max(orders), both_strands=both_strands)
    scores = {k: MarkovModel.from_counts(counts, k, smoothing=smoothing).bits_per_base(dev) for k in orders}
    return min(scores, key=scores.get), scores


def benchmark_holdout(
    genome,
    *,
    orders: Iterable[int] = range(1, 13),
    smoothing: str = "kn",
    both_strands: bool = True,
    fraction: float = 0.1,
    dev_fraction: float = 0.1,
) -> dict:
    """Held-out bits per base of every order on one genome (string or token ids).

    Last ``fraction`` held out; the order is chosen on the last ``dev_fraction`` of the training part
    with counts from the rest; then every order is refit on the whole training part and scored.
    """
    tokens = to_base_codes(genome, source="genome") + np.uint8(BASE_IDS["A"])  # validated token ids
    split = split_holdout(tokens, fraction, dev_fraction)
    t0 = time.perf_counter()
    best, dev = select_order(split.fit, split.dev, orders, smoothing=smoothing, both_strands=both_strands)
    counts = NgramCounts(MarkovModel._sequences(split.train), max(dev), both_strands=both_strands)
    test = {k: MarkovModel.from_counts(counts, k, smoothing=smoothing).bits_per_base(split.test) for k in dev}
    return {
        "smoothing": smoothing,
        "both_strands": both_strands,
        "n_train": len(split.train),
        "n_fit": len(split.fit),
        "n_dev": len(split.dev),
        "n_test": len(split.test),
        "chosen_order": best,
        "dev_bpb": dev,
        "test_bpb": test,
        "test_bpb_chosen": test[best],
        "best_test_order_oracle": min(test, key=test.get),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from hybrids.apps.core.arguments import Parser

    parser = Parser(
        prog="python -m hybrids.apps.dna.markov",
        description="Held-out bits per base of order-k Markov models on a genome (FASTA/GenBank).",
    )
    parser.add_argument("genome", type=Path, help="FASTA or GenBank file; its records are concatenated")
    parser.add_argument(
        "--orders", default="1-12", help="orders to try, e.g. 1-12 or 4,8,10 (default %(default)s)"
    )
    parser.add_argument("--smoothing", choices=SMOOTHINGS, default="kn")
    parser.add_argument("--one-strand", action="store_true", help="do not count the reverse complement")
    parser.add_argument("--fraction", type=float, default=0.1, help="held-out tail (default %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    try:
        if "-" in args.orders:
            lo, hi = (int(v) for v in args.orders.split("-"))
            orders = range(lo, hi + 1)
        else:
            orders = [int(v) for v in args.orders.split(",")]
        genome = "N".join(rec.sequence for rec in read_sequences(args.genome))
        result = benchmark_holdout(
            genome,
            orders=orders,
            smoothing=args.smoothing,
            both_strands=not args.one_strand,
            fraction=args.fraction,
        )
    except (InputError, DNAFormatError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result["genome"] = str(args.genome)
    for k in result["dev_bpb"]:
        mark = "  <- chosen on dev" if k == result["chosen_order"] else ""
        dev, test = result["dev_bpb"][k], result["test_bpb"][k]
        print(f"order {k:2d}: dev {dev:.4f}  held-out {test:.4f} bits/base{mark}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if math.isfinite(result["test_bpb_chosen"]) else 1


if __name__ == "__main__":
    sys.exit(main())
