"""HeadHunter (paper Algorithm 1): greedy, objective-driven selection of attention heads to perturb.

S = {}; for R rounds: for every head h not in S, generate the M prompt-seed images guided with S ∪ {h},
score them with the objective and average; add the top k heads to S. Many candidates ride in one
forward (per-sample head sets), and the state is checkpointed atomically after every batch so an
interrupted search resumes exactly where it stopped.
"""

from __future__ import annotations

import zlib

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

import headhunter.engine.runner as _runner
from headhunter.engine.runner import Row
from headhunter._version import __version__
from headhunter.errors import SearchError
from headhunter.format.headset import HeadSet
from headhunter.search.checkpoint import FIX, Checkpoint
from headhunter.search.distributed import context
from headhunter.objective.expr import components, expression, leaves
from headhunter.plugin_system.registry import get_registry, model_name
from headhunter.search.allocation import REFERENCE, run_round
from headhunter.search.fidelity import MultiFidelityOutcome, X0Readout, parse_fidelity, run_multi_fidelity
from headhunter.format.schema import GenerationSettings, SearchProvenance, Seed
from headhunter.errors import HeadSetError
from headhunter.format.schedule import equal_intervals, format_interval, item_order, item_spec, parse_item
from headhunter.format.sites import Site, format_notation, head_range, missing_head
from headhunter.search.stats import Estimate, objective_value, paired_difference
from headhunter.search.verdicts import random_headsets
from headhunter.engine.models import load_model
from headhunter.objective.expr import parse_objective

BASELINE = "baseline"


class SearchSettings(GenerationSettings):
    """Everything that determines a search's result; a checkpoint is only resumed with equal settings.

    Extends `GenerationSettings` (guidance: scale w, cfg, scope; perturbation; steps; pipeline_kwargs),
    so the same validated object carries the knobs to the engine and into the found head set's provenance.
    """

    model: str = Field(description="model name or id (provenance)")
    objective: str = Field(description="objective expression")
    prompts: list[str] = Field(min_length=1)
    seeds: list[Seed] = Field(min_length=1)
    rounds: int = Field(default=1, ge=1)
    top_k: int = Field(default=1, ge=1)
    strength: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False,
                            description="SoftPAG strength u of every selected head")
    candidates: list[str] = Field(description="candidate heads in paper notation, in pool order; a scheduled search's "
                                              "candidates are (head, interval) items like L3H2@[0,0.3333333333333333)")
    intervals: int | None = Field(default=None, ge=2, le=64,
                                  description="scheduled search: every head is a candidate in each of K equal intervals "
                                              "of the noise level sigma (None: heads act at every sigma)")
    layer_baselines: bool = Field(default=True, description="also score every whole layer (layer-level PAG)")
    schedule: Literal["exhaustive", "racing", "multi-fidelity"] = Field(
        default="exhaustive", description="exhaustive: every candidate on every pair (Algorithm 1); racing: adaptive; "
                                          "multi-fidelity: a cheap screen, then racing at full fidelity")
    first_pairs: int = Field(default=8, ge=2, description="racing: pairs every candidate gets first")
    budget: float = Field(default=1.0, gt=0.0, le=1.0, description="racing: most images per round, as a fraction of the exhaustive round's")
    fidelity: str | None = Field(default=None, description="multi-fidelity: the screen's fidelity, full | steps:K | "
                                                            "x0:K (default steps:max(1, steps // 4))")
    screen_pairs: int = Field(default=4, ge=1, description="multi-fidelity: pairs every candidate gets in the screen")
    survivors: float = Field(default=0.25, gt=0.0, le=1.0,
                             description="multi-fidelity: fraction of the pool promoted to full fidelity (at least top_k)")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description="level of the paired intervals (racing drops, leaders)")
    batch_size: int = Field(ge=1, description="images per pipeline call")

    @model_validator(mode="after")
    def _screen_fidelity(self) -> SearchSettings:
        """The multi-fidelity screen's fidelity must fit the steps (checked before any image is made)."""
        if self.schedule == "multi-fidelity":
            parse_fidelity(self.screen_fidelity(), self.steps)
        return self

    def screen_fidelity(self) -> str:
        """The multi-fidelity screen's fidelity: `fidelity`, or a schedule of a quarter of the steps (the
        cheap fidelity that kept the full-fidelity choice best on the embedded model, docs/search.md)."""
        return self.fidelity or f"steps:{max(1, self.steps // 4)}"


