"""`headhunter atlas`: measure every head's effect alone, render the page, export head sets, push it.

`headhunter atlas [MODEL] [options]` builds (or resumes) an atlas; `headhunter atlas export DIR --effect WORD`
writes a head set from one; `headhunter atlas push DIR REPO` publishes one. Heavy modules load inside the
commands, so the CLI starts without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from headhunter.cli.hunt import read_prompts
from headhunter.cli import note_resumable, options
from headhunter.cli.params import POSITIVE_INT, STRENGTH, BoundedInt, WritableDir

DEFAULT_OUT = "runs/atlas"


class _AtlasGroup(click.Group):
    """`atlas ARGS` runs `atlas build ARGS` unless ARGS start with a subcommand's name (or ask for help)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["build", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_AtlasGroup)
def atlas() -> None:
    """Which heads do what: every head perturbed alone (plus every whole layer) against no guidance,
    measured, labelled ("darker", "sharper"), grouped and shown as a page. With no arguments: the
    embedded digits model's 48 heads + 6 layers on 32 fixed seeds. `headhunter atlas build --help`
    lists the options; `atlas export` writes a head set from an atlas, `atlas push` publishes one."""


@atlas.command()
@click.argument("model", default="digits")
@options.pairs
@click.option("--heads", help="Heads perturbed alone: layers '3,5' and/or heads 'L3H2,L5H0'. Default: every head.")
@click.option("--layers", help="Whole layers measured: '0,3' or 'none'. Default: every layer.")
@options.generation
@click.option("--objective", "objectives", multiple=True, help="An objective expression also measured (repeatable; default: the model's).")
@click.option("--intervals", type=BoundedInt(min=2, max=64), default=None,
              help="Also measure every head and layer acting only in each of K equal intervals of the noise level sigma.")
@click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=WritableDir(), help="Output folder (resumable).")
@options.resume
@click.option("--push", "push_repo", metavar="REPO", help="Also publish the atlas to this Hub repo.")
@options.visibility
@click.option("--token", help="With --push: Hub token.")
def build(model, prompts, seeds, heads, layers, objectives, intervals, out_dir, no_resume, push_repo, private, token,
          **values) -> None:
    """Build (or resume) the atlas of MODEL: `digits` (default, embedded) or a diffusers model id / path."""
    from headhunter import load_pipeline
    from headhunter.format.preflight import check_before_loading
    from headhunter.plugin_system.registry import get_registry

    prompt_list, layer_list = read_prompts(prompts), _layers(layers)  # cheap checks before torch and the model load
    check_before_loading(model, prompts=prompt_list)
    note_resumable(out_dir)
    from headhunter.workflow.atlas import atlas as run_atlas

    registered = model in get_registry().names("model")
    result = run_atlas(
        model if registered else load_pipeline(model), prompt_list, seeds, out_dir=out_dir, resume=not no_resume,
        heads=[h.strip() for h in heads.split(",") if h.strip()] if heads else None, layers=layer_list,
        objectives=list(objectives) or None, intervals=intervals, **options.collect(values, options.GENERATION_KEYS),
    )
    _summary(result)
    click.echo(f"page: {Path(out_dir) / 'index.html'}")
    if push_repo:
        _push(Path(out_dir), push_repo, private, token)


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    try:
        return [int(x.strip().lstrip("L")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"cannot read layers {text!r}; use '0,3' or 'none'") from None


def _summary(result: Any) -> None:
    t = result.timing
    made = int(t.get("images", 0))
    click.echo(f"images: {result.images} ({len(result.settings.heads)} heads + {len(result.settings.layers)} layers "
               f"+ no guidance) x {len(result.pairs)} prompt-seed pairs")
    if made:
        click.echo(f"generated into this folder (all runs): {made} images in {t['seconds']:.1f} s "
                   f"({1000 * t['seconds'] / made:.0f} ms/image wall, {1000 * t.get('cpu_seconds', 0) / made:.0f} ms/image CPU)")
    table = result.label_table()
    click.echo(f"labelled units: {len(table)} of {len(result.units) - 1}")
    for unit, effects in table:
        words = "; ".join(f"{e.label} {e.mean:+.3g} [{e.low:+.3g}, {e.high:+.3g}]" for e in effects)
        click.echo(f"  {unit}: {words}")
    for g in result.groups:
        click.echo(f"group '{g.name}': {' '.join(g.heads)}")
    if result.settings.intervals:
        found = [d for d in result.interval_differences if d.significant]
        click.echo(f"per noise interval: {len(result.interval_units)} units x intervals; effects that differ between "
                   f"intervals (Bonferroni over {len(result.interval_differences)} tests): {len(found)}")
        for d in found[:20]:
            click.echo(f"  {d.unit} {d.measure}: interval {d.a} - interval {d.b} = {d.mean:+.3g} [{d.low:+.3g}, {d.high:+.3g}]")


@atlas.command()
@click.argument("atlas_dir", type=click.Path(file_okay=False))
@click.option("--effect", required=True, help="A label word of the atlas, e.g. 'darker', 'sharper', 'higher digit confidence'.")
@click.option("--top", default=3, show_default=True, type=POSITIVE_INT, help="How many heads (strongest first).")
@options.output_file("Head-set file to write (.safetensors or .json).", True)
@click.option("--strength", type=STRENGTH, help="Strength of each head (default: the atlas's u).")
@click.option("--name", help="Head-set name (default: atlas-EFFECT-topN).")
def export(atlas_dir, effect, top, output, strength, name) -> None:
    """Write a head set of the heads an atlas labels EFFECT, with the atlas as provenance."""
    from headhunter.atlases.atlas import load_atlas

    loaded = load_atlas(atlas_dir)
    headset = loaded.export(effect, top, name=name, strength=strength)
    if not output.endswith((".safetensors", ".json")):
        raise click.BadParameter(f"output {output!r} must end in .safetensors or .json", param_hint="-o")
    headset.save(output)
    found = len(loaded.heads_with(effect))
    click.echo(f"wrote {output}: {headset.notation()} ({len(headset)} of {found} heads labelled '{effect}')")


@atlas.command()
@click.argument("atlas_dir", type=click.Path(file_okay=False))
@click.argument("repo")
@options.visibility
@click.option("--token", help="Hub token.")
def push(atlas_dir, repo, private, token) -> None:
    """Publish an atlas folder to the Hub (page, PNGs, numbers and a card naming the base model)."""
    _push(Path(atlas_dir), repo, private, token)


def _push(folder: Path, repo: str, private: bool | None, token: str | None) -> None:
    from headhunter.atlases.publish import push_atlas

    info = push_atlas(folder, repo, private=private, token=token)
    click.echo(f"pushed atlas to {repo}: {getattr(info, 'commit_url', '')}")
