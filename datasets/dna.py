"""DNA sequences in and out: tokenizer, FASTA/GenBank readers, genome windows, GUE CSVs.

- ``DNATokenizer``: single-nucleotide tokens. Ids: the specials first (``<pad>`` 0, ``<cls>`` 1 =
  ``<bos>``, ``<sep>`` 2 = ``<eos>``, ``<mask>`` 3, ``<unk>`` 4), then ``A C G T N`` (5..9), then any
  label/control tokens added by name (HybriDNA conditions generation on prepended label tokens).
  Input is normalised on the way in: lowercase (soft-masked) -> uppercase, IUPAC ambiguity codes
  ``R Y S W K M B D H V`` -> ``N``, ``U`` -> ``T`` (optional). Anything else (protein letters,
  digits, gaps ``-``, ``*``, whitespace) raises ``DNAFormatError`` naming the source and character.
- ``read_fasta``: streams plain, gzip, bzip2 or xz FASTA (compression detected by magic bytes, not
  the extension) line by line: only one record is held in memory at a time, so a large compressed
  multi-FASTA is never loaded whole. Wrapped lines, CRLF line endings, blank lines and ``;``
  comment lines before the first header are accepted. A record with no sequence is skipped with a
  warning (``empty="error"`` raises instead); a file with no sequence at all raises.
- ``read_genbank`` (through Biopython) and ``read_sequences`` (dispatching on content).
- ``GenomeWindows``: a torch ``Dataset`` of random windows (reverse-complement augmentation) or
  deterministic non-overlapping tiles over genomes kept in memory as ``uint8`` token arrays;
  ``split_holdout`` gives the first 90% / last 10% split and a dev slice of the training part.
- ``read_gue_csv`` / ``ClassificationCSV``: GUE-style ``sequence,label`` CSVs.

Errors a user can cause raise ``DNAFormatError`` (a ``ValueError``) with one line naming the file
(and record or line) and the problem. This module never imports ``hybrids.apps``.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import logging
import lzma
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

logger = logging.getLogger("hybrids.datasets.dna")

__all__ = [
    "ACGT_IDS",
    "BASES",
    "BOS_ID",
    "CLS_ID",
    "EOS_ID",
    "MASK_ID",
    "PAD_ID",
    "SEP_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "BASE_IDS",
    "ClassificationCSV",
    "DNAFormatError",
    "DNATokenizer",
    "GenomeWindows",
    "HoldoutSplit",
    "SeqRecord",
    "normalize_dna",
    "read_fasta",
    "read_genbank",
    "read_gue_csv",
    "read_sequences",
    "reverse_complement",
    "split_holdout",
    "count_scored_bases",
]


class DNAFormatError(ValueError):
    """A DNA file, record or string cannot be used; the message names it and the problem."""


# --------------------------------------------------------------------------------------------------
# Vocabulary and normalisation
# --------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<pad>", "<cls>", "<sep>", "<mask>", "<unk>")
PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID = range(5)
BOS_ID, EOS_ID = CLS_ID, SEP_ID
BASES = "ACGTN"
BASE_IDS = {b: len(SPECIAL_TOKENS) + i for i, b in enumerate(BASES)}  # A 5, C 6, G 7, T 8, N 9
ACGT_IDS = tuple(BASE_IDS[b] for b in "ACGT")  # the targets a DNA language model is scored on


def count_scored_bases(tokens: np.ndarray | torch.Tensor) -> int:
    """How many of ``tokens`` (token ids) are A, C, G or T (``N`` and specials are never scored)."""
    array = tokens.numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    return int(np.isin(array, ACGT_IDS).sum())
_ALIASES = {"<bos>": BOS_ID, "<eos>": EOS_ID}
_IUPAC_AMBIGUOUS = "RYSWKMBDHV"
_INVALID = 0xFF  # marker in the lookup tables


def _normalising_table(u_to_t: bool) -> bytes:
    """256-byte ``bytes.translate`` table: every byte -> one of ``ACGTN`` or ``!`` (invalid)."""
    table = bytearray(b"!" * 256)
    for b in "ACGTN":
        table[ord(b)] = table[ord(b.lower())] = ord(b)
    for b in _IUPAC_AMBIGUOUS:
        table[ord(b)] = table[ord(b.lower())] = ord("N")
    if u_to_t:
        table[ord("U")] = table[ord("u")] = ord("T")
    return bytes(table)


_NORMALISE = {True: _normalising_table(True), False: _normalising_table(False)}
_WHITESPACE = b" \t\r\n\v\f"


def _token_lut(u_to_t: bool) -> np.ndarray:
    """``(256,)`` uint8: raw byte -> base token id (5..9), ``0xFF`` for anything else."""
    lut = np.full(256, _INVALID, dtype=np.uint8)
    for byte, norm in enumerate(_NORMALISE[u_to_t]):
        if norm != ord("!"):
            lut[byte] = BASE_IDS[chr(norm)]
    return lut


_TOKEN_LUT = {True: _token_lut(True), False: _token_lut(False)}


def _bad_character_error(source: str, raw: bytes, index: int, offset: int = 0) -> DNAFormatError:
    """One-line error for the invalid byte ``raw[index]`` (1-based base position ``offset + index + 1``)."""
    ch = chr(raw[index]) if raw[index] < 128 else f"\\x{raw[index]:02x}"
    hint = ""
    if ch.isalpha():
        hint = " (protein or other non-DNA sequence?)"
    elif ch in "-.*":
        hint = " (alignment gaps are not accepted)"
    elif ch.isspace():
        hint = " (whitespace inside a sequence)"
    return DNAFormatError(
        f"{source}: invalid character {ch!r} at base {offset + index + 1}{hint}; expected A C G T N, "
        f"IUPAC codes {_IUPAC_AMBIGUOUS} (read as N) or their lowercase"
    )


def _as_bytes(seq: str | bytes | bytearray, source: str) -> bytes:
    if isinstance(seq, str):
        try:
            return seq.encode("ascii")
        except UnicodeEncodeError as err:
            bad = seq[err.start]
            raise DNAFormatError(
                f"{source}: invalid character {bad!r} at base {err.start + 1}; expected A C G T N"
            ) from None
    return bytes(seq)


def normalize_dna(seq: str | bytes, *, source: str = "sequence", u_to_t: bool = True) -> str:
    """Uppercase ``ACGTN`` string: lowercase -> uppercase, IUPAC codes -> ``N``, ``U`` -> ``T``.

    Raises ``DNAFormatError`` naming ``source`` and the first invalid character otherwise.
    """
    raw = _as_bytes(seq, source)
    out = raw.translate(_NORMALISE[u_to_t])
    bad = out.find(b"!")
    if bad >= 0:
        raise _bad_character_error(source, raw, bad)
    return out.decode("ascii")


class DNATokenizer:
    """Single-nucleotide tokenizer: specials, then ``A C G T N``, then named label/control tokens.

    ``encode("acgtR") -> tensor([5, 6, 7, 8, 9])``; ``decode`` maps ids back to letters (specials
    and added tokens to their names unless ``skip_special``). ``u_to_t=False`` makes ``U`` an error.
    """

    def __init__(self, extra_tokens: Iterable[str] = (), *, u_to_t: bool = True) -> None:
        self.u_to_t = bool(u_to_t)
        self._tokens: list[str] = [*SPECIAL_TOKENS, *BASES]
        self._ids: dict[str, int] = {t: i for i, t in enumerate(self._tokens)}
        self.add_tokens(extra_tokens)

    # vocabulary ---------------------------------------------------------------------------------
    pad_id, cls_id, sep_id, mask_id, unk_id = PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID
    bos_id, eos_id = BOS_ID, EOS_ID

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def vocab(self) -> dict[str, int]:
        return dict(self._ids)

    @property
    def extra_tokens(self) -> list[str]:
        return self._tokens[len(SPECIAL_TOKENS) + len(BASES) :]

    def __len__(self) -> int:
        return self.vocab_size

    def add_tokens(self, names: Iterable[str] | str) -> list[int]:
        """Add label/control tokens (e.g. ``"<ecoli>"``) by name; returns their ids (existing kept)."""
        if isinstance(names, str):
            names = [names]
        ids = []
        for name in names:
            if not isinstance(name, str) or not name or any(c.isspace() for c in name):
                raise DNAFormatError(f"token name {name!r}: must be a non-empty string without spaces")
            if name.upper() in BASES:
                raise DNAFormatError(f"token name {name!r} is a base letter, not a label/control token")
            if name not in self._ids and name not in _ALIASES:
                self._ids[name] = len(self._tokens)
                self._tokens.append(name)
            ids.append(self.token_to_id(name))
        return ids

    def token_to_id(self, name: str) -> int:
        if name in _ALIASES:
            return _ALIASES[name]
        try:
            return self._ids[name]
        except KeyError:
            raise DNAFormatError(f"unknown token {name!r}; add it with DNATokenizer.add_tokens") from None

    def id_to_token(self, index: int) -> str:
        if not 0 <= int(index) < len(self._tokens):
            raise DNAFormatError(f"token id {int(index)} is outside the vocabulary (size {self.vocab_size})")
        return self._tokens[int(index)]

    # encoding -----------------------------------------------------------------------------------
    def encode_array(self, seq: str | bytes, *, source: str = "sequence") -> np.ndarray:
        """Bases only, as a ``(L,)`` uint8 array of token ids (5..9); fast path for genomes."""
        raw = _as_bytes(seq, source)
        ids = _TOKEN_LUT[self.u_to_t][np.frombuffer(raw, dtype=np.uint8)]
        if raw and ids.max(initial=0) == _INVALID:
            raise _bad_character_error(source, raw, int(np.argmax(ids == _INVALID)))
        return ids

    def encode(
        self,
        seq: str | bytes,
        *,
        prefix: Sequence[str | int] = (),
        add_bos: bool = False,
        add_eos: bool = False,
        source: str = "sequence",
    ) -> torch.Tensor:
        """``(L',)`` int64 ids: ``[<bos>] + prefix tokens + bases + [<eos>]``.

        ``prefix``: label/control tokens by name or id, e.g. ``["<ecoli>"]``.
        """
        head = [BOS_ID] if add_bos else []
        for tok in prefix:
            if isinstance(tok, str):
                head.append(self.token_to_id(tok))
            else:
                self.id_to_token(tok)  # validates the id
                head.append(int(tok))
        body = torch.from_numpy(self.encode_array(seq, source=source).astype(np.int64))
        tail = [EOS_ID] if add_eos else []
        if not head and not tail:
            return body
        return torch.cat([torch.tensor(head, dtype=torch.int64), body, torch.tensor(tail, dtype=torch.int64)])

    def __call__(self, seq: str | bytes, **kwargs) -> torch.Tensor:
        return self.encode(seq, **kwargs)

    def decode(self, ids: torch.Tensor | np.ndarray | Sequence[int], *, skip_special: bool = False) -> str:
        """Ids -> string; bases as letters, other tokens as their names (dropped if ``skip_special``)."""
        arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        arr = arr.reshape(-1).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise DNAFormatError(f"token id {bad} is outside the vocabulary (size {self.vocab_size})")
        first, last = BASE_IDS["A"], BASE_IDS["N"]
        if arr.size and arr.min() >= first and arr.max() <= last:  # fast path: bases only
            return (np.frombuffer(BASES.encode(), dtype=np.uint8)[arr - first]).tobytes().decode()
        out = []
        for i in arr.tolist():
            if first <= i <= last:
                out.append(BASES[i - first])
            elif not skip_special:
                out.append(self._tokens[i])
        return "".join(out)

    # persistence --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-serialisable description (stored beside model weights)."""
        return {"type": "single_nucleotide", "extra_tokens": self.extra_tokens, "u_to_t": self.u_to_t}

    @classmethod
    def from_dict(cls, data: dict) -> DNATokenizer:
        return cls(data.get("extra_tokens", ()), u_to_t=data.get("u_to_t", True))

    def __repr__(self) -> str:
        return f"DNATokenizer(vocab_size={self.vocab_size}, extra_tokens={self.extra_tokens})"


_RC_BASE = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
_RC_STR = str.maketrans("ACGTNacgtnRYSWKMBDHVryswkmbdhvUu", "TGCANtgcanYRSWMKVHDByrswmkvhdbAa")


def _rc_lut(size: int = 256) -> np.ndarray:
    lut = np.arange(size, dtype=np.int64)
    for b, c in _RC_BASE.items():
        lut[BASE_IDS[b]] = BASE_IDS[c]
    return lut


_RC_LUT = _rc_lut()


def reverse_complement(tokens: torch.Tensor | np.ndarray | str) -> torch.Tensor | np.ndarray | str:
    """Reverse complement along the last axis: token ids (A<->T, C<->G; N, specials and added
    tokens unchanged) as a tensor or array of any leading shape, or a DNA string (IUPAC-aware)."""
    if isinstance(tokens, str):
        return tokens.translate(_RC_STR)[::-1]
    if isinstance(tokens, torch.Tensor):
        lut = torch.as_tensor(_RC_LUT, device=tokens.device).to(tokens.dtype)
        return lut[tokens.long()].flip(-1) if tokens.numel() else tokens.clone()
    arr = np.asarray(tokens)
    out = _RC_LUT[arr.astype(np.int64)].astype(arr.dtype) if arr.size else arr.copy()
    return np.ascontiguousarray(out[..., ::-1])


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


class SeqRecord(NamedTuple):
    """One sequence: ``id`` (first word of the header), ``description`` (the rest of the header,
    possibly empty) and ``sequence`` (normalised: uppercase ``ACGTN``)."""

    id: str
    description: str
    sequence: str


_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}


