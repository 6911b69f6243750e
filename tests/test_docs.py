"""Every command in the README and docs/ runs as written.

- ``hybrids`` / ``separate`` command lines in ``bash`` blocks: every flag and value must parse with
  the real command-line parser (a renamed flag, a removed verb or a bad value fails here); the fast
  ones (listing models, versions, help) are run for real.
- ``python`` blocks are executed, each in a fresh interpreter inside a temporary folder placed
  beside ``shared/`` (so the docs' ``../shared/data/...`` paths resolve and nothing is written
  elsewhere).
- Relative links between the pages point at files that exist.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hybrids.apps.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
PROGRAMS = {"hybrids": [], "separate": ["music", "separate"]}
FAST = ({"models"}, {"--version"}, {"--help"}, {"--list-models"})


def blocks(kind: str) -> list[tuple[str, int, str]]:
    """``(page, line, code)`` of every fenced block of ``kind`` in the README and docs."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == kind:
                line = text.count("\n", 0, match.start()) + 1
                found.append((str(page.relative_to(REPO_ROOT)), line, match.group(2)))
    return found


def command_lines() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every ``hybrids``/``separate`` command in the bash blocks."""
    commands = []
    for page, line, code in blocks("bash"):
        for offset, text in enumerate(code.replace("\\\n", " ").splitlines()):
            words = shlex.split(text, comments=True)
            if not words:
                continue
            program = Path(words[0]).name
            if program in PROGRAMS:
                commands.append((f"{page}:{line + offset + 1}", [*PROGRAMS[program], *words[1:]]))
    return commands


COMMANDS = command_lines()


def test_the_pages_hold_commands_and_snippets():
    assert len(COMMANDS) >= 20 and len(blocks("python")) >= 3


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_parses(where, argv):
    parser = build_parser()
    if {"--help", "-h"} & set(argv) or argv == ["--version"]:
        return  # argparse exits after printing; run for real below
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parser.parse_args(argv)
    except SystemExit:
        reason = errors.getvalue().strip().splitlines()[-1]
        pytest.fail(f"{where}: `{' '.join(argv)}` does not parse: {reason}")


@pytest.mark.parametrize("where, argv", [c for c in COMMANDS if any(f <= set(c[1]) for f in FAST)])
def test_fast_commands_run(where, argv, capsys):
    assert main(argv) == 0, f"{where}: {capsys.readouterr().err}"


SNIPPETS = blocks("python")


@pytest.mark.parametrize("page, line, code", SNIPPETS, ids=[f"{p}:{n}" for p, n, _ in SNIPPETS])
def test_python_snippet_runs(page, line, code, shared_data, tmp_path):
    (tmp_path / "shared").symlink_to(shared_data.parent, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{page}:{line}:\n{done.stderr[-3000:]}"


def test_relative_links_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(REPO_ROOT)} links to missing {target}"
