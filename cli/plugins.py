"""`headhunter plugins`: what is installed (name, kind, source distribution and version)."""

from __future__ import annotations

import click

from headhunter.format.text import safe_line


@click.command()
@click.option("--kind", type=click.Choice(["perturbation", "adapter", "objective", "model", "base_model"]),
              help="Only this kind.")
def plugins(kind: str | None) -> None:
    """List installed perturbations, adapters, objectives, models and known base models with their source."""
    from headhunter.cli import current_registry

    registry = current_registry()
    entries = registry.entries(kind)
    width = max((len(e.name) for e in entries), default=4)
    for e in entries:  # names, versions and docstrings are a plugin's text: made terminal-safe
        name, dist, version, plugin, doc = (safe_line(str(x)) for x in (e.name, e.distribution, e.version, e.plugin,
                                                                      e.description))
        click.echo(f"{e.kind:<13} {name:<{width}}  {dist} {version} ({plugin})  {doc}")