def _open_binary(path: str | os.PathLike) -> tuple[IO[bytes], str]:
    """Open ``path`` for reading decompressed bytes; compression detected from magic bytes."""
    path = Path(path)
    if not path.exists():
        raise DNAFormatError(f"{path}: no such file")
    if path.is_dir():
        raise DNAFormatError(f"{path}: is a folder, not a sequence file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    kind = next((k for magic, k in _MAGIC.items() if head.startswith(magic)), "plain")
    if kind == "gzip":  # also bgzip and concatenated members
        return gzip.open(path, "rb"), kind
    if kind == "bzip2":
        return bz2.open(path, "rb"), kind
    if kind == "xz":
        return lzma.open(path, "rb"), kind
    if kind in ("zstd", "zip"):
        raise DNAFormatError(f"{path}: {kind}-compressed files are not supported; decompress it or use gzip")
    return open(path, "rb"), kind


_DECOMPRESS_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error, OSError, lzma.LZMAError)


def _first_content(path: str | os.PathLike) -> bytes:
    """The first non-blank line (decompressed), stripped; ``b""`` for an empty file."""
    fh, kind = _open_binary(path)
    try:
        with fh:
            for line in fh:
                line = line.strip()
                if line:
                    return line
    except _DECOMPRESS_ERRORS as err:
        raise DNAFormatError(f"{path}: cannot read {kind} stream ({err})") from None
    return b""


