"""The plugin system: built-ins through the same hooks, third-party discovery via entry points, errors."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from headhunter import ModelError, PluginError, hookimpl
from headhunter.cli import make_cli
from headhunter.plugin_system.registry import Registry, builtin_plugins, get_plugin_manager, get_registry

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
    assert set(builtin_plugins()) <= names
    assert len(builtin_plugins()) == 11  # every built-in, found through the entry-point group a third party uses
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
    assert "Error: head-set file " in result.output and "does not exist" in result.output and "Traceback" not in result.output


def test_cli_show_lines_align_and_nothing_trails(tmp_path):
    from headhunter import HeadSet

    plain = HeadSet.from_notation("L1H7", base_model="digits", name="plain", description="one\n\n  two  ")
    blurred = plain.with_metadata(perturbation={"name": "blur", "params": {"sigma": 2.0}})
    runner = CliRunner()
    for headset, line in ((plain, "perturbation:  softpag"), (blurred, 'perturbation:  blur {"sigma": 2.0}')):
        result = runner.invoke(make_cli(), ["show", str(headset.save(tmp_path / f"{headset.name}.safetensors"))])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert line in lines, lines  # labels pad to column 15; no space after a perturbation without parameters
        assert [x for x in lines if x != x.rstrip()] == [], lines
        assert "description:   one" in lines and "                 two" in lines and "" in lines


def test_building_the_cli_and_registry_imports_no_heavy_module():
    """Start-up: registration and the CLI's --help need neither torch, diffusers nor transformers."""
    code = (
        "import sys\n"
        "import headhunter\n"
        "assert 'pydantic' not in sys.modules and 'numpy' not in sys.modules, 'import headhunter is not lazy'\n"
        "from click.testing import CliRunner\n"
        "from headhunter.cli import make_cli\n"
        "import headhunter\n"
        "cli = make_cli()\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        "assert 'pydantic' not in sys.modules, '--help imported pydantic'\n"
        "assert CliRunner().invoke(cli, ['plugins']).exit_code == 0\n"
        "headhunter.get_registry().base_model('stabilityai/stable-diffusion-3-medium-diffusers')\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_builtins_are_registered_by_reference_and_load_on_use():
    registry = Registry(get_plugin_manager(load_entry_points=False))
    softpag = next(e for e in registry.entries("perturbation") if e.name == "softpag")
    assert softpag.target == "headhunter.plugins.perturbations.targets:SoftPAG" and softpag.description
    from headhunter.plugins.perturbations.targets import SoftPAG

    assert softpag.obj is SoftPAG and isinstance(registry.perturbation("softpag"), SoftPAG)


def _inline_pm(*plugins):
    pm = get_plugin_manager(load_entry_points=False, builtins=False)
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"inline-{i}")
    return pm


def test_bad_references_are_errors_naming_the_plugin():
    class BadString:
        @hookimpl
        def register_objectives(self, register):
            register("x", "not a reference")

    with pytest.raises(PluginError, match=r"plugin inline-0 registered objective 'x' as 'not a reference'"):
        Registry(_inline_pm(BadString()))

    class Missing:
        @hookimpl
        def register_objectives(self, register):
            register("ghost", "headhunter_no_such_module:Thing", description="never loads")

    registry = Registry(_inline_pm(Missing()))  # registering is fine: nothing is imported yet
    assert registry.entries("objective")[0].description == "never loads"
    with pytest.raises(PluginError, match=r"objective 'ghost' of plugin inline-0: cannot load 'headhunter_no_such_module:Thing'"):
        registry.objective("ghost")


def test_a_builtin_plugin_that_fails_to_import_is_an_error(monkeypatch):
    import headhunter.plugin_system.registry as reg

    builtins = reg.builtin_plugins()
    monkeypatch.setattr(reg, "builtin_plugins", lambda: (*builtins, "headhunter.plugins.no_such_plugin"))
    with pytest.raises(ModuleNotFoundError, match="no_such_plugin"):
        reg.get_plugin_manager(load_entry_points=False)


class _Thing:
    """A stand-in model."""


def _adapter(name, priority=0):
    class Adapter:
        @classmethod
        def matches(cls, model):
            return isinstance(model, _Thing)

    Adapter.name, Adapter.priority = name, priority

    class Plugin:
        @hookimpl
        def register_adapters(self, register):
            register(name, Adapter)

    return Adapter, Plugin()


