"""DNA tokenizer, FASTA/GenBank readers, genome windows and GUE CSVs (hybrids.datasets.dna)."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import time
import tracemalloc
import warnings

import numpy as np
import pytest
import torch

from hybrids.datasets.dna import (
    BASE_IDS,
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    ClassificationCSV,
    DNAFormatError,
    DNATokenizer,
    GenomeWindows,
    normalize_dna,
    read_fasta,
    read_genbank,
    read_gue_csv,
    read_sequences,
    reverse_complement,
    split_holdout,
)

RNG = np.random.default_rng(0)


def random_dna(n: int, rng=RNG) -> str:
    return rng.choice(np.frombuffer(b"ACGT", dtype=np.uint8), n).tobytes().decode()


def fasta_text(records: dict[str, str], width: int = 60, newline: str = "\n") -> str:
    lines = []
    for name, seq in records.items():
        lines.append(f">{name} some description")
        lines += [seq[i : i + width] for i in range(0, len(seq), width)]
    return newline.join(lines) + newline


# ------------------------------------------------------------------------------------ tokenizer


def test_vocabulary_layout():
    tok = DNATokenizer()
    assert tok.vocab_size == len(SPECIAL_TOKENS) + 5 == 10
    assert [tok.id_to_token(i) for i in range(10)] == [*SPECIAL_TOKENS, "A", "C", "G", "T", "N"]
    assert tok.token_to_id("<bos>") == tok.token_to_id("<cls>") == BOS_ID
    assert tok.token_to_id("<eos>") == tok.token_to_id("<sep>") == EOS_ID
    assert tok.token_to_id("<pad>") == PAD_ID == 0
    ids = tok.add_tokens(["<ecoli>", "<human>"])
    assert ids == [10, 11] and tok.vocab_size == 12
    assert tok.add_tokens("<ecoli>") == [10]  # existing kept
    assert tok.add_tokens("<bos>") == [BOS_ID]
    with pytest.raises(DNAFormatError, match="base letter"):
        tok.add_tokens(["a"])
    with pytest.raises(DNAFormatError, match="without spaces"):
        tok.add_tokens(["<two words>"])
    assert DNATokenizer.from_dict(tok.to_dict()).vocab == tok.vocab


def test_encode_normalises_softmask_iupac_and_u():
    tok = DNATokenizer()
    out = tok.encode("acgtnRYSWKMBDHVuU")
    assert out.dtype == torch.int64
    assert tok.decode(out) == "ACGTN" + "N" * 10 + "TT"
    assert normalize_dna("acgUn") == "ACGTN"
    with pytest.raises(DNAFormatError, match="'U'"):
        DNATokenizer(u_to_t=False).encode("ACGU")


@pytest.mark.parametrize("bad", ["E", "F", "L", "P", "Q", "1", "-", "*", " ", "é"])
def test_encode_rejects_non_dna(bad):
    with pytest.raises(DNAFormatError, match=r"my-seq: invalid character .* at base 3"):
        DNATokenizer().encode("AC" + bad + "GT", source="my-seq")


def test_encode_specials_prefix_and_decode():
    tok = DNATokenizer(["<ecoli>"])
    out = tok.encode("GAT", prefix=["<ecoli>"], add_bos=True, add_eos=True)
    assert out.tolist() == [BOS_ID, 10, BASE_IDS["G"], BASE_IDS["A"], BASE_IDS["T"], EOS_ID]
    assert tok.decode(out) == "<cls><ecoli>GAT<sep>"
    assert tok.decode(out, skip_special=True) == "GAT"
    assert tok.encode("").tolist() == []
    with pytest.raises(DNAFormatError, match="unknown token"):
        tok.encode("A", prefix=["<human>"])
    with pytest.raises(DNAFormatError, match="outside the vocabulary"):
        tok.decode([3, 99])


def test_reverse_complement_tokens_and_strings():
    tok = DNATokenizer()
    seq = "AACGTNG"
    ids = tok.encode(seq)
    assert tok.decode(reverse_complement(ids)) == "CNACGTT"
    assert reverse_complement(seq) == "CNACGTT"
    assert reverse_complement("acgR") == "Ycgt"
    arr = tok.encode_array(random_dna(50))
    assert np.array_equal(reverse_complement(reverse_complement(arr)), arr)
    assert reverse_complement(arr).dtype == np.uint8
    batch = torch.stack([ids, ids.flip(0)])
    rc = reverse_complement(batch)
    assert rc.shape == batch.shape and torch.equal(rc[0], reverse_complement(ids))
    specials = torch.tensor([BOS_ID, BASE_IDS["A"], EOS_ID])
    assert reverse_complement(specials).tolist() == [EOS_ID, BASE_IDS["T"], BOS_ID]


# ---------------------------------------------------------------------------------------- FASTA


def test_read_fasta_many_records_wrapped(tmp_path):
    records = {f"seq{i}": random_dna(n) for i, n in enumerate([1, 59, 60, 61, 1000])}
    path = tmp_path / "multi.fa"
    path.write_text(fasta_text(records, width=60))
    got = list(read_fasta(path))
    assert [r.id for r in got] == list(records)
    assert [r.sequence for r in got] == list(records.values())
    assert got[0].description == "some description"


def test_read_fasta_gzip_by_magic_bytes_not_extension(tmp_path):
    records = {"a": random_dna(500), "b": random_dna(70)}
    misleading = tmp_path / "really_gzip.fa"  # gzip content, plain extension
    misleading.write_bytes(gzip.compress(fasta_text(records).encode()))
    plain = tmp_path / "plain.fa.gz"  # plain content, gzip extension
    plain.write_text(fasta_text(records))
    for path in (misleading, plain):
        assert [r.sequence for r in read_fasta(path)] == list(records.values())


def test_read_fasta_bz2_xz_and_multimember_gzip(tmp_path):
    records = {"a": random_dna(300), "b": random_dna(90)}
    text = fasta_text(records).encode()
    (tmp_path / "x.bz2").write_bytes(bz2.compress(text))
    (tmp_path / "x.xz").write_bytes(lzma.compress(text))
    half = text.index(b">b")
    (tmp_path / "x.bgz").write_bytes(gzip.compress(text[:half]) + gzip.compress(text[half:]))
    for name in ("x.bz2", "x.xz", "x.bgz"):
        assert [r.sequence for r in read_fasta(tmp_path / name)] == list(records.values())


def test_read_fasta_crlf_softmask_blank_lines_comments(tmp_path):
    seq = random_dna(200)
    text = ";comment\r\n\r\n" + fasta_text({"r1": seq.lower()}, width=50, newline="\r\n") + "\r\n\r\n"
    path = tmp_path / "win.fa"
    path.write_bytes(text.encode())
    (rec,) = read_fasta(path)
    assert rec.id == "r1" and rec.sequence == seq and "\r" not in rec.description


def test_read_fasta_cr_only_line_endings_are_an_error(tmp_path):
    path = tmp_path / "mac.fa"
    path.write_bytes(b">a\rACGT\rACGT\r")
    with pytest.raises(DNAFormatError, match=r"line 1: old Mac \(CR-only\) line endings"):
        list(read_fasta(path))


def test_read_fasta_empty_file(tmp_path):
    for content in (b"", b"\n\n  \r\n"):
        path = tmp_path / "empty.fa"
        path.write_bytes(content)
        with pytest.raises(DNAFormatError, match=r"empty\.fa: file is empty"):
            list(read_fasta(path))
        with pytest.raises(DNAFormatError, match="empty"):
            list(read_sequences(path))
    gz = tmp_path / "empty.fa.gz"
    gz.write_bytes(gzip.compress(b""))
    with pytest.raises(DNAFormatError, match="file is empty"):
        list(read_fasta(gz))


def test_read_fasta_record_without_sequence_is_skipped_with_warning(tmp_path, caplog):
    path = tmp_path / "gap.fa"
    path.write_text(">a\nACGT\n>nothing here\n>b\nGG\n>last\n")
    # A warning for users goes through the logger (one line, no Python source line), never warnings.warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.WARNING, logger="hybrids"):
            got = list(read_fasta(path))
    assert [(r.id, r.sequence) for r in got] == [("a", "ACGT"), ("b", "GG")]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all(m.startswith(str(path)) for m in messages)
    assert "record 'nothing' has no sequence; skipped" in messages[0] and "'last'" in messages[1]
    with pytest.raises(DNAFormatError, match="record 'nothing' has no sequence"):
        list(read_fasta(path, empty="error"))


def test_read_fasta_only_empty_records_is_an_error(tmp_path):
    path = tmp_path / "headers.fa"
    path.write_text(">a\n>b\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DNAFormatError, match=r"no record has a sequence \(2 empty"):
            list(read_fasta(path))


def test_read_fasta_protein_is_a_clear_error(tmp_path):
    path = tmp_path / "protein.fasta"
    protein = "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF"
    path.write_text(f">dna\nACGT\n>sp|P69905|HBA_HUMAN Hemoglobin\n{protein}\n")
    with pytest.raises(DNAFormatError) as err:
        list(read_fasta(path))
    msg = str(err.value)
    assert "protein.fasta" in msg and "'sp|P69905|HBA_HUMAN'" in msg and "line 4" in msg
    assert "'L'" in msg and "at base 3" in msg and "protein" in msg
    assert "\n" not in msg


def test_read_fasta_not_fasta(tmp_path, shared_data):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello world\n>x\nACGT\n")
    with pytest.raises(DNAFormatError, match=r"not a FASTA file \(line 1"):
        list(read_fasta(txt))
    with pytest.raises(DNAFormatError, match="GenBank, not FASTA"):
        list(read_fasta(shared_data / "dna/genomes/NC_005816.gb"))
    fq = tmp_path / "r.fq"
    fq.write_text("@read1\nACGT\n+\nIIII\n")
    with pytest.raises(DNAFormatError, match="FASTQ"):
        list(read_fasta(fq))
    with pytest.raises(DNAFormatError, match="FASTQ"):
        read_sequences(fq)
    with pytest.raises(DNAFormatError, match="no such file"):
        list(read_fasta(tmp_path / "missing.fa"))
    binary = tmp_path / "img.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(DNAFormatError, match="neither FASTA"):
        read_sequences(binary)


def test_read_fasta_truncated_gzip(tmp_path):
    data = gzip.compress(fasta_text({"a": random_dna(20000)}).encode())
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DNAFormatError, match=r"cut\.fa\.gz: cannot read gzip stream"):
        list(read_fasta(path))


def _write_big_gzip(path, target_bytes: int, record_len: int, seed: int = 1) -> int:
    """Random multi-FASTA gzip of about ``target_bytes`` compressed; returns the bases written."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    n = 0
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        i = 0
        while raw.tell() < target_bytes:
            seq = rng.choice(letters, record_len)
            newlines = np.full((record_len // 80, 1), ord("\n"), np.uint8)
            body = np.concatenate([seq.reshape(-1, 80), newlines], 1)
            gz.write(f">r{i}\n".encode() + body.tobytes())
            n += record_len
            i += 1
    return n


def _peak_memory_reading(path) -> tuple[int, int, int]:
    tracemalloc.start()
    try:
        n_records = n_bases = 0
        for rec in read_fasta(path):
            n_records += 1
            n_bases += len(rec.sequence)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return n_records, n_bases, peak


def test_read_fasta_is_lazy_small(tmp_path):
    path = tmp_path / "lazy.fa.gz"
    written = _write_big_gzip(path, 2_500_000, record_len=80 * 1000)
    n_records, n_bases, peak = _peak_memory_reading(path)
    assert n_bases == written and n_records == written // 80_000
    assert written > 5_000_000
    assert peak < 2_000_000, f"peak {peak} bytes while reading {written} bases: not streaming"


@pytest.mark.slow
def test_read_fasta_50mb_gzip_is_streamed(tmp_path):
    path = tmp_path / "big.fa.gz"
    written = _write_big_gzip(path, 50 * 2**20, record_len=80 * 12_500)  # ~1 Mbp records
    assert path.stat().st_size >= 50 * 2**20
    t0 = time.perf_counter()
    n_records, n_bases, peak = _peak_memory_reading(path)
    assert n_bases == written > 100_000_000
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB for {written / 1e6:.0f} Mbp: not streaming"
    assert time.perf_counter() - t0 < 120


# ------------------------------------------------------------------------------- real genomes


def test_real_genomes(shared_data):
    genomes = shared_data / "dna" / "genomes"
    (ecoli,) = read_sequences(genomes / "ecoli_k12_mg1655.fasta.gz")
    assert ecoli.id == "NC_000913.3" and len(ecoli.sequence) == 4_641_652
    assert ecoli.sequence.startswith("AGCTTTTCATTCTGACTGCAACGGGCAATATGTC")
    assert set(ecoli.sequence) <= set("ACGTN")
    (gb,) = read_genbank(genomes / "NC_005816.gb")
    (fna,) = read_sequences(genomes / "NC_005816.fna")
    assert gb.id == "NC_005816.1" and len(gb.sequence) == 9609 and gb.sequence == fna.sequence
    (chloro,) = read_sequences(genomes / "NC_000932.gb")
    assert len(chloro.sequence) == 154_478 and "Arabidopsis" in chloro.description


def test_genbank_edge_cases(tmp_path, shared_data):
    text = (shared_data / "dna/genomes/NC_005816.gb").read_bytes()
    crlf = tmp_path / "crlf.gbk.gz"
    crlf.write_bytes(gzip.compress(text.replace(b"\n", b"\r\n")))
    (rec,) = read_sequences(crlf)
    assert len(rec.sequence) == 9609
    empty = tmp_path / "empty.gb"
    empty.write_text("")
    with pytest.raises(DNAFormatError, match="empty"):
        list(read_genbank(empty))
    broken = tmp_path / "broken.gb"
    broken.write_bytes(text[: len(text) // 2])
    with pytest.raises(DNAFormatError, match="broken.gb"):
        list(read_genbank(broken))


# ------------------------------------------------------------------------------ genome windows


def test_split_holdout():
    seq = np.arange(1000)
    split = split_holdout(seq, 0.1, dev_fraction=0.1)
    assert len(split.train) == 900 and len(split.test) == 100
    assert len(split.fit) == 810 and len(split.dev) == 90
    assert np.array_equal(np.concatenate([split.fit, split.dev, split.test]), seq)
    assert split_holdout("ACGTACGTAC" * 10).test == "ACGTACGTAC"
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(seq, 1.5)


def test_genome_windows_random_are_substrings_or_their_rc():
    tok = DNATokenizer()
    genome = random_dna(5000)
    rc_genome = reverse_complement(genome)
    ds = GenomeWindows([genome, "ACGT"], 64, num_windows=200, rc_prob=0.5, seed=3)
    assert len(ds) == 200
    flipped = 0
    for i in range(len(ds)):
        w = ds[i]
        assert w.shape == (64,) and w.dtype == torch.int64
        text = tok.decode(w)
        fwd, rev = text in genome, text in rc_genome
        assert fwd or rev
        flipped += rev and not fwd
    assert 60 < flipped < 140
    assert torch.equal(ds[7], GenomeWindows([genome, "ACGT"], 64, num_windows=200, seed=3)[7])
    ds.set_epoch(1)
    other = GenomeWindows([genome, "ACGT"], 64, num_windows=200, seed=3)
    assert not all(torch.equal(ds[i], other[i]) for i in range(5))


def test_genome_windows_rc_probability_extremes_and_prefix():
    tok = DNATokenizer(["<ecoli>"])
    genome = random_dna(1000)
    never = GenomeWindows(genome, 50, num_windows=30, rc_prob=0.0, prefix=[BOS_ID, 10], tokenizer=tok)
    always = GenomeWindows(genome, 50, num_windows=30, rc_prob=1.0, prefix=[BOS_ID, 10], tokenizer=tok)
    for i in range(30):
        a, b = never[i], always[i]
        assert a[:2].tolist() == [BOS_ID, 10] and b[:2].tolist() == [BOS_ID, 10]
        assert torch.equal(reverse_complement(a[2:]), b[2:])  # same start, flipped
        assert tok.decode(a[2:]) in genome


def test_genome_windows_tile_mode():
    tok = DNATokenizer()
    a, b = random_dna(1000), random_dna(250)
    ds = GenomeWindows([a, b], 100, mode="tile")
    assert len(ds) == 12 and ds.n_scored == 1200
    assert "".join(tok.decode(ds[i]) for i in range(10)) == a
    assert "".join(tok.decode(ds[i]) for i in range(10, 12)) == b[:200]
    assert torch.equal(ds[3], ds[3])
    with pytest.raises(ValueError, match="no sequence is as long as the window"):
        GenomeWindows(["ACGT"], 10)
    with pytest.raises(ValueError, match="mode"):
        GenomeWindows(a, 10, mode="sliding")


# ---------------------------------------------------------------------------------- GUE CSVs


def test_read_gue_csv_real(shared_data):
    seqs, labels = read_gue_csv(shared_data / "dna/gue/prom_core_tata/dev.csv")
    assert len(seqs) == len(labels) > 100
    assert {len(s) for s in seqs} == {70}
    assert set(labels.tolist()) == {0, 1} and labels.dtype == np.int64
    ds = ClassificationCSV(shared_data / "dna/gue/prom_core_tata/dev.csv", add_cls=True)
    tokens, label = ds[0]
    assert tokens.shape == (71,) and tokens[0] == BOS_ID and label in (0, 1)
    assert ds.num_classes == 2


def test_read_gue_csv_errors(tmp_path):
    def write(text):
        path = tmp_path / "t.csv"
        path.write_text(text)
        return path

    with pytest.raises(DNAFormatError, match="file is empty"):
        read_gue_csv(write(""))
    with pytest.raises(DNAFormatError, match="header must have 'sequence' and 'label'"):
        read_gue_csv(write("seq,lab\nACGT,1\n"))
    with pytest.raises(DNAFormatError, match=r"line 3: label 'x' is not an integer"):
        read_gue_csv(write("sequence,label\nACGT,1\nACGT,x\n"))
    with pytest.raises(DNAFormatError, match=r"line 2: 3 fields"):
        read_gue_csv(write("sequence,label\nACGT,1,2\n"))
    with pytest.raises(DNAFormatError, match=r"line 2: invalid character 'E'"):
        read_gue_csv(write("sequence,label\nACEGT,1\n"))
    with pytest.raises(DNAFormatError, match="negative"):
        read_gue_csv(write("sequence,label\nACGT,-1\n"))
    with pytest.raises(DNAFormatError, match="no data rows"):
        read_gue_csv(write("sequence,label\n"))
    seqs, labels = read_gue_csv(write("\ufefflabel,sequence\r\n2,acgr\r\n0,TTTT\r\n"))
    assert seqs == ["ACGN", "TTTT"] and labels.tolist() == [2, 0]


def test_classification_collate_pads(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("sequence,label\nACGT,1\nAC,0\n")
    ds = ClassificationCSV(path)
    tokens, labels = ClassificationCSV.collate([ds[0], ds[1]])
    assert tokens.shape == (2, 4) and tokens[1, 2:].tolist() == [PAD_ID, PAD_ID]
    assert labels.tolist() == [1, 0]
