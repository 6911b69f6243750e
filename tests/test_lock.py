"""The lock file (``requirements.lock``) and ``pyproject.toml`` agree, and every dependency is used.

``scripts/setup.sh`` installs exactly the lock (hash-checked), so that the README's two commands
give the same environment next month as today; ``pyproject.toml`` keeps ranges for users. A
dependency added to one and not the other, or locked at a version its range excludes, fails here.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "requirements.lock"
DIRECT = "hybrids (pyproject.toml)"  # how the resolver marks a requirement of ours
SOURCE_FOLDERS = ("apps", "shared_blocks", "kernels", "datasets", "evaluation")

# Where a distribution's import name differs from its name on PyPI.
IMPORT_NAMES = {
    "biopython": "Bio",
    "pyyaml": "yaml",
    "scikit-learn": "sklearn",
    "scikit-image": "skimage",
    "neuraloperator": "neuralop",
}
# Dev tools used as programs or by pytest itself, never imported by our code.
TOOLS = {"pytest", "ruff"}


def parse_lock(text: str) -> dict[str, tuple[str, set[str]]]:
    """``{canonical name: (version, {what requires it})}`` from a pip-compile/uv requirements file."""
    locked: dict[str, tuple[str, set[str]]] = {}
    current = None
    via_block = False
    for line in text.splitlines():
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if pin:
            current = canonicalize_name(pin.group(1))
            locked[current] = (pin.group(2), set())
            via_block = False
            continue
        if current is None:
            continue
        comment = line.strip()
        if comment.startswith("# via"):
            rest = comment[len("# via") :].strip()
            via_block = not rest
            if rest:
                locked[current][1].add(rest)
        elif via_block and comment.startswith("#   "):
            locked[current][1].add(comment[4:].strip())
        elif not comment.startswith("--hash"):
            via_block = False
    return locked


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def check(locked: dict[str, tuple[str, set[str]]], requirements: list[Requirement]) -> list[str]:
    """Disagreements between the lock and the declared requirements (empty when they agree)."""
    problems = []
    wanted = {canonicalize_name(r.name): r for r in requirements}
    for name, requirement in wanted.items():
        if name not in locked:
            problems.append(f"{name} is in pyproject.toml but not in the lock")
            continue
        version, via = locked[name]
        if DIRECT not in via:
            problems.append(f"{name} is in pyproject.toml but the lock was not compiled from it")
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{name}=={version} in the lock is outside pyproject's {requirement.specifier}")
    for name, (_, via) in locked.items():
        if DIRECT in via and name not in wanted:
            problems.append(f"{name} is locked as ours but pyproject.toml no longer asks for it")
    return problems


@pytest.fixture(scope="module")
def locked() -> dict[str, tuple[str, set[str]]]:
    return parse_lock(LOCK.read_text())


def test_lock_and_pyproject_agree(locked):
    assert check(locked, declared()) == []


def test_lock_pins_every_package_with_hashes(locked):
    text = LOCK.read_text()
    assert locked["torch"][0] == "2.13.0+cpu"  # never the multi-GB CUDA build
    for name in ("pip", "setuptools", "wheel"):  # the editable build uses the locked tools
        assert name in locked
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)


def test_the_check_catches_a_dependency_added_to_either_side(locked):
    requirements = declared()
    assert check(locked, [*requirements, Requirement("einops>=0.8")])  # locked, but not as ours
    assert check(locked, [*requirements, Requirement("notapackage>=1")])  # not locked at all
    assert check(locked, [r for r in requirements if r.name != "numpy"])  # locked as ours, undeclared
    too_new = [Requirement("numpy>=99") if r.name == "numpy" else r for r in requirements]
    assert check(locked, too_new)  # locked version outside the range


def _imported_top_level_names() -> set[str]:
    names = set()
    paths = [p for folder in (*SOURCE_FOLDERS, "tests") for p in (REPO_ROOT / folder).rglob("*.py")]
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
            elif (  # pytest.importorskip("jax_cfd.base"): a test-only peer imported where it runs
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "importorskip"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names.add(str(node.args[0].value).split(".")[0])
    return names


def test_every_declared_dependency_is_imported_somewhere():
    imported = _imported_top_level_names()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name in TOOLS:
            continue
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        assert module in imported, f"{requirement.name} is declared but nothing imports {module}"


def _guarded_imports(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside ``try: ... except ImportError`` (optional, e.g. GPU-only)."""
    lines = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
        if not caught & {"ImportError", "ModuleNotFoundError", "(ImportError, OSError)", "Exception"}:
            continue
        for stmt in node.body:
            for inner in ast.walk(stmt):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    lines.add(inner.lineno)
    return lines


def _third_party_imports(folders, module_level_only: bool = False) -> dict[str, str]:
    """``{top-level module: first file importing it}`` for unguarded imports outside the stdlib
    (with ``module_level_only``, only those a module runs when it is imported)."""
    local = {p.stem for p in (REPO_ROOT / "tests").rglob("*.py")} | {"hybrids"}
    found: dict[str, str] = {}
    for path in sorted(p for folder in folders for p in (REPO_ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text())
        guarded = _guarded_imports(tree)
        for node in tree.body if module_level_only else ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            if node.lineno in guarded:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, str(path.relative_to(REPO_ROOT)))
    return found


@pytest.mark.parametrize("scope", ["package import", "lazy import", "tests"])
def test_every_imported_package_is_declared(scope):
    """An import that only works because another package happened to pull its distribution in
    (scikit-learn arrived with librosa once) fails here, not on a fresh machine. What our modules
    import at import time must be a runtime dependency; a peer imported inside a benchmark function
    (demucs, transformers) may be a dev dependency."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    dev = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    folders, allowed = {
        "package import": (SOURCE_FOLDERS, runtime),
        "lazy import": (SOURCE_FOLDERS, runtime + dev),
        "tests": (("tests",), runtime + dev),
    }[scope]
    allowed_names = {canonicalize_name(r.name) for r in allowed}
    distributions = metadata.packages_distributions()
    problems = []
    imports = _third_party_imports(folders, module_level_only=scope == "package import")
    for module, where in imports.items():
        owners = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not owners:
            problems.append(f"{where} imports {module}, which no installed distribution provides")
        elif not owners & allowed_names:
            problems.append(f"{where} imports {module} (from {', '.join(sorted(owners))}), not declared")
    assert problems == []
