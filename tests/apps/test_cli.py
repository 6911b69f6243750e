import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from hybrids.apps import __version__
from hybrids.apps.cli import main
from hybrids.apps.core.registry import create_model

HYBRIDS_SCRIPT = Path(sys.executable).parent / "hybrids"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["models"], ["models", "--json"]])
def test_console_script_exits_zero(argv, tmp_path):
    if not HYBRIDS_SCRIPT.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    result = subprocess.run([str(HYBRIDS_SCRIPT), *argv], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if argv == ["--version"]:
        assert result.stdout.strip() == f"hybrids {__version__}"
    if argv == ["models", "--json"]:
        assert isinstance(json.loads(result.stdout), list)


def test_models_lists_registered_models_with_counts(fake_apps, capsys):
    assert main(["models", "--app", "testapp"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["MODEL", "PARAMS", "WEIGHTS", "PRESETS", "DESCRIPTION"]
    net = next(line for line in out if line.startswith("testapp/net "))
    assert "4.55K" in net and "official" in net and "A small test network." in net
    tiny = next(line for line in out if line.startswith("testapp/net_tiny"))
    assert " 26 " in tiny and " - " in tiny
    assert main(["models", "--app", "testapp", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {
        "name": "testapp/net",
        "parameters": 4546,
        "official_weights": True,
        "weights": "official",
        "presets": ["default", "tiny"],
        "description": "A small test network.",
    }


def test_app_groups_are_discovered(fake_apps, capsys):
    assert main(["--help"]) == 0
    assert "testapp" in capsys.readouterr().out


def test_exit_codes(fake_apps, capsys):
    assert main([]) == 2  # a command is required
    assert main(["no-such-command"]) == 2
    capsys.readouterr()
    assert main(["testapp", "fail-input"]) == 2
    err = capsys.readouterr().err
    assert err == "hybrids: error: song.wav: not an audio file\n"
    assert main(["testapp", "crash"]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err
    assert main(["models", "--app", "nosuchapp"]) == 2


def test_corrupt_weights_through_the_cli_is_one_line_exit_2(fake_apps, tmp_path, capsys):
    model = create_model("testapp/net")
    good = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(good))
    assert main(["-q", "testapp", "load", "--weights", str(good)]) == 0
    assert capsys.readouterr().out.strip() == "Net 4546"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    assert main(["testapp", "load", "--weights", str(truncated)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated.safetensors: corrupt or truncated safetensors file" in err
    assert main(["testapp", "load", "--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors: no such weights file" in capsys.readouterr().err


def test_verbosity_flags(fake_apps, capsys):
    import logging

    assert main(["-q", "models", "--app", "testapp"]) == 0
    assert logging.getLogger("hybrids").level == logging.WARNING
    assert main(["-v", "models", "--app", "testapp"]) == 0
    assert logging.getLogger("hybrids").level == logging.DEBUG
    assert main(["-q", "-v", "models"]) == 2  # mutually exclusive
