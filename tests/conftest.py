"""Shared fixtures and markers.

- ``slow`` tests (full-size configs, > 10 s) and ``gpu`` tests are excluded by default
  (pyproject addopts); ``gpu`` tests are also skipped when CUDA is absent.
- ``shared_data`` points at the project's real test data (``../shared/data`` from the repository
  root, or ``$HYBRIDS_SHARED_DATA``); tests that need it skip with a reason when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("HYBRIDS_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path} (set HYBRIDS_SHARED_DATA to its folder)")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; none is available on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the user's weights cache or the network: point the cache at a temp dir."""
    monkeypatch.setenv("HYBRIDS_CACHE", str(tmp_path_factory.mktemp("hybrids-cache")))
    monkeypatch.setenv("HYBRIDS_OFFLINE", "1")


@pytest.fixture
def unprivileged() -> Iterator[tuple[list[str], Path]]:
    """``(prefix, folder)`` for running a command as a user without root's powers.

    As root, ``prefix`` drops to ``nobody`` with ``setpriv`` (root may write into any folder, so a
    read-only folder can only be tested this way); as any other user it is empty. ``folder`` is a
    fresh temporary folder every user can enter; it is removed afterwards.
    """
    import shutil
    import tempfile

    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop privileges")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    folder = Path(tempfile.mkdtemp(prefix="hybrids-unprivileged-"))
    folder.chmod(0o777)
    try:
        yield prefix, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class TorchThreads:
    """Callable handed out by the :func:`torch_threads` fixture: ``torch_threads(n)`` sets torch's
    intra-op thread count; :meth:`restore` puts back the count seen when the fixture started."""

    def __init__(self) -> None:
        import torch

        self.before = torch.get_num_threads()

    def __call__(self, threads: int) -> None:
        import torch

        if threads < 1:
            raise ValueError(f"torch_threads: need at least one thread, got {threads}")
        torch.set_num_threads(threads)

    def restore(self) -> None:
        import torch

        if torch.get_num_threads() != self.before:
            torch.set_num_threads(self.before)


@pytest.fixture
def torch_threads() -> Iterator[TorchThreads]:
    """Set torch's intra-op threads for one test (``torch_threads(1)``); the count is restored afterwards.

    Tiny models run hundreds of small ops, and on a shared 2-core machine spinning OpenMP threads make
    them several times slower; such test modules use::

        @pytest.fixture(autouse=True)
        def _one_thread(torch_threads):
            torch_threads(1)
    """
    threads = TorchThreads()
    try:
        yield threads
    finally:
        threads.restore()
