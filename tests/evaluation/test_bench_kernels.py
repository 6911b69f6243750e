import json
import math

from hybrids.evaluation.bench.kernels import _with_ratios, format_table, save_result
from hybrids.evaluation.bench.timing import best_time, measure_case


def test_measure_case_times_a_real_factory_in_a_subprocess():
    result = measure_case(
        "hybrids.evaluation.bench.attention:sdpa_case", {"length": 64, "heads": 2, "dim_head": 8}, repeats=2
    )
    assert "error" not in result, result
    assert 0 < result["time_s"] < 5
    assert result["peak_mib"] is None or result["peak_mib"] >= 0


def test_measure_case_reports_failures_as_rows():
    result = measure_case("hybrids.evaluation.bench.attention:no_such_factory", {}, repeats=1)
    assert "AttributeError" in result["error"]


def test_best_time_is_the_minimum():
    calls = []
    assert best_time(lambda: calls.append(1), repeats=3, warmup=2) >= 0
    assert len(calls) == 5


def test_ratios_table_and_json(tmp_path):
    rows = [
        {"group": "ssd", "case": "L=1024", "impl": "reference", "time_s": 1.0, "peak_mib": 10.0},
        {"group": "ssd", "case": "L=1024", "impl": "fast", "time_s": 0.05, "peak_mib": 5.0},
        {"group": "ssd", "case": "L=1024", "impl": "transformers", "time_s": 0.2, "peak_mib": 50.0},
        {"group": "ssd", "case": "L=65536", "impl": "reference", "time_s": None, "note": "skipped: too slow"},
    ]
    result = {
        "machine": {"cpu_count": 2, "torch": "2.13.0"},
        "repeats": 3,
        "wall_s": 12.0,
        "rows": _with_ratios(rows),
    }
    by_impl = {r["impl"]: r for r in result["rows"] if r["case"] == "L=1024"}
    assert math.isclose(by_impl["reference"]["time_vs_fast"], 20.0)
    assert math.isclose(by_impl["transformers"]["time_vs_fast"], 4.0)
    assert "time_vs_fast" not in result["rows"][3]
    table = format_table(result)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["group", "case", "impl"]
    assert "20.00" in lines[1] and "skipped: too slow" in lines[4]
    save_result(result, tmp_path / "out" / "kernels.json")
    assert json.loads((tmp_path / "out" / "kernels.json").read_text())["rows"][1]["impl"] == "fast"