@dataclass
class RoundResult:
    """One greedy round: every candidate's score (with S) and the heads added, with the statistics.

    scores: objective of S ∪ {c} on the candidate's pairs (pairs[c]: all M for the exhaustive schedule,
    fewer for a candidate racing dropped); vs_set: paired difference (S ∪ {c}) − S on those pairs with its
    interval; dropped: candidate -> pairs it had when racing dropped it; leaders: the candidates the data
    cannot tell apart from the selection (paired interval vs the weakest selected head includes 0);
    stability: bootstrap frequency with which the selection is exactly the top k (frequency: per candidate,
    of being in the top k); images: the round's candidate images (what the schedule spent, also when
    resumed from a checkpoint; candidate_images: the same).
    set_score, set_vs_baseline: the new S on the round's final pairs, and its paired gain over no guidance."""

    index: int
    selected_before: list[str]
    scores: dict[str, float]
    added: list[str]
    set_score: float
    pairs: dict[str, int] = field(default_factory=dict)
    vs_set: dict[str, Estimate] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    leaders: list[str] = field(default_factory=list)
    stability: float = float("nan")
    frequency: dict[str, float] = field(default_factory=dict)
    images: int = 0
    candidate_images: int = 0
    stages: list[int] = field(default_factory=list)
    set_vs_baseline: Estimate | None = None
    #: With `calibrate`: the round's null calibration (headhunter.search.racing.Calibration): the same
    #: allocation replayed on a null built from its complete first stage, its drops, leaders, stability and
    #: apparent gain beside the real ones, and whether the real round is distinguishable from it.
    calibration: Any = None
    fidelity: str = "full"  #: multi-fidelity: the screen's fidelity (scores, intervals, leaders are full fidelity)
    screened_out: list[str] = field(default_factory=list)  #: multi-fidelity: not promoted by the screen (no score)
    screen_images: int = 0  #: multi-fidelity: images made at the screen's fidelity (reference S included)


@dataclass
class HuntResult:
    """What `hunt` returns: the found head set, per-round tables, baseline and layer-level scores."""

    headset: HeadSet
    rounds: list[RoundResult]
    baseline_score: float
    layer_scores: dict[str, float]
    settings: SearchSettings
    sites: list[Site]
    out_dir: Path | None
    evaluation: Any = None  #: the fresh-seed Evaluation, when `headhunter.hunt` made one
    resumed: int = 0  #: images whose scores came from out_dir's checkpoint (not made again)
    unseen_evaluation: Any = None  #: the Evaluation on prompts the search never saw (`eval_prompts`)

    def score_table(self) -> list[dict[str, Any]]:
        """One row per (round, candidate head): layer, head, score, whether it was added."""
        rows = []
        for r in self.rounds:
            for head, score in r.scores.items():
                layer, index, _, interval = item_spec(head, 1.0)
                rows.append({"round": r.index, "head": head, "layer": layer, "head_index": index,
                             "interval": format_interval(interval), "score": score, "added": head in r.added})
        return rows

    @property
    def best_layer(self) -> tuple[str, float] | None:
        """The best whole layer on the search seeds: (`L3`, score)."""
        if not self.layer_scores:
            return None
        return max(self.layer_scores.items(), key=lambda kv: kv[1])

    def generation(self) -> GenerationSettings:
        """How the search made its images (scale, steps, perturbation, scope, ...): reuse it to compare."""
        return generation_settings(self.settings)

    def layer_headset(self, layer: int) -> HeadSet:
        """Every head of one layer at the search's strength u (layer-level PAG/SoftPAG)."""
        return HeadSet.from_heads([(layer, h, self.settings.strength) for h in range(self.sites[layer].num_heads)],
                                  sites=self.sites, architecture=self.headset.metadata.architecture, name=f"L{layer}")

    def round_headset(self, index: int) -> HeadSet:
        """The set S after round `index` (round 0: the first heads added), at the search's strength u."""
        heads = self.rounds[index].selected_before + self.rounds[index].added
        return HeadSet.from_heads([item_spec(h, self.settings.strength) for h in heads], sites=self.sites,
                                  architecture=self.headset.metadata.architecture, name=f"round {index}")

    def comparison_headsets(self, controls: int = 0) -> dict[str, HeadSet | None]:
        """What a fair comparison of this result needs, by display name: no guidance, the best whole layer
        (chosen on the search seeds, as the head set was), the found set, each earlier round's set, every
        whole layer, and `controls` random head sets of the found set's size from the candidate pool
        (`headhunter.search.verdicts.random_headsets`; seed fixed by the candidates). None means unguided."""
        out: dict[str, HeadSet | None] = {"no guidance": None}
        best = self.best_layer
        if best is not None:
            out[f"best layer ({best[0]})"] = self.layer_headset(int(best[0][1:]))
        out["found head set"] = self.headset
        for r in self.rounds[:-1]:
            out[f"round {r.index} set"] = self.round_headset(r.index)
        out.update({f"layer {name}": self.layer_headset(int(name[1:])) for name in self.layer_scores})
        if controls:
            found = [h for r in self.rounds for h in r.added]  # the search's items ((head, interval) when scheduled)
            seed = zlib.crc32(",".join(self.settings.candidates).encode())
            out.update(random_headsets(list(self.settings.candidates), len(found), controls, self.sites,
                                       self.settings.strength, self.headset.metadata.architecture, seed, set(found)))
        return out