def test_two_matching_adapters_are_an_error_naming_both_unless_priority_or_name_decides():
    (first, p1), (second, p2) = _adapter("alpha"), _adapter("beta")
    registry = Registry(_inline_pm(p1, p2))
    with pytest.raises(ModelError, match=r"_Thing is recognised by several adapters of priority 0: 'alpha' .*, 'beta' .*name="):
        registry.adapter_for(_Thing())
    assert isinstance(registry.adapter_for(_Thing(), name="beta"), second)
    with pytest.raises(PluginError, match="Unknown adapter 'gamma'"):
        registry.adapter_for(_Thing(), name="gamma")
    (low, p3), (high, p4) = _adapter("alpha"), _adapter("beta", priority=1)
    assert isinstance(Registry(_inline_pm(p3, p4)).adapter_for(_Thing()), high)
    with pytest.raises(ModelError, match="adapter 'alpha' does not recognise object"):
        registry.adapter_for(object(), name="alpha")


def test_search_defaults_come_from_the_hook():
    class Defaults:
        def __init__(self, answer):
            self.answer = answer

        @hookimpl
        def search_defaults(self, model):
            return self.answer if isinstance(model, _Thing) else None

    assert Registry(_inline_pm(Defaults({"rounds": 3}))).search_defaults(_Thing()) == {"rounds": 3}
    assert Registry(_inline_pm(Defaults({"rounds": 3}))).search_defaults(object()) == {}
    with pytest.raises(PluginError, match=r"several plugins give search defaults for _Thing: inline-0, inline-1"):
        Registry(_inline_pm(Defaults({}), Defaults({}))).search_defaults(_Thing())
    with pytest.raises(PluginError, match=r"plugin inline-0 gave unknown search defaults \['round'\]; allowed: "):
        Registry(_inline_pm(Defaults({"round": 3}))).search_defaults(_Thing())


def test_typed_search_defaults_cover_exactly_the_keys_plugins_may_give(monkeypatch):
    """One list of keys: the registry's hook contract and the typed model the workflows read agree, and a
    plugin's value of the wrong type is one PluginError naming the field."""
    import headhunter.search.defaults as defaults_module
    from headhunter.plugin_system.registry import SEARCH_DEFAULT_KEYS
    from headhunter.search.defaults import SearchDefaults, model_defaults

    assert set(SearchDefaults.model_fields) - {"allocation"} == SEARCH_DEFAULT_KEYS - {"schedule"}

    class Answers:
        def __init__(self, answer):
            self.answer = answer

        def search_defaults(self, model):
            return self.answer

    monkeypatch.setattr(defaults_module, "get_registry", lambda: Answers({"rounds": "three"}))
    with pytest.raises(PluginError, match=r"search defaults given for _Thing are invalid: rounds='three'"):
        model_defaults(_Thing())
    monkeypatch.setattr(defaults_module, "get_registry", lambda: Answers({"atlas": {"classes": "digit"}}))
    with pytest.raises(PluginError, match="give 'classes' \\(a name\\) and 'classify' \\(a function\\) together"):
        model_defaults(_Thing())
    monkeypatch.setattr(defaults_module, "get_registry", lambda: Answers({"schedule": "racing", "rounds": 2}))
    assert model_defaults(_Thing()).allocation == "racing" and model_defaults(_Thing()).value("top_k", 1) == 1


def test_the_digits_plugin_gives_its_demo_defaults_through_the_hook():
    from headhunter.plugins.digits import DEMO_DEFAULTS
    from headhunter.plugins.digits.model import build_pipeline, build_transformer

    registry = get_registry()
    defaults = registry.search_defaults(build_pipeline())
    assert {k: defaults[k] for k in DEMO_DEFAULTS} == DEMO_DEFAULTS and "set_metrics" in defaults
    assert registry.search_defaults(build_pipeline(build_transformer(num_layers=2))) == {}


def test_published_base_models_come_from_the_adapter_plugins():
    registry = get_registry()
    sd3 = registry.base_model("stabilityai/stable-diffusion-3.5-medium")
    assert sd3.architecture == "sd3" and len(sd3.sites) == 24 + 13 and sd3.sites[24].kind == "image"
    flux = registry.base_model("black-forest-labs/FLUX.1-dev")
    assert flux.architecture == "flux" and len(flux.sites) == 19 + 38
    plugins = {e.plugin for e in registry.entries("base_model")}
    assert {"headhunter.plugins.sd3", "headhunter.plugins.flux", "headhunter.plugins.wan"} <= plugins
    assert all(e.plugin.startswith("headhunter.plugins.") for e in registry.entries("base_model"))
