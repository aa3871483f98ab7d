"""The hunt workflow: search, then fresh-seed evaluation, then the report (`headhunter.hunt`).

Three separate steps, composed here and in the CLI: `headhunter.search.search.search` returns a `HuntResult`
(writing only its checkpoint); `headhunter.search.evaluation.evaluate_result` compares it with no guidance and
every whole layer on fresh seeds; `headhunter.report.report.write_report` renders both. The search and the report
never import each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import headhunter.format.headset_io as io
from headhunter.engine.runner import auto_batch_size
from headhunter.search.distributed import DistributedError, context
from headhunter.errors import SearchError
from headhunter.search.evaluation import evaluate_result, evaluation_summary
from headhunter.search.verdicts import DEFAULT_CONTROLS
from headhunter.plugin_system.registry import get_registry
from headhunter.search.defaults import SearchDefaults, model_defaults
from headhunter.format.preflight import check_before_loading
from headhunter.format.schedule import equal_intervals
from headhunter.format.schema import GuidanceSettings, PerturbationSpec, validated
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from headhunter.format.headset import HeadSet, load_headset_file
from headhunter.search.evaluation import evaluate
from headhunter.search.refine import RefineResult, pieces_of, refine
from headhunter.search.search import (HuntResult, SearchSettings, candidate_pool, generation_settings, interval_candidates,
                                      resolve_model, resolve_objective, search)
from headhunter.atlases.atlas import restrict_candidates
from headhunter.report.report import write_refine_report, write_report


RECIPES = ("greedy", "quality")


class HuntOptions(BaseModel):
    """The settings of `hunt` beyond model, objective, prompts and seeds, in one validated object.

    Every field left as None takes the model's search default (the plugins' `search_defaults` hook), else
    the fallback in brackets: rounds [1], top_k [1], strength u [1.0], scale w [3.0], steps [12],
    allocation ("exhaustive"), budget [1.0], first_pairs [8]. Ranges are checked where the value is used:
    by `GuidanceSettings` (scale, cfg, scope), `PerturbationSpec` and `SearchSettings` (one definition
    each), so this object only checks names and types. `allocation` is how a round spends its images
    (`racing` | `exhaustive`, headhunter.search.allocation); the old name `schedule` is accepted."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)

    rounds: int | None = None
    top_k: int | None = None
    strength: float | None = None
    scale: float | None = None
    steps: int | None = None
    cfg: float | None = None
    perturbation: str = "softpag"
    perturbation_params: dict[str, Any] | None = None
    scope: str = "joint"
    candidates: list[str | int] | None = None
    batch_size: int | None = None
    layer_baselines: bool = True
    pipeline_kwargs: dict[str, Any] | None = None
    name: str | None = None
    eval_seeds: list[int] | None = None
    candidates_from: Any = None
    effect: str | None = None
    allocation: str | None = Field(default=None, validation_alias=AliasChoices("allocation", "schedule"))
    budget: float | None = None
    first_pairs: int | None = None
    confidence: float = 0.95
    recipe: str = "greedy"
    controls: int = DEFAULT_CONTROLS
    calibrate: bool = False
    eval_prompts: list[str] | None = None
    intervals: int | None = None
    refine: Any = None


def hunt_options(options: HuntOptions | None = None, **overrides: Any) -> HuntOptions:
    """`options` with `overrides` applied (keyword names as `HuntOptions` fields; `schedule=` is `allocation=`).
    SearchError naming an unknown or mistyped setting."""
    base = options.model_dump(exclude_unset=True) if options is not None else {}
    if "schedule" in overrides:
        overrides["allocation"] = overrides.pop("schedule")
    return validated(HuntOptions, SearchError, **{**base, **overrides})


