"""Third-party pickles are read by a restricted unpickler: data only, named globals, stubs."""

import fractions
import os
import sys
import types

import pytest
import torch

from hybrids.apps.core.errors import CheckpointError, UnsafeCheckpointError
from hybrids.apps.core.restricted_pickle import PickleStub, load_pickled_checkpoint


class _RunsCode:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class _EvalsCode:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.th"
    torch.save({"state": {"w": torch.ones(2)}, "payload": _RunsCode(sentinel)}, path)
    # The file really is hostile: an unrestricted load would run the command.
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.th: refused to unpickle.*(posix|os)\.system"):
        load_pickled_checkpoint(path)
    assert not sentinel.exists()

    torch.save(_EvalsCode(), tmp_path / "eval.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"global (builtins\.)?eval,"):
        load_pickled_checkpoint(tmp_path / "eval.pt")


@pytest.fixture
def fake_demucs_module(monkeypatch):
    """A class living in a module named like demucs's, so the pickle references it by that name."""
    module = types.ModuleType("demucs.htdemucs")

    class HTDemucs:
        pass

    HTDemucs.__module__ = "demucs.htdemucs"
    HTDemucs.__qualname__ = "HTDemucs"
    module.HTDemucs = HTDemucs
    monkeypatch.setitem(sys.modules, "demucs", types.ModuleType("demucs"))
    monkeypatch.setitem(sys.modules, "demucs.htdemucs", module)
    return HTDemucs


def test_class_references_map_to_stubs_and_named_globals_are_allowed(tmp_path, fake_demucs_module):
    path = tmp_path / "955717e8-8726e21a.th"
    state = {"encoder.0.conv.weight": torch.randn(4, 2, 8)}
    package = {
        "klass": fake_demucs_module,
        "args": (),
        "kwargs": {"sources": ["drums", "bass"], "segment": fractions.Fraction(39, 5)},
        "state": state,
    }
    torch.save(package, path)
    with pytest.raises(UnsafeCheckpointError, match="demucs.htdemucs.HTDemucs"):
        load_pickled_checkpoint(path)  # not allowed unless named
    loaded = load_pickled_checkpoint(
        path,
        allowed_globals={"fractions.Fraction": fractions.Fraction},
        stub_classes=["demucs.htdemucs.HTDemucs"],
    )
    assert issubclass(loaded["klass"], PickleStub)
    assert loaded["klass"] is not fake_demucs_module
    assert loaded["klass"].qualified_name == "demucs.htdemucs.HTDemucs"
    assert loaded["kwargs"]["segment"] == fractions.Fraction(39, 5)
    assert torch.equal(loaded["state"]["encoder.0.conv.weight"], state["encoder.0.conv.weight"])


def test_corrupt_truncated_and_foreign_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(100)}, good)
    assert torch.equal(load_pickled_checkpoint(good)["w"], torch.load(good, weights_only=True)["w"])
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    raw = tmp_path / "raw.pkl"
    import pickle

    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    text = tmp_path / "page.html"
    text.write_text("<html>404</html>")
    for path in (truncated, raw, text, tmp_path / "missing.pt", tmp_path):
        with pytest.raises(CheckpointError) as info:
            load_pickled_checkpoint(path)
        message = str(info.value)
        assert message.startswith(str(path)) and "\n" not in message
