"""``hybrids dna ...``: HybriDNA DNA language model commands.

    hybrids dna pretrain --fasta genome.fasta.gz [--preset small] [--context 4096]
                         [--warmup-schedule 1024,2048,4096] [--steps N] [--max-time MIN] -o runs/dna
    hybrids dna generate -m runs/dna/best --prompt ACGTACGT --length 1000 [--num 4] [--temperature 1]
    hybrids dna embed -m runs/dna/best --fasta seqs.fa -o emb/ [--window 4096] [--per-token]
    hybrids dna finetune --task gue/tf_0 [--init runs/dna/best | --model cnn] [--rc-average] -o runs/tf_0
    hybrids dna score-variants -m runs/dna/best --fasta ref.fa --variants vars.tsv -o scored.tsv

Each verb's module documents its details: ``pretrain`` (``hybrids.apps.dna.pretrain``),
``generate`` (here and ``hybrids.apps.dna.generation``), ``embed`` (``hybrids.apps.dna.embed``),
``finetune`` (``hybrids.apps.dna.finetune``), ``score-variants`` (``hybrids.apps.dna.variants``),
``report`` (``hybrids.apps.dna.report``). ``pretrain``, ``finetune`` and ``report`` are library
functions taking a config dataclass (``PretrainConfig``...): this module only maps the flags to it
(``config_from_args``) and prints a summary. The run flags of the training verbs (``-o``,
``--max-time``, ``--resume``, ``--seed`` (default 42), ``--threads``...) are
``hybrids.apps.core.run_options``'s. Heavy imports (torch, Lightning) happen inside the handlers, so
``hybrids --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from hybrids.apps.core.run_options import add_run_arguments, config_from_args

logger = logging.getLogger("hybrids.dna")

LM_PRESETS = ("tiny", "small", "300m", "3b", "7b")


def add_parser(commands: Any) -> None:
    dna = commands.add_parser(
        "dna",
        help="DNA language models (HybriDNA): pretrain, generate, embed, fine-tune, score variants",
        description="HybriDNA, a hybrid Mamba2/attention DNA language model at single-nucleotide resolution.",
    )
    verbs = dna.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    pretrain = verbs.add_parser(
        "pretrain",
        help="pretrain a HybriDNA language model on FASTA/GenBank genomes (Lightning)",
        description="Causal language-model pretraining on random windows of the genomes (reverse-complement "
        "augmentation), with a context-length warm-up; validates bits per base on deterministic tiles of "
        "the held-out tail of every record and writes OUT/best and OUT/last (safetensors + config.json "
        "with the tokenizer).",
    )
    add_pretrain_arguments(pretrain)
    pretrain.set_defaults(func=run_pretrain)

    generate = verbs.add_parser(
        "generate",
        help="sample DNA continuing a prompt",
        description="Sample bases after a prompt with a pretrained model (cached decoding). Prints FASTA.",
    )
    add_generate_arguments(generate)
    generate.set_defaults(func=run_generate)

    embed = verbs.add_parser(
        "embed",
        help="echo embeddings of FASTA records (per sequence, optionally per token)",
        description="Echo embeddings (the model reads <bos> x x; the second copy's hidden states) of every "
        "record, long records in windows; writes per-sequence means (.npy) and optionally per-token "
        "embeddings (.safetensors).",
    )
    add_embed_arguments(embed)
    embed.set_defaults(func=run_embed)

    finetune = verbs.add_parser(
        "finetune",
        help="fine-tune a sequence classifier on a GUE-style task (train/dev/test CSVs)",
        description="Train a classifier on DIR/train.csv (HybriDNA echo embeddings + a linear head, or the "
        "CNN baseline with --model cnn), select on DIR/dev.csv (MCC), report MCC, F1 and AUROC on "
        "DIR/test.csv. Writes OUT/best (a registered dna/hybridna_classifier or dna/cnn_classifier folder) "
        "and OUT/metrics.json; resumable (--resume).",
    )
    add_finetune_arguments(finetune)
    finetune.set_defaults(func=run_finetune)

    variants = verbs.add_parser(
        "score-variants",
        help="log-likelihood ratio of alternative vs reference alleles",
        description="For every variant of a TSV (chrom, pos (1-based), ref, alt), score the window around it "
        "with the reference and with the alternative allele; writes the TSV with ref_loglik, alt_loglik "
        "and llr = alt_loglik - ref_loglik (natural log).",
    )
    add_variants_arguments(variants)
    variants.set_defaults(func=run_score_variants)

    report = verbs.add_parser(
        "report",
        help="benchmark report: held-out bits per base vs Markov, GUE runs vs the CNN, long context",
        description="Held-out bits per base of a model and of the dev-selected order-k Markov baseline, the "
        "GUE fine-tuning runs side by side (HybriDNA vs the CNN baseline), and long-context forward time "
        "and peak memory; writes OUT/report.md and OUT/report.json.",
    )
    add_report_arguments(report)
    report.set_defaults(func=run_report)


# -- pretrain ------------------------------------------------------------------------------------------------


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--fasta",
        nargs="+",
        type=Path,
        required=True,
        metavar="FILE",
        help="FASTA or GenBank files (plain or gzip/bzip2/xz); every record is used",
    )
    data.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.1,
        help="tail of every record held out for validation (default: %(default)s)",
    )
    data.add_argument(
        "--context", type=int, default=1024, help="final training context in bases (default: %(default)s)"
    )
    data.add_argument(
        "--warmup-schedule",
        metavar="L1,L2,...",
        help="context lengths trained in turn, each for an equal share of the steps, ending at "
        "--context (e.g. 1024,4096,16384; default: --context only)",
    )
    data.add_argument("--valid-context", type=int, help="validation tile length (default: --context)")
    data.add_argument(
        "--valid-max-tiles", type=int, help="validate on at most this many evenly spaced tiles (default: all)"
    )
    data.add_argument("--no-rc", dest="rc", action="store_false", help="no reverse-complement augmentation")
    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="small", choices=LM_PRESETS, help="HybriDNA size (default: small)")
    model.add_argument("--init", type=Path, help="start from this checkpoint folder instead")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=2000, help="optimiser steps (default: %(default)s)")
    optim.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="windows per batch at the final context (default: %(default)s)",
    )
    optim.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: 1e-3)")
    optim.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default: 0.1)")
    optim.add_argument("--warmup-steps", type=int, default=100, help="learning-rate warm-up (default: 100)")
    optim.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm; 0: off (default: 1)")
    optim.add_argument("--valid-every", type=int, default=200, help="validate every N steps (default: 200)")
    add_run_arguments(parser, default_out="runs/hybridna")


def run_pretrain(args: argparse.Namespace) -> int:
    from hybrids.apps.dna.pretrain import PretrainConfig, pretrain

    result = pretrain(config_from_args(PretrainConfig, args))
    if not result.is_global_zero or not result.history:
        return 0
    first, last, best = result.history[0], result.history[-1], result.best or result.history[-1]
    print(
        f"valid {first['valid_bpb']:.4f} bits/base (step {first['step']}) -> {last['valid_bpb']:.4f} "
        f"(step {last['step']}); best {best['valid_bpb']:.4f} at step {best['step']}"
    )
    print(f"checkpoints: {result.out / 'best'} (best), {result.out / 'last'} (last)")
    return 0


# -- generate ------------------------------------------------------------------------------------------------


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m", "--model", required=True, type=Path, help="checkpoint folder (hybrids dna pretrain)"
    )
    parser.add_argument("--prompt", default="", help="bases to continue (default: none, start after <bos>)")
    parser.add_argument("--length", type=int, required=True, help="bases to generate")
    parser.add_argument("--num", type=int, default=1, help="sequences to sample (default: 1)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="softmax temperature; 0: always the likeliest base (default: 1)",
    )
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest bases; 0: all")
    parser.add_argument(
        "--top-p", type=float, help="nucleus sampling: the smallest set of bases with this mass"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("-o", "--out", type=Path, help="FASTA file to write (default: stdout)")
    parser.add_argument("-d", "--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")


def run_generate(args: argparse.Namespace) -> int:
    from hybrids.apps.dna.embed import generate_sequences

    seqs = generate_sequences(
        args.model,
        args.prompt,
        args.length,
        num=args.num,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        device=args.device,
    )
    text = "".join(
        f">generated_{i + 1} prompt_length={len(args.prompt)}\n{_wrap(s)}\n" for i, s in enumerate(seqs)
    )
    if args.out:
        from hybrids.datasets.atomic import atomic_write_text

        atomic_write_text(args.out, text)
    else:
        print(text, end="")
    return 0


def _wrap(seq: str, width: int = 80) -> str:
    return "\n".join(seq[i : i + width] for i in range(0, len(seq), width)) or ""


# -- embed ------------------------------------------------------------------------------------------


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m", "--model", required=True, type=Path, help="checkpoint folder (hybrids dna pretrain)"
    )
    parser.add_argument("--fasta", required=True, type=Path, help="FASTA or GenBank file")
    parser.add_argument("-o", "--out", type=Path, default=Path("embeddings"), help="output folder")
    parser.add_argument(
        "--window",
        type=int,
        default=4096,
        help="records longer than this are embedded in consecutive windows (default: 4096)",
    )
    parser.add_argument(
        "--per-token",
        action="store_true",
        help="also write per-token embeddings (OUT/tokens.safetensors, one (L, d) tensor per record)",
    )
    parser.add_argument(
        "--no-echo", dest="echo", action="store_false", help="causal states of one pass instead"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward (default: 8)")
    parser.add_argument("-d", "--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")


def run_embed(args: argparse.Namespace) -> int:
    from hybrids.apps.dna.embed import embed_fasta

    result = embed_fasta(
        args.model,
        args.fasta,
        args.out,
        window=args.window,
        per_token=args.per_token,
        echo=args.echo,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"{result['records']} records, {result['bases']} bases, dimension {result['dim']} -> {args.out}")
    return 0


# -- finetune -----------------------------------------------------------------------------------------------


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, type=Path, help="folder with train.csv, dev.csv, test.csv")
    parser.add_argument(
        "--model",
        choices=("hybridna", "cnn"),
        default="hybridna",
        help="echo-embedding HybriDNA classifier or the CNN baseline (default: hybridna)",
    )
    parser.add_argument(
        "--init", type=Path, help="pretrained HybriDNA checkpoint folder (hybrids dna pretrain)"
    )
    parser.add_argument(
        "--preset", help="config preset without --init (HybriDNA: tiny, small; CNN: default, tiny)"
    )
    parser.add_argument(
        "--rc-average",
        action="store_true",
        help="average the logits of each sequence and its reverse complement",
    )
    parser.add_argument(
        "--pooling",
        choices=("mean", "max", "mean+max"),
        default="mean",
        help="HybriDNA: pooling of the echo embeddings over the sequence (default: mean)",
    )
    parser.add_argument(
        "--rc-augment",
        action="store_true",
        help="reverse-complement half of the training sequences at random",
    )
    parser.add_argument("--epochs", type=int, default=3, help="passes over train.csv (default: 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step (default: 32)")
    parser.add_argument(
        "--lr", type=float, help="peak AdamW learning rate (default: 1e-3 CNN, 3e-4 HybriDNA)"
    )
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    parser.add_argument(
        "--valid-every", type=int, help="evaluate on dev every N steps (default: every epoch)"
    )
    parser.add_argument("--max-train", type=int, help="use a random subset of this many training sequences")
    add_run_arguments(parser, default_out="runs/finetune", multi_device=False)


def run_finetune(args: argparse.Namespace) -> int:
    from hybrids.apps.dna.finetune import FinetuneConfig, finetune

    result = finetune(config_from_args(FinetuneConfig, args))
    metrics = result.metrics
    dev, test = metrics["dev"], metrics["test"]
    print(
        f"{metrics['task']} ({metrics['model']}, selected at step {metrics['selected']['step']} on dev): "
        f"dev MCC {dev['mcc']:.4f}; test MCC {test['mcc']:.4f}, F1 {test['f1']:.4f}, "
        f"AUROC {test['auroc']:.4f}"
    )
    print(f"classifier: {result.best}; metrics: {result.out / 'metrics.json'}")
    return 0


# -- report --------------------------------------------------------------------------------------------------


def _lengths(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"token counts must be >= 1, got {text!r}")
    return values


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", type=Path, help="HybriDNA checkpoint folder (hybrids dna pretrain)")
    parser.add_argument("--fasta", type=Path, nargs="+", help="genomes for held-out bits per base")
    parser.add_argument(
        "--holdout-fraction", type=float, default=0.1, help="held-out tail of every record (default 0.1)"
    )
    parser.add_argument("--context", type=int, default=1024, help="tile length for the model (1024)")
    parser.add_argument("--max-tiles", type=int, help="score at most this many evenly spaced tiles")
    parser.add_argument(
        "--finetune", type=Path, nargs="+", metavar="RUN", help="hybrids dna finetune output folders"
    )
    parser.add_argument(
        "--published", type=Path, metavar="CSV", help="task,model,mcc,source rows reported elsewhere"
    )
    parser.add_argument(
        "--long-context", type=_lengths, metavar="L1,L2,...", help="time one forward pass at these lengths"
    )
    parser.add_argument(
        "--preset", default="small", choices=LM_PRESETS[:2], help="model for --long-context without -m"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; long context: 1)")
    parser.add_argument("-o", "--out", type=Path, default=Path("dna_report"), help="output folder")
    parser.add_argument(
        "--page",
        type=Path,
        metavar="FILE",
        help="also write the report as a results page stamped with this command, the commit, the date "
        "and the machine (docs/results/dna.md)",
    )


def run_report(args: argparse.Namespace) -> int:
    from hybrids.apps.dna.report import ReportConfig, report

    result = report(config_from_args(ReportConfig, args))
    print(result.markdown)
    print(f"report: {result.out / 'report.md'}")
    return 0


# -- score-variants --------------------------------------------------------------------------------


def add_variants_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m", "--model", required=True, type=Path, help="checkpoint folder (hybrids dna pretrain)"
    )
    parser.add_argument("--fasta", required=True, type=Path, help="reference genome (FASTA or GenBank)")
    parser.add_argument(
        "--variants",
        required=True,
        type=Path,
        help="TSV with a header holding chrom, pos (1-based), ref, alt (VCF's columns also work)",
    )
    parser.add_argument("-o", "--out", type=Path, help="TSV to write (default: stdout)")
    parser.add_argument(
        "--window", type=int, default=1024, help="bases scored around each variant (default: %(default)s)"
    )
    parser.add_argument(
        "--rc-average", action="store_true", help="average the log-likelihoods of both strands"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward (default: 8)")
    parser.add_argument("-d", "--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")


def run_score_variants(args: argparse.Namespace) -> int:
    from hybrids.apps.dna.variants import score_variants_file

    n = score_variants_file(
        args.model,
        args.fasta,
        args.variants,
        args.out,
        window=args.window,
        rc_average=args.rc_average,
        batch_size=args.batch_size,
        device=args.device,
    )
    if args.out:
        print(f"{n} variants scored -> {args.out}")
    return 0