def hunt(
    model: Any = "digits",
    objective: Any = None,
    prompts: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    report: bool = True,
    options: HuntOptions | None = None,
    **overrides: Any,
) -> HuntResult:
    """Run HeadHunter: greedy rounds over candidate heads, each scored together with the heads already chosen.

    model: a pipeline or a registered model name; objective: an Objective or an expression string
    (defaults come from the model's search defaults where it has them); prompts x seeds are the M
    scoring pairs; rounds, top_k, strength (u), scale (w), steps left as None take the model's defaults,
    else 1, 1, 1.0, 3.0, 12; candidates: heads in paper notation (`L3H2`), layer indices or site names
    (default: every head). With `out_dir`, state is checkpointed after every batch and the search resumes
    from it, and (with `report`) the found set is compared with no guidance and every whole layer on
    `eval_seeds` (fresh seeds, never the search's) and a report is written there (index.md, PNGs,
    CSV/JSON), then the head set (headset.safetensors, headset.json). candidates_from + effect: keep only
    the candidates a head atlas (an Atlas or its folder, docs/atlas.md) labels `effect`, in pool order.
    Raises SearchError on bad settings (and when the atlas leaves no candidate). The other settings are
    `HuntOptions` fields, given as `options=` or as keywords (`hunt("digits", rounds=2, top_k=1)`).

    allocation (old name: schedule): "exhaustive" (every candidate on every pair: Algorithm 1) or "racing" (adaptive: drop what is
    confidently behind, add pairs to the rest; default: the model's, else exhaustive); budget: racing's
    most images per round as a fraction of the exhaustive round's; first_pairs: racing's first stage;
    confidence: level of every paired interval. controls: random head sets of the found set's size
    evaluated beside it on the fresh seeds (default 20; 0 for none); eval_prompts: prompts the search never
    saw, on which the found set is judged too (the paper's generalisation claim). intervals: K >= 2 makes
    the search scheduled: its candidates are (head, interval) pairs over K equal intervals of the noise level
    sigma and the found head set holds a schedule (docs/search.md, "Scheduled search"). refine: a head set
    (or its file) without a schedule: instead of a search, each of its (head, interval) pieces over K =
    intervals (default 3) is measured by leaving it out, the pieces that hurt are dropped, and a
    `headhunter.search.refine.RefineResult` is returned (with out_dir and report: judged on fresh seeds,
    refine.md and refine.png; docs/search.md "Refine"). recipe: "greedy" (R rounds of top_k, the default) or
    "quality" (the paper's general-quality recipe, App. D.1: one round, the top k heads (default 4) combined
    at u = 0.25, unless rounds, top_k or strength are given). Under torchrun every rank runs this same
    call: batches are shared out, rank 0 alone writes files (docs/search.md).
    """
    o = hunt_options(options, **overrides)
    rounds, top_k, strength, scale, steps, cfg = o.rounds, o.top_k, o.strength, o.scale, o.steps, o.cfg
    perturbation, perturbation_params, scope, candidates = o.perturbation, o.perturbation_params, o.scope, o.candidates
    batch_size, layer_baselines, pipeline_kwargs, name = o.batch_size, o.layer_baselines, o.pipeline_kwargs, o.name
    eval_seeds, candidates_from, effect, schedule = o.eval_seeds, o.candidates_from, o.effect, o.allocation
    budget, first_pairs, confidence, recipe = o.budget, o.first_pairs, o.confidence, o.recipe
    if recipe not in RECIPES:
        raise SearchError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    # Settings that do not depend on the model are checked before it loads (and before anything is written).
    validated(GuidanceSettings, SearchError, scope=scope, cfg=cfg, **({} if scale is None else {"scale": scale}))
    validated(PerturbationSpec, SearchError, name=perturbation, params=perturbation_params or {})
    if o.refine is not None and o.intervals is None:
        o = o.model_copy(update={"intervals": 3})
    parts = None if o.intervals is None else equal_intervals(o.intervals, SearchError)  # K in [2, 64], before loading
    original = None
    if o.refine is not None:  # the head set to refine, read before the model loads
        original = o.refine if isinstance(o.refine, HeadSet) else load_headset_file(o.refine)
        pieces_of(original, parts)  # a schedule or no heads: refused here
    check_before_loading(model, prompts=prompts)  # a registered model's prompts, before it loads
    pipe, model_name = resolve_model(model)
    defaults = model_defaults(pipe)
    objective_obj, objective_text = resolve_objective(objective if objective is not None else defaults.objective)
    prompts = list(prompts if prompts is not None else defaults.value("prompts", []))
    seeds = [int(s) for s in (seeds if seeds is not None else defaults.value("seeds", range(8)))]
    if recipe == "quality":
        rounds, top_k, strength = rounds or 1, top_k or 4, strength or 0.25
    schedule = schedule or defaults.value("allocation", "exhaustive")
    rounds, top_k, strength, scale, steps = (
        value if value is not None else defaults.value(key, fallback)
        for key, value, fallback in (("rounds", rounds, 1), ("top_k", top_k, 1), ("strength", strength, 1.0),
                                     ("scale", scale, 3.0), ("steps", steps, 12))
    )
    if not prompts:
        raise SearchError("no prompts given and the model has no default prompts; pass prompts=[...]")
    sites = get_registry().adapter_for(pipe).sites(pipe)
    pool = candidate_pool(sites, candidates)
    if candidates_from is not None or effect is not None:

        pool = restrict_candidates(pool, candidates_from, effect, sites)
    if original is not None:  # refine: the set's (head, interval) pieces are the units
        pool = [item for item, _ in pieces_of(original, parts)]
    elif o.intervals is not None:  # a scheduled search: (head, interval) candidates
        pool = interval_candidates(pool, o.intervals)
    get_registry().perturbation(perturbation, **(perturbation_params or {}))  # the plugin checks its params
    settings = validated(
        SearchSettings, SearchError,
        model=model_name, objective=objective_text, prompts=prompts, seeds=seeds, rounds=rounds, top_k=top_k,
        strength=strength, steps=steps, guidance=dict(scale=scale, cfg=cfg, scope=scope),
        perturbation=dict(name=perturbation, params=perturbation_params or {}), candidates=pool, intervals=o.intervals,
        layer_baselines=layer_baselines, batch_size=batch_size or auto_batch_size(pipe),
        pipeline_kwargs=pipeline_kwargs or {}, schedule=schedule, budget=budget or defaults.value("budget", 1.0),
        first_pairs=first_pairs or defaults.value("first_pairs", 8), confidence=confidence,
    )
    fresh = fresh_seeds(eval_seeds, defaults, seeds) if out_dir and report else None
    if fresh is not None and defaults.set_metrics and len(prompts) * len(fresh) < 2:
        raise SearchError(
            f"the evaluation's set metrics ({', '.join(defaults.set_metrics)}) need at least 2 images per setting, "
            f"but {len(prompts)} prompt(s) x {len(fresh)} evaluation seed(s) give {len(prompts) * len(fresh)}; "
            "give more evaluation seeds (e.g. '100-131'), or skip the evaluation (report=False, --no-report)"
        )
    ctx = context()
    if original is not None:
        return _refine(pipe, original, settings, objective_obj, out_dir, resume, progress, report, fresh, defaults, ctx)
    if o.calibrate and settings.schedule != "racing":
        raise SearchError("calibrate=True (--calibrate) replays racing's allocation on a null; it needs "
                          "allocation='racing' (--allocation racing)")
    result = search(pipe, settings, objective_obj, out_dir=out_dir, resume=resume, progress=progress, name=name,
                    calibrate=o.calibrate)
    if not out_dir:
        return result
    out = Path(out_dir)
    if ctx.is_main:
        save_headset(result, out)  # what took time is on disk first
    if report:
        if result.resumed and progress and ctx.is_main:
            import sys

            print(f"the fresh-seed evaluation is not checkpointed: its {len(prompts) * len(fresh) * len(result.comparison_headsets(o.controls)):,} "
                  "images are made again (the search's were resumed)", file=sys.stderr)
        try:
            # every rank evaluates (the evaluation is sharded); rank 0 alone writes
            evaluation = evaluate_result(pipe, result, objective_obj, fresh, metrics=defaults.metrics,
                                         set_metrics=defaults.set_metrics, progress=progress and ctx.is_main,
                                         controls=o.controls)
            summary = evaluation_summary(evaluation)
            eval_prompts = o.eval_prompts if o.eval_prompts is not None else defaults.eval_prompts
            if eval_prompts:  # the paper's generalisation claim: prompts the search never saw
                unseen = evaluate_result(pipe, result, objective_obj, unseen_seeds(fresh, eval_prompts),
                                         metrics=defaults.metrics, set_metrics=defaults.set_metrics,
                                         progress=progress and ctx.is_main, prompts=eval_prompts)
                summary["unseen_prompts"] = evaluation_summary(unseen)
                result.unseen_evaluation = unseen
            result.headset = result.headset.with_metadata(search=result.headset.metadata.search.model_copy(
                update={"evaluation": summary}))
            result.evaluation = evaluation
            if ctx.is_main:
                save_headset(result, out)

                write_report(result, out, evaluation)
        except DistributedError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever failed, say where the found head set is
            raise SearchError(
                f"the search finished and its head set {result.headset.notation()} is saved in "
                f"{out / io.WEIGHTS_NAME}, but the evaluation or report then failed: {type(err).__name__}: "
                f"{' '.join(str(err).split())[:300]}"
            ) from err
    return result