def search(pipe: Any, settings: SearchSettings, objective: Any, *, out_dir: str | Path | None = None,
           resume: bool = True, progress: bool = True, name: str | None = None, calibrate: bool = False) -> HuntResult:
    """The search loop alone (paper Algorithm 1): rounds over the candidates in `settings`, scored with
    `objective` on settings.prompts x settings.seeds; returns the result, writes nothing but the checkpoint.

    With `out_dir`, per-image scores are checkpointed to out_dir/state.json after every batch and a
    search with equal settings resumes from it (`resume=False` starts over). Evaluation on fresh seeds
    and the report are separate steps (`headhunter.search.evaluation.evaluate_result`, `headhunter.report.report`);
    `headhunter.hunt` composes all three. Raises SearchError on bad settings or a foreign checkpoint.
    """
    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    pool_size = len(settings.candidates)
    if settings.rounds * settings.top_k > pool_size:
        raise SearchError(f"rounds x top_k = {settings.rounds * settings.top_k} heads asked for, but the pool has only {pool_size} candidates")
    if calibrate and settings.schedule == "multi-fidelity":
        raise SearchError("calibrate=True replays racing's allocation on a null; the multi-fidelity allocation has no "
                          "calibration yet: use allocation='racing' to calibrate, or calibrate=False")
    ctx = context()
    state = SearchCheckpoint.open(Path(out_dir) if out_dir else None, settings, resume, ctx)
    loop = SearchLoop(pipe, sites, adapter.architecture, settings, objective, state, progress, ctx)
    loop.calibrate = calibrate
    result = loop.run(name or f"headhunter-{settings.model.split('/')[-1]}")
    result.out_dir = Path(out_dir) if out_dir else None
    result.resumed = loop.resumed
    return result


def generation_settings(settings: SearchSettings) -> GenerationSettings:
    """The generation settings every image of this search is made with."""
    return GenerationSettings(guidance=settings.guidance, perturbation=settings.perturbation,
                              steps=settings.steps, pipeline_kwargs=settings.pipeline_kwargs)


# ----- resolution of arguments ----------------------------------------------------------------------
def resolve_model(model: Any) -> tuple[Any, str]:
    """(pipeline, name): a registered model name is loaded; a pipeline is used as it is."""
    if isinstance(model, str):

        return load_model(model), model
    return model, model_name(model) or type(model).__name__


def resolve_objective(objective: Any) -> tuple[Any, str]:
    """(Objective, canonical expression) from an Objective or an expression string; SearchError if None."""
    if objective is None:
        raise SearchError("no objective given and the model has no default objective; pass objective='NAME'")
    if isinstance(objective, str):

        built = parse_objective(objective)
        return built, str(built)
    return objective, expression(objective)


