"""How a search round spends its images: the exhaustive schedule (paper Algorithm 1) or racing.

A round has candidates c (scored as S ∪ {c}) and the current set S; every image of a candidate is paired
with S's image on the same prompt-seed pair. Pairs are always used in the order of the search's pair
list, so "n pairs" means the first n, for every candidate alike.

- `exhaustive`: every candidate on all M pairs (Algorithm 1 as in the paper; the reference).
- `racing`: every candidate on the first `first_pairs` pairs; a candidate whose paired difference to the
  k-th best (by mean) is confidently negative (upper end of its interval at `level` below 0) is dropped;
  the survivors get twice the pairs; repeat until only k are left (the leaders separated), all M pairs
  are used, or the round's budget (a fraction of the exhaustive round's images) is spent. Why racing and
  not successive halving: halving drops a fixed fraction at every stage whether or not the data can tell
  the candidates apart, and on this problem most heads are within noise of each other, so it drops
  contenders on noise; racing drops only what is confidently behind, and stops as soon as the leaders
  separate (docs/search.md has the measurement).

This module is pure: it asks `fetch` to make scores available and reads them with `get`, so the same code
runs inside the search (fetch = generate) and against a precomputed score matrix (the allocation study).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headhunter.errors import SearchError
from headhunter.search.stats import Estimate, objective_value, paired_difference, selection_frequency

SCHEDULES = ("exhaustive", "racing")
#: The name `fetch`/`get` use for the current set S (round 0: no guidance).
REFERENCE = "<S>"


@dataclass
class RoundOutcome:
    """What a round learned: selection, per-candidate scores on their pairs, paired differences vs S,
    what racing dropped (at how many pairs), the indistinguishable leaders and the selection's stability."""

    selected: list[str]
    scores: dict[str, float]
    pairs: dict[str, int]
    vs_set: dict[str, Estimate]
    dropped: dict[str, int] = field(default_factory=dict)
    leaders: list[str] = field(default_factory=list)
    stability: float = float("nan")
    frequency: dict[str, float] = field(default_factory=dict)
    images: int = 0
    stages: list[int] = field(default_factory=list)


def run_round(
    candidates: Sequence[str],
    fetch: Callable[[dict[str, int]], None],
    get: Callable[[str, int], np.ndarray],
    *,
    total_pairs: int,
    top_k: int,
    objective: Any,
    leaves: Sequence[str],
    schedule: str = "exhaustive",
    first_pairs: int = 8,
    budget: float = 1.0,
    level: float = 0.95,
) -> RoundOutcome:
    """Score `candidates` by `schedule` and pick the top `top_k`.

    fetch({name: n}): make sure each named candidate (or REFERENCE) has scores on its first n pairs.
    get(name, n): those leaf scores, [n, len(leaves)]. Ties go to the earlier candidate (pool order).
    Raises SearchError for an unknown schedule or impossible parameters."""
    if schedule not in SCHEDULES:
        raise SearchError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not 1 <= top_k <= len(candidates):
        raise SearchError(f"top_k={top_k} but the round has {len(candidates)} candidates")
    if not 0.0 < budget <= 1.0:
        raise SearchError(f"budget must be a fraction in (0, 1] of the exhaustive round's images; got {budget}")
    order = {c: i for i, c in enumerate(candidates)}
    value = lambda c, n: float(objective_value(objective, get(c, n).mean(0), leaves))  # noqa: E731
    cap = budget * len(candidates) * total_pairs
    n = total_pairs if schedule == "exhaustive" else max(2, min(total_pairs, first_pairs))
    alive, dropped, stages, spent, seen = list(candidates), {}, [], 0, 0
    while True:
        fetch({**{c: n for c in alive}, REFERENCE: n})
        spent += (n - seen) * len(alive)
        seen = n
        stages.append(n)
        means = {c: value(c, n) for c in alive}
        ranked = sorted(alive, key=lambda c: (-means[c], order[c]))
        if schedule == "racing" and len(ranked) > top_k:
            kth = get(ranked[top_k - 1], n)
            for c in ranked[top_k:]:
                if paired_difference(get(c, n), kth, objective, leaves, level).high < 0:
                    dropped[c] = n
            alive = [c for c in alive if c not in dropped]
        if schedule == "exhaustive" or len(alive) <= top_k or n >= total_pairs:
            break
        room = int((cap - spent) // len(alive))
        next_n = min(total_pairs, 2 * n, n + room)
        if next_n <= n:
            break
        n = next_n
    means = {c: value(c, n) for c in alive}
    ranked = sorted(alive, key=lambda c: (-means[c], order[c]))
    selected = ranked[:top_k]
    pairs = {c: dropped.get(c, n) for c in candidates}
    scores = {c: (means[c] if c in means else value(c, pairs[c])) for c in candidates}
    vs_set = {c: paired_difference(get(c, pairs[c]), get(REFERENCE, pairs[c]), objective, leaves, level) for c in candidates}
    weakest = get(selected[-1], n)
    leaders = [c for c in ranked if c in selected or paired_difference(get(c, n), weakest, objective, leaves, level).high >= 0]
    stability, frequency = selection_frequency({c: get(c, n) for c in alive}, objective, leaves, top_k, selected)
    return RoundOutcome(selected, scores, pairs, vs_set, dropped, leaders, stability, frequency, spent, stages)
