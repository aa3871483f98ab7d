"""`headhunter presets`: list the head sets shipped with the package."""

from __future__ import annotations

import click


@click.command()
def presets() -> None:
    """List shipped presets; load one with `load_headset("preset:NAME")` or `--headset preset:NAME`."""
    from headhunter.presets import list_presets

    entries = list_presets()
    if not entries:
        click.echo("no presets shipped yet")
        return
    width = max(len(p.name) for p in entries)
    for p in entries:
        click.echo(f"{p.name:<{width}}  [{p.origin}] {p.model}  {p.description}  ({p.source})")
