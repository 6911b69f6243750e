"""Results pages: stamped with the command line, the commit, the date and the machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hybrids.evaluation import results_page
from hybrids.evaluation.results_page import measurement_stamp, stamp_line, write_results_page

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_stamp_names_this_checkout_and_machine():
    stamp = measurement_stamp("hybrids medical report -m hippocampus")
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=10", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert stamp["commit"].removesuffix("-dirty") == head
    assert stamp["command"] == "hybrids medical report -m hippocampus"
    assert stamp["date"].endswith("UTC") and stamp["date"][:2] == "20"
    assert "cores" in stamp["machine"] and "load average" in stamp["machine"]
    line = stamp_line(stamp)
    assert "`hybrids medical report -m hippocampus`" in line and stamp["commit"] in line


def test_outside_a_checkout_the_version_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(results_page, "__file__", str(tmp_path / "results_page.py"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    commit = measurement_stamp("x")["commit"]
    assert commit.startswith("hybrids ") and "not a git checkout" in commit


def test_page_is_written_whole(tmp_path):
    stamp = {"command": "c", "commit": "abc", "date": "2026-12-08 04:00 UTC", "machine": "m"}
    page = write_results_page(tmp_path / "results" / "x.md", "X results", "| a |\n|---|\n| 1 |\n", stamp)
    text = page.read_text()
    assert text.startswith("# X results\n\nMeasured by `c` at commit `abc`")
    assert text.endswith("| 1 |\n")
    assert [p.name for p in page.parent.iterdir()] == ["x.md"]  # no temporary file left behind
