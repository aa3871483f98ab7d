"""`headhunter plugins`: what is installed (name, kind, source distribution and version)."""

from __future__ import annotations

import click


@click.command()
@click.option("--kind", type=click.Choice(["perturbation", "adapter", "objective", "model", "base_model"]),
              help="Only this kind.")
def plugins(kind: str | None) -> None:
    """List installed perturbations, adapters, objectives, models and known base models with their source."""
    from headhunter.cli import current_registry

    registry = current_registry()
    entries = registry.entries(kind)
    width = max((len(e.name) for e in entries), default=4)
    for e in entries:
        click.echo(f"{e.kind:<13} {e.name:<{width}}  {e.distribution} {e.version} ({e.plugin})  {e.description}")