class _SkippedRecords:
    """Warnings for records without sequence, held back until the file has shown a usable record:
    a file with none at all is one error line, not warnings followed by that error."""

    def __init__(self) -> None:
        self.count = 0
        self._pending: list[str] = []
        self._found = False

    def skip(self, message: str) -> None:
        self.count += 1
        if self._found:
            logger.warning("%s; skipped", message)
        else:
            self._pending.append(message)

    def found(self) -> None:
        if not self._found:
            self._found = True
            for message in self._pending:
                logger.warning("%s; skipped", message)
            self._pending.clear()


def read_fasta(path: str | os.PathLike, *, empty: str = "warn", u_to_t: bool = True) -> Iterator[SeqRecord]:
    """Iterate over the records of a FASTA file (plain, gzip, bzip2 or xz), one at a time.

    Streams line by line: memory holds one record, never the whole file. Sequences are normalised
    (``normalize_dna``). ``empty``: what to do with a record that has no sequence, ``"warn"``
    (skip it with a ``UserWarning``) or ``"error"``. Raises ``DNAFormatError`` for an empty file, a
    file that is not FASTA, a non-DNA character (e.g. a protein FASTA) or a corrupt stream.
    """
    if empty not in ("warn", "error"):
        raise ValueError(f"empty must be 'warn' or 'error', got {empty!r}")
    table = _NORMALISE[u_to_t]
    fh, kind = _open_binary(path)
    name = str(path)
    n_yielded = 0
    skipped = _SkippedRecords()
    header: tuple[str, str] | None = None
    seq = bytearray()
    lineno = 0

    def finish() -> SeqRecord | None:
        assert header is not None
        if not seq:
            msg = f"{name}: record {header[0]!r} has no sequence"
            if empty == "error":
                raise DNAFormatError(msg)
            skipped.skip(msg)
            return None
        skipped.found()
        return SeqRecord(header[0], header[1], seq.decode("ascii"))

    try:
        with fh:
            for lineno, line in enumerate(fh, start=1):
                if line.startswith(b">"):
                    if header is not None and (rec := finish()) is not None:
                        n_yielded += 1
                        yield rec
                    if b"\r" in line.rstrip(b"\r\n"):
                        raise DNAFormatError(
                            f"{name}: line {lineno}: old Mac (CR-only) line endings are not supported"
                        )
                    text = line[1:].decode("utf-8", errors="replace").strip()
                    if not text:
                        raise DNAFormatError(f"{name}: line {lineno}: a header with no sequence name ('>')")
                    parts = text.split(None, 1)
                    header = (parts[0], parts[1] if len(parts) > 1 else "")
                    seq = bytearray()
                    continue
                if header is None:
                    stripped = line.strip()
                    if not stripped or stripped.startswith(b";"):
                        continue
                    if stripped.startswith(b"LOCUS"):
                        raise DNAFormatError(
                            f"{name}: is GenBank, not FASTA (use read_genbank or read_sequences)"
                        )
                    if stripped.startswith(b"@"):
                        raise DNAFormatError(
                            f"{name}: looks like FASTQ, which is not supported; convert it to FASTA"
                        )
                    raise DNAFormatError(f"{name}: not a FASTA file (line {lineno} does not start with '>')")
                raw = line.translate(None, _WHITESPACE)
                out = raw.translate(table)
                bad = out.find(b"!")
                if bad >= 0:
                    raise _bad_character_error(
                        f"{name}: record {header[0]!r}, line {lineno}", raw, bad, offset=len(seq)
                    )
                seq += out
    except _DECOMPRESS_ERRORS as err:
        raise DNAFormatError(f"{name}: cannot read {kind} stream at line {lineno} ({err})") from None
    if header is None:
        raise DNAFormatError(f"{name}: file is empty (no FASTA record)")
    if (rec := finish()) is not None:
        n_yielded += 1
        yield rec
    if n_yielded == 0:
        raise DNAFormatError(f"{name}: no record has a sequence ({skipped.count} empty record(s))")


