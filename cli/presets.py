"""`headhunter presets`: list the head sets shipped with the package (paper-named and searched)."""

from __future__ import annotations

import json
import shutil

import click


@click.command()
@click.option("--model", help="Only presets for this base model (Hub id) or family (sd3, flux, digits).")
@click.option("--origin", type=click.Choice(["paper", "search", "manual"]), help="Only presets of this origin: paper-named, found by a search, or made by hand.")
@click.option("--json", "as_json", is_flag=True, help="Print the index entries as JSON.")
def presets(model: str | None, origin: str | None, as_json: bool) -> None:
    """List shipped presets by model: name, origin (paper = named in the paper, search = found by
    headhunter, manual = made by hand), heads and effect; --json adds each source. Load one with
    `load_headset("preset:NAME")`, or `preset:NAME@1` for full strength (presets store SoftPAG u = 0.5)."""
    from headhunter.format.presets import list_presets

    if model is not None:
        check_model(model)
    entries = list_presets(model=model, origin=origin)
    if as_json:
        click.echo(json.dumps([p.model_dump() for p in entries], indent=2, ensure_ascii=False))
        return
    if not entries:
        if model and not list_presets(model=model):
            click.echo(f"no presets for model {model!r} yet; models and families with presets: {', '.join(with_presets())}")
        else:
            click.echo("no presets match" if (model or origin) else "no presets shipped yet")
        return
    for line in table(entries, width=min(MAX_WIDTH, max(60, shutil.get_terminal_size((MAX_WIDTH, 24)).columns))):
        click.echo(line)
    click.echo("use one as preset:NAME (preset:NAME@1: every u = 1); sources, full effects: presets --json")


def with_presets() -> list[str]:
    """The base models (Hub ids) and families that have at least one shipped preset, sorted."""
    from headhunter.format.presets import list_presets

    entries = list_presets()
    return sorted({p.model for p in entries} | {p.architecture for p in entries})


def check_model(model: str) -> None:
    """`--model` must name a model or family headhunter knows: one with presets, a registered base model
    (`headhunter.plugin_system` tables) or model family (adapter). A known model without presets is an empty
    answer (exit 0, like `search` finding nothing); a name nothing knows is a mistake: ModelError (exit 1)
    naming the models and families with presets (and a close spelling, if there is one)."""
    import difflib

    from headhunter.errors import ModelError
    from headhunter.format.text import safe_line
    from headhunter.plugin_system.registry import get_registry

    registry = get_registry()
    known = set(with_presets()) | set(registry.names("base_model")) | set(registry.names("model")) \
        | set(registry.names("adapter"))
    if model in known:
        return
    lowered = {name.lower(): name for name in known}
    close = difflib.get_close_matches(model.lower(), list(lowered), n=1, cutoff=0.6)
    hint = f" (did you mean {lowered[close[0]]!r}?)" if close else ""
    raise ModelError(f"unknown model '{safe_line(model)[:200]}'{hint}; models and families with presets: "
                     f"{', '.join(with_presets())} (`headhunter presets` lists them all)")


#: The table fits this many columns (narrower terminals get a narrower table).
MAX_WIDTH = 100


def table(entries: list, width: int = MAX_WIDTH) -> list[str]:
    """The presets grouped by model (one heading line each), one row per preset: name, origin, heads and
    the effect, cut at a word to fit `width` columns (the source is in --json)."""
    name_w = max(len(p.name) for p in entries)
    heads = {p.name: _short(p.heads, 18) for p in entries}
    heads_w = max(len(h) for h in heads.values())
    lines: list[str] = []
    for model in dict.fromkeys(p.model for p in entries):
        group = [p for p in entries if p.model == model]
        lines.append(f"{model} ({group[0].architecture})" if group[0].architecture != model else model)
        for p in group:
            left = f"  {p.name:<{name_w}}  {p.origin:<6}  {heads[p.name]:<{heads_w}}  "
            lines.append(left + _fit(p.effect, max(10, width - len(left))))
    return lines


def _fit(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 3].rsplit(" ", 1)[0].rstrip(" ,;:") + "..."


def _short(heads: str, limit: int = 28) -> str:
    return heads if len(heads) <= limit else f"{heads[: limit - 3]}..."
