"""Shared test set-up: offline, deterministic, and a fresh plugin registry per test that asks for one."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spinning OpenMP threads

import pytest  # noqa: E402

#: The engine-contract matrices (every perturbation x scope x model family) run on these families in the
#: fast lane (SD3.5: joint + image-only sites and qk-norm; FLUX.1: text-first joint + single-stream); the
#: other families' cases are slow.
FAST_FAMILIES = ("sd35", "flux")


def pytest_collection_modifyitems(config, items):
    for item in items:
        nodeid = item.nodeid.split("/")[-1]
        family = getattr(getattr(item, "callspec", None), "params", {}).get("family")
        in_matrix = nodeid.startswith("test_perturbations.py::") and isinstance(family, str)
        if in_matrix and family not in FAST_FAMILIES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def fresh_registry():
    """Install a fresh process-wide registry for one test and restore the previous one afterwards."""
    import headhunter.plugin_system.registry as registry

    previous = registry._default
    registry.reset_registry(None)
    yield registry
    registry.reset_registry(previous)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread for every test: tiny models run fastest on one thread, one thread is immune to the
    OpenMP stalls of a shared CPU, and timing is steadier. Reset before each test, so a test that changes
    the thread count (e.g. `headhunter bench --threads`) cannot slow the ones after it."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _restore_attention_backend():
    """diffusers' `set_attention_backend` also sets a process-wide active backend that
    `reset_attention_backend` does not undo; put it back after every test, so a test that picks a backend
    (e.g. `_native_math`, which materialises attention maps) cannot change the tests that run after it."""
    import sys

    module = sys.modules.get("diffusers.models.attention_dispatch")
    before = None if module is None else module._AttentionBackendRegistry._active_backend
    yield
    module = sys.modules.get("diffusers.models.attention_dispatch")
    if module is not None:  # imported during the test: its start value is diffusers' default
        default = module.AttentionBackendName(module.DIFFUSERS_ATTN_BACKEND)
        module._AttentionBackendRegistry._active_backend = default if before is None else before