def candidate_pool(sites: list[Site], candidates: Sequence[str | int] | None) -> list[str]:
    """Candidate heads in paper notation; layer indices and site names expand to all their heads; an item
    with an interval of the noise level sigma (`L3H2@[0,0.5)`) is a (head, interval) candidate. SearchError
    names a head or layer the model lacks."""
    heads: list[str] = []
    names = [s.name for s in sites]
    for item in ([i for i in range(len(sites))] if candidates is None else candidates):
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            layer = int(item)
            if not 0 <= layer < len(sites):
                raise SearchError(f"candidate layer {layer} out of range; layers are 0..{len(sites) - 1} "
                                  f"(heads: {head_range(sites)})")
            heads += [format_notation(layer, h) for h in range(sites[layer].num_heads)]
        elif item in names:
            layer = names.index(item)
            heads += [format_notation(layer, h) for h in range(sites[layer].num_heads)]
        else:
            try:
                layer, head, _, interval = parse_item(item)
            except HeadSetError as exc:
                raise SearchError(f"candidate: {exc}") from None
            missing = missing_head(sites, layer, head)
            if missing is not None:
                raise SearchError(f"candidate {missing}")
            heads.append(format_notation(layer, head) + ("" if interval is None else f"@{format_interval(interval)}"))
    return list(dict.fromkeys(heads))


def interval_candidates(pool: Sequence[str], intervals: int) -> list[str]:
    """A scheduled search's pool (docs/search.md, "Scheduled search"): every head of `pool` becomes K =
    `intervals` candidates, one per equal interval of the noise level sigma, lowest sigma first
    (`L3H2@[0,0.3333333333333333)`, `L3H2@[0.3333333333333333,0.6666666666666666)`, `L3H2@[0.6666666666666666,1]`);
    an item that has its own interval is kept as it is. SearchError for K outside [2, 64]."""
    parts = equal_intervals(intervals, SearchError)
    out: list[str] = []
    for item in pool:
        out += [item] if parse_item(item)[3] is not None else [f"{item}@{format_interval(iv)}" for iv in parts]
    return list(dict.fromkeys(out))


