"""The DNA verbs as library functions, with no argparse: ``pretrain(PretrainConfig(...))``,
``finetune(FinetuneConfig(...))`` and ``report(ReportConfig(...))``; what they save is a registered
model (``create_model(name, weights=OUT/best)``, ``load_checkpoint(OUT/best)``); finetune resumes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from hybrids.apps.core.checkpoint import load_checkpoint
from hybrids.apps.core.errors import InputError
from hybrids.apps.core.registry import create_model
from hybrids.apps.core.run_options import RunOptions
from hybrids.apps.dna.classifier import HybriDNAClassifier
from hybrids.apps.dna.cnn_baseline import CNNClassifier
from hybrids.apps.dna.finetune import FinetuneConfig, finetune
from hybrids.apps.dna.hybridna import HybriDNA
from hybrids.apps.dna.pretrain import PretrainConfig, pretrain
from hybrids.apps.dna.report import ReportConfig, report
from hybrids.apps.dna.training import classification_metrics
from hybrids.datasets.dna import DNATokenizer, read_gue_csv

PLASMID = "dna/genomes/NC_005816.fna"
TASK = "dna/gue/prom_core_tata"


def small_task(shared_data: Path, folder: Path, sizes=(("train", 32), ("dev", 16), ("test", 16))) -> Path:
    """The first ``n`` sequences of each label of each split of a real GUE task."""
    folder.mkdir()
    for split, n in sizes:
        lines = (shared_data / TASK / f"{split}.csv").read_text().splitlines()
        picked = [line for label in "01" for line in [x for x in lines[1:] if x.endswith(f",{label}")][:n]]
        (folder / f"{split}.csv").write_text("\n".join([lines[0], *picked]) + "\n")
    return folder


def run_options(out: Path, **fields) -> RunOptions:
    return RunOptions(out=out, accelerator="cpu", threads=1, verbosity=-1, **fields)


def test_pretrain_finetune_report_from_python(shared_data, tmp_path):
    lm = pretrain(
        PretrainConfig(
            fasta=[shared_data / PLASMID],
            preset="tiny",
            context=64,
            steps=4,
            valid_every=2,
            batch_size=2,
            valid_max_tiles=4,
            run=run_options(tmp_path / "lm"),
        )
    )
    assert [r["step"] for r in lm.history] == [0, 2, 4]
    assert lm.best == min(lm.history, key=lambda r: r["valid_bpb"])
    assert json.loads((tmp_path / "lm" / "history.json").read_text()) == lm.history
    assert lm.summary["records"] == 1 and lm.out == tmp_path / "lm"
    info = json.loads((tmp_path / "lm" / "best" / "config.json").read_text())
    assert info["training"]["seed"] == 42 and info["training"]["valid_bpb"] == lm.best["valid_bpb"]
    assert info["preprocessing"]["context"] == 64
    assert isinstance(load_checkpoint(tmp_path / "lm" / "best"), HybriDNA)

    task = small_task(shared_data, tmp_path / "task")
    ft = finetune(
        FinetuneConfig(
            task=task,
            init=tmp_path / "lm" / "best",
            pooling="mean+max",
            epochs=2,
            batch_size=16,
            run=run_options(tmp_path / "ft"),
        )
    )
    assert ft.best == tmp_path / "ft" / "best"
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text()) == ft.metrics
    assert set(ft.metrics) == {"task", "model", "parameters", "selected", "dev", "test", "recipe", "history"}
    assert [h["step"] for h in ft.metrics["history"]] == [4, 8]
    assert ft.metrics["recipe"]["steps"] == 8 and ft.metrics["recipe"]["seed"] == 42
    # the fine-tuned folder is a registered model: both ways of loading it give the test metrics back
    seqs, labels = read_gue_csv(task / "test.csv")
    tokens = torch.nn.utils.rnn.pad_sequence([DNATokenizer().encode(s) for s in seqs], batch_first=True)
    for model in (load_checkpoint(ft.best), create_model("dna/hybridna_classifier", weights=ft.best)):
        assert isinstance(model, HybriDNAClassifier) and model.pooling == "mean+max"
        with torch.no_grad():
            probs = torch.softmax(model.eval()(tokens), -1).numpy()
        assert classification_metrics(probs, labels)["mcc"] == pytest.approx(ft.metrics["test"]["mcc"])
    assert create_model("dna/hybridna_classifier", weights=ft.out / "last").config.num_classes == 2

    cnn = finetune(
        FinetuneConfig(task=task, model="cnn", preset="tiny", epochs=2, run=run_options(tmp_path / "cnn"))
    )
    model = create_model("dna/cnn_classifier", weights=cnn.best)
    assert isinstance(model, CNNClassifier) and cnn.metrics["model"] == "cnn"

    result = report(ReportConfig(finetune=[ft.out, cnn.out], out=tmp_path / "report"))
    assert set(result.data["gue_vs_cnn"]) == {"task"}  # the task folder's name
    assert (tmp_path / "report" / "report.md").read_text() == result.markdown + "\n"
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == result.data


def test_finetune_resumes_with_its_history(shared_data, tmp_path):
    task = small_task(shared_data, tmp_path / "task")
    config = FinetuneConfig(
        task=task, model="cnn", preset="tiny", epochs=1, batch_size=16, run=run_options(tmp_path / "o")
    )
    first = finetune(config)
    assert [h["step"] for h in first.metrics["history"]] == [4]
    more = dataclasses.replace(config, epochs=2, run=run_options(tmp_path / "o", resume=True))
    again = finetune(more)
    assert [h["step"] for h in again.metrics["history"]] == [4, 8]
    assert again.metrics["history"][0] == first.metrics["history"][0]
    assert (tmp_path / "o" / "resumed_1" / "metrics.csv").is_file()  # the first run's metrics are kept


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"steps": 0}, "--steps"),
        ({"holdout_fraction": 1.0}, "--holdout-fraction"),
        ({"warmup_schedule": [512, 64]}, "must increase"),
        ({"preset": "huge"}, "unknown preset"),
        ({"init": "nowhere"}, "no such checkpoint"),
        ({"run": RunOptions(out=Path("x"), max_time=0)}, "--max-time"),
    ],
)
def test_pretrain_config_check(fields, needle, tmp_path):
    with pytest.raises(InputError, match=needle):
        PretrainConfig(**{"fasta": tmp_path / "x.fa", "run": run_options(tmp_path / "o"), **fields}).check()
    assert not (tmp_path / "o").exists()


def test_report_config_check(tmp_path):
    with pytest.raises(InputError, match="nothing to report"):
        report(ReportConfig(out=tmp_path / "r"))
    with pytest.raises(InputError, match="--long-context"):
        report(ReportConfig(long_context=[0], out=tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_an_old_classifier_folder_is_refused_with_one_line(tmp_path):
    from hybrids.apps.dna.models import load_lm

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"kind": "cnn", "config": {}, "num_classes": 2}))
    (old / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="earlier `hybrids dna finetune`") as info:
        load_lm(old)
    assert "\n" not in str(info.value)
