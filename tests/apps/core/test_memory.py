"""``limit_malloc_arenas``: applied on glibc, refused for nonsense, harmless to repeat."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hybrids.apps.core.memory import limit_malloc_arenas


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_caps_arenas_in_a_fresh_process():
    code = "from hybrids.apps.core.memory import limit_malloc_arenas as f; print(f(1), f(2))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"]


def test_rejects_a_zero_count():
    with pytest.raises(ValueError, match="count must be >= 1"):
        limit_malloc_arenas(0)
