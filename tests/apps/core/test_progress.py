import io
import sys

from hybrids.apps.core import progress


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_hidden_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    progress.configure_logging(0)
    bar = progress.progress_bar(range(3), total=3)
    assert bar.disable
    assert list(bar) == [0, 1, 2]
    assert sys.stderr.getvalue() == ""


def test_bar_drawn_on_a_terminal_unless_quiet(monkeypatch):
    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    progress.configure_logging(0)
    with progress.progress_bar(total=10, desc="Downloading x") as bar:
        assert not bar.disable
        bar.update(10)
    assert "Downloading x" in tty.getvalue()
    progress.configure_logging(-1)
    try:
        assert progress.progress_bar(total=10, file=tty).disable
    finally:
        progress.configure_logging(0)
