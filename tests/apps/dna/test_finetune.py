"""``hybrids dna finetune`` with HybriDNA echo embeddings: padding and reverse-complement helpers,
the classifier's invariances, dev-only model selection and the end-to-end run on a real GUE task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hybrids.apps.cli import main
from hybrids.apps.core.checkpoint import load_checkpoint
from hybrids.apps.core.registry import create_model
from hybrids.apps.dna.classifier import HybriDNAClassifier, echo_inputs, reverse_complement_padded
from hybrids.apps.dna.training import classification_metrics, warmup_cosine
from hybrids.datasets.dna import BOS_ID, PAD_ID, DNATokenizer, reverse_complement

TASK = "dna/gue/prom_core_tata"


def tiny_lm(path, seed: int = 0) -> None:
    """A random tiny HybriDNA checkpoint folder, as `hybrids dna pretrain` writes it."""
    from hybrids.apps.core.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = create_model("dna/hybridna", preset="tiny")
    model.preprocessing = {"tokenizer": DNATokenizer().to_dict(), "bos": True}
    save_checkpoint(model, path)


def padded(*seqs: str) -> torch.Tensor:
    tok = DNATokenizer()
    return torch.nn.utils.rnn.pad_sequence(
        [tok.encode(s) for s in seqs], batch_first=True, padding_value=PAD_ID
    )


def test_reverse_complement_padded():
    tokens = padded("AACGT", "GGA", "N")
    tok = DNATokenizer()
    rc = reverse_complement_padded(tokens)
    assert [tok.decode(r, skip_special=True) for r in rc] == ["ACGTT", "TCC", "N"]
    assert (rc[1, 3:] == PAD_ID).all() and (rc[2, 1:] == PAD_ID).all()
    torch.testing.assert_close(reverse_complement_padded(rc), tokens)
    full = padded("ACGGT")
    torch.testing.assert_close(reverse_complement_padded(full), reverse_complement(full))


def test_echo_inputs_layout():
    tokens = padded("ACG", "T")
    inputs, second = echo_inputs(tokens)
    tok = DNATokenizer()
    a, c, g, t = (tok.token_to_id(b) for b in "ACGT")
    assert inputs.tolist() == [[BOS_ID, a, c, g, a, c, g], [BOS_ID, t, t, PAD_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert second[0].tolist() == [4, 5, 6] and second[1, 0] == 2


@pytest.mark.parametrize(
    "rc_average, pooling", [(False, "mean"), (True, "mean"), (False, "max"), (True, "mean+max")]
)
def test_classifier_padding_and_strand(rc_average, pooling):
    torch.manual_seed(0)
    backbone = create_model("dna/hybridna", preset="tiny")
    model = HybriDNAClassifier(backbone, 3, rc_average=rc_average, pooling=pooling).eval()
    assert model.head.in_features == backbone.config.d_model * (2 if pooling == "mean+max" else 1)
    batch = padded("ACGTTGCA" * 3, "GATTACA")
    with torch.no_grad():
        logits = model(batch)
        alone = model(padded("GATTACA"))
        rc = model(reverse_complement_padded(batch))
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-5)  # padding does not leak
    if rc_average:
        torch.testing.assert_close(rc, logits, atol=1e-5, rtol=1e-5)  # strand-symmetric
    else:
        assert not torch.allclose(rc, logits, atol=1e-4)
    loss = model(batch).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_metrics_and_schedule():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    m = classification_metrics(probs, labels)
    assert (
        m["mcc"] == pytest.approx(1.0) and m["f1"] == pytest.approx(1.0) and m["auroc"] == pytest.approx(1.0)
    )
    m = classification_metrics(probs[:, ::-1].copy(), labels)
    assert m["mcc"] == pytest.approx(-1.0) and m["auroc"] == pytest.approx(0.0)
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.1)


def test_finetune_hybridna_end_to_end(shared_data, tmp_path, capsys):
    tiny_lm(tmp_path / "lm")
    out = tmp_path / "ft"
    argv = [
        "-q",
        "dna",
        "finetune",
        "--task",
        str(shared_data / TASK),
        "--init",
        str(tmp_path / "lm"),
        "--rc-average",
        "--pooling",
        "mean+max",
        "--epochs",
        "2",
        "--max-train",
        "96",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--accelerator",
        "cpu",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    line = capsys.readouterr().out
    assert "test MCC" in line
    result = json.loads((out / "metrics.json").read_text())
    assert result["model"] == "hybridna" and result["recipe"]["rc_average"] is True
    assert result["recipe"]["pooling"] == "mean+max"
    assert [h["step"] for h in result["history"]] == [6, 12]
    best = max(result["history"], key=lambda h: (h["dev_mcc"], -h["dev_loss"]))
    assert result["selected"]["step"] == best["step"]  # selected on dev, not test
    for key in ("mcc", "f1", "auroc"):
        assert -1.0 <= result["test"][key] <= 1.0
    assert (out / "last" / "model.safetensors").is_file() and (out / "resume.ckpt").is_file()
    assert json.loads((out / "history.json").read_text()) == result["history"]
    info = json.loads((out / "best" / "config.json").read_text())
    assert info["model"] == "dna/hybridna_classifier" and info["config"]["pooling"] == "mean+max"
    assert info["test"] == result["test"] and info["dev"] == result["dev"]
    assert info["training"]["step"] == result["selected"]["step"]
    assert info["training"]["init"] == str(tmp_path / "lm") and info["training"]["seed"] == 42
    assert info["preprocessing"]["tokenizer"]["type"] == "single_nucleotide"
    # the saved classifier is a registered model and reproduces the test metrics
    model = load_checkpoint(out / "best").eval()
    assert isinstance(model, HybriDNAClassifier) and model.rc_average and model.pooling == "mean+max"
    tok = DNATokenizer()
    from hybrids.datasets.dna import read_gue_csv

    seqs, labels = read_gue_csv(shared_data / TASK / "test.csv")
    tokens = torch.nn.utils.rnn.pad_sequence([tok.encode(s) for s in seqs], batch_first=True)
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(tokens[i : i + 256]), -1) for i in range(0, len(seqs), 256)])
    again = classification_metrics(probs.numpy(), labels)
    assert again["mcc"] == pytest.approx(result["test"]["mcc"], abs=1e-6)
    assert again["auroc"] == pytest.approx(result["test"]["auroc"], abs=1e-4)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--task", "{tmp}/nowhere"], "no such task folder"),
        (["--task", "{half}"], "missing dev.csv"),
        (["--task", "{bad}"], "not an integer"),
        (["--task", "{task}", "--epochs", "0"], "--epochs"),
        (["--task", "{task}", "--init", "{tmp}/nolm"], "no such checkpoint"),
        (["--task", "{task}", "--model", "cnn", "--init", "{tmp}"], "--init goes with --model hybridna"),
    ],
)
def test_finetune_bad_inputs(extra, needle, shared_data, tmp_path, capsys):
    half = tmp_path / "half"
    half.mkdir()
    (half / "train.csv").write_text("sequence,label\nACGT,0\nACGA,1\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "dev", "test"):
        (bad / f"{split}.csv").write_text("sequence,label\nACGT,0\nACGA,yes\n")
    fields = {"tmp": tmp_path, "half": half, "bad": bad, "task": shared_data / TASK}
    argv = ["dna", "finetune", *[a.format(**fields) for a in extra], "-o", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err


def test_config_check_without_argparse(tmp_path):
    from hybrids.apps.core.errors import InputError
    from hybrids.apps.core.run_options import RunOptions
    from hybrids.apps.dna.finetune import FinetuneConfig

    run = RunOptions(out=tmp_path / "o")
    for fields, needle in [
        ({"max_train": 1}, "--max-train"),
        ({"pooling": "sum"}, "--pooling"),
        ({"model": "rnn"}, "--model"),
        ({"lr": 0.0}, "--lr"),
        ({"run": RunOptions(out=tmp_path / "o", devices=2)}, "one device"),
        ({"run": RunOptions(out=tmp_path / "o", resume=True)}, "nothing to resume"),
    ]:
        with pytest.raises(InputError, match=needle):
            FinetuneConfig(**{"task": tmp_path, "run": run, **fields}).check()
    assert not (tmp_path / "o").exists()
