"""How a search round spends its images: the exhaustive schedule (paper Algorithm 1) or racing.

A round has candidates c (scored as S ∪ {c}) and the current set S; every image of a candidate is paired
with S's image on the same prompt-seed pair. Pairs are always used in the order of the search's pair
list, so "n pairs" means the first n, for every candidate alike.

- `exhaustive`: every candidate on all M pairs (Algorithm 1 as in the paper; the reference).
- `racing`: every candidate on the first `first_pairs` pairs, then twice the pairs for the survivors, until
  only k are left, all M pairs are used, or the round's budget is spent. What is dropped is decided by the
  calibrated rule of `headhunter.search.racing`: a candidate is dropped only when it is confidently behind
  the top k, with the family-wise error of dropping a true top-k candidate at most alpha = 1 - `level` per
  round (Holm over the candidates, alpha spent over the looks, moderated paired t statistics; docs/search.md
  gives the rule and its simulated error and power). The rule it replaces tested each candidate against the
  data-selected k-th best at a marginal level, and on a tied null field dropped half of it (winner's curse).

This module is pure: it asks `fetch` to make scores available and reads them with `get`, so the same code
runs inside the search (fetch = generate) and against a precomputed score matrix (the allocation study).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headhunter.errors import SearchError
import headhunter.search.racing as racing
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
    looks: list[Any] = field(default_factory=list)  #: racing's looks (headhunter.search.racing.Look)
    calibration: Any = None  #: racing.Calibration, when asked for


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
    calibrate: bool = False,
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
    if schedule == "racing":
        return _race(candidates, fetch, get, total_pairs=total_pairs, top_k=top_k, objective=objective,
                     leaves=leaves, first_pairs=first_pairs, budget=budget, level=level, calibrate=calibrate)
    order = {c: i for i, c in enumerate(candidates)}
    value = lambda c, n: float(objective_value(objective, get(c, n).mean(0), leaves))  # noqa: E731
    cap = budget * len(candidates) * total_pairs
    n = total_pairs
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


def _race(candidates: Sequence[str], fetch: Callable[[dict[str, int]], None], get: Callable[[str, int], np.ndarray], *,
          total_pairs: int, top_k: int, objective: Any, leaves: Sequence[str], first_pairs: int, budget: float,
          level: float, calibrate: bool = False) -> RoundOutcome:
    """The calibrated racing rule (headhunter.search.racing): drops only what is confidently behind the top k,
    family-wise over candidates and looks at alpha = 1 - level."""
    def value(x: np.ndarray) -> np.ndarray:  # scores [..., n, L] -> objective [...]
        return objective_value(objective, x.mean(-2), leaves)

    linear = lambda x: contributions(objective, x, leaves)  # noqa: E731
    first = max(2, min(total_pairs, first_pairs))
    try:
        out = racing.run_round(candidates, fetch, get, total_pairs=total_pairs, top_k=top_k, objective_value=value,
                               contributions=linear, first_pairs=first, budget=budget, alpha=1.0 - level, level=level)
        calibration = racing.calibrate_round(candidates, get, out, contributions=linear, total_pairs=total_pairs,
                                             top_k=top_k, first_pairs=first, budget=budget,
                                             alpha=1.0 - level) if calibrate else None
    except racing.RacingError as err:
        raise SearchError(f"racing: {err}; with {total_pairs} prompt-seed pairs, give more seeds, a larger budget "
                          "(--budget), a smaller first stage (--first-pairs) or --allocation exhaustive") from None
    vs_set = {c: Estimate(e.mean, e.low, e.high, e.n) for c, e in out.vs_set.items()}
    return RoundOutcome(out.selected, out.scores, out.pairs, vs_set, out.dropped, out.leaders, out.stability,
                        out.frequency, out.images, out.stages, out.looks, calibration)


def contributions(objective: Any, x: np.ndarray, leaves: Sequence[str], step: float = 1e-6) -> np.ndarray:
    """Per-pair contributions whose mean is the objective (to first order): the objective's delta-method
    linearisation at the leaf means, f(m) + sum_l df/dm_l (y_l - m_l). Exact for a plain objective and for
    a weighted sum. x: scores [..., n, L] -> [..., n]."""
    x = np.asarray(x, np.float64)
    m = x.mean(-2)  # [..., L]
    f = objective_value(objective, m, leaves)
    out = np.broadcast_to(f[..., None], x.shape[:-1]).copy()
    for i in range(x.shape[-1]):
        bumped = m.copy()
        h = step * np.maximum(1.0, np.abs(m[..., i]))
        bumped[..., i] += h
        grad = (objective_value(objective, bumped, leaves) - f) / h
        out += grad[..., None] * (x[..., i] - m[..., i][..., None])
    return out