def read_genbank(path: str | os.PathLike, *, empty: str = "warn", u_to_t: bool = True) -> Iterator[SeqRecord]:
    """Iterate over the records of a GenBank file (plain or compressed) through Biopython.

    ``id`` is the versioned accession, ``description`` the DEFINITION line; a record without
    sequence data (e.g. CONTIG-only) is handled as in ``read_fasta``.
    """
    from Bio import SeqIO
    from Bio.Seq import UndefinedSequenceError

    if empty not in ("warn", "error"):
        raise ValueError(f"empty must be 'warn' or 'error', got {empty!r}")
    name = str(path)
    if not _first_content(path):
        raise DNAFormatError(f"{name}: file is empty (no GenBank record)")
    fh, _ = _open_binary(path)
    n_yielded = 0
    skipped = _SkippedRecords()
    with io.TextIOWrapper(fh, encoding="utf-8", errors="replace") as text:
        try:
            for record in SeqIO.parse(text, "genbank"):
                try:
                    raw = str(record.seq)
                except UndefinedSequenceError:
                    raw = ""
                if not raw:
                    msg = f"{name}: record {record.id!r} has no sequence"
                    if empty == "error":
                        raise DNAFormatError(msg)
                    skipped.skip(msg)
                    continue
                seq = normalize_dna(raw, source=f"{name}: record {record.id!r}", u_to_t=u_to_t)
                skipped.found()
                n_yielded += 1
                yield SeqRecord(record.id, record.description, seq)
        except DNAFormatError:
            raise
        except (ValueError, *_DECOMPRESS_ERRORS) as err:
            raise DNAFormatError(f"{name}: not a readable GenBank file ({err})") from None
    if n_yielded == 0:
        raise DNAFormatError(f"{name}: no GenBank record with a sequence ({skipped.count} empty record(s))")


