"""Docs cannot drift: examples in docs are the files the tests run, and every hook is documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from headhunter import hookspecs

ROOT = Path(__file__).resolve().parents[1]


def _code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", markdown, flags=re.S)


def test_plugin_guide_example_is_the_tested_plugin():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    example = (ROOT / "tests" / "example_plugin" / "headhunter_example.py").read_text()
    assert example in _code_blocks(guide, "python")
    pyproject = (ROOT / "tests" / "example_plugin" / "pyproject.toml").read_text()
    assert pyproject in _code_blocks(guide, "toml")


def test_every_hookspec_is_in_the_reference_with_its_signature():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    specs = [name for name, f in vars(hookspecs).items() if hasattr(f, "headhunter_spec")]
    assert len(specs) == 7
    for name in specs:
        signature = f"{name}{inspect.signature(getattr(hookspecs, name))}".replace("'", "")
        assert f"`{signature}`" in guide, f"{signature} missing from docs/plugins.md"


def test_adapter_walkthrough_excerpts_are_the_qwenimage_plugin():
    """The 'Writing an adapter for a new DiT' blocks of docs/plugins.md are verbatim excerpts of plugins/qwenimage."""
    guide = (ROOT / "docs" / "plugins.md").read_text()
    section = guide.split("## Writing an adapter for a new DiT", 1)[1].split("\n## ", 1)[0]
    source = "".join((ROOT / "plugins" / "qwenimage" / name).read_text() for name in ("__init__.py", "adapter.py"))
    blocks = _code_blocks(section, "python")
    assert len(blocks) == 7
    for block in blocks:
        assert block in source, f"docs/plugins.md excerpt not in plugins/qwenimage:\n{block}"
