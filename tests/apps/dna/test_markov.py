"""Order-k Markov baseline (hybrids.apps.dna.markov): normalisation, recovery of known sources,
order selection on dev, N handling, the held-out benchmark and its command line."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from hybrids.apps.core.errors import InputError
from hybrids.apps.dna.markov import (
    SMOOTHINGS,
    MarkovModel,
    benchmark_holdout,
    main,
    select_order,
    to_base_codes,
)
from hybrids.datasets.dna import DNATokenizer, read_sequences, reverse_complement


def iid(n: int, p, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list("ACGT"), n, p=p))


def markov_chain(n: int, order: int, seed: int = 0) -> tuple[str, float]:
    """A random order-``order`` chain and its entropy rate (bits/base, stationary estimate)."""
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(4, 0.3), size=4**order)  # peaked next-base distributions
    seq = list(rng.integers(0, 4, order))
    ctx = 0
    for b in seq:
        ctx = (ctx * 4 + b) % 4**order
    visits = np.zeros(4**order)
    for _ in range(n - order):
        b = rng.choice(4, p=trans[ctx])
        visits[ctx] += 1
        seq.append(b)
        ctx = (ctx * 4 + b) % 4**order
    h = -(trans * np.log2(trans)).sum(axis=1)
    return "".join("ACGT"[b] for b in seq), float((visits / visits.sum()) @ h)


def reference_log2_probs(train: str, test: str, order: int, smoothing: str) -> np.ndarray:
    """Direct dictionary implementation of the three interpolated smoothings, one strand, no N."""
    raw = [Counter(train[i - j : i + 1] for i in range(j, len(train))) for j in range(order + 1)]
    raw = [Counter({g: c for g, c in counts.items() if "N" not in g}) for counts in raw]
    cont = [Counter(gram[1:] for gram in raw[j + 1]) for j in range(order)]

    def table(j):
        return cont[j] if smoothing == "kn" and j < order else raw[j]

    def discounts(tab):
        n = [sum(1 for c in tab.values() if c == r) for r in (1, 2, 3, 4)]
        d = [0.0, 0.5, 1.0, 1.5]
        if n[0] and n[1]:
            y = n[0] / (n[0] + 2 * n[1])
            for r in (1, 2, 3):
                if n[r - 1]:
                    d[r] = r - (r + 1) * y * n[r] / n[r - 1]
        return [0.0] + [min(max(d[r], 0.05), r) for r in (1, 2, 3)]

    out = []
    for i, x in enumerate(test):
        p = 0.25
        for j in range(min(order, i) + 1):
            tab, h = table(j), test[i - j : i]
            counts = {b: tab.get(h + b, 0) for b in "ACGT"}
            total = sum(counts.values())
            if total == 0:
                continue
            if smoothing == "wb":
                n1 = sum(1 for c in counts.values() if c)
                p = (counts[x] + n1 * p) / (total + n1)
            else:
                d = discounts(tab)
                mass = sum(d[min(c, 3)] for c in counts.values())
                p = (max(counts[x] - d[min(counts[x], 3)], 0) + mass * p) / total
        out.append(np.log2(p))
    return np.array(out)


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("order", [0, 1, 2, 4])
def test_matches_reference_implementation(smoothing, order):
    train, _ = markov_chain(3000, order=2, seed=11)
    test, _ = markov_chain(300, order=2, seed=12)
    model = MarkovModel(order, smoothing=smoothing, both_strands=False).fit(train)
    expected = reference_log2_probs(train, test, order, smoothing)
    np.testing.assert_allclose(model.log2_probs(test), expected, rtol=1e-9)
    # both strands = training on the sequence and its reverse complement, separated by an N
    both = MarkovModel(order, smoothing=smoothing, both_strands=True).fit(train)
    expected = reference_log2_probs(train + "N" + reverse_complement(train), test, order, smoothing)
    np.testing.assert_allclose(both.log2_probs(test), expected, rtol=1e-9)


def test_to_base_codes_strings_and_tokenizer_ids_agree():
    text = "acgtNRu"
    codes = to_base_codes(text)
    assert codes.tolist() == [0, 1, 2, 3, 4, 4, 3]
    ids = DNATokenizer().encode(text)
    assert np.array_equal(to_base_codes(ids), codes)
    assert np.array_equal(to_base_codes(ids.numpy().astype(np.uint8)), codes)
    with pytest.raises(InputError, match="token id 1 is not a base"):
        to_base_codes(torch.tensor([1, 5, 6]))
    with pytest.raises(InputError, match="invalid character 'E'"):
        to_base_codes("ACEG")


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("order", [0, 1, 3, 6])
def test_next_base_probabilities_sum_to_one(smoothing, order):
    train = iid(3000, [0.4, 0.1, 0.1, 0.4], seed=1)
    model = MarkovModel(order, smoothing=smoothing).fit(train)
    for context in ["", "A", "ACGTAC", "GGGGGGGG", train[100:110]]:
        p = model.next_base_probs(context)
        assert p.shape == (4,) and np.all(p > 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-9)


def test_order0_matches_entropy_of_iid_source():
    p = np.array([0.5, 0.25, 0.125, 0.125])
    model = MarkovModel(0, both_strands=False).fit(iid(100_000, p, seed=1))
    assert model.bits_per_base(iid(20_000, p, seed=2)) == pytest.approx(1.75, abs=0.02)


def test_recovers_known_order_and_entropy_rate():
    seq, rate = markov_chain(60_000, order=3, seed=4)
    train, dev = seq[:45_000], seq[45_000:]
    best, scores = select_order(train, dev, range(0, 7), both_strands=False)
    assert best == 3, scores
    assert scores[3] == pytest.approx(rate, abs=0.05)
    assert scores[2] > scores[3] + 0.05 and scores[0] > scores[3] + 0.1


def test_periodic_sequence_is_almost_free_at_high_order():
    seq = "ACGTTGCAAGGC" * 500
    model = MarkovModel(6).fit(seq)
    assert model.bits_per_base(seq) < 0.1
    assert MarkovModel(0).fit(seq).bits_per_base(seq) > 1.9


def test_n_breaks_context_and_is_not_scored():
    model = MarkovModel(4).fit(iid(5000, [0.25] * 4, seed=3) + "NNNN" + iid(5000, [0.25] * 4, seed=4))
    seq = "ACGTNNACGTRACG"  # R is read as N
    lp = model.log2_probs(seq)
    assert lp.shape == (11,) and np.all(np.isfinite(lp)) and np.all(lp < 0)
    # the base after an N is scored with an empty context: same as at the start of a sequence
    assert lp[4] == pytest.approx(model.log2_probs("A")[0])
    with pytest.raises(InputError, match="no A/C/G/T base to train"):
        MarkovModel(2).fit("NNNN")
    with pytest.raises(InputError, match="no A/C/G/T base to score"):
        model.bits_per_base("NN")


def test_both_strands_counts_the_reverse_complement():
    train = "AAAAACAAAAAGAAAAA" * 50
    one = MarkovModel(3, both_strands=False).fit(train)
    both = MarkovModel(3, both_strands=True).fit(train)
    t = 3
    assert both.next_base_probs("TTT")[t] > 0.7 > one.next_base_probs("TTT")[t]
    rc = reverse_complement(train)
    assert both.bits_per_base(rc) < one.bits_per_base(rc) - 0.5


def test_multiple_training_sequences_and_token_ids():
    tok = DNATokenizer()
    a, b = iid(3000, [0.1, 0.4, 0.4, 0.1], seed=5), iid(3000, [0.1, 0.4, 0.4, 0.1], seed=6)
    m1 = MarkovModel(2).fit([a, b])
    m2 = MarkovModel(2).fit([tok.encode(a), tok.encode_array(b)])
    assert m1.bits_per_base(a) == pytest.approx(m2.bits_per_base(tok.encode(a)))


def test_bad_arguments():
    with pytest.raises(InputError, match="unknown smoothing"):
        MarkovModel(3, smoothing="laplace")
    with pytest.raises(InputError, match="order must be in"):
        MarkovModel(31)
    with pytest.raises(InputError, match="not fitted"):
        MarkovModel(3).bits_per_base("ACGT")
    fitted = MarkovModel(3).fit("ACGTACGT")
    with pytest.raises(InputError, match="exceeds"):
        MarkovModel.from_counts(fitted.counts, 5)


def test_real_genome_slice_is_compressible(shared_data):
    (rec,) = read_sequences(shared_data / "dna/genomes/ecoli_k12_mg1655.fasta.gz")
    result = benchmark_holdout(rec.sequence[:300_000], orders=range(1, 9))
    assert set(result["test_bpb"]) == set(range(1, 9))
    assert result["chosen_order"] in result["dev_bpb"]
    assert 1.85 < result["test_bpb_chosen"] < 1.97
    assert result["test_bpb_chosen"] < result["test_bpb"][1]
    assert result["n_test"] == 30_000 and result["n_dev"] == 27_000


def test_cli_writes_json_and_reports_bad_input(tmp_path, capsys):
    # a synthetic chain is not strand-symmetric like a genome: count one strand only
    fasta = tmp_path / "g.fa"
    seq, _ = markov_chain(20_000, order=2, seed=7)
    fasta.write_text(">g\n" + "\n".join(seq[i : i + 70] for i in range(0, len(seq), 70)) + "\n")
    out = tmp_path / "r.json"
    assert main([str(fasta), "--orders", "1-4", "--one-strand", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["chosen_order"] == 2 and set(result["test_bpb"]) == {"1", "2", "3", "4"}
    assert "<- chosen on dev" in capsys.readouterr().out
    protein = tmp_path / "p.fa"
    protein.write_text(">p\nMVLSPADKT\n")
    assert main([str(protein)]) == 2
    assert "p.fa" in capsys.readouterr().err


@pytest.mark.slow
def test_ecoli_holdout_benchmark(shared_data):
    (rec,) = read_sequences(shared_data / "dna/genomes/ecoli_k12_mg1655.fasta.gz")
    result = benchmark_holdout(rec.sequence, orders=range(1, 13))
    assert result["n_test"] == 464_165
    assert 5 <= result["chosen_order"] <= 9
    assert 1.90 < result["test_bpb_chosen"] < 1.94  # measured 1.9309 (order 7, kn, both strands)
