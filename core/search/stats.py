"""Statistics of a search: paired differences with intervals, selection stability, rank agreement.

Every candidate of a round is generated on the same prompt-seed pairs as the current set S (the images
share their initial noise), so a candidate is judged by the paired difference candidate − S per pair,
which cancels most of the seed-to-seed variance. A score is a vector of leaf scores per pair; the
objective's value on a set of pairs is its formula applied to the leaf means (as the paper's code does),
so for a plain objective it is the mean.

Intervals: for a plain objective, the Student t interval of the mean per-pair difference (t quantile by
bisection on the exact integer-dof CDF, Abramowitz & Stegun 26.7.3-4: scipy is not a dependency); for a composite objective (whose value is a formula of means, not a mean), the percentile
bootstrap of the difference of the formula over resampled pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headhunter.errors import SearchError
from headhunter.objective.composite import Composite, combine

#: Resamples for bootstrap intervals and selection stability (fixed seed: the same data gives the same figures).
N_BOOT = 1000


@dataclass
class Estimate:
    """A value with a 95 % interval over n samples (bootstrap, t, or +-1.96 bootstrap sd for FD-digits; how is
    documented where it is made): the one interval type of headhunter and its plugins."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}]"

    def as_list(self) -> list[float]:
        return [self.mean, self.low, self.high, self.n]


def t_two_sided(t: float, dof: int) -> float:
    """A(t | dof) = P(|T| < t) for Student's T with integer dof >= 1 (Abramowitz & Stegun 26.7.3-4, exact)."""
    theta = math.atan(abs(t) / math.sqrt(dof))
    c2, total, term = math.cos(theta) ** 2, 1.0, 1.0
    if dof % 2 == 1:
        for k in range(1, (dof - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inner = math.sin(theta) * math.cos(theta) * total if dof > 1 else 0.0
        return 2.0 / math.pi * (theta + inner)
    for k in range(1, dof // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_quantile(p: float, dof: int) -> float:
    """Student t quantile for integer dof >= 1: bisection on the exact CDF (t_two_sided) to 1e-10."""
    if dof < 1:
        raise SearchError(f"a t quantile needs at least 1 degree of freedom; got {dof}")
    if not 0.0 < p < 1.0:
        raise SearchError(f"quantile level must be in (0, 1); got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    target, low, high = 2.0 * p - 1.0, 0.0, 1.0
    while t_two_sided(high, dof) < target:
        high *= 2.0
    while high - low > 1e-10 * max(1.0, high):
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_two_sided(mid, dof) < target else (low, mid)
    return (low + high) / 2.0


def objective_value(objective: Any, leaf_means: np.ndarray, leaves: Sequence[str]) -> np.ndarray:
    """The objective's formula applied to leaf means [..., L] (leaves in this order) -> [...] float64."""
    if not isinstance(objective, Composite):
        if leaf_means.shape[-1] != 1:
            raise SearchError(f"internal: a plain objective has one leaf, got {list(leaves)}")
        return leaf_means[..., 0].astype(np.float64)
    values = {leaf: torch.as_tensor(leaf_means[..., i], dtype=torch.float64) for i, leaf in enumerate(leaves)}
    return combine(objective, values).double().numpy()


def paired_difference(a: np.ndarray, b: np.ndarray, objective: Any, leaves: Sequence[str], level: float = 0.95,
                      seed: int = 0) -> Estimate:
    """Objective of a minus objective of b over the same pairs, with an interval at `level`.

    a, b: leaf scores [n_pairs, n_leaves], row i of both from the same prompt-seed pair. Plain objective:
    Student t interval of the mean per-pair difference (n >= 2; a single pair gives an infinite interval).
    Composite: percentile bootstrap (N_BOOT resamples of the pairs)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
        raise SearchError(f"paired scores must have equal shapes [n >= 1, leaves]; got {a.shape} and {b.shape}")
    n = a.shape[0]
    mean = float(objective_value(objective, a.mean(0), leaves) - objective_value(objective, b.mean(0), leaves))
    if n < 2:
        return Estimate(mean, -math.inf, math.inf, n)

    if not isinstance(objective, Composite):
        d = a[:, 0] - b[:, 0]
        half = t_quantile(0.5 + level / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
        return Estimate(mean, mean - half, mean + half, n)
    idx = np.random.default_rng(seed).integers(0, n, size=(N_BOOT, n))
    boot = objective_value(objective, a[idx].mean(1), leaves) - objective_value(objective, b[idx].mean(1), leaves)
    low, high = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return Estimate(mean, float(low), float(high), n)


def selection_frequency(scores: Mapping[str, np.ndarray], objective: Any, leaves: Sequence[str], top_k: int,
                        chosen: Sequence[str], n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, dict[str, float]]:
    """Bootstrap stability of a selection: resample the pairs (the same resample for every candidate, as
    the images are paired), re-rank, and count. Returns (frequency with which exactly `chosen` is the
    top k, {candidate: frequency of being in the top k}) ; ties go to the earlier candidate, as in the search.

    scores: candidate -> leaf scores [n_pairs, n_leaves] on the same pairs, in pool order."""
    names = list(scores)
    x = np.stack([np.asarray(scores[c], np.float64) for c in names])  # [C, n, L]
    n = x.shape[1]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    values = objective_value(objective, x[:, idx].mean(2), leaves)  # [C, B]
    order = np.argsort(-values, axis=0, kind="stable")[:top_k]  # [k, B]
    in_top = np.zeros_like(values, dtype=bool)
    np.put_along_axis(in_top, order, True, axis=0)
    chosen_idx = [names.index(c) for c in chosen]
    exact = in_top[chosen_idx].all(axis=0).mean()
    return float(exact), {c: float(f) for c, f in zip(names, in_top.mean(axis=1))}


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two score lists over the same items (ties counted as in tau-b)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.size < 2:
        raise SearchError(f"Kendall tau needs two equal-length lists of 2+ items; got {x.shape} and {y.shape}")
    i, j = np.triu_indices(x.size, k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n1, n2 = (dx != 0).sum(), (dy != 0).sum()
    if n1 == 0 or n2 == 0:
        return float("nan")
    return float((dx * dy).sum() / math.sqrt(n1 * n2))
