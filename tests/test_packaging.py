"""Packaging: the five root folders install under ``hybrids.*`` and never as top-level modules.

(a) every package folder on disk is listed in pyproject's explicit ``packages``;
(b) the built wheel holds ``hybrids/<folder>/...`` for all five, and nothing else at top level;
(c) installed (editable here, and from the wheel into a fresh venv), ``import datasets`` does not
    find our folder while ``import hybrids.datasets`` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

SOURCE_FOLDERS = {
    "apps": "hybrids.apps",
    "shared_blocks": "hybrids.shared_blocks",
    "kernels": "hybrids.kernels",
    "datasets": "hybrids.datasets",
    "evaluation": "hybrids.evaluation",
}
BARE_NAMES = ("datasets", "kernels", "evaluation", "apps", "shared_blocks")
IMPORT_CHECK = f"""
import importlib, json, sys
result = {{}}
for bare in {BARE_NAMES!r}:
    try:
        module = importlib.import_module(bare)
        result[bare] = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), None)
    except ModuleNotFoundError:
        result[bare] = None
import hybrids.apps, hybrids.shared_blocks, hybrids.kernels, hybrids.datasets, hybrids.evaluation
result["hybrids.datasets"] = hybrids.datasets.__file__
print(json.dumps(result))
"""


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, dotted in SOURCE_FOLDERS.items():
        root = REPO_ROOT / folder
        for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            if "__pycache__" in directory.parts or not any(directory.glob("*.py")):
                continue
            assert (directory / "__init__.py").is_file(), f"{directory} has modules but no __init__.py"
            rel = directory.relative_to(root).parts
            found.add(".".join((dotted, *rel)))
    return found


def test_every_package_folder_is_listed_and_mapped():
    setuptools_cfg = _pyproject()["tool"]["setuptools"]
    assert setuptools_cfg["package-dir"] == dict(zip(SOURCE_FOLDERS.values(), SOURCE_FOLDERS))
    listed = set(setuptools_cfg["packages"])
    on_disk = _packages_on_disk()
    assert on_disk - listed == set(), "package folders missing from pyproject [tool.setuptools] packages"
    assert listed - on_disk == set(), "pyproject lists packages that do not exist"
    assert all(name.startswith("hybrids.") for name in listed)


def _check_imports(python: str, cwd: Path, extra_path: Path | None = None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    result = subprocess.run(
        [python, "-c", IMPORT_CHECK], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    import json

    return json.loads(result.stdout)


def _is_ours(where: str | None, repo: Path) -> bool:
    """Whether a module file (or package path) lies inside one of our five source folders.

    Decided from the folders' real paths, not from "somewhere under the checkout": a virtual
    environment inside the checkout may hold third-party ``kernels``/``datasets``/``evaluation``
    packages, which are not ours.
    """
    if not where:
        return False
    path = Path(where).resolve()
    return any(path.is_relative_to((repo / folder).resolve()) for folder in SOURCE_FOLDERS)


def _assert_not_ours(found: dict, repo: Path) -> None:
    for bare in BARE_NAMES:
        where = found[bare]
        assert not _is_ours(where, repo), f"`import {bare}` resolved to our folder: {where}"


def test_ours_is_decided_by_our_source_folders():
    # A third-party `kernels` in a venv inside the checkout (transformers >= 5.25 installs one) is
    # not ours; our own folder, as a module file or as a namespace package's path, is.
    venv_kernels = REPO_ROOT / ".venv" / "lib" / "python3.11" / "site-packages" / "kernels" / "__init__.py"
    assert not _is_ours(str(venv_kernels), REPO_ROOT)
    assert _is_ours(str(REPO_ROOT / "kernels" / "__init__.py"), REPO_ROOT)
    assert _is_ours(str(REPO_ROOT / "datasets"), REPO_ROOT)
    assert not _is_ours(None, REPO_ROOT)


def test_a_real_leak_of_our_folders_is_caught(tmp_path):
    # With the checkout on sys.path (what `python -m pytest` from the root would do), `import
    # kernels` finds our folder: the check must fail there, or it could never fail at all.
    leaked = _check_imports(sys.executable, tmp_path, extra_path=REPO_ROOT)
    with pytest.raises(AssertionError, match="resolved to our folder"):
        _assert_not_ours(leaked, REPO_ROOT)


def test_editable_install_does_not_shadow_bare_names(tmp_path):
    found = _check_imports(sys.executable, tmp_path)
    _assert_not_ours(found, REPO_ROOT)
    assert found["hybrids.datasets"].startswith(str(REPO_ROOT / "datasets"))


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (the checkout itself is never written)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    for folder in SOURCE_FOLDERS:
        shutil.copytree(REPO_ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = out.glob("hybrids-*.whl")
    return wheel


def test_wheel_contains_all_folders_under_hybrids_only(built_wheel):
    names = zipfile.ZipFile(built_wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"hybrids"}
    for folder in SOURCE_FOLDERS:
        assert f"hybrids/{folder}/__init__.py" in names
    listed = _pyproject()["tool"]["setuptools"]["packages"]
    for package in listed:
        assert package.replace(".", "/") + "/__init__.py" in names, f"{package} missing from the wheel"
    assert "hybrids/__init__.py" not in names  # `hybrids` is a namespace package
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hybrids = hybrids.apps.cli:main" in zipfile.ZipFile(built_wheel).read(entry_points).decode()


def test_wheel_in_fresh_venv_imports_hybrids_not_bare_names(built_wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(built_wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # Dependencies (torch...) come from this environment's site-packages as a plain path entry; its
    # editable-install hook (a .pth) is *not* processed there, so hybrids resolves to the wheel.
    fresh_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (fresh_site / "zz_dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    found = _check_imports(str(python), tmp_path)
    _assert_not_ours(found, REPO_ROOT)
    assert found["hybrids.datasets"].startswith(str(fresh_site / "hybrids" / "datasets"))
    result = subprocess.run([str(venv / "bin" / "hybrids"), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("hybrids ")
