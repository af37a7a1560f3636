"""Shared test fixtures."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread (two threads on a busy 2-core box spin-wait ~100x slower)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _runs_take_one_thread(monkeypatch):
    """In-process runs without --threads take one thread, not the load-aware default: a test that compares two
    runs' bits must not see two counts because the load changed between them (the probe's bits depend on it)."""
    import eos_probe.train
    monkeypatch.setattr(eos_probe.train, "default_threads", lambda: 1)