def read_sequences(path: str | os.PathLike, **kwargs) -> Iterator[SeqRecord]:
    """FASTA or GenBank, decided from the content (``>`` or ``LOCUS``), compressed or not."""
    first = _first_content(path)
    if not first:
        raise DNAFormatError(f"{path}: file is empty")
    if first.startswith(b">"):
        return read_fasta(path, **kwargs)
    if first.startswith(b"LOCUS"):
        return read_genbank(path, **kwargs)
    if first.startswith(b"@"):
        raise DNAFormatError(f"{path}: looks like FASTQ, which is not supported; convert it to FASTA")
    raise DNAFormatError(f"{path}: neither FASTA (starts with '>') nor GenBank (starts with 'LOCUS')")


# --------------------------------------------------------------------------------------------------
# Genome windows
# --------------------------------------------------------------------------------------------------


class HoldoutSplit(NamedTuple):
    """``train`` = first ``1 - fraction``, ``test`` = last ``fraction``; ``train`` = ``fit + dev``,
    with ``dev`` the last ``dev_fraction`` of ``train`` (next to the held-out part)."""

    train: np.ndarray | str
    test: np.ndarray | str
    fit: np.ndarray | str
    dev: np.ndarray | str


def split_holdout(seq, fraction: float = 0.1, dev_fraction: float = 0.1) -> HoldoutSplit:
    """Split one sequence (str, array or tensor) into contiguous train / test and fit / dev parts."""
    for label, value in (("fraction", fraction), ("dev_fraction", dev_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{label} must be in (0, 1), got {value}")
    n = len(seq)
    n_train = int(round(n * (1.0 - fraction)))
    n_fit = int(round(n_train * (1.0 - dev_fraction)))
    if not 0 < n_fit < n_train < n:
        raise ValueError(f"sequence of length {n} is too short to split")
    return HoldoutSplit(seq[:n_train], seq[n_train:], seq[:n_fit], seq[n_fit:n_train])


def _as_token_array(seq, tokenizer: DNATokenizer, index: int) -> np.ndarray:
    if isinstance(seq, str | bytes):
        return tokenizer.encode_array(seq, source=f"sequence {index}")
    if isinstance(seq, torch.Tensor):
        seq = seq.cpu().numpy()
    arr = np.asarray(seq)
    if arr.ndim != 1:
        raise ValueError(f"sequence {index}: expected a 1-D token array, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"sequence {index}: token ids must fit in uint8")
    return arr.astype(np.uint8, copy=False)


class GenomeWindows(Dataset):
    """Windows of ``length`` bases over one or more genomes, as ``(len(prefix) + length,)`` int64.

    ``mode="random"``: ``num_windows`` windows per epoch, each from a sequence chosen in proportion
    to its number of start positions and a uniform start; reverse-complemented with probability
    ``rc_prob``. Item ``i`` is a deterministic function of ``(seed, epoch, i)`` (``set_epoch``),
    so it is reproducible across DataLoader workers. ``mode="tile"``: deterministic non-overlapping
    windows ``[0, L), [L, 2L), ...`` of every sequence, no augmentation; a remainder shorter than
    ``length`` is dropped (``n_scored`` counts the bases covered). Sequences shorter than
    ``length`` are skipped. ``prefix``: token ids put before every window (e.g. ``<bos>`` or a
    label token); reverse complement applies to the bases only.
    """

    def __init__(
        self,
        sequences: Sequence[np.ndarray | torch.Tensor | str] | np.ndarray | str,
        length: int,
        *,
        mode: str = "random",
        num_windows: int | None = None,
        rc_prob: float = 0.5,
        prefix: Sequence[int] = (),
        seed: int = 0,
        tokenizer: DNATokenizer | None = None,
    ) -> None:
        if isinstance(sequences, str | bytes | np.ndarray | torch.Tensor):
            sequences = [sequences]
        if mode not in ("random", "tile"):
            raise ValueError(f"mode must be 'random' or 'tile', got {mode!r}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not 0.0 <= rc_prob <= 1.0:
            raise ValueError(f"rc_prob must be in [0, 1], got {rc_prob}")
        tokenizer = tokenizer or DNATokenizer()
        self.sequences = [_as_token_array(s, tokenizer, i) for i, s in enumerate(sequences)]
        self.length, self.mode, self.rc_prob, self.seed = int(length), mode, float(rc_prob), int(seed)
        self.prefix = torch.tensor([int(t) for t in prefix], dtype=torch.int64)
        self.epoch = 0
        starts = np.array([max(len(s) - self.length + 1, 0) for s in self.sequences], dtype=np.int64)
        if starts.sum() == 0:
            longest = max((len(s) for s in self.sequences), default=0)
            raise ValueError(f"no sequence is as long as the window ({self.length}); longest is {longest}")
        if mode == "random":
            self._cum_starts = np.cumsum(starts)
            total = int(sum(len(s) for s in self.sequences))
            self.num_windows = int(num_windows) if num_windows is not None else max(total // self.length, 1)
        else:
            tiles = [
                (i, st)
                for i, s in enumerate(self.sequences)
                for st in range(0, len(s) - self.length + 1, self.length)
            ]
            self.windows = np.array(tiles, dtype=np.int64).reshape(-1, 2)
            self.num_windows = len(self.windows)
        self.n_scored = self.num_windows * self.length if mode == "tile" else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self.num_windows <= index < self.num_windows:
            raise IndexError(index)
        index %= self.num_windows
        if self.mode == "tile":
            seq_i, start = (int(v) for v in self.windows[index])
            window = self.sequences[seq_i][start : start + self.length]
            flip = False
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            flat = int(rng.integers(self._cum_starts[-1]))
            seq_i = int(np.searchsorted(self._cum_starts, flat, side="right"))
            start = flat - (int(self._cum_starts[seq_i - 1]) if seq_i else 0)
            window = self.sequences[seq_i][start : start + self.length]
            flip = rng.random() < self.rc_prob
        tokens = torch.from_numpy(window.astype(np.int64))
        if flip:
            tokens = reverse_complement(tokens)
        return torch.cat([self.prefix, tokens]) if len(self.prefix) else tokens


# --------------------------------------------------------------------------------------------------
# GUE-style classification CSVs
# --------------------------------------------------------------------------------------------------


def read_gue_csv(path: str | os.PathLike, *, u_to_t: bool = True) -> tuple[list[str], np.ndarray]:
    """``(sequences, labels)`` from a CSV with a ``sequence,label`` header (other columns ignored).

    Sequences are normalised (``normalize_dna``); labels are non-negative integers ``(N,)`` int64.
    """
    path = Path(path)
    if not path.is_file():
        raise DNAFormatError(f"{path}: no such file")
    seqs: list[str] = []
    labels: list[int] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DNAFormatError(f"{path}: file is empty (expected a 'sequence,label' header)")
        columns = [h.strip().lower() for h in header]
        if "sequence" not in columns or "label" not in columns:
            raise DNAFormatError(f"{path}: header must have 'sequence' and 'label' columns, got {header}")
        i_seq, i_lab = columns.index("sequence"), columns.index("label")
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(columns):
                raise DNAFormatError(f"{path}: line {line}: {len(row)} fields, header has {len(columns)}")
            text = row[i_seq].strip()
            if not text:
                raise DNAFormatError(f"{path}: line {line}: empty sequence")
            try:
                label = int(row[i_lab].strip())
            except ValueError:
                raise DNAFormatError(f"{path}: line {line}: label {row[i_lab]!r} is not an integer") from None
            if label < 0:
                raise DNAFormatError(f"{path}: line {line}: label {label} is negative")
            seqs.append(normalize_dna(text, source=f"{path}: line {line}", u_to_t=u_to_t))
            labels.append(label)
    if not seqs:
        raise DNAFormatError(f"{path}: no data rows after the header")
    return seqs, np.asarray(labels, dtype=np.int64)


class ClassificationCSV(Dataset):
    """GUE-style CSV as a Dataset of ``(tokens (L,) int64, label int)``.

    ``add_cls`` puts ``<cls>`` first (BERT-style classifiers), ``prefix`` adds tokens after it;
    ``max_length`` truncates the bases. ``collate`` pads a batch with ``<pad>`` to
    ``(tokens (B, L_max), labels (B,))``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        tokenizer: DNATokenizer | None = None,
        add_cls: bool = False,
        prefix: Sequence[str | int] = (),
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer or DNATokenizer()
        self.sequences, self.labels = read_gue_csv(path, u_to_t=self.tokenizer.u_to_t)
        self.add_cls, self.prefix, self.max_length = add_cls, tuple(prefix), max_length
        self.num_classes = int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        seq = self.sequences[index]
        if self.max_length is not None:
            seq = seq[: self.max_length]
        tokens = self.tokenizer.encode(seq, prefix=self.prefix, add_bos=self.add_cls)
        return tokens, int(self.labels[index])

    @staticmethod
    def collate(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.nn.utils.rnn.pad_sequence(
            [t for t, _ in batch], batch_first=True, padding_value=PAD_ID
        )
        return tokens, torch.tensor([label for _, label in batch], dtype=torch.int64)
