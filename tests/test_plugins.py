"""The plugin system: built-ins through the same hooks, third-party discovery via entry points, errors."""

from __future__ import annotations

import importlib
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from headhunter import PluginError, hookimpl
from headhunter.cli import make_cli
from headhunter.registry import DEFAULT_PLUGINS, Registry, get_plugin_manager

EXAMPLE = Path(__file__).parent / "example_plugin"


@pytest.fixture
def installed_example(tmp_path, monkeypatch):
    """The example plugin 'installed' as a distribution: module + dist-info with an entry point on sys.path."""
    shutil.copy(EXAMPLE / "headhunter_example.py", tmp_path)
    dist = tmp_path / "headhunter_example-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: headhunter-example\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[headhunter]\nexample = headhunter_example\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop("headhunter_example", None)


def test_builtins_register_through_the_hooks():
    pm = get_plugin_manager(load_entry_points=False)
    names = {name for name, _ in pm.list_name_plugin()}
    present = [m for m in DEFAULT_PLUGINS if importlib.util.find_spec(m) is not None]
    assert set(present) <= names
    registry = Registry(pm)
    assert all(e.distribution == "headhunter-guidance" for e in registry.entries())


def test_third_party_plugin_is_discovered_and_usable(installed_example):
    registry = Registry(get_plugin_manager())
    entry = next(e for e in registry.entries("objective") if e.name == "example-darkness")
    assert (entry.distribution, entry.version) == ("headhunter-example", "0.1.0")
    dark = registry.objective("example-darkness")
    scores = dark(torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)]), ["a", "b"])
    assert scores.tolist() == [1.0, 0.0]
    negate = registry.perturbation("example-negate", gain=2.0)
    v = torch.randn(1, 2, 5, 3)
    assert torch.equal(negate.target(v, v, v, None), -2.0 * v)
    result = CliRunner().invoke(make_cli(get_plugin_manager()), ["hello", "--name", "tester"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello tester from headhunter-example\n"


def test_plugins_command_lists_source_distribution(installed_example):
    result = CliRunner().invoke(make_cli(get_plugin_manager()), ["plugins", "--kind", "objective"])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if "example-darkness" in l)
    assert re.search(r"^objective\s+example-darkness\s+headhunter-example 0\.1\.0", line)


def test_duplicate_names_are_an_error_naming_both_plugins():
    class First:
        @hookimpl
        def register_objectives(self, register):
            register("twin", object)

    class Second:
        @hookimpl
        def register_objectives(self, register):
            register("twin", object)

    pm = get_plugin_manager(load_entry_points=False, builtins=False)
    pm.register(First(), name="first-plugin")
    pm.register(Second(), name="second-plugin")
    with pytest.raises(PluginError, match="objective 'twin' is registered twice: by .*-plugin .* and by .*-plugin"):
        Registry(pm)


def test_unknown_name_lists_installed_and_suggests():
    class Inline:
        @hookimpl
        def register_objectives(self, register):
            register("brightness-x", object, description="inline")
            register("contrast-x", object)

    pm = get_plugin_manager(load_entry_points=False, builtins=False)
    pm.register(Inline(), name="inline")
    registry = Registry(pm)
    with pytest.raises(PluginError, match=r"Unknown objective 'brightnes-x'; installed: brightness-x, contrast-x\. Did you mean 'brightness-x'\?"):
        registry.get("objective", "brightnes-x")
    assert registry.entries("objective")[0].description == "inline"


def test_invalid_registration_name_is_refused():
    class Bad:
        @hookimpl
        def register_models(self, register):
            register("", object)

    pm = get_plugin_manager(load_entry_points=False, builtins=False)
    pm.register(Bad(), name="bad")
    with pytest.raises(PluginError, match="plugin bad registered a model with invalid name ''"):
        Registry(pm)


def test_cli_version_and_help():
    runner = CliRunner()
    from headhunter import __version__

    result = runner.invoke(make_cli(), ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(make_cli(), ["--help"])
    for verb in ("show", "plugins", "presets"):
        assert verb in result.output


def test_cli_show_prints_paper_notation_and_errors_cleanly(tmp_path):
    from headhunter import HeadSet

    path = HeadSet.from_notation(
        "L1H10, L13H17@0.5", base_model="stabilityai/stable-diffusion-3-medium-diffusers", name="dark"
    ).save(tmp_path / "dark.safetensors")
    runner = CliRunner()
    result = runner.invoke(make_cli(), ["show", str(path)])
    assert result.exit_code == 0, result.output
    assert "heads (2): L1H10, L13H17@0.5" in result.output
    result = runner.invoke(make_cli(), ["show", str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 1
    assert "Error: head set" in result.output and "Traceback" not in result.output
