"""`headhunter plugins`: what is installed (name, kind, source distribution and version)."""

from __future__ import annotations

import click


@click.command()
@click.option("--kind", type=click.Choice(["perturbation", "adapter", "objective", "model"]), help="Only this kind.")
def plugins(kind: str | None) -> None:
    """List installed perturbations, adapters, objectives and models with their source."""
    from headhunter.registry import Registry, get_registry

    pm = click.get_current_context().find_root().obj
    registry = Registry(pm) if pm is not None else get_registry()
    entries = registry.entries(kind)
    width = max((len(e.name) for e in entries), default=4)
    for e in entries:
        click.echo(f"{e.kind:<13} {e.name:<{width}}  {e.distribution} {e.version} ({e.plugin})  {e.description}")
