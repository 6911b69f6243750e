"""``hybrids medical report``: tiny models trained for a few steps on real hippocampus cases are compared
on their shared validation cases (Dice, HD95, parameters, GFLOPs, CPU time, attention PNG)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from hybrids.apps.cli import main
from hybrids.apps.core.errors import InputError
from hybrids.apps.medical.report import ReportConfig, count_flops, markdown_table, report


def _train(data, out, model, preset, *extra):
    argv = [
        "-q",
        "medical",
        "train",
        "--data",
        str(data),
        "-m",
        model,
        "--preset",
        preset,
        "--train-cases",
        "2",
        "--val-cases",
        "2",
        "--batch-size",
        "4",
        "--steps-per-epoch",
        "2",
        "--epochs",
        "1",
        "--threads",
        "1",
        "-o",
        str(out),
        *extra,
    ]
    assert main(argv) == 0
    return out / "best"


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory):
    before = torch.get_num_threads()
    root = tmp_path_factory.mktemp("runs")
    data = shared_data / "hippocampus"
    folders = {
        "diamant": _train(data, root / "diamant", "diamant", "tiny"),
        "swtr": _train(data, root / "swtr", "swtr_unet", "tiny"),
        "short": _train(data, root / "short", "swtr_unet", "tiny", "--val-cases", "1"),
    }
    torch.set_num_threads(before)
    return data, folders


def test_report_compares_models_on_their_shared_cases(runs, tmp_path, capsys):
    data, folders = runs
    out = tmp_path / "report"
    argv = ["medical", "report", "-m", str(folders["diamant"]), str(folders["swtr"].parent)]
    argv += ["--data", str(data), "-o", str(out), "--attention-png", "--flops-size", "48x64"]
    assert main(argv) == 0
    assert "| diamant | `medical/diamant` |" in capsys.readouterr().out
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["diamant", "swtr"]
    info = json.loads((folders["diamant"] / "config.json").read_text())
    for row in rows:
        for name in ("Anterior", "Posterior"):
            assert 0.0 <= float(row[f"dice_{name}"]) <= 1.0
            assert float(row[f"hd95_mm_{name}"]) >= 0.0 or row[f"hd95_mm_{name}"] == "nan"
        assert float(row["gflops_per_slice"]) > 0 and float(row["cpu_s_per_volume"]) > 0
        assert int(row["cases"]) == 2
        assert row["flops_input"] == "48x64"
    diamant = rows[0]
    # the frozen ViT counts in the parameters, not in the trained ones
    assert float(diamant["params_m"]) > float(diamant["trainable_m"]) > 0
    assert float(rows[1]["params_m"]) == pytest.approx(float(rows[1]["trainable_m"]))
    cases = list(csv.DictReader(open(out / "cases.csv")))
    assert {r["case"] for r in cases} == set(info["training"]["validation_cases"])
    assert len(cases) == 2 * 2 * 2  # models x cases x labels
    text = (out / "report.md").read_text()
    assert "GFLOPs/slice" in text and "![DINO attention maps](attention.png)" in text
    assert (out / "attention.png").stat().st_size > 1000


def test_report_from_python(runs, tmp_path):
    data, folders = runs
    page = tmp_path / "docs" / "results" / "medical.md"
    config = ReportConfig(
        models=[folders["swtr"]],
        data=data,
        output=tmp_path / "r",
        flops_size=(48, 64),
        page=page,
        command="hybrids medical report -m swtr ...",
    )
    result = report(config)
    assert [(r.model, r.flops_input, len(r.cases)) for r in result.rows] == [
        ("medical/swtr_unet", (48, 64), 2)
    ]
    assert result.labels == {1: "Anterior", 2: "Posterior"}
    assert [p.name for p in result.written] == ["report.csv", "cases.csv", "report.md", "medical.md"]
    table = markdown_table(result.rows, result.labels)
    assert table in (tmp_path / "r" / "report.md").read_text()
    lines = page.read_text().splitlines()  # the results page: title, stamp, the same table
    assert lines[0] == "# Medical segmentation: model comparison"
    assert lines[2].startswith("Measured by `hybrids medical report -m swtr ...` at commit `")
    assert "machine: " in lines[2] and " cores" in lines[2] and table in page.read_text()
    for bad, message in (
        ({"threads": 0}, "--threads"),
        ({"tolerance": 0.0}, "--tolerance"),
        ({"models": []}, "-m"),
    ):
        with pytest.raises(InputError, match=message):
            report(
                ReportConfig(**{"models": [folders["swtr"]], "data": data, "output": tmp_path / "x", **bad})
            )
    assert not (tmp_path / "x").exists()


def test_models_with_different_validation_cases_are_refused(runs, tmp_path, capsys):
    data, folders = runs
    argv = ["medical", "report", "-m", str(folders["diamant"]), str(folders["short"])]
    assert main([*argv, "--data", str(data), "-o", str(tmp_path / "r")]) == 2
    assert "validation cases differ" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_not_a_model_folder_is_one_line(shared_data, tmp_path, capsys):
    argv = ["medical", "report", "-m", str(tmp_path), "--data", str(shared_data / "hippocampus")]
    assert main(argv) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_count_flops_counts_two_per_multiply_add():
    conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    assert count_flops(conv, (1, 1, 8, 8)) == 2 * 4 * 9 * 64


def test_count_flops_counts_cpu_attention():
    class Attention(nn.Module):
        def forward(self, x):
            q = x.reshape(1, 2, 16, 8)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    assert count_flops(Attention(), (1, 256)) == 4 * 2 * 16 * 16 * 8  # two GEMMs: QK^T and AV
