"""`headhunter search`: find head sets on the Hugging Face Hub by base model and tag."""

from __future__ import annotations

import click

from headhunter.cli.params import BoundedInt


@click.command()
@click.option("--model", "base_model", help="Base model Hub id, e.g. stabilityai/stable-diffusion-3-medium-diffusers.")
@click.option("--tag", "tags", multiple=True, help="Only repos with this tag (repeatable; all must match).")
@click.option("--author", help="Only repos of this user or organisation.")
@click.option("-q", "--query", help="Text to match in the repo name.")
@click.option("--limit", default=20, show_default=True, type=BoundedInt(1, 1000), help="At most this many results.")
@click.option("--atlas", "atlases", is_flag=True, help="Only head atlases (repos tagged `head-atlas`, from `headhunter atlas --push`).")
@click.option("--details", is_flag=True, help="Also read each head set's metadata from its file header (no tensors).")
@click.option("--token", help="Hub token (to include private repos).")
def search(base_model: str | None, tags: tuple[str, ...], author: str | None, query: str | None, limit: int,
           atlases: bool, details: bool, token: str | None) -> None:
    """List head sets and head atlases on the Hub (repos tagged `headhunter`), most downloaded first."""
    from headhunter.format.hub import ATLAS_TAG, search_hub

    tags = (*tags, ATLAS_TAG) if atlases else tags
    results = search_hub(model=base_model, tags=tags, author=author, query=query, limit=limit, details=details, token=token)
    if not results:
        asked = ", ".join(f"{k}={v}" for k, v in (("model", base_model), ("tags", ",".join(tags)), ("author", author), ("query", query)) if v)
        click.echo(f"no {'atlases' if atlases else 'head sets'} found{' for ' + asked if asked else ''}")
        return
    width = max(len(r.repo_id) for r in results)
    for r in results:
        extra = (f"  [{', '.join(r.user_tags)}]" if r.user_tags else "") + ("  (atlas)" if r.is_atlas else "")
        click.echo(f"{r.repo_id:<{width}}  {r.base_model or '-'}  downloads={r.downloads if r.downloads is not None else '-'}{extra}")
        if r.metadata is not None:
            m, g = r.metadata, r.metadata.guidance
            click.echo(f"{'':<{width}}  {m.name}: {m.description or '-'} | {m.perturbation.name} w={g.scale:g} | origin={m.origin}")
        elif r.error:
            click.echo(f"{'':<{width}}  (metadata unreadable: {r.error})")
