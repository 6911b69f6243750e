"""``hybrids dna score-variants``: window placement, the log-likelihood ratio against a direct
computation, strand averaging, NCBI-style record ids, and bad inputs (one line, exit 2)."""

from __future__ import annotations

import csv

import pytest
import torch

from hybrids.apps.cli import main
from hybrids.apps.core.checkpoint import save_checkpoint
from hybrids.apps.core.errors import InputError
from hybrids.apps.core.registry import create_model
from hybrids.apps.dna.variants import Variant, read_variants, sequence_logliks, variant_windows
from hybrids.datasets.dna import BOS_ID, DNATokenizer, read_sequences, reverse_complement

PLASMID = "dna/genomes/NC_005816.fna"


@pytest.fixture()
def lm(tmp_path):
    torch.manual_seed(0)
    model = create_model("dna/hybridna", preset="tiny")
    model.preprocessing = {"tokenizer": DNATokenizer().to_dict()}
    save_checkpoint(model, tmp_path / "lm")
    return model.eval(), tmp_path / "lm"


def v(pos, ref, alt, chrom="c"):
    return Variant(chrom, pos, ref, alt, 2, [chrom, str(pos), ref, alt])


def test_windows():
    seq = "AAAACCCCGGGGTTTT"
    ref, alt = variant_windows(seq, v(9, "G", "T"), 5, "x")
    assert ref == "CCGGG" and alt == "CCTGG"  # centred on the allele
    ref, alt = variant_windows(seq, v(1, "A", "C"), 5, "x")
    assert ref == "AAAAC" and alt == "CAAAC"  # shifted at the record's start
    ref, alt = variant_windows(seq, v(16, "T", "G"), 4, "x")
    assert ref == "TTTT" and alt == "TTTG"  # and at its end
    ref, alt = variant_windows(seq, v(5, "CC", "C"), 6, "x")
    assert ref == "AACCCC" and alt == "AACCC"  # deletion: the alt window is shorter
    ref, alt = variant_windows(seq, v(4, "A", "ATT"), 4, "x")
    assert ref == "AACC" and alt == "AATTCC"  # insertion: two bases longer
    with pytest.raises(InputError, match="does not match"):
        variant_windows(seq, v(2, "C", "A"), 5, "x")
    with pytest.raises(InputError, match="past the end"):
        variant_windows(seq, v(16, "TT", "A"), 5, "x")


def test_logliks_match_direct(lm):
    model, _ = lm
    tok = DNATokenizer()
    seqs = [tok.encode("ACGTAGGCTA"), tok.encode("TTGA")]
    got = sequence_logliks(model, seqs, batch_size=2)
    for s, g in zip(seqs, got):
        x = torch.cat([torch.tensor([BOS_ID]), s])[None]
        with torch.no_grad():
            lp = torch.log_softmax(model(x[:, :-1]), -1).gather(-1, x[:, 1:, None]).sum()
        assert g == pytest.approx(float(lp), abs=1e-4)


def test_score_variants_cli(lm, shared_data, tmp_path, capsys):
    model, path = lm
    seq = next(read_sequences(shared_data / PLASMID)).sequence
    alt10 = "A" if seq[9] != "A" else "C"
    tsv = tmp_path / "v.tsv"
    tsv.write_text(
        "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n"
        f"NC_005816.1\t10\trs1\t{seq[9]}\t{alt10}\n"
        f"NC_005816.1\t500\trs2\t{seq[499:502]}\t{seq[499]}\n"
        f"NC_005816.1\t9600\trs3\t{seq[9599]}\t{seq[9599]}GT\n"
    )
    out = tmp_path / "scored.tsv"
    argv = [
        "dna",
        "score-variants",
        "-m",
        str(path),
        "--fasta",
        str(shared_data / PLASMID),
        "--variants",
        str(tsv),
        "--window",
        "64",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    rows = list(csv.reader(out.open(), delimiter="\t"))
    assert rows[0] == ["#CHROM", "POS", "ID", "REF", "ALT", "ref_loglik", "alt_loglik", "llr"]
    assert [r[2] for r in rows[1:]] == ["rs1", "rs2", "rs3"]
    # direct computation of the first variant
    tok = DNATokenizer()
    ref_w, alt_w = variant_windows(seq, v(10, seq[9], alt10), 64, "x")
    direct = sequence_logliks(model, [tok.encode(alt_w)])[0] - sequence_logliks(model, [tok.encode(ref_w)])[0]
    assert float(rows[1][7]) == pytest.approx(direct, abs=2e-4)
    for r in rows[1:]:
        assert float(r[7]) == pytest.approx(float(r[6]) - float(r[5]), abs=2e-4)
    # stdout without -o
    capsys.readouterr()
    assert main(argv[:-2]) == 0
    assert capsys.readouterr().out.splitlines() == out.read_text().splitlines()
    # both strands
    both = sequence_logliks(model, [tok.encode(ref_w), reverse_complement(tok.encode(ref_w))])
    assert main(argv[:-2] + ["--rc-average", "-o", str(tmp_path / "rc.tsv")]) == 0
    rc_rows = list(csv.reader((tmp_path / "rc.tsv").open(), delimiter="\t"))
    assert float(rc_rows[1][5]) == pytest.approx(sum(both) / 2, abs=2e-4)


@pytest.mark.parametrize(
    "content, needle",
    [
        ("chrom\tpos\tref\n", "header lacks alt"),
        ("chrom\tpos\tref\talt\nNC_005816.1\tten\tA\tC\n", "not an integer"),
        ("chrom\tpos\tref\talt\nNC_005816.1\t0\tA\tC\n", "must be >= 1"),
        ("chrom\tpos\tref\talt\nNC_005816.1\t5\tA\tC,G\n", "one per row"),
        ("chrom\tpos\tref\talt\nNC_005816.1\t5\tA\t<DEL>\n", "symbolic"),
        ("chrom\tpos\tref\talt\nchr9\t5\tA\tC\n", "'chr9' is not in"),
        ("chrom\tpos\tref\talt\nNC_005816.1\t99999\tA\tC\n", "past the end"),
        ("", "empty file"),
    ],
)
def test_bad_variants(content, needle, lm, shared_data, tmp_path, capsys):
    _, path = lm
    tsv = tmp_path / "bad.tsv"
    tsv.write_text(content)
    argv = [
        "dna",
        "score-variants",
        "-m",
        str(path),
        "--fasta",
        str(shared_data / PLASMID),
        "--variants",
        str(tsv),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err


def test_read_variants_keeps_columns(tmp_path):
    tsv = tmp_path / "v.tsv"
    tsv.write_text("Chrom\tPos\tRef\tAlt\tgene\nc\t3\tg\tt\tlacZ\n")
    header, variants = read_variants(tsv)
    assert header == ["Chrom", "Pos", "Ref", "Alt", "gene"]
    assert variants[0].ref == "G" and variants[0].alt == "T" and variants[0].row[-1] == "lacZ"
