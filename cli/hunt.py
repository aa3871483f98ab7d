"""`headhunter hunt`: run HeadHunter and write the head set and its report."""

from __future__ import annotations

from pathlib import Path

import click

from headhunter.errors import HeadhunterError
from headhunter.cli import note_resumable, options
from headhunter.format.schedule import split_items
from headhunter.cli.params import FRACTION, POSITIVE_INT, BoundedInt, Seeds, WritableDir


class _PromptFileError(HeadhunterError):
    pass


def read_prompts(prompts: tuple[str, ...]) -> list[str] | None:
    """Each value is a prompt, or @FILE for a file with one prompt per line: the one prompt reader of every
    verb (headhunter.format.files.read_prompt_file / check_prompt: bounded size, lines and line length, no NUL
    or control characters). A bad value is a usage error naming it."""
    from headhunter.format.files import check_prompt, read_prompt_file

    if not prompts:
        return None
    out: list[str] = []
    try:
        for value in prompts:
            if value.startswith("@"):
                out += read_prompt_file(Path(value[1:]), error=_PromptFileError)
            else:
                check_prompt(value, f"prompt {value[:40]!r}", _PromptFileError, allow_blank=True)
                out.append(value)  # as given: only checked
    except _PromptFileError as err:
        raise click.BadParameter(str(err), param_hint="--prompt") from None
    return out


