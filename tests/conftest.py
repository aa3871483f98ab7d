"""Shared test set-up: offline, deterministic, and a fresh plugin registry per test that asks for one."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spinning OpenMP threads

import pytest  # noqa: E402


@pytest.fixture
def fresh_registry():
    """Install a fresh process-wide registry for one test and restore the previous one afterwards."""
    from headhunter import registry

    previous = registry._default
    registry.reset_registry(None)
    yield registry
    registry.reset_registry(previous)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest on one thread (and the suite's timing is steadier on shared machines)."""
    import torch

    torch.set_num_threads(1)
    yield
