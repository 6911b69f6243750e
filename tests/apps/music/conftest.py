"""Fixtures for the music app: the reference demucs package (skipped when absent) and model pairs
(demucs reference, ours) sharing identical random weights."""

from __future__ import annotations

import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_for_small_models(request):
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine spinning
    OpenMP threads make them ~5x slower; full-size (``slow``) tests keep torch's default."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demucs_htdemucs():
    """``demucs.htdemucs`` from PyPI ``demucs==4.1.0`` (a test-only dependency)."""
    pytest.importorskip("demucs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import demucs.htdemucs

    return demucs.htdemucs


def perturb_(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Move the near-zero initial values away from zero (layer scales start at 1e-4/1e-3, norms at
    1/0) so that every branch contributes visibly to the output a parity test compares."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".scale"):
                param.copy_(torch.rand(param.shape, generator=gen) * 0.5 + 0.25)
            elif name.endswith("bias") or "norm" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


@pytest.fixture
def model_pair(demucs_htdemucs):
    """``make(config) -> (reference, ours)`` in eval mode, ours loaded from the reference's
    ``state_dict()`` with ``strict=True``."""
    from hybrids.apps.music.htdemucs import HTDemucs

    def make(config, seed: int = 0):
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = demucs_htdemucs.HTDemucs(**config.to_demucs_kwargs())
        perturb_(reference, seed + 1)
        ours = HTDemucs(config)
        ours.load_state_dict(reference.state_dict(), strict=True)
        return reference.eval(), ours.eval()

    return make


@pytest.fixture
def perturb():
    """:func:`perturb_` for tests that build reference models themselves."""
    return perturb_