@click.command()
@click.argument("model", default="digits")
@click.option("--objective", help="Objective name or expression (default: the model's, digit-sharpness for digits).")
@options.pairs
@click.option("--rounds", type=POSITIVE_INT, help="Greedy rounds R (default: the model's, else 1).")
@click.option("--top-k", type=POSITIVE_INT, help="Heads added per round (default: the model's, else 1).")
@options.generation
@click.option("--candidates", help="Restrict the pool: layers '3,5', heads 'L3H2,L5H0', (head, interval) pairs 'L3H2@[0,0.5)'.")
@click.option("--refine", "refine", type=click.Path(dir_okay=False), help="Instead of a search: a head-set file without a schedule; each (head, interval) piece over --intervals K (default 3) is left out once and the pieces that hurt are dropped (docs/search.md, Refine).")
@click.option("--intervals", type=BoundedInt(min=2, max=64), help="A scheduled search: every head is a candidate in each of K equal intervals of the noise level sigma, and the found set holds a schedule (3 is a sensible K).")
@click.option("--candidates-from", type=click.Path(file_okay=False), help="An atlas folder (`headhunter atlas --out`): keep only the heads it labels --effect.")
@click.option("--effect", help="With --candidates-from: a label word of the atlas, e.g. 'sharper', 'darker'.")
@click.option("--allocation", "--schedule", "allocation", type=click.Choice(["exhaustive", "racing", "multi-fidelity"]), help="How a round spends its images. exhaustive: every candidate on every seed (Algorithm 1); racing: drop what is confidently behind, add seeds to the rest; multi-fidelity: screen every candidate on 4 seeds with a quarter of the steps, race the top quarter at full fidelity (default: the model's, else exhaustive). --schedule is the old name.")
@click.option("--budget", type=FRACTION, help="racing: most images per round, as a fraction of the exhaustive round's.")
@click.option("--first-pairs", type=BoundedInt(min=2), help="racing: prompt-seed pairs every candidate gets first (default 8).")
@click.option("--recipe", type=click.Choice(["greedy", "quality"]), default="greedy", show_default=True, help="quality: the paper's general-quality recipe (one round, top 4 heads at u = 0.25).")
@click.option("--eval-seeds", type=Seeds(), help="Fresh seeds for the evaluation (never the search seeds).")
@click.option("--eval-prompt", "eval_prompts", multiple=True, help="A prompt the search never sees, on which the found set is also judged (or @FILE). Repeatable.")
@click.option("--calibrate", is_flag=True, default=None, help="After each racing round, replay the allocation on a null built from its first stage and report the real round beside it.")
@click.option("--controls", type=BoundedInt(min=0), help="Random head sets of the found set's size evaluated beside it (default 20; 0: none).")
@click.option("--out", "out_dir", default="runs/hunt", show_default=True, type=WritableDir(), help="Output folder (resumable).")
@options.resume
@click.option("--no-report", is_flag=True, help="Skip the fresh-seed evaluation and report.")
def hunt(model, objective, prompts, seeds, out_dir, no_resume, no_report, **values) -> None:
    """Find the heads that serve an objective (HeadHunter). MODEL: `digits` (default, embedded) or a
    diffusers model id / local path. With no arguments this runs the demo on the embedded model.
    Under `torchrun --nproc-per-node N` the ranks share the work and rank 0 writes (docs/search.md)."""
    from headhunter.format.preflight import check_before_loading

    if (values["candidates_from"] is None) != (values["effect"] is None):
        raise click.UsageError("--candidates-from and --effect go together")

    prompt_list = read_prompts(prompts)  # cheap checks before torch and the model load
    check_before_loading(model, prompts=prompt_list)
    note_resumable(out_dir)
    from headhunter.search.distributed import context
    from headhunter.workflow.hunt import hunt as run_hunt

    candidates = values.pop("candidates")
    settings = options.collect(values, (*options.GENERATION_KEYS, "rounds", "top_k", "candidates_from", "effect",
                                        "allocation", "budget", "first_pairs", "recipe", "eval_seeds", "controls", "calibrate",
                                        "intervals", "refine"))
    eval_prompts = read_prompts(values.pop("eval_prompts"))
    if eval_prompts:
        settings["eval_prompts"] = eval_prompts
    result = run_hunt(
        _load(model), objective, prompt_list, seeds, out_dir=out_dir, resume=not no_resume, report=not no_report,
        candidates=[c.strip() for c in split_items(candidates)] if candidates else None, **settings,
    )
    if not context().is_main:
        return
    if settings.get("refine") is not None:
        _print_refine(result, out_dir, no_report)
        return
    click.echo(f"found head set: {result.headset.notation()}")
    click.echo(f"search seeds: baseline {result.baseline_score:.4g} -> {result.rounds[-1].set_score:.4g}")
    if result.best_layer is not None:
        click.echo(f"best whole layer on search seeds: {result.best_layer[0]} {result.best_layer[1]:.4g}")
    summary = result.headset.metadata.search.evaluation if result.headset.metadata.search else {}
    for name, values in summary.items():
        if isinstance(values, dict) and "objective" in values:  # settings; vs_* entries are comparisons
            ci = values.get("ci95", [float("nan")] * 2)
            click.echo(f"fresh seeds, {name}: {values['objective']:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]")
    for r in result.rounds:
        others = [c for c in r.leaders if c not in r.added]
        click.echo(f"round {r.index}: added {', '.join(r.added)}; stability {r.stability:.0%}; {r.images} images; "
                   + (f"not separable from {len(others)} other candidate(s)" if others else "separated"))
    if result.evaluation is not None:
        from headhunter.report.report import dominance, verdict
        from headhunter.search.verdicts import verdicts

        click.echo(verdict(result.evaluation, "found head set", "no guidance").replace("**", ""))
        paired_layers = [v for v in verdicts(result.evaluation)["vs_layers"] if "dominance" in v]
        if paired_layers:  # both axes judged with paired intervals (headhunter.search.verdicts)
            over = [v["rival"] for v in paired_layers if v["dominance"].endswith("dominates the found set")]
            under = [v["rival"] for v in paired_layers if v["dominance"].startswith("the found set dominates")]
            click.echo("whole layers that dominate the found set (paired intervals, objective and yardstick): "
                       + (", ".join(over) or "none") + "; the found set dominates: " + (", ".join(under) or "none"))
        else:
            layers = [d for d in dominance(result.evaluation) if d["setting"].startswith("layer ")]
            click.echo("whole layers that dominate the found set (better objective and yardstick): "
                       + (", ".join(f"{d['setting']} ({'beyond noise' if d['beyond_noise'] else 'within noise'})" for d in layers)
                          if layers else "none"))
    click.echo(f"head set: {Path(out_dir) / 'headset.safetensors'}")
    if not no_report:
        click.echo(f"report: {Path(out_dir) / 'index.md'}")


def _print_refine(result, out_dir, no_report) -> None:
    click.echo(f"refined {result.original.notation()} over {len(result.intervals)} intervals of sigma "
               f"(leave-one-out, level {result.level:.4g}, {result.images:,} images):")
    for e in result.effects:
        c = e.contribution
        click.echo(f"  {e.piece}: {c.mean:+.4g} [{c.low:+.4g}, {c.high:+.4g}] {e.verdict}")
    click.echo(f"refined head set: {result.headset.notation() or '(no heads)'}")
    if result.evaluation is not None:
        from headhunter.report.report import verdict

        click.echo(verdict(result.evaluation, "refined", "original").replace("**", ""))
    click.echo(f"head set: {Path(out_dir) / 'headset.safetensors'}")
    if not no_report:
        click.echo(f"report: {Path(out_dir) / 'refine.md'}")


def _load(model: str):
    from headhunter import load_pipeline
    from headhunter.search.distributed import local_device

    pipe = load_pipeline(model)
    device = local_device()
    return pipe.to(device) if device else pipe