# ----- checkpointed state ---------------------------------------------------------------------------------
class _CheckpointFile(BaseModel):
    """The shape of a search's state.json: settings, version, per-unit per-pair per-leaf scores, finished batches."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    settings: dict[str, Any]
    library_version: str
    units: dict[str, dict[str, dict[str, float]]]
    done_batches: dict[str, list[int]]


class SearchCheckpoint(Checkpoint):
    """Per-unit per-pair scores, written atomically to out_dir/state.json after every batch."""

    what = "search"
    Schema = _CheckpointFile

    @classmethod
    def fresh(cls, settings: BaseModel) -> dict[str, Any]:
        return {"settings": settings.model_dump(), "library_version": __version__, "units": {}, "done_batches": {}}

    @classmethod
    def check(cls, data: dict[str, Any], path: Path) -> None:
        for unit, per_pair in data["units"].items():
            bad = next((k for k in per_pair if not (k.isascii() and k.isdigit() and len(k) <= 9)), None)
            if bad is not None:
                raise SearchError(f"search checkpoint {path} is damaged: unit {unit!r} has pair index {bad!r}; {FIX}")
        for phase, starts in data["done_batches"].items():
            if any(start < 0 for start in starts):
                raise SearchError(f"search checkpoint {path} is damaged: phase {phase!r} has a negative batch start; {FIX}")

    def batch_done(self, phase: str, start: int) -> bool:
        return start in self.data["done_batches"].get(phase, [])

    def record(self, phase: str, start: int, scores: dict[str, dict[int, Any]], save: bool = True) -> None:
        for unit, per_pair in scores.items():
            self.data["units"].setdefault(unit, {}).update({str(k): v for k, v in per_pair.items()})
        self.data["done_batches"].setdefault(phase, []).append(start)
        if save:
            self.save()


# ----- the search ----------------------------------------------------------------------------------------
def set_key(heads: Sequence[str]) -> str:
    """The checkpoint key of a head set's images: its heads sorted, or `baseline` for the empty set.
    Keys name content, so S ∪ {h} of one round and S of the next share their images."""
    return "+".join(sorted(heads, key=item_order)) if heads else BASELINE


class SearchLoop:
    """The search's image loop over one checkpoint: `fetch` makes (or resumes) the scores of head-set units on
    their first n prompt-seed pairs, sharded over torchrun ranks; `scores`/`value` read them back; `run` is
    Algorithm 1 with the allocations. `headhunter.search.refine` drives `fetch` with its own units."""

    def __init__(self, pipe, sites, architecture, settings, objective, state, progress, ctx) -> None:
        self.pipe, self.sites, self.architecture = pipe, sites, architecture
        self.settings, self.objective, self.state, self.ctx = settings, objective, state, ctx
        self.pairs = [(p, s) for p in settings.prompts for s in settings.seeds]
        self.gen = generation_settings(settings)
        self.leaves = list(leaves(objective))
        self.covered: set[tuple[str, int]] = set()
        self.images = 0
        total_units = 1 + (len(sites) if settings.layer_baselines else 0)
        share = {"racing": settings.budget, "multi-fidelity": settings.survivors * settings.budget}.get(
            settings.schedule, 1.0)  # racing: the bar shows its cap
        total_units += share * sum(len(settings.candidates) - r * settings.top_k for r in range(settings.rounds))
        total_units += settings.rounds if settings.top_k > 1 else 0
        self.bar = tqdm(total=int(total_units * len(self.pairs)), desc="headhunter", unit="img",
                        disable=not (progress and ctx.is_main))
        self.resumed = 0  #: images whose scores came from the checkpoint instead of being made again
        done = sum(len(per_pair) for per_pair in state.data["units"].values())
        if done and progress and ctx.is_main and state.path is not None:
            self.bar.write(f"resuming the search in {state.path.parent}: {done:,} images are scored in "
                           f"{state.path.name} and are not made again (--no-resume, resume=False: start over)",
                           file=sys.stderr)

    def describe(self, phase: str) -> str:
        """What a phase is, for the progress bar: 'no guidance + 6 layers', 'round 1/2, 16 of 64 pairs'."""
        s, m = self.settings, len(self.pairs)
        if phase == "reference":
            return f"no guidance + {len(self.sites)} layers" if s.layer_baselines else "no guidance"
        if phase.startswith("round"):
            index, _, pairs = phase[len("round"):].partition(":")
            stage = f", {pairs} of {m} pairs" if s.schedule == "racing" else ""
            return f"round {int(index) + 1}/{s.rounds}{stage}"
        if phase.startswith("set"):
            return f"round {int(phase[3:]) + 1}/{s.rounds}, the new set"
        return phase

    def headset(self, heads: Sequence[str], name: str = "candidate") -> HeadSet:
        specs = [item_spec(h, self.settings.strength) for h in heads]
        return HeadSet.from_heads(specs, sites=self.sites, architecture=self.architecture, name=name)

    def layer_headset(self, layer: int) -> HeadSet:
        u = self.settings.strength
        return HeadSet.from_heads([(layer, h, u) for h in range(self.sites[layer].num_heads)], sites=self.sites,
                                  architecture=self.architecture, name=f"L{layer}")

    def fetch(self, phase: str, units: dict[str, tuple[HeadSet | None, int]], gen: GenerationSettings | None = None,
              callback: Any = None) -> None:
        """Make sure each unit has scores on its first n pairs: generate what no earlier phase covered.

        The rows of a phase depend only on earlier phases (replayed identically on resume), so they are cut
        into the same fixed slices every time; finished slices are skipped, the others are dealt out to
        the ranks round-robin, and every rank records every slice's scores (rank 0 writes the checkpoint)."""
        rows, keys = [], []
        for unit, (headset, n) in units.items():
            for index in range(n):
                if (unit, index) not in self.covered:
                    prompt, seed = self.pairs[index]
                    rows.append(Row(headset, prompt, seed))
                    keys.append((unit, index))
        self.covered.update(keys)
        size = self.settings.batch_size
        self.bar.set_description_str(f"headhunter: {self.describe(phase)}", refresh=False)
        pending = [start for start in range(0, len(rows), size) if not self.state.batch_done(phase, start)]
        skipped = len(rows) - sum(min(size, len(rows) - start) for start in pending)
        if skipped:  # finished before an interruption: counted, not made again
            self.resumed += skipped
            self.bar.update(skipped)
        world, rank = self.ctx.world, self.ctx.rank
        for group in range(0, len(pending), world):
            starts = pending[group : group + world]
            mine = starts[rank] if rank < len(starts) else None
            result = None
            if mine is not None:
                images = _runner.generate_rows(self.pipe, rows[mine : mine + size], gen or self.gen,
                                               callback() if callback is not None else None)
                result = (mine, self.score_images(images, rows[mine : mine + size], keys[mine : mine + size]))
            for item in self.ctx.all_gather(result):
                if item is not None:
                    start, per_unit = item
                    self.state.record(phase, start, per_unit, save=False)
                    self.images += sum(len(v) for v in per_unit.values())
                    self.bar.update(sum(len(v) for v in per_unit.values()))
            if self.ctx.is_main:
                self.state.save()

    def score_images(self, images: torch.Tensor, rows: list[Row], keys: list[tuple[str, int]]) -> dict[str, dict[int, dict[str, float]]]:
        leaf_scores = components(self.objective, images, [r.prompt for r in rows])
        per_unit: dict[str, dict[int, dict[str, float]]] = {}
        for leaf, values in leaf_scores.items():
            for (unit, index), value in zip(keys, values.double().cpu().tolist()):
                if not math.isfinite(value):
                    raise SearchError(f"objective {leaf!r} returned {value} for {unit} on pair {index}")
                per_unit.setdefault(unit, {}).setdefault(index, {})[leaf] = value
        return per_unit

    def scores(self, unit: str, n: int) -> np.ndarray:
        """Leaf scores of a unit on its first n pairs, [n, leaves]."""
        per_pair = self.state.data["units"].get(unit, {})
        try:
            return np.array([[per_pair[str(i)][leaf] for leaf in self.leaves] for i in range(n)], dtype=np.float64)
        except KeyError as exc:
            raise SearchError(f"internal: unit {unit} lacks the score {exc} (the checkpoint is incomplete)") from None

    def value(self, unit: str, n: int | None = None) -> float:
        """The objective of a unit on its first n pairs (default all): each leaf averaged, then combined."""
        return float(objective_value(self.objective, self.scores(unit, n or len(self.pairs)).mean(0), self.leaves))

    def run(self, name: str) -> HuntResult:
        s = self.settings
        m = len(self.pairs)
        units: dict[str, tuple[HeadSet | None, int]] = {BASELINE: (None, m)}
        if s.layer_baselines:
            units.update({f"L{i}": (self.layer_headset(i), m) for i in range(len(self.sites))})
        self.fetch("reference", units)
        baseline = self.value(BASELINE)
        layer_scores = {k: self.value(k) for k in units if k != BASELINE}
        selected: list[str] = []
        rounds: list[RoundResult] = []
        for r in range(s.rounds):
            pool = [c for c in s.candidates if c not in selected]
            before = list(selected)
            names = {c: set_key(before + [c]) for c in pool}
            names[REFERENCE] = set_key(before)

            def fetch(wanted: dict[str, int], r=r, names=names, before=before) -> None:
                n = max(wanted.values())
                self.fetch(f"round{r}:{n}", {names[c]: (self.headset(before + ([] if c == REFERENCE else [c])), k)
                                             for c, k in wanted.items()})

            get = lambda c, n, names=names: self.scores(names[c], n)  # noqa: E731
            screen = None
            if s.schedule == "multi-fidelity":
                screen = self.screen(r, pool, names, before, fetch, get)
                outcome = screen.outcome
            else:
                outcome = run_round(pool, fetch, get, total_pairs=m, top_k=s.top_k, objective=self.objective,
                                    leaves=self.leaves, schedule=s.schedule, first_pairs=s.first_pairs,
                                    budget=s.budget, level=s.confidence, calibrate=getattr(self, "calibrate", False))
            selected += outcome.selected
            n_final = outcome.stages[-1]
            key = set_key(selected)
            if s.top_k > 1:
                self.fetch(f"set{r}", {key: (self.headset(selected), n_final)})
            set_score = self.value(key, n_final)
            set_vs_baseline = paired_difference(self.scores(key, n_final), self.scores(BASELINE, n_final),
                                                self.objective, self.leaves, s.confidence)
            rounds.append(RoundResult(r, before, outcome.scores, outcome.selected, set_score, pairs=outcome.pairs,
                                      vs_set=outcome.vs_set, dropped=outcome.dropped, leaders=outcome.leaders,
                                      stability=outcome.stability, frequency=outcome.frequency,
                                      images=outcome.images + (screen.screen_images if screen else 0),
                                      candidate_images=outcome.images,
                                      stages=outcome.stages, set_vs_baseline=set_vs_baseline,
                                      calibration=outcome.calibration,
                                      **({} if screen is None else dict(
                                          fidelity=screen.fidelity, screened_out=screen.screened_out,
                                          screen_images=screen.screen_images))))
        self.bar.total = self.bar.n  # racing's total was its cap: the work is done, so the bar ends at 100 %
        self.bar.set_description_str("headhunter: search done", refresh=False)
        self.bar.refresh()
        self.bar.close()
        return HuntResult(self.found(selected, rounds, baseline, name), rounds, baseline, layer_scores, s, self.sites, None)

    def screen(self, r: int, pool: list[str], names: dict[str, str], before: list[str], fetch: Any,
               get: Any) -> MultiFidelityOutcome:
        """A multi-fidelity round (headhunter.search.fidelity): the screen's images at the cheap fidelity (their
        own checkpoint units, `KEY@FIDELITY`), then racing over the survivors at full fidelity."""
        s = self.settings
        fid = parse_fidelity(s.screen_fidelity(), s.steps)
        gen = self.gen.model_copy(update={"steps": fid.k}) if fid.kind == "steps" else self.gen
        callback = (lambda: X0Readout(fid.k)) if fid.kind == "x0" else None
        tag = f"@{fid}"

        def fetch_screen(wanted: dict[str, int]) -> None:
            n = max(wanted.values())
            heads = {c: before + ([] if c == REFERENCE else [c]) for c in wanted}
            self.fetch(f"round{r}:screen:{n}", {names[c] + tag: (self.headset(heads[c]) if heads[c] else None, k)
                                                for c, k in wanted.items()}, gen=gen, callback=callback)

        return run_multi_fidelity(pool, fetch_screen, lambda c, n: self.scores(names[c] + tag, n), fetch, get,
                                  total_pairs=len(self.pairs), top_k=s.top_k, objective=self.objective,
                                  leaves=self.leaves, fidelity=str(fid), screen_pairs=min(s.screen_pairs, len(self.pairs)),
                                  survivors=s.survivors, schedule="racing", first_pairs=s.first_pairs, budget=s.budget,
                                  level=s.confidence)

    def found(self, selected: list[str], rounds: list[RoundResult], baseline: float, name: str) -> HeadSet:
        s = self.settings
        provenance = SearchProvenance(
            objective=s.objective, prompts=s.prompts, seeds=s.seeds, steps=s.steps, rounds=s.rounds, top_k=s.top_k,
            strength=s.strength, scale=s.guidance.scale, cfg=s.guidance.cfg, candidates=len(s.candidates),
            round_scores=[[r.scores[h] for h in r.added] for r in rounds], baseline_score=baseline,
        )
        heads = self.headset(selected)
        return heads.with_metadata(
            name=name, base_model=s.model, origin="search", source=f"headhunter.hunt {__version__}",
            description=(f"HeadHunter: {len(selected)} heads maximising {s.objective}" if s.intervals is None else
                         f"HeadHunter, scheduled over {s.intervals} intervals of sigma: {len(selected)} (head, interval) "
                         f"pieces maximising {s.objective}"),
            perturbation=s.perturbation,
            guidance=s.guidance,
            search=provenance, tags=["headhunter", "search"],
        )
