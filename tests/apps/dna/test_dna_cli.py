"""``hybrids dna ...`` end to end with a tiny HybriDNA on real genomes: pretrain (length warm-up,
held-out bits per base, safetensors checkpoints, resume), generate, embed; bad inputs exit 2 with
one line."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hybrids.apps.cli import main
from hybrids.apps.core.checkpoint import load_checkpoint, save_checkpoint
from hybrids.apps.core.registry import create_model
from hybrids.apps.dna.classifier import echo_embeddings
from hybrids.datasets.dna import BOS_ID, DNATokenizer, read_sequences

PLASMID = "dna/genomes/NC_005816.fna"


def tiny_lm(path, seed: int = 0):
    """A random tiny HybriDNA saved as a checkpoint folder, as `hybrids dna pretrain` writes it."""
    torch.manual_seed(seed)
    model = create_model("dna/hybridna", preset="tiny")
    model.preprocessing = {"tokenizer": DNATokenizer().to_dict(), "bos": True}
    save_checkpoint(model, path)
    return model.eval()


@pytest.fixture(scope="module")
def pretrained(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    argv = [
        "-q",
        "dna",
        "pretrain",
        "--fasta",
        str(shared_data / PLASMID),
        "--preset",
        "tiny",
        "--context",
        "256",
        "--warmup-schedule",
        "64,128",
        "--steps",
        "30",
        "--valid-every",
        "10",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--accelerator",
        "cpu",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    return out


def test_pretrain_outputs(pretrained):
    history = json.loads((pretrained / "history.json").read_text())
    assert [r["step"] for r in history] == [0, 10, 20, 30]
    assert [r["context"] for r in history] == [64, 64, 128, 256]  # the warm-up schedule
    # a random model is near log2(16) = 4 bits; 30 steps must learn the base composition at least
    assert history[0]["valid_bpb"] > 3.5
    assert history[-1]["valid_bpb"] < history[0]["valid_bpb"] - 0.3
    info = json.loads((pretrained / "best" / "config.json").read_text())
    assert info["model"] == "dna/hybridna"
    assert info["preprocessing"]["tokenizer"]["type"] == "single_nucleotide"
    assert info["training"]["schedule"] == [64, 128, 256]
    assert info["training"]["seed"] == 42  # the run options' default
    assert info["training"]["command"].startswith("hybrids -q dna pretrain --fasta")
    model = load_checkpoint(pretrained / "best")
    best = min(history, key=lambda r: r["valid_bpb"])
    assert info["training"]["valid_bpb"] == pytest.approx(best["valid_bpb"])
    assert (pretrained / "resume.ckpt").is_file()
    assert model.config.d_model == 32


def test_pretrain_bpb_matches_direct_computation(pretrained, shared_data):
    """The logged held-out bits per base is the mean -log2 p over tiles of the last 10%."""
    from hybrids.datasets.dna import split_holdout

    model = load_checkpoint(pretrained / "last").eval()
    seq = next(read_sequences(shared_data / PLASMID)).sequence
    tail = split_holdout(DNATokenizer().encode_array(seq), 0.1, 0.5).test
    n = len(tail) // 256 * 256
    tiles = torch.from_numpy(tail[:n].astype(np.int64)).view(-1, 256)
    tokens = torch.cat([torch.full((tiles.shape[0], 1), BOS_ID), tiles], 1)
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens[:, :-1]), -1).gather(-1, tokens[:, 1:, None])
    bpb = float(-logp.mean() / np.log(2))
    history = json.loads((pretrained / "history.json").read_text())
    assert history[-1]["valid_bpb"] == pytest.approx(bpb, rel=1e-4)


def test_pretrain_resume(pretrained, tmp_path, shared_data):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(pretrained, out)
    argv = [
        "-q",
        "dna",
        "pretrain",
        "--fasta",
        str(shared_data / PLASMID),
        "--preset",
        "tiny",
        "--context",
        "256",
        "--warmup-schedule",
        "64,128",
        "--steps",
        "40",
        "--valid-every",
        "10",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--accelerator",
        "cpu",
        "--resume",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    steps = [r["step"] for r in json.loads((out / "history.json").read_text())]
    assert steps == [0, 10, 20, 30, 40]


def test_generate(tmp_path, capsys):
    tiny_lm(tmp_path / "lm")
    out = tmp_path / "gen.fa"
    argv = [
        "dna",
        "generate",
        "-m",
        str(tmp_path / "lm"),
        "--prompt",
        "acgtNN",
        "--length",
        "50",
        "--num",
        "3",
        "--seed",
        "1",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    records = list(read_sequences(out))
    assert len(records) == 3
    for rec in records:
        assert len(rec.sequence) == 56 and rec.sequence.startswith("ACGTNN")
        assert set(rec.sequence[6:]) <= set("ACGT")
    assert len({r.sequence for r in records}) > 1
    assert main(argv[:-2] + ["-o", str(tmp_path / "again.fa")]) == 0  # same seed, same samples
    assert (tmp_path / "again.fa").read_text() == out.read_text()
    assert (
        main(
            [
                "dna",
                "generate",
                "-m",
                str(tmp_path / "lm"),
                "--prompt",
                "AC",
                "--length",
                "5",
                "--temperature",
                "0",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith(">generated_1")


def test_embed_windows_match_direct_echo(tmp_path, shared_data):
    model = tiny_lm(tmp_path / "lm")
    fasta = tmp_path / "x.fa"
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), n)) for n in (50, 17, 120)]
    fasta.write_text("".join(f">r{i} test\n{s}\n" for i, s in enumerate(seqs)) + f">r0\n{seqs[1]}\n")
    out = tmp_path / "emb"
    argv = [
        "dna",
        "embed",
        "-m",
        str(tmp_path / "lm"),
        "--fasta",
        str(fasta),
        "-o",
        str(out),
        "--window",
        "40",
        "--per-token",
        "--batch-size",
        "2",
    ]
    assert main(argv) == 0
    ids = (out / "ids.txt").read_text().split()
    assert ids == ["r0", "r1", "r2", "r0#2"]
    matrix = np.load(out / "sequences.npy")
    tokens = load_file(out / "tokens.safetensors")
    tok = DNATokenizer()
    with torch.no_grad():
        for key, seq in zip(ids, [*seqs, seqs[1]]):
            assert tokens[key].shape == (len(seq), 32)
            ids_ = tok.encode(seq)
            direct = torch.cat(
                [echo_embeddings(model, ids_[s : s + 40][None])[0] for s in range(0, len(seq), 40)]
            )
            torch.testing.assert_close(tokens[key], direct, atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(matrix[ids.index(key)], direct.mean(0).numpy(), atol=1e-4)
    # echo: the second copy of <bos> x x; right padding in a batch changes nothing
    a, b = tok.encode(seqs[0]), tok.encode(seqs[1])
    with torch.no_grad():
        alone = model.hidden_states(torch.cat([torch.tensor([BOS_ID]), b, b])[None])[0, 1 + len(b) :]
        batch = torch.nn.utils.rnn.pad_sequence([a, b], batch_first=True)
        torch.testing.assert_close(echo_embeddings(model, batch)[1, : len(b)], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["dna", "pretrain", "--fasta", "{tmp}/missing.fa", "--preset", "tiny"], "no such file"),
        (["dna", "pretrain", "--fasta", "{prot}", "--preset", "tiny"], "invalid character"),
        (
            ["dna", "pretrain", "--fasta", "{plasmid}", "--preset", "tiny", "--warmup-schedule", "512,64"],
            "must increase",
        ),
        (
            ["dna", "pretrain", "--fasta", "{plasmid}", "--preset", "tiny", "--warmup-schedule", "a,b"],
            "comma-separated",
        ),
        (
            ["dna", "pretrain", "--fasta", "{plasmid}", "--context", "1024", "--warmup-schedule", "2048"],
            "beyond --context",
        ),
        (["dna", "pretrain", "--fasta", "{plasmid}", "--holdout-fraction", "1.5"], "--holdout-fraction"),
        (["dna", "pretrain", "--fasta", "{plasmid}", "--resume", "-o", "{tmp}/none"], "nothing to resume"),
        (["dna", "generate", "-m", "{tmp}/nolm", "--length", "5"], "no such checkpoint"),
        (["dna", "generate", "-m", "{lm}", "--prompt", "ACGZ", "--length", "5"], "invalid character 'Z'"),
        (["dna", "generate", "-m", "{lm}", "--length", "0"], "--length"),
        (["dna", "embed", "-m", "{lm}", "--fasta", "{prot}"], "invalid character"),
        (["dna", "embed", "-m", "{lm}", "--fasta", "{plasmid}", "--window", "0"], "--window"),
        (["dna", "pretrain", "--fasta", "{all_n}", "--preset", "tiny", "-o", "{tmp}/o"], "no A, C, G or T"),
        (["dna", "embed", "-m", "{lm}", "--fasta", "{all_n}", "-o", "{tmp}/e"], "no A, C, G or T"),
        (["dna", "embed", "-m", "{lm}", "--fasta", "{empty_gb}", "-o", "{tmp}/e"], "no GenBank record with"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(argv, needle, tmp_path, shared_data, capsys):
    tiny_lm(tmp_path / "lm")
    prot = tmp_path / "prot.fa"
    prot.write_text(">p\nMKVLAAGIVQEFPLR\n")
    all_n = tmp_path / "all_n.fa"
    all_n.write_text(">gap1\n" + "N" * 5000 + "\n>gap2 ambiguity codes only\n" + "NRYKM" * 1000 + "\n")
    empty_gb = tmp_path / "empty.gb"
    empty_gb.write_text(
        "LOCUS       TEST01                     0 bp    DNA     linear   UNK 01-JAN-2000\n"
        "DEFINITION  a record whose ORIGIN is empty.\nACCESSION   TEST01\nVERSION     TEST01.1\n"
        "FEATURES             Location/Qualifiers\nORIGIN\n//\n"
    )
    fields = {
        "tmp": tmp_path,
        "prot": prot,
        "plasmid": shared_data / PLASMID,
        "lm": tmp_path / "lm",
        "all_n": all_n,
        "empty_gb": empty_gb,
    }
    argv = [a.format(**fields) for a in argv]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # warnings for users go through the logger
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not any(tmp_path.glob("[oe]"))  # nothing written


def test_help_does_not_import_torch():
    code = (
        "import sys; from hybrids.apps.cli import build_parser; p = build_parser(); "
        "p.parse_args(['dna', 'finetune', '--task', 'x']); "
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_validation_with_no_scored_base_never_reports_zero_bits():
    from types import SimpleNamespace

    from hybrids.apps.core.errors import InputError
    from hybrids.apps.dna.training import CausalLMModule

    module = CausalLMModule(create_model("dna/hybridna", preset="tiny"))
    module._trainer = SimpleNamespace(world_size=1)
    module.on_validation_epoch_start()
    n_only = torch.full((2, 17), DNATokenizer().encode("N")[0].item())
    with torch.no_grad():
        module.validation_step(n_only, 0)
    with pytest.raises(InputError, match="no A, C, G or T"):
        module.on_validation_epoch_end()
