"""``hybrids dna report``: the held-out bits-per-base section against an independent Markov fit and a direct
scoring of the tiles, GUE runs grouped with the CNN comparison selected on dev, published-number
validation, the long-context subprocess, and one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hybrids.apps.cli import main
from hybrids.apps.core.checkpoint import save_checkpoint
from hybrids.apps.core.errors import InputError
from hybrids.apps.core.registry import create_model
from hybrids.apps.dna import report as R
from hybrids.datasets.dna import DNATokenizer

GENOME = "dna/genomes/NC_005816.fna"


def _tiny_lm(path) -> None:
    torch.manual_seed(0)
    model = create_model("dna/hybridna", preset="tiny")
    model.preprocessing = {"tokenizer": DNATokenizer().to_dict(), "bos": True}
    save_checkpoint(model, path)


def _run(folder, task, model, dev, test, steps=10):
    folder.mkdir(parents=True)
    metrics = {
        "task": task,
        "model": model,
        "parameters": 1000,
        "dev": {"mcc": dev},
        "test": {"mcc": test, "f1": 0.5, "auroc": 0.6},
        "recipe": {"steps": steps, "pooling": "mean" if model == "hybridna" else None},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_language_modelling_matches_an_independent_fit(shared_data, tmp_path):
    from hybrids.apps.dna.markov import MarkovModel
    from hybrids.apps.dna.pretrain import load_genomes
    from hybrids.apps.dna.training import ValidationTiles, lm_token_losses

    _tiny_lm(tmp_path / "lm")
    genome = shared_data / GENOME
    result = R.language_modelling(tmp_path / "lm", [genome], context=128, max_tiles=5, orders=range(1, 5))
    train, valid, _ = load_genomes([genome], 0.1, DNATokenizer())
    assert result["data"]["valid_bases"] == sum(len(v) for v in valid)
    # the Markov number is a fit of the chosen order on the whole training part, scored on the held-out
    order = result["markov"]["order"]
    assert 1 <= order <= 4 and set(result["markov"]["dev_bits_per_base"]) == {1, 2, 3, 4}
    expected = MarkovModel(order).fit(train).bits_per_base(valid)
    assert result["markov"]["bits_per_base"] == pytest.approx(expected, rel=1e-12)
    # the model's number is the mean -log2 p over the A/C/G/T targets of the same 5 tiles
    from hybrids.apps.dna.models import load_lm

    model = load_lm(tmp_path / "lm").eval()
    tiles = ValidationTiles(valid, 128, 5)
    with torch.inference_mode():
        loss, mask = lm_token_losses(model, torch.stack([tiles[i] for i in range(len(tiles))]).long())
    assert result["ours"]["tiles"] == 5 and result["ours"]["scored_bases"] == int(mask.sum())
    bits = float(loss[mask].double().mean()) / math.log(2)
    assert result["ours"]["bits_per_base"] == pytest.approx(bits, rel=1e-6)
    assert bits > result["markov"]["bits_per_base"]  # an untrained model loses to the Markov baseline


def test_gue_rows_and_the_comparison_pick_runs_on_dev(tmp_path):
    runs = [
        _run(tmp_path / "a", "tf_0", "hybridna", dev=0.60, test=0.50),
        _run(tmp_path / "b", "tf_0", "hybridna", dev=0.55, test=0.70),  # better test, worse dev: not chosen
        _run(tmp_path / "c", "tf_0", "cnn", dev=0.58, test=0.52),
        _run(tmp_path / "d", "mouse_0", "cnn", dev=0.6, test=0.55),
    ]
    rows = R.gue_rows(runs)
    assert [r["run"] for r in rows] == ["a", "b", "c", "d"]
    verdict = R.compare_with_cnn(rows)
    assert set(verdict) == {"tf_0"}  # mouse_0 has no HybriDNA run
    assert verdict["tf_0"]["hybridna"] == 0.50 and verdict["tf_0"]["difference"] == pytest.approx(-0.02)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{}")
    with pytest.raises(InputError, match="not a `hybrids dna finetune` metrics.json"):
        R.gue_rows([tmp_path / "bad"])
    with pytest.raises(InputError, match="cannot read"):
        R.gue_rows([tmp_path / "nowhere"])


def test_published_numbers_are_checked(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("task,model,mcc,source\ntf_0,DNABERT-2,0.7199,paper table\n")
    assert R.read_published(good) == [
        {"task": "tf_0", "model": "DNABERT-2", "mcc": 0.7199, "source": "paper table"}
    ]
    percent = tmp_path / "percent.csv"
    percent.write_text("task,model,mcc,source\ntf_0,DNABERT-2,71.99,paper\n")
    with pytest.raises(InputError, match=r"percent.csv:2: mcc 71.99 is outside \[-1, 1\]"):
        R.read_published(percent)
    columns = tmp_path / "columns.csv"
    columns.write_text("task,mcc\ntf_0,0.5\n")
    with pytest.raises(InputError, match="needs the columns"):
        R.read_published(columns)


def test_cli_report_with_runs_and_long_context(tmp_path, capsys):
    runs = [
        _run(tmp_path / "ours", "mouse_0", "hybridna", dev=0.65, test=0.58),
        _run(tmp_path / "cnn", "mouse_0", "cnn", dev=0.65, test=0.56),
    ]
    out = tmp_path / "report"
    argv = ["dna", "report", "--finetune", *map(str, runs), "--long-context", "256", "--preset", "tiny"]
    page = tmp_path / "dna.md"
    assert main([*argv, "-o", str(out), "--page", str(page)]) == 0
    text = (out / "report.md").read_text()
    assert "| mouse_0 | 0.5800 | 0.5600 | +0.0200 |" in text
    stamp = page.read_text().splitlines()[2]  # the results page: title, stamp, the report
    assert stamp.startswith(f"Measured by `hybrids {' '.join(argv)} -o {out} --page {page}` at commit")
    assert "| mouse_0 | 0.5800 | 0.5600 | +0.0200 |" in page.read_text()
    result = json.loads((out / "report.json").read_text())
    (long,) = result["long_context"]
    assert long["tokens"] == 256 and long["seconds"] > 0 and long["peak_rss_mib"] > 50
    assert "HybriDNA benchmark report" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        ([], "nothing to report"),
        (["--fasta", "x.fa"], "--fasta needs -m"),
        (["--long-context", "0"], "token counts must be >= 1"),
        (["--finetune", "{tmp}/nowhere"], "cannot read"),
    ],
)
def test_cli_report_errors(argv, needle, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["dna", "report", *argv, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err
    if "token counts" not in needle:  # argparse adds its usage line
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "report.md").exists()
