"""`headhunter.atlas`: measure every head's effect (the atlas stage), then render its page (the report stage).

The measuring lives in `headhunter.atlases.atlas`, the page in `headhunter.report.atlas_page`; this workflow
is the one place that composes them, so neither stage imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headhunter.atlases.atlas import Atlas, AtlasCheckpoint, AtlasSettings, measure_units, select_heads
from headhunter.atlases.effects import analyse
from headhunter.atlases.measures import DEFAULT_MEASURES, build_measures
from headhunter.engine.runner import auto_batch_size
from headhunter.errors import SearchError
from pydantic import BaseModel, ConfigDict

from headhunter.format.schedule import equal_intervals
from headhunter.format.preflight import check_before_loading
from headhunter.format.schema import GuidanceSettings, PerturbationSpec, validated
from headhunter.plugin_system.registry import get_registry
from headhunter.search.defaults import model_defaults
from headhunter.report.atlas_page import write_page
from headhunter.search.search import resolve_model


class AtlasOptions(BaseModel):
    """The settings of `atlas` beyond model, prompts and seeds, in one validated object. None takes the
    model's atlas defaults (the plugins' `search_defaults` hook, key "atlas"), else: strength u 1, scale w 3,
    steps 12, every head, every layer. Ranges are checked where used (GuidanceSettings, PerturbationSpec,
    AtlasSettings), so this object checks names and types only."""

    model_config = ConfigDict(extra="forbid")

    heads: list[str | int] | None = None
    layers: list[int] | None = None
    strength: float | None = None
    scale: float | None = None
    steps: int | None = None
    cfg: float | None = None
    perturbation: str = "softpag"
    perturbation_params: dict[str, Any] | None = None
    scope: str = "joint"
    objectives: list[str] | None = None
    measures: list[str] | None = None
    batch_size: int | None = None
    sheet_pairs: int = 8
    alpha: float = 0.05
    min_effect: float = 0.2
    pipeline_kwargs: dict[str, Any] | None = None
    #: also measure every unit acting only inside each interval of the noise level sigma: K (K >= 2 equal
    #: intervals of [0, 1]) or the intervals themselves, [[0, b1], ..., [b(K-1), 1]]; None: not
    intervals: int | list[tuple[float, float]] | None = None


def atlas(
    model: Any = "digits",
    prompts: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    render: bool = True,
    options: AtlasOptions | None = None,
    **overrides: Any,
) -> Atlas:
    """Measure every selected head's effect alone (plus every whole layer) against no guidance.

    model: a pipeline or a registered model name. prompts x seeds: the pairs every unit is generated on
    (defaults: the model's `headhunter_defaults["atlas"]`, else its search prompts and seeds). heads:
    paper notation (`L3H2`), layer indices or site names (default: every head); layers: whole-layer
    units (default: every layer; [] for none). strength u, scale w, steps: the model's defaults, else 1,
    3, 12. measures: registered image-statistic objectives (default DEFAULT_MEASURES); objectives:
    expressions also measured (default: the model's atlas objectives). With `out_dir` the state is
    checkpointed after every batch (resumed when the settings are equal, else SearchError naming the
    difference), and with `render` the page, PNGs, CSV and JSON are written there.
    intervals: also measure every head and layer acting only inside each interval of the noise level sigma
    (K equal intervals, or a list), with the same Bonferroni correction, and test whether each unit's
    effect differs between intervals (`Atlas.interval_effects`, `Atlas.interval_differences`).
    The other settings are `AtlasOptions` fields, as `options=` or keywords (`atlas("digits", heads=["L0H1"])`).
    Returns the Atlas. Raises SearchError for unknown heads/layers, empty prompts, bad thresholds.
    """
    base = options.model_dump(exclude_unset=True) if options is not None else {}
    o = validated(AtlasOptions, SearchError, **{**base, **overrides})
    heads, layers, strength, scale, steps, cfg = o.heads, o.layers, o.strength, o.scale, o.steps, o.cfg
    perturbation, perturbation_params, scope = o.perturbation, o.perturbation_params, o.scope
    objectives, measures, batch_size, sheet_pairs = o.objectives, o.measures, o.batch_size, o.sheet_pairs
    alpha, min_effect, pipeline_kwargs = o.alpha, o.min_effect, o.pipeline_kwargs
    intervals = equal_intervals(o.intervals, SearchError) if isinstance(o.intervals, int) else o.intervals
    if not 0 < alpha < 1:
        raise SearchError(f"alpha must be in (0, 1), got {alpha}")
    validated(GuidanceSettings, SearchError, scope=scope, cfg=cfg, **({} if scale is None else {"scale": scale}))
    validated(PerturbationSpec, SearchError, name=perturbation, params=perturbation_params or {})
    check_before_loading(model, prompts=prompts)  # a registered model's prompts, before it loads
    pipe, model_name = resolve_model(model)
    defaults = model_defaults(pipe)
    own = defaults.atlas
    prompts = list(prompts if prompts is not None else own.prompts if own.prompts is not None else defaults.value("prompts", []))
    if not prompts:
        raise SearchError("no prompts given and the model has no default prompts; pass prompts=[...]")
    seeds = [int(s) for s in (seeds if seeds is not None else own.seeds if own.seeds is not None else defaults.value("seeds", range(8)))]
    strength, scale, steps = (value if value is not None else (getattr(own, key) if getattr(own, key) is not None else defaults.value(key, fallback))
                              for key, value, fallback in (("strength", strength, 1.0), ("scale", scale, 3.0),
                                                           ("steps", steps, 12)))
    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    get_registry().perturbation(perturbation, **(perturbation_params or {}))  # validate early
    head_list = select_heads(sites, heads)
    layer_list = list(range(len(sites))) if layers is None else [int(i) for i in layers]
    for i in layer_list:
        if not 0 <= i < len(sites):
            raise SearchError(f"layer {i} out of range; this model has layers 0..{len(sites) - 1}")
    if not head_list and not layer_list:
        raise SearchError("nothing to measure: no heads and no layers selected")
    measure_names = list(measures if measures is not None else DEFAULT_MEASURES)
    objective_texts = list(objectives if objectives is not None else own.objectives or [])
    classify = own.classify
    class_name = own.classes
    settings = validated(
        AtlasSettings, SearchError,
        model=model_name, prompts=prompts, seeds=seeds, heads=head_list, layers=layer_list, strength=strength,
        guidance=dict(scale=scale, cfg=cfg, scope=scope), perturbation=dict(name=perturbation, params=perturbation_params or {}),
        steps=steps, measures=measure_names, objectives=objective_texts, classes=class_name,
        batch_size=batch_size or auto_batch_size(pipe), sheet_pairs=sheet_pairs, pipeline_kwargs=pipeline_kwargs or {},
        **({"intervals": intervals} if intervals is not None else {}),
    )
    measurer, measure_list = build_measures(settings, own.words, classify)
    out = Path(out_dir) if out_dir else None
    state = AtlasCheckpoint.open(out, settings, resume)
    result = measure_units(pipe, sites, adapter.architecture, settings, measurer, state, progress)
    result.measures, result.alpha, result.min_effect, result.out_dir = measure_list, alpha, min_effect, out
    analyse(result)
    if out is not None:
        result.save(out)
        if render:
            write_page(result, out)
    return result
