"""Project conventions that a reviewer would otherwise have to remember (ARCHITECTURE §1, §2, §5)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).parent / "ruff"
STDLIB = set(sys.stdlib_module_names)


def _ruff() -> str:
    path = str(RUFF) if RUFF.exists() else shutil.which("ruff")
    if not path:
        pytest.skip("ruff is not installed (it comes with the dev extras)")
    return path


def test_ruff_check_passes():
    result = subprocess.run([_ruff(), "check", "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "source",
    [
        "import datasets\n",
        "from kernels import ssd\n",
        "import evaluation.bench\n",
        "from apps.core import registry\n",
        "import shared_blocks\n",
    ],
)
def test_ruff_bans_bare_imports_of_our_folders(tmp_path, source):
    (tmp_path / "pyproject.toml").write_text((REPO_ROOT / "pyproject.toml").read_text())
    (tmp_path / "probe.py").write_text(source)
    result = subprocess.run(
        [_ruff(), "check", "--no-cache", "probe.py"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 1 and "TID251" in result.stdout, result.stdout


def _imports(path: Path) -> set[str]:
    """Top-level import targets of a module (absolute; relative ones resolved to hybrids.*)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    package = "hybrids." + ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (REPO_ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _third_party(name: str) -> str:
    return name.split(".")[0]


def test_kernels_import_only_torch_and_lazily_accelerators():
    # mamba_ssm / triton may only be imported inside functions (checked below), never at top level.
    for path in _modules("kernels"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                top = _third_party(name)
                assert (
                    top in STDLIB or top in {"torch", "__future__"} or name.startswith("hybrids.kernels")
                ), f"{path.relative_to(REPO_ROOT)} imports {name} at module level"
        for name in _imports(path):
            assert not name.startswith(
                ("hybrids.apps", "hybrids.shared_blocks", "hybrids.datasets", "hybrids.evaluation")
            ), f"{path} imports {name}"


def test_shared_blocks_depend_only_on_kernels_and_torch():
    allowed_third_party = {"torch", "__future__"}
    for path in _modules("shared_blocks"):
        for name in _imports(path):
            top = _third_party(name)
            if name.startswith("hybrids."):
                assert name.startswith(("hybrids.kernels", "hybrids.shared_blocks")), f"{path} imports {name}"
            else:
                assert top in STDLIB or top in allowed_third_party, f"{path} imports {name}"


def test_datasets_and_evaluation_never_import_apps():
    for folder in ("datasets", "evaluation"):
        for path in _modules(folder):
            for name in _imports(path):
                assert not name.startswith("hybrids.apps"), f"{path} imports {name}"


def test_no_app_imports_another_app():
    apps_root = REPO_ROOT / "apps"
    apps = [
        p.name
        for p in apps_root.iterdir()
        if p.is_dir() and (p / "__init__.py").exists() and p.name != "core"
    ]
    for app in apps:
        for path in _modules(f"apps/{app}"):
            for name in _imports(path):
                for other in apps:
                    assert other == app or not name.startswith(f"hybrids.apps.{other}"), (
                        f"{path} imports {name}"
                    )
