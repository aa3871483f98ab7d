"""Docs cannot drift: examples in docs are the files the tests run, and every hook is documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import headhunter.plugin_system.hookspecs as hookspecs

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
    source = "".join((ROOT / "plugins" / "qwenimage" / name).read_text() for name in ("__init__.py", "sites.py", "adapter.py"))
    blocks = _code_blocks(section, "python")
    assert len(blocks) == 7
    for block in blocks:
        assert block in source, f"docs/plugins.md excerpt not in plugins/qwenimage:\n{block}"


def test_relative_links_in_readme_and_docs_point_at_files():
    """A newcomer follows README.md and docs/ links: every relative `](path)` must name a file that exists."""
    root = Path(__file__).resolve().parents[1]
    broken = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(root)} -> {target}")
    assert broken == []


def test_every_cli_option_has_help_text():
    """`headhunter VERB --help` must explain every option (hunt/atlas --scope once had none)."""
    import click

    from headhunter.cli import make_cli

    missing = []

    def walk(cmd: click.Command, ctx: click.Context, path: str) -> None:
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{path} {param.opts[0]}")
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                walk(sub, click.Context(sub, parent=ctx, info_name=name), f"{path} {name}")

    cli = make_cli()
    walk(cli, click.Context(cli, info_name="headhunter"), "headhunter")
    assert missing == []
