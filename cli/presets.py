"""`headhunter presets`: list the head sets shipped with the package (paper-named and searched)."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--model", help="Only presets for this base model (Hub id) or family (sd3, flux, digits).")
@click.option("--origin", type=click.Choice(["paper", "search", "manual"]), help="Only presets of this origin: paper-named, found by a search, or made by hand.")
@click.option("--json", "as_json", is_flag=True, help="Print the index entries as JSON.")
def presets(model: str | None, origin: str | None, as_json: bool) -> None:
    """List shipped presets: name, origin (paper = named in the paper, search = found by headhunter,
    manual = made by hand), model, effect, heads and source. Load one with `load_headset("preset:NAME")` or `preset:NAME@1`
    for full strength (presets store SoftPAG u = 0.5)."""
    from headhunter.format.presets import list_presets

    entries = list_presets(model=model, origin=origin)
    if as_json:
        click.echo(json.dumps([p.model_dump() for p in entries], indent=2, ensure_ascii=False))
        return
    if not entries:
        click.echo("no presets match" if (model or origin) else "no presets shipped yet")
        return
    rows = [(p.name, p.origin, p.model, p.effect, _short(p.heads), p.source) for p in entries]
    header = ("name", "origin", "model", "effect", "heads", "source")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[-1])


def _short(heads: str, limit: int = 28) -> str:
    return heads if len(heads) <= limit else f"{heads[: limit - 3]}..."
