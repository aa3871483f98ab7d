"""Refine a found head set over the noise level: per head, in which intervals of sigma should it act?

`refine(pipe, S, settings, objective)` splits sigma in [0, 1] into K equal intervals and measures every
(head, interval) piece p of S by leaving it out: S and S minus p are scored on the same prompt-seed pairs,
and the contribution of p is objective(S) - objective(S minus p) with a paired interval at the Bonferroni
level 1 - (1 - confidence) / (number of pieces) (headhunter.search.stats.paired_difference). A piece is

- `keep`: its contribution is above 0 (S is better with it there),
- `drop`: below 0 (S is better without it there),
- `unclear`: the interval holds 0.

The refined head set is S without its `drop` pieces, each head keeping its strength where it stays; so it
differs from S only where the data says so. Leave-one-out measures each piece given all the others; two
pieces that each look harmless alone are not tested together, so the refined set is judged afterwards on
fresh seeds (`hunt --refine` does, docs/search.md "Refine"). Images are checkpointed and shared out to
torchrun ranks like the search's (one unit per head set, keyed by content).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headhunter.errors import SearchError
from headhunter.format.headset import HeadSet
from headhunter.format.schedule import Interval, equal_intervals, format_interval
from headhunter.plugin_system.registry import get_registry
from headhunter.search.distributed import context
from headhunter.search.search import BASELINE, SearchCheckpoint, SearchSettings, SearchLoop, set_key
from headhunter.search.stats import Estimate, paired_difference


@dataclass
class PieceEffect:
    """One (head, interval) piece of the set being refined: its leave-one-out contribution and verdict."""

    piece: str  #: notation item, `L3H2@[0,0.3333333333333333)`
    head: str  #: `L3H2`
    interval: Interval
    contribution: Estimate  #: objective(S) - objective(S minus the piece), Bonferroni-level interval
    verdict: str  #: keep | drop | unclear


@dataclass
class RefineResult:
    """What `refine` returns: the set it started from, the refined (scheduled) set, and the evidence."""

    original: HeadSet
    headset: HeadSet
    effects: list[PieceEffect]
    intervals: list[Interval]
    set_score: float  #: objective of the original set on the search pairs
    baseline_score: float  #: no guidance on the same pairs
    level: float  #: the per-piece interval level (Bonferroni)
    images: int
    settings: SearchSettings
    evaluation: Any = None  #: fresh-seed Evaluation (original, refined, no guidance) when the workflow made one

    @property
    def dropped(self) -> list[str]:
        return [e.piece for e in self.effects if e.verdict == "drop"]

    def table(self) -> str:
        """Heads x intervals as a markdown table: each cell the contribution with its interval and verdict."""
        heads = list(dict.fromkeys(e.head for e in self.effects))
        lines = ["| head | " + " | ".join(f"sigma in {format_interval(iv)}" for iv in self.intervals) + " |",
                 "|---|" + "---|" * len(self.intervals)]
        for head in heads:
            cells = [next(e for e in self.effects if e.head == head and e.interval == iv) for iv in self.intervals]
            lines.append(f"| {head} | " + " | ".join(
                f"{e.contribution.mean:+.4g} [{e.contribution.low:+.4g}, {e.contribution.high:+.4g}] {e.verdict}"
                for e in cells) + " |")
        return "\n".join(lines)


def pieces_of(headset: HeadSet, intervals: list[Interval]) -> list[tuple[str, tuple[int, int, float, Interval]]]:
    """Every (head, interval) piece of a head set without a schedule: (notation item, from_heads spec)."""
    if headset.scheduled:
        raise SearchError(f"refine takes a head set without a schedule; {headset.name!r} already holds one "
                          f"({len(headset.intervals)} intervals)")
    if len(headset) == 0:
        raise SearchError(f"head set {headset.name!r} has no heads: there is nothing to refine")
    out = []
    for h in headset:
        for iv in intervals:
            out.append((f"L{h.layer}H{h.head}@{format_interval(iv)}", (h.layer, h.head, h.strength, iv)))
    return out


def refine(pipe: Any, headset: HeadSet, settings: SearchSettings, objective: Any, *, out_dir: str | Path | None = None,
           resume: bool = True, progress: bool = True) -> RefineResult:
    """Leave-one-out refinement of `headset` over `settings.intervals` (K >= 2) equal intervals of sigma, on
    settings.prompts x settings.seeds with the settings' guidance (module docstring). `settings.candidates`
    must be the pieces (`pieces_of`), so a checkpoint in `out_dir` names what it holds. Costs
    (2 + pieces) x pairs images. SearchError for a scheduled or empty set, a set for another model, K < 2."""
    if settings.intervals is None:
        raise SearchError("refine needs intervals=K (K >= 2 equal intervals of the noise level sigma)")
    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    if [s.name for s in headset.sites] != [s.name for s in sites]:
        raise SearchError(f"head set {headset.name!r} was made for other attention sites than this model's "
                          f"({len(headset.sites)} vs {len(sites)} sites)")
    intervals = equal_intervals(settings.intervals, SearchError)
    pieces = pieces_of(headset, intervals)
    if [p for p, _ in pieces] != list(settings.candidates):
        raise SearchError("internal: refine's settings.candidates must be the pieces of the head set (pieces_of)")
    ctx = context()
    state = SearchCheckpoint.open(Path(out_dir) if out_dir else None, settings, resume, ctx)
    loop = SearchLoop(pipe, sites, adapter.architecture, settings, objective, state, progress, ctx)
    loop.bar.total = (2 + len(pieces)) * len(loop.pairs)
    m = len(loop.pairs)

    def build(specs: list[tuple[int, int, float, Interval]], name: str) -> HeadSet:
        return HeadSet.from_heads(specs, sites=sites, architecture=adapter.architecture, name=name)

    items = [item for item, _ in pieces]
    whole_key = set_key(items)
    rest_keys = [set_key(items[:i] + items[i + 1:]) for i in range(len(pieces))]  # S minus piece i (never empty: K >= 2)
    units: dict[str, tuple[HeadSet | None, int]] = {BASELINE: (None, m), whole_key: (build([s for _, s in pieces], "S"), m)}
    for i, key in enumerate(rest_keys):
        units[key] = (build([s for j, (_, s) in enumerate(pieces) if j != i], f"S - {items[i]}"), m)
    loop.fetch("refine", units)
    loop.bar.close()
    level = 1.0 - (1.0 - settings.confidence) / len(pieces)
    whole = loop.scores(whole_key, m)
    effects = []
    for (item, spec), key in zip(pieces, rest_keys):
        est = paired_difference(whole, loop.scores(key, m), objective, loop.leaves, level)
        verdict = "keep" if est.low > 0 else "drop" if est.high < 0 else "unclear"
        effects.append(PieceEffect(item, item.split("@")[0], spec[3], est, verdict))
    kept = [spec for (item, spec), e in zip(pieces, effects) if e.verdict != "drop"]
    refined = HeadSet.from_heads(kept, sites=sites, architecture=adapter.architecture, base_model=headset.metadata.base_model)
    refined = refined.with_metadata(
        name=f"{headset.name}-refined", origin="search", perturbation=headset.metadata.perturbation,
        guidance=headset.metadata.guidance, tags=[*headset.metadata.tags, "refined"][:64],
        description=(f"{headset.name} refined over {settings.intervals} intervals of sigma by leave-one-out on "
                     f"{settings.objective}: {len(pieces) - len(kept)} of {len(pieces)} (head, interval) pieces dropped"),
    )
    return RefineResult(headset, refined, effects, intervals, loop.value(whole_key), loop.value(BASELINE), level,
                        loop.images, settings)


__all__ = ["PieceEffect", "RefineResult", "pieces_of", "refine"]
