"""The statistics of an atlas: each unit's paired effect on each measure, labels, and groups of heads.

`analyse(atlas)` turns per-pair values into `Effect`s (paired t intervals, Bonferroni-corrected labels) and
clusters the labelled heads into `Group`s; pure and deterministic, so a loaded atlas re-analyses to the same
figures. The data types (`Measure`, `Effect`, `Group`) live here, below the atlas that holds them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from scipy.cluster.hierarchy import fcluster, linkage

#: The unguided unit.
NONE = "none"
#: The paired measure every atlas has: mean absolute pixel change against the unguided image.
CHANGE = "change"

Atlas = Any  # a headhunter.atlases.atlas.Atlas (named for readers; analysed duck-typed)


@dataclass
class Measure:
    """One measured quantity. kind: `stat` (image statistic), `objective`, or `paired` (vs the unguided image).

    words: (word when it goes up, word when it goes down); None where that direction gets no label.
    A `stat`/`objective` effect needs |d| >= min_effect (d = mean difference / sd of the unguided images);
    a `paired` effect needs |mean| >= min_abs (its unguided sd is 0 by construction).
    """

    name: str
    kind: str
    words: tuple[str | None, str | None]
    generic: tuple[str | None, str | None] = (None, None)
    min_abs: float = 0.0


@dataclass
class Effect:
    """One unit's effect on one measure: paired mean difference vs no guidance over the prompt-seed pairs.

    low/high: 95 % t interval of the mean; d: mean / sd of the measure on the unguided images (NaN where
    that sd is 0); p: two-sided paired t-test; significant: p below the Bonferroni level and not tiny;
    label: the word for it when significant and the measure has a word for that direction, else None.
    """

    unit: str
    measure: str
    mean: float
    low: float
    high: float
    d: float
    p: float
    n: int
    significant: bool
    label: str | None


@dataclass
class IntervalDifference:
    """Does a unit's effect differ between two intervals of sigma? The paired difference of the measure between
    the unit acting only in interval `a` and only in interval `b` (same prompt-seed pairs; the unguided image
    cancels): mean, 95 % t interval, two-sided p, significant after Bonferroni over every (unit, measure,
    interval pair) of the atlas."""

    unit: str
    measure: str
    a: int
    b: int
    mean: float
    low: float
    high: float
    p: float
    n: int
    significant: bool


@dataclass
class Group:
    """Heads with similar standardized effect vectors (average-linkage clustering)."""

    name: str
    heads: list[str]
    labels: list[str]


def paired_effect(deltas: Sequence[float], base_sd: float, tests: int, alpha: float, min_effect: float,
                  min_abs: float = 0.0) -> tuple[float, float, float, float, float, bool]:
    """(mean, low, high, d, p, significant) of paired differences.

    low/high: 95 % Student-t interval of the mean; p: two-sided one-sample t-test of mean 0 (exactly 0 when
    every difference is the same non-zero value, 1 when all are 0); significant: p < alpha / tests
    (Bonferroni) and |d| >= min_effect (d = mean / base_sd), or |mean| >= min_abs where base_sd is 0.
    """
    x = np.asarray(deltas, dtype=np.float64)
    n = x.size
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    if sd == 0.0:
        low = high = mean
        p = 1.0 if mean == 0.0 else 0.0
    else:
        se = sd / math.sqrt(n)
        half = float(stats.t.ppf(0.975, n - 1)) * se
        low, high = mean - half, mean + half
        p = float(2.0 * stats.t.sf(abs(mean) / se, n - 1))
    d = mean / base_sd if base_sd > 0 else float("nan")
    big = abs(d) >= min_effect if base_sd > 0 else (min_abs > 0 and abs(mean) >= min_abs)
    return mean, low, high, d, p, bool(n > 1 and p < alpha / max(tests, 1) and big)


def analyse(atlas: Atlas) -> Atlas:
    """Fill atlas.effects, atlas.skipped and atlas.groups from atlas.values (pure; deterministic)."""
    base = atlas.values[NONE]
    live = []
    skipped = []
    for m in atlas.measures:
        every = [v[m.name] for unit in atlas.units for v in atlas.values[unit]]
        if m.kind != "paired" and max(every) - min(every) == 0.0:
            skipped.append(m.name)
        else:
            live.append(m)
    in_intervals = list(getattr(atlas, "interval_units", []))
    # one Bonferroni family: every (unit, measure) effect, the per-interval ones included
    tests = len(live) * (len(atlas.units) - 1 + len(in_intervals))

    def effect_of(unit: str) -> dict[str, Effect]:
        per: dict[str, Effect] = {}
        for m in live:
            deltas = [u[m.name] - b[m.name] for u, b in zip(atlas.values[unit], base)]
            base_sd = float(np.std([b[m.name] for b in base], ddof=1)) if len(base) > 1 and m.kind != "paired" else 0.0
            mean, low, high, d, p, sig = paired_effect(deltas, base_sd, tests, atlas.alpha, atlas.min_effect, m.min_abs)
            word = (m.words[0] if mean > 0 else m.words[1]) if sig else None
            per[m.name] = Effect(unit, m.name, mean, low, high, d, p, len(deltas), sig, word)
        return per

    effects = {unit: effect_of(unit) for unit in atlas.units[1:]}
    atlas.effects, atlas.skipped = effects, skipped
    if in_intervals:
        atlas.interval_effects = {name: effect_of(name) for _, _, name in in_intervals}
        atlas.interval_differences = interval_differences(atlas, live, in_intervals)
    atlas.groups = group_heads(atlas, [m for m in live if m.kind != "paired" or m.words != (None, None)])
    return atlas


def interval_differences(atlas: Atlas, measures: Sequence[Measure],
                         in_intervals: Sequence[tuple[str, int, str]]) -> list[IntervalDifference]:
    """For every unit, measure and pair of intervals (a < b): the paired difference of the measure between the
    unit acting only in interval a and only in interval b, on the same prompt-seed pairs (95 % t interval,
    two-sided p). Significant: p below alpha / (units x measures x interval pairs), Bonferroni over this whole
    family, and for a statistic or objective |mean| / sd(unguided) >= min_effect (min_abs for a paired measure),
    the thresholds of the effects themselves."""
    by_unit: dict[str, dict[int, str]] = {}
    for unit, k, name in in_intervals:
        by_unit.setdefault(unit, {})[k] = name
    base = atlas.values[NONE]
    comparisons = [(unit, a, b) for unit, names in by_unit.items() for a in sorted(names) for b in sorted(names) if a < b]
    tests = len(comparisons) * len(measures)
    out = []
    for unit, a, b in comparisons:
        for m in measures:
            first, second = atlas.values[by_unit[unit][a]], atlas.values[by_unit[unit][b]]
            deltas = [x[m.name] - y[m.name] for x, y in zip(first, second)]
            base_sd = float(np.std([v[m.name] for v in base], ddof=1)) if len(base) > 1 and m.kind != "paired" else 0.0
            mean, low, high, _, p, sig = paired_effect(deltas, base_sd, tests, atlas.alpha, atlas.min_effect, m.min_abs)
            out.append(IntervalDifference(unit, m.name, a, b, mean, low, high, p, len(deltas), sig))
    return out


def group_heads(atlas: Atlas, measures: Sequence[Measure], max_groups: int = 8) -> list[Group]:
    """Cluster the labelled heads by their effect vectors; heads with no label form the last group.

    Each head's vector holds d per statistic/objective measure (the mean scaled by the paired sd for
    paired measures), clipped to [-5, 5]; average linkage, Euclidean, cut into
    min(max_groups, round(sqrt(n))) clusters (scipy.cluster.hierarchy). A group is named by the labels at
    least half its heads carry.
    """
    labelled = [h for h in atlas.settings.heads if atlas.labels(h)]
    quiet = [h for h in atlas.settings.heads if not atlas.labels(h)]
    groups: list[Group] = []
    if labelled:
        vectors = np.array([[_standardized(atlas.effects[h][m.name]) for m in measures] for h in labelled])
        k = max(1, min(max_groups, len(labelled), round(math.sqrt(len(labelled)))))
        if len(labelled) == 1 or k == 1:
            assignment = np.ones(len(labelled), dtype=int)
        else:
            assignment = fcluster(linkage(np.clip(vectors, -5, 5), method="average", metric="euclidean"), t=k,
                                  criterion="maxclust")
        members: dict[int, list[str]] = {}
        for head, cluster in zip(labelled, assignment):
            members.setdefault(int(cluster), []).append(head)
        for heads in sorted(members.values(), key=lambda hs: (-len(hs), labelled.index(hs[0]))):
            counts: dict[str, int] = {}
            for h in heads:
                for word in atlas.labels(h):
                    counts[word] = counts.get(word, 0) + 1
            common = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if 2 * c >= len(heads)]
            groups.append(Group(", ".join(common) if common else "mixed effects", heads, common))
    if quiet:
        groups.append(Group("no significant effect", quiet, []))
    return groups


def _standardized(e: Effect) -> float:
    if math.isfinite(e.d):
        return e.d
    half = (e.high - e.low) / 2
    return e.mean / half if half > 0 else (0.0 if e.mean == 0 else math.copysign(5.0, e.mean))
