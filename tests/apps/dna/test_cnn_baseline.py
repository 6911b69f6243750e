"""The CNN baseline classifier: shapes, padding and strand invariances, gradients, and a short
``hybrids dna finetune --model cnn`` run on a real GUE task that must learn something."""

from __future__ import annotations

import json

import pytest
import torch

from hybrids.apps.cli import main
from hybrids.apps.core.checkpoint import load_checkpoint
from hybrids.apps.core.errors import InputError
from hybrids.apps.core.registry import create_model
from hybrids.apps.dna.classifier import reverse_complement_padded
from hybrids.apps.dna.cnn_baseline import CNNClassifier, CNNConfig
from hybrids.datasets.dna import PAD_ID, DNATokenizer


def padded(*seqs: str) -> torch.Tensor:
    tok = DNATokenizer()
    return torch.nn.utils.rnn.pad_sequence(
        [tok.encode(s) for s in seqs], batch_first=True, padding_value=PAD_ID
    )


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_shapes_padding_gradients(preset):
    torch.manual_seed(0)
    model = CNNClassifier(CNNConfig.from_preset(preset, num_classes=3)).eval()
    batch = padded("ACGTTGCAAC" * 7, "GATTACA")
    with torch.no_grad():
        logits = model(batch)
        alone = model(padded("GATTACA"))
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-5)
    model.train()
    model(batch).sum().backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for n, p in model.named_parameters()
        if not n.startswith("embedding")
    )


def test_rc_average_is_strand_symmetric():
    torch.manual_seed(0)
    model = CNNClassifier(CNNConfig.from_preset("tiny", rc_average=True)).eval()
    batch = padded("ACGTTGCAACGGA", "GATTACA")
    with torch.no_grad():
        torch.testing.assert_close(
            model(reverse_complement_padded(batch)), model(batch), atol=1e-5, rtol=1e-5
        )


def test_registered_with_a_tiny_preset(tmp_path):
    from hybrids.apps.core.checkpoint import save_checkpoint

    model = create_model("dna/cnn_classifier", preset="tiny", num_classes=3, rc_average=True).eval()
    save_checkpoint(model, tmp_path / "c")
    again = create_model("dna/cnn_classifier", weights=tmp_path / "c").eval()
    assert again.config == model.config
    batch = padded("ACGTTGCAACGGA", "GATTACA")
    with torch.no_grad():
        torch.testing.assert_close(again(batch), model(batch))


def test_config_validation():
    with pytest.raises(InputError, match="num_classes"):
        CNNConfig(num_classes=1).validate()
    with pytest.raises(InputError, match="dropout"):
        CNNConfig(dropout=1.0).validate()


def test_cnn_learns_prom_core_tata(shared_data, tmp_path, capsys):
    out = tmp_path / "cnn"
    argv = [
        "-q",
        "dna",
        "finetune",
        "--task",
        str(shared_data / "dna/gue/prom_core_tata"),
        "--model",
        "cnn",
        "--preset",
        "tiny",
        "--epochs",
        "3",
        "--max-train",
        "1500",
        "--batch-size",
        "32",
        "--threads",
        "1",
        "--accelerator",
        "cpu",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["model"] == "cnn" and len(result["history"]) == 3
    # TATA promoters vs non-promoters: even a 4k-parameter CNN gets well above chance in 3 short epochs
    assert result["dev"]["mcc"] > 0.3 and result["test"]["mcc"] > 0.3, result
    assert result["test"]["auroc"] > 0.7
    model = load_checkpoint(out / "best")
    assert isinstance(model, CNNClassifier) and model.model_name == "dna/cnn_classifier"
    assert model.config.channels == CNNConfig.from_preset("tiny").channels
    assert "cnn, selected at step" in capsys.readouterr().out
