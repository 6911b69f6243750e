"""Sampling from HybriDNA with the inference cache: parity, label tokens, filters, determinism."""

from __future__ import annotations

import pytest
import torch

from hybrids.apps.core.errors import InputError
from hybrids.apps.dna.generation import filter_logits, generate
from hybrids.apps.dna.hybridna import HybriDNA, HybriDNAConfig

BASES = [5, 6, 7, 8]


@pytest.fixture(autouse=True)
def _one_thread(torch_threads):
    """Tiny models run hundreds of small ops: one intra-op thread avoids OpenMP waits on a busy CPU."""
    torch_threads(1)


@pytest.fixture(scope="module")
def model() -> HybriDNA:
    torch.manual_seed(0)
    return HybriDNA(HybriDNAConfig.from_preset("tiny")).eval()


def test_generated_logits_match_parallel_forward(model):
    """Prefill of label tokens + prompt, then cached steps: the logits each token was drawn from
    equal a parallel forward over the final sequence (float32, <= 1e-4)."""
    prompt = torch.randint(5, 10, (2, 9))
    out = generate(model, prompt, 25, label_tokens=[10, 11], seed=3, return_logits=True)
    assert out.sequences.shape == (2, 2 + 9 + 25) and out.new_tokens.shape == (2, 25)
    assert out.sequences[:, :2].tolist() == [[10, 11], [10, 11]]
    assert torch.equal(out.sequences[:, 2:11], prompt)
    with torch.no_grad():
        full = model(out.sequences[:, :-1])[:, 10:]  # logits predicting positions 11..35
    assert out.logits.shape == (2, 25, 16)
    assert (full - out.logits).abs().max().item() <= 1e-4


def test_greedy_is_argmax_of_full_forward(model):
    out = generate(model, [5, 6, 7, 8, 5], 12, temperature=0.0, batch_size=2)
    with torch.no_grad():
        full = model(out.sequences[:, :-1])[:, 4:]
    assert torch.equal(full.argmax(-1), out.new_tokens)
    assert torch.equal(out.new_tokens[0], out.new_tokens[1])
    # top_k = 1 and a tiny top_p are greedy too
    prompt = [5, 6, 7, 8, 5]
    assert torch.equal(generate(model, prompt, 12, top_k=1, seed=1).new_tokens, out.new_tokens[:1])
    assert torch.equal(generate(model, prompt, 12, top_p=1e-6, seed=2).new_tokens, out.new_tokens[:1])


def test_seed_determinism(model):
    kwargs = {"batch_size": 3, "temperature": 1.5, "top_p": 0.95}
    a = generate(model, [5, 6, 7], 20, seed=7, **kwargs).sequences
    b = generate(model, [5, 6, 7], 20, seed=7, **kwargs).sequences
    c = generate(model, [5, 6, 7], 20, seed=8, **kwargs).sequences
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_label_tokens_condition_the_model(model):
    """Label/control tokens are really fed: they change the first distribution."""
    a = generate(model, [5, 6], 1, label_tokens=[10], return_logits=True, seed=0).logits
    b = generate(model, [5, 6], 1, label_tokens=[11], return_logits=True, seed=0).logits
    assert (a - b).abs().max() > 1e-4
    only_label = generate(model, None, 5, label_tokens=[12], seed=0, batch_size=2)
    assert only_label.sequences.shape == (2, 6) and (only_label.sequences[:, 0] == 12).all()


def test_allowed_tokens(model):
    out = generate(model, [5], 60, allowed_tokens=BASES, temperature=2.0, seed=0)
    assert set(out.new_tokens.unique().tolist()) <= set(BASES)
    assert len(set(out.new_tokens.unique().tolist())) > 1


def test_eos_stops_rows(model):
    out = generate(model, [5], 30, allowed_tokens=[2, 5], temperature=3.0, seed=0, eos_token=2, batch_size=4)
    assert out.new_tokens.shape == (4, 30)
    for row in out.new_tokens.tolist():
        if 2 in row:
            first = row.index(2)
            assert all(t == 2 for t in row[first:])


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7, 0.5 + 0.25 >= 0.7
    kept = torch.isfinite(filter_logits(logits, top_p=0.5))[0].tolist()
    assert kept == [True, False, False, False]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.7))[0].tolist() == [False, True, False, True]
    allowed = filter_logits(logits, allowed_tokens=torch.tensor([1, 3]))
    assert torch.isfinite(allowed)[0].tolist() == [False, True, False, True]


@pytest.mark.parametrize(
    "kwargs",
    [{"prompt": None}, {"max_new_tokens": -1}, {"temperature": -1.0}, {"top_k": 0}, {"top_p": 1.5},
     {"allowed_tokens": [99]}, {"prompt": torch.zeros(1, 2, 3, dtype=torch.int64)}],
)
def test_bad_arguments_raise(model, kwargs):
    args = {"prompt": [5, 6], "max_new_tokens": 3, **kwargs}
    with pytest.raises(InputError, match="generate"):
        generate(model, args.pop("prompt"), args.pop("max_new_tokens"), **args)


def test_training_mode_restored(model):
    model.train()
    generate(model, [5], 2, seed=0)
    assert model.training
    model.eval()
