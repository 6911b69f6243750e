"""HybriDNA model: cache parity, echo embedding, gradients, presets and parameter counts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from hybrids.apps.core.errors import InputError
from hybrids.apps.core.registry import count_parameters, create_model
from hybrids.apps.dna.hybridna import HybriDNA, HybriDNAConfig
from hybrids.shared_blocks.attention import KVCache
from hybrids.shared_blocks.mamba2 import Mamba2Cache


@pytest.fixture(autouse=True)
def _one_thread(torch_threads):
    """Tiny models run hundreds of small ops: one intra-op thread avoids OpenMP waits on a busy CPU."""
    torch_threads(1)


def _tiny(**overrides) -> HybriDNA:
    torch.manual_seed(0)
    return HybriDNA(HybriDNAConfig.from_preset("tiny", **overrides)).eval()


def test_default_pattern_is_seven_mamba_one_attention():
    cfg = HybriDNAConfig.from_preset("small")
    assert cfg.layer_types == "MMMMMMMA"
    assert HybriDNAConfig.from_preset("300m").layer_types == "MMMMMMMA" * 3
    assert HybriDNAConfig.from_preset("tiny").layer_types == "MA"
    model = _tiny()
    assert [layer.kind for layer in model.layers] == ["M", "A"]


@pytest.mark.parametrize(
    "overrides",
    [{"block_pattern": "MXA"}, {"block_pattern": ""}, {"n_heads": 3, "n_kv_heads": 2}, {"d_model": 0},
     {"mlp": "relu"}, {"d_intermediate": -1}, {"mamba_headdim": 24}],
)
def test_bad_config_raises(overrides):
    with pytest.raises(InputError, match="HybriDNAConfig"):
        HybriDNAConfig.from_preset("tiny", **overrides)


def test_bad_tokens_raise():
    model = _tiny()
    with pytest.raises(InputError, match="outside the vocabulary"):
        model(torch.tensor([[1, 2, 16]]))
    with pytest.raises(InputError, match="integer token ids"):
        model(torch.zeros(2, 3))


def test_forward_shape_and_tied_head():
    model = _tiny()
    logits = model(torch.randint(0, 16, (3, 11)))
    assert logits.shape == (3, 11, 16) and logits.dtype == torch.float32
    assert model.lm_head.weight is model.embedding.weight
    untied = _tiny(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.embedding.weight
    assert untied.num_parameters() == model.num_parameters() + 16 * 32


@pytest.mark.parametrize("prefill", [1, 5, 13])
def test_cache_matches_parallel_forward(prefill):
    """Prefill then one token at a time: every step's logits equal the parallel forward over the
    sequence so far (float32, both block types, chunk_size 8 so the prefill spans chunks)."""
    model = _tiny()
    tokens = torch.randint(0, 16, (2, 37))
    with torch.no_grad():
        cache = model.allocate_cache(2)
        assert isinstance(cache.layers[0], Mamba2Cache) and isinstance(cache.layers[1], KVCache)
        steps = [model(tokens[:, :prefill], cache)]
        worst = 0.0
        for t in range(prefill, tokens.shape[1]):
            step = model(tokens[:, t : t + 1], cache)
            steps.append(step)
            full = model(tokens[:, : t + 1])  # the growing sequence, one parallel pass
            worst = max(worst, (full[:, -1] - step[:, 0]).abs().max().item())
        assert worst <= 1e-4
        cached = torch.cat(steps, 1)
        assert (cached - model(tokens)).abs().max().item() <= 1e-4
    assert cache.seqlen_offset == tokens.shape[1]
    assert cache.layers[1].length == tokens.shape[1]


def test_attention_layer_keeps_its_checkpoint_keys():
    """The attention mixer is the shared MultiHeadAttention with the separate q/k/v/out layout, so
    saved HybriDNA checkpoints keep loading (GQA: 4 query heads, 2 kv heads of 8 channels; no biases)."""
    shapes = {k: tuple(v.shape) for k, v in _tiny().state_dict().items() if k.startswith("layers.1.")}
    assert shapes == {
        "layers.1.norm.weight": (32,),
        "layers.1.mixer.q_proj.weight": (32, 32),
        "layers.1.mixer.k_proj.weight": (16, 32),
        "layers.1.mixer.v_proj.weight": (16, 32),
        "layers.1.mixer.out_proj.weight": (32, 32),
        "layers.1.mlp_norm.weight": (32,),
        "layers.1.mlp.w1.weight": (64, 32),
        "layers.1.mlp.w2.weight": (32, 64),
        "layers.1.mlp.w3.weight": (64, 32),
    }


def test_cache_parity_catches_a_broken_cache():
    """The parity check can fail: decoding with a cache that missed the prefill differs."""
    model = _tiny()
    tokens = torch.randint(0, 16, (1, 20))
    with torch.no_grad():
        cache = model.allocate_cache(1)
        model(tokens[:, :10], cache)
        stale = model.allocate_cache(1)
        good = model(tokens[:, 10:11], cache)
        bad = model(tokens[:, 10:11], stale)
        assert (good - bad).abs().max().item() > 1e-3


def test_chunked_prefill_matches_one_prefill():
    model = _tiny()
    tokens = torch.randint(0, 16, (2, 30))
    with torch.no_grad():
        one = model(tokens, model.allocate_cache(2))
        cache = model.allocate_cache(2)
        parts = torch.cat([model(tokens[:, :11], cache), model(tokens[:, 11:], cache)], 1)
    assert (one - parts).abs().max().item() <= 1e-4


def test_inference_sequence_chunking_matches():
    """Without autograd, MLPs and the head run over seq_chunk slices; results are unchanged."""
    model = _tiny()
    chunked = _tiny(seq_chunk=7)
    chunked.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 16, (2, 30))
    with torch.no_grad():
        assert (model(tokens) - chunked(tokens)).abs().max().item() <= 1e-5


def test_echo_embedding():
    model = _tiny()
    tokens = torch.randint(5, 9, (2, 12))
    with torch.no_grad():
        echo = model.embed(tokens)
        plain = model.embed(tokens, echo=False)
        doubled = model.hidden_states(torch.cat([tokens, tokens], 1))
        assert echo.shape == plain.shape == (2, 12, 32)
        assert torch.equal(echo, doubled[:, 12:])
        # Echo: position 0 has seen the last token; a causal pass has not.
        changed = tokens.clone()
        changed[:, -1] = 5 + (changed[:, -1] - 4) % 4
        assert (model.embed(changed)[:, 0] - echo[:, 0]).abs().max() > 1e-5
        assert torch.allclose(model.embed(changed, echo=False)[:, 0], plain[:, 0])


@pytest.mark.parametrize("tie", [True, False])
def test_gradients_reach_every_parameter(tie):
    model = _tiny(tie_embeddings=tie).train()
    tokens = torch.randint(0, 16, (2, 20))
    logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), tokens[:, 1:].reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_registry_builds_presets():
    model = create_model("dna/hybridna", preset="tiny")
    assert isinstance(model, HybriDNA) and model.config.n_layers == 2
    assert create_model("dna/hybridna", device="meta").config == HybriDNAConfig.from_preset("small")


# Published sizes (paper / model cards: 300M, 3B, 7B) and the counts of our presets built on the meta
# device (tied embeddings, vocab 16): 302,245,088 / 3,126,717,184 / 7,058,671,104.
PUBLISHED = {"300m": (300e6, 302_245_088), "3b": (3e9, 3_126_717_184), "7b": (7e9, 7_058_671_104)}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_published_parameter_counts(preset):
    nominal, ours = PUBLISHED[preset]
    count = count_parameters("dna/hybridna", preset=preset)
    assert count == ours
    assert abs(count - nominal) / nominal < 0.05


def test_published_shapes():
    for preset, (d, n) in {"300m": (1024, 24), "3b": (4096, 16), "7b": (4096, 32)}.items():
        cfg = HybriDNAConfig.from_preset(preset)
        assert (cfg.d_model, cfg.n_layers, cfg.max_seq_len) == (d, n, 131072)


_LONG_FORWARD = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    from hybrids.apps.dna.hybridna import HybriDNA, HybriDNAConfig
    torch.set_num_threads(int(sys.argv[2]))
    length = int(sys.argv[1])
    model = HybriDNA(HybriDNAConfig.from_preset("small")).eval()
    tokens = torch.randint(5, 9, (1, length))
    start = time.perf_counter()
    with torch.inference_mode():
        logits = model(tokens)
    seconds = time.perf_counter() - start
    ok = bool(torch.isfinite(logits).all())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "finite": ok, "shape": list(logits.shape)}))
    """
)


def long_forward(length: int = 131072, threads: int = 2) -> dict:
    """Run a ``small`` forward over ``length`` tokens in a fresh process: time and peak RSS."""
    out = subprocess.run(
        [sys.executable, "-c", _LONG_FORWARD, str(length), str(threads)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_small_forward_131k_fits_in_8gb():
    result = long_forward(131072)
    print(result)
    assert result["finite"] and result["shape"] == [1, 131072, 16]
    assert result["peak_rss"] <= 8 * 1024**3


if __name__ == "__main__":  # python tests/apps/dna/test_hybridna.py [LENGTH] [THREADS]
    print(long_forward(*(int(a) for a in sys.argv[1:3])))