def _refine(pipe: Any, original: HeadSet, settings: SearchSettings, objective: Any, out_dir: Any, resume: bool,
            progress: bool, report: bool, fresh: list[int] | None, defaults: SearchDefaults, ctx: Any) -> RefineResult:
    """hunt(refine=S): leave-one-out refinement over the noise level (headhunter.search.refine), then, with
    out_dir and report, the refined set, the original and no guidance on fresh seeds, and refine.md/png."""
    result = refine(pipe, original, settings, objective, out_dir=out_dir, resume=resume, progress=progress)
    if not out_dir:
        return result
    out = Path(out_dir)
    if ctx.is_main:
        result.headset.save(out / io.WEIGHTS_NAME)
        result.headset.save(out / io.JSON_NAME)
    if report:
        result.evaluation = evaluate(pipe, {"no guidance": None, "original": original, "refined": result.headset},
                                     objective, settings.prompts, fresh, generation_settings(settings),
                                     batch_size=settings.batch_size, set_metrics=defaults.set_metrics)
        if ctx.is_main:
            write_refine_report(result, out)
    return result


def unseen_seeds(fresh: Sequence[int], prompts: Sequence[str]) -> list[int]:
    """The fresh seeds for the unseen prompts: the first ceil(len(fresh) / len(prompts)) of them (at least 2),
    so the unseen block has about as many prompt-seed pairs as the main one and costs about as much."""
    return list(fresh[: max(2, -(-len(fresh) // max(1, len(prompts))))])


def save_headset(result: HuntResult, out: Path) -> None:
    """Write the found head set (safetensors, then its JSON rendering) into `out`, atomically."""
    result.headset.save(out / io.WEIGHTS_NAME)
    result.headset.save(out / io.JSON_NAME)


def fresh_seeds(eval_seeds: Sequence[int] | None, defaults: SearchDefaults, seeds: Sequence[int]) -> list[int]:
    """The evaluation seeds: given, else the model's, else 10,000.. (as many as the search's, at least 8);
    SearchError if any was used by the search."""
    fresh = [int(s) for s in (eval_seeds if eval_seeds is not None else defaults.value("eval_seeds", range(10_000, 10_000 + max(8, len(seeds)))))]
    bad = next((s for s in fresh if not -(2**63) <= s <= 2**64 - 1), None)
    if bad is not None:
        raise SearchError(f"evaluation seed {bad} out of range; allowed: [-2**63, 2**64 - 1] (torch.Generator seeds)")
    overlap = sorted(set(fresh) & {int(s) for s in seeds})
    if overlap:
        raise SearchError(f"evaluation seeds {overlap[:5]} were used by the search; evaluation needs fresh seeds")
    return fresh
