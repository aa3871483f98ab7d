"""Shared test set-up: offline, deterministic, and a fresh plugin registry per test that asks for one."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spinning OpenMP threads

import pytest  # noqa: E402

#: Tests that take more than about 1.5 s on the shared 2-core machine (`pytest --durations=0`, summed over
#: their parameters) are marked `slow` here, in one place, so `make test-fast` (`pytest -m "not slow"`) stays
#: under 90 s; `make test` (what CI runs) still runs them all. A test may also carry @pytest.mark.slow itself.
#: Entries are node-id prefixes ("file::function" or "file::function[param-prefix").
SLOW_TESTS: tuple[str, ...] = (
    "test_adapters.py::test_bench_runs_on_tiny_settings",
    "test_atlas.py::test_cli_builds_on_a_registered_model",
    "test_badinput_fuzz.py::",  # hypothesis fuzzing of every reader: thousands of inputs
    "test_atlas.py::test_interrupted_atlas_resumes_to_the_same_numbers",
    "test_atlas.py::test_page_is_self_contained_and_numbers_round_trip",
    "test_compat.py::test_cli_generate_flux_with_several_prompts_and_cfg",
    "test_compat.py::test_compiled_wrapper_is_looked_through",
    "test_compat.py::test_feature_guides_like_a_plain_pipeline",
    "test_compat.py::test_flux_blur_grid_follows_every_call_size",
    "test_compat.py::test_model_cpu_offload_keeps_every_call_guided",
    "test_digits.py::test_fd_is_zero_against_itself_and_large_against_noise",
    "test_digits.py::test_objectives_prefer_real_digits_to_noise",
    "test_digits.py::test_shipped_model_makes_recognisable_digits",
    "test_digits.py::test_training_reduces_loss_and_round_trips",
    "test_dit_adapters.py::test_blur_on_odd_and_non_square_sizes_equals_the_reference",
    "test_dit_adapters.py::test_full_size_configs_on_the_meta_device",
    "test_dit_adapters.py::test_inspect_full_size_configs",
    "test_dit_adapters.py::test_published_tables_equal_the_live_sites",
    "test_dit_pipelines.py::test_hunt_and_the_head_set_format_work_unchanged",
    "test_dit_pipelines.py::test_remove_restores_bit_identical_outputs",
    "test_dit_pipelines.py::test_wan_block_level_stg_with_temporal_blur_matches_reference_loop",
    "test_dit_pipelines.py::test_wan_matches_reference_loop",
    "test_generate.py::test_generate_writes_pngs_sidecar_and_comparison",
    "test_guidance.py::test_sd3_with_t5_matches_reference_loop",
    "test_guider.py::test_hub_round_trip_pins_the_headset_commit",
    "test_guider.py::test_newer_families_modular_equals_apply",
    "test_headset.py::test_save_load_and_json_round_trips_are_identities",
    "test_hub.py::test_a_hub_that_never_answers_fails_clearly_in_bounded_time",
    "test_hub.py::test_unreachable_hub_falls_back_to_the_cache",
    "test_search.py::test_batched_equals_one_at_a_time_and_is_deterministic",
    "test_search.py::test_changed_settings_are_refused_naming_the_setting",
    "test_search.py::test_report_files_are_written",
    "test_search.py::test_resume_does_not_redo_finished_batches",
    "test_search.py::test_search_evaluation_and_report_are_separate_steps",
)
#: The engine-contract matrices (every perturbation x scope x model family) run on these families in the
#: fast lane (SD3.5: joint + image-only sites and qk-norm; FLUX.1: text-first joint + single-stream); the
#: other families' cases are slow.
FAST_FAMILIES = ("sd35", "flux")


def pytest_collection_modifyitems(config, items):
    for item in items:
        nodeid = item.nodeid.split("/")[-1]
        family = getattr(getattr(item, "callspec", None), "params", {}).get("family")
        in_matrix = nodeid.startswith("test_perturbations.py::") and isinstance(family, str)
        if nodeid.startswith(SLOW_TESTS) or (in_matrix and family not in FAST_FAMILIES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def fresh_registry():
    """Install a fresh process-wide registry for one test and restore the previous one afterwards."""
    from headhunter import registry

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
