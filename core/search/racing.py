"""Error-controlled racing for a HeadHunter round, and its null calibration (issue 23).

A round has candidates c (scored as S ∪ {c}) and the current set S (`REFERENCE`); every image of a
candidate is paired with S's image on the same prompt-seed pair, and "n pairs" always means the first n
of the round's pair list, for every candidate alike. So for two candidates c and d, x_d[i] - x_c[i] is a
paired difference in which the seed and S's own noise cancel.

The drop rule ("confidently behind the top k", simultaneous over candidates and looks)
-----------------------------------------------------------------------------------------
Stages follow the planned doubling n_0 = first_pairs, n_{j+1} = min(2 n_j, M) (8, 16, 32, 64 for the
demo); a stage the budget cannot pay in full is cut to what it can pay and is the last. After every stage
but the last there is a *look*; with L planned looks, look j spends alpha_j (equal shares alpha / L by
default; `spending` reweights, which measured within 1 % on images). At a look with a alive candidates
(of the round's K) on n pairs:

1. per-pair contributions y_c[i] (the single leaf; the objective is their mean) and means m_c;
2. two-way residuals r_c[i] = y_c[i] - m_c - (ybar[i] - ybar), which remove the per-pair component shared
   by all candidates (S's noise, prompt difficulty), and per-candidate variances
   s_c^2 = sum_i r_c[i]^2 / d with d = (n - 1)(a - 1)/a;
3. empirical-Bayes moderation of the s_c^2 (Smyth 2004, limma's `squeezeVar`): a scaled inverse-chi^2
   prior (d0, s0^2) fitted by moments of log s_c^2, posterior s~_c^2 = (d0 s0^2 + d s_c^2) / (d0 + d)
   on d0 + d degrees of freedom. Homoscedastic Gaussian data give d0 -> inf (the pooled variance, Tukey's
   setting); heavy tails or unequal variances give a small d0, so each candidate is judged on its own
   spread (self-normalised, which is what keeps the heavy-tailed null in bound);
4. for every ordered pair T[d, c] = (m_d - m_c) / sqrt((s~_d^2 + s~_c^2) / n), a t statistic on d0 + d
   dof under "d is not better than c";
5. H_c = "c is in the true top k", statistic s_c = the k-th largest T[d, c] over the alive rivals d;
   Holm's step-down over the alive H_c with Bonferroni over the K - 1 possible rivals: with m hypotheses
   left, drop every c with s_c > q(m) = t^{-1}(1 - alpha_look / ((K - 1) m); d0 + d), and repeat with the
   smaller m until nothing changes. A dropped c is confidently behind the top k.

Why this controls the error (FWER of dropping a candidate of the true top k, per round; for top_k = 1 a
candidate tied with the best): if H_c is true, at most k - 1 rivals are truly better, so s_c > q needs a
rival that is not better to be ahead by more than q, probability <= (K - 1) P(t > q) whichever rivals are
still alive (they are a subset of the K - 1). At a look, the first true H_c rejected by Holm is rejected
with at least |T| hypotheses left (T: the true top k, all still alive if no error happened before), so
the look errs with probability <= |T| * alpha_look / |T| = alpha_look; summed over the L looks, <= alpha.
The k-th best by mean is never dropped (only k - 1 means exceed it), so at least k survive. The rule
compares candidates to *each other* with thresholds fixed before the data are seen; the rule it replaces
compared each candidate to the data-selected k-th best at a marginal 97.5 % level (winner's curse). The
bound is exact up to the t approximation of the moderated statistic (checked by simulation).

After the last stage: the top k survivors by objective are selected (ties to the earlier candidate);
`leaders` are the survivors not confidently behind the top k at the final stage (the same Holm test, at
level alpha as a family of its own), i.e. the set the data cannot tell from the selection; `vs_set` is
each candidate's marginal paired t interval against S on its own pairs (an estimate, not a decision).

Assumptions: pairs are independent and identically distributed across the pair list (the pair order is
fixed before the round); the objective is a mean of per-pair contributions (for a composite objective,
pass its delta-method linearisation as `contributions`); residuals of different candidates on a pair are
not negatively correlated beyond the shared component (positive correlation, e.g. heads of one layer, only
makes the test conservative). Measured on Gaussian, t3, shared-component and unequal-variance nulls in
RESULTS.md.

Calibration (`calibrate`): from the complete first stage (every candidate on the first `first_pairs`
pairs, which racing never truncates) build a null in which every candidate is tied with S, replay the
same allocation on it many times, and compare the real round's drops, leaders, stability and apparent
gain (selected minus S) with the null's. Pure numpy: no scipy (the project does not depend on it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

#: The name `fetch`/`get` use for the current set S (round 0: no guidance).
REFERENCE = "<S>"
#: Bootstrap resamples for the selection stability (fixed seed: the same data give the same figures).
N_BOOT = 1000
NULLS = ("parametric", "signflip")

Scores = np.ndarray
ObjectiveValue = Callable[[np.ndarray], np.ndarray]


class RacingError(ValueError):
    """Impossible racing or calibration parameters (becomes `SearchError` inside headhunter)."""


# ----- special functions (numpy/math only) ---------------------------------------------------------
def digamma(x: float) -> float:
    """psi(x) for x > 0: recurrence up to x >= 10, then the asymptotic series (error < 1e-12)."""
    acc = 0.0
    while x < 10.0:
        acc -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    return acc + math.log(x) - 0.5 / x - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (1 / 240 - f * 5 / 660))))


def trigamma(x: float) -> float:
    """psi'(x) for x > 0: recurrence up to x >= 10, then the asymptotic series (error < 1e-12)."""
    acc = 0.0
    while x < 10.0:
        acc += 1.0 / (x * x)
        x += 1.0
    f = 1.0 / (x * x)
    return acc + 1 / x + f / 2 + f / x * (1 / 6 - f * (1 / 30 - f * (1 / 42 - f / 30)))


def normal_isf(p: float) -> float:
    """z with P(Z > z) = p, for 0 < p < 1 (bisection on erfc to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise RacingError(f"tail probability must be in (0, 1); got {p}")
    if p > 0.5:
        return -normal_isf(1.0 - p)
    lo, hi = 0.0, 40.0
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * math.erfc(mid / math.sqrt(2)) > p else (lo, mid)
    return (lo + hi) / 2


def _t_sf_int(t: float, dof: int) -> float:
    """P(T > t) for t >= 0, integer dof >= 1 (Abramowitz & Stegun 26.7.3-4, the series of the project's stats)."""
    theta = math.atan(t / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    total, term = 1.0, 1.0
    if dof % 2 == 1:
        for k in range(1, (dof - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inner = s * math.cos(theta) * total if dof > 1 else 0.0
        inside = 2.0 / math.pi * (theta + inner)
    else:
        for k in range(1, dof // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total
    return (1.0 - inside) / 2.0


@lru_cache(maxsize=4096)
def t_isf(p: float, dof: float) -> float:
    """t with P(T_dof > t) = p (0 < p < 0.5), dof > 0 or inf.

    dof <= 300: exact series at floor(dof) (a conservative rounding: the quantile falls with dof), by
    bisection; larger dof: Fisher's expansion in 1/dof around the normal quantile (relative error < 1e-6 at
    the tails used here); inf: the normal quantile."""
    if not 0.0 < p < 0.5:
        raise RacingError(f"one-sided tail probability must be in (0, 0.5); got {p}")
    if dof <= 0:
        raise RacingError(f"a t quantile needs positive degrees of freedom; got {dof}")
    z = normal_isf(p)
    if math.isinf(dof):
        return z
    if dof > 300:
        v = float(dof)
        z3, z5, z7 = z**3, z**5, z**7
        return (z + (z3 + z) / (4 * v) + (5 * z5 + 16 * z3 + 3 * z) / (96 * v**2)
                + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * v**3))
    k = max(1, int(math.floor(dof)))
    lo, hi = 0.0, max(1.0, z)
    while _t_sf_int(hi, k) > p:
        hi *= 2.0
    while hi - lo > 1e-10 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_sf_int(mid, k) > p else (lo, mid)
    return (lo + hi) / 2


# ----- the statistics of one look ----------------------------------------------------------------------
def mean_objective(scores: np.ndarray) -> np.ndarray:
    """The plain objective: the mean over pairs of the single leaf. scores [..., n, L] -> [...]."""
    return np.asarray(scores, np.float64)[..., 0].mean(-1)


def first_leaf(scores: np.ndarray) -> np.ndarray:
    """Per-pair contributions of a plain objective: the single leaf. scores [..., n, L] -> [..., n]."""
    return np.asarray(scores, np.float64)[..., 0]


def squeeze_variances(s2: np.ndarray, df: float) -> tuple[np.ndarray, float, float, float]:
    """Empirical-Bayes moderated variances (Smyth 2004, eqs. for the moment fit of limma's fitFDist).

    s2: per-candidate sample variances, each on `df` degrees of freedom. Fits s2 ~ s0^2 F(df, d0) by the
    mean and variance of log s2 (trigamma(d0/2) = var(log s2) - trigamma(df/2)); returns
    (posterior variances (d0 s0^2 + df s2)/(d0 + df), posterior dof d0 + df, d0, s0^2). Fewer than 3
    positive variances: no moderation (d0 = 0). The posterior dof is capped at the pooled dof
    (len(s2) * df), as limma's eBayes does: a prior cannot know more than all the data."""
    s2 = np.asarray(s2, np.float64)
    pooled_df = s2.size * df
    pos = s2[s2 > 0]
    if pos.size < 3:
        return s2.copy(), df, 0.0, float(pos.mean()) if pos.size else 0.0
    e = np.log(pos) - digamma(df / 2) + math.log(df / 2)
    excess = float(e.var(ddof=1)) - trigamma(df / 2)
    if excess <= 1e-12 or trigamma(1e6) >= excess:  # no spread beyond chi^2 noise: the pooled variance
        s02 = float(math.exp(e.mean()))
        return np.full_like(s2, s02), pooled_df, math.inf, s02
    lo, hi = 1e-8, 1e6  # trigamma is decreasing: solve trigamma(h) = excess for h = d0 / 2
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if trigamma(mid) > excess else (lo, mid)
    d0 = 2 * math.sqrt(lo * hi)
    s02 = float(math.exp(e.mean() + digamma(d0 / 2) - math.log(d0 / 2)))
    return (d0 * s02 + df * s2) / (d0 + df), min(d0 + df, pooled_df), d0, s02


@dataclass(frozen=True)
class Look:
    """One interim decision: pairs, alive candidates, the alpha it spent, its threshold and prior dof."""

    pairs: int
    alive: int
    alpha: float
    threshold: float
    prior_df: float
    dropped: int


def pairwise_t(y: np.ndarray) -> tuple[np.ndarray, float]:
    """T[d, c] = (m_d - m_c) / se_dc for candidates' per-pair contributions y [a, n] on the same pairs,
    with moderated per-candidate variances of the two-way residuals; returns (T, dof)."""
    a, n = y.shape
    m = y.mean(1)
    r = y - m[:, None] - y.mean(0)[None, :] + m.mean()
    df = (n - 1) * (a - 1) / a
    s2, dof, _, _ = squeeze_variances((r * r).sum(1) / df, df)
    se = np.sqrt((s2[:, None] + s2[None, :]) / n)
    diff = m[:, None] - m[None, :]
    exact = np.where(diff > 0, np.inf, np.where(diff < 0, -np.inf, 0.0))  # no noise: exact differences
    t = np.divide(diff, se, out=exact, where=se > 0)
    return t, dof


def confidently_behind(y: np.ndarray, top_k: int, alpha: float, comparators: int | None = None
                       ) -> tuple[np.ndarray, float, float]:
    """Which of a candidates (per-pair contributions y [a, n], same pairs) are confidently behind the top k.

    H_c: "c is in the true top k". Its statistic s_c is the top_k-th largest T[d, c] over the other alive
    d; under H_c at least one of those top_k rivals is not truly better, so P(s_c > q) <= comparators *
    P(t_dof > q) (Bonferroni over the rivals; comparators = K - 1, every candidate of the round, alive or
    not, which keeps the bound valid while the alive set shrinks). The H_c are then rejected by Holm's
    step-down at level alpha: with m hypotheses left, reject those with s_c > q(m) =
    t^{-1}(1 - alpha / (comparators * m)), and repeat with the smaller m until nothing changes (the usual
    equivalent of Holm's sequential form for monotone thresholds). The T matrix is computed once, so the
    p-values are fixed during the step-down. Returns (mask [a], last threshold, dof)."""
    a, n = y.shape
    if a <= top_k or n < 2:
        return np.zeros(a, bool), math.inf, math.nan
    comparators = a - 1 if comparators is None else comparators
    if comparators < a - 1:
        raise RacingError(f"comparators={comparators} must count at least the {a - 1} other alive candidates")
    t, dof = pairwise_t(y)
    np.fill_diagonal(t, -np.inf)
    s = np.partition(t, a - top_k, axis=0)[a - top_k]  # top_k-th largest of each column
    m = a
    while True:
        q = t_isf(alpha / (comparators * m), dof)
        behind = s > q
        if a - int(behind.sum()) == m:
            return behind, q, dof
        m = a - int(behind.sum())


def planned_stages(first_pairs: int, total_pairs: int) -> list[int]:
    """The doubling schedule first, 2 first, ... capped at total_pairs (always ends at total_pairs)."""
    stages = [min(first_pairs, total_pairs)]
    while stages[-1] < total_pairs:
        stages.append(min(2 * stages[-1], total_pairs))
    return stages


# ----- the round --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A value with an interval over n pairs (the project's `headhunter.stats.Estimate` fields)."""

    mean: float
    low: float
    high: float
    n: int


@dataclass
class RoundOutcome:
    """What a round learned (fields of `headhunter.schedule.RoundOutcome`, plus the looks)."""

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
    looks: list[Look] = field(default_factory=list)

    @property
    def gain(self) -> float:
        """Apparent gain of the selection: mean paired difference selected - S on the final pairs."""
        return float(np.mean([self.vs_set[c].mean for c in self.selected]))


def paired_interval(diff: np.ndarray, level: float) -> Estimate:
    """Mean of per-pair differences with its marginal Student t interval at `level` (n < 2: infinite)."""
    n = diff.size
    mean = float(diff.mean())
    if n < 2:
        return Estimate(mean, -math.inf, math.inf, n)
    half = t_isf((1 - level) / 2, n - 1) * float(diff.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def selection_frequency(x: np.ndarray, objective_value: ObjectiveValue, top_k: int, chosen: Sequence[int],
                        n_boot: int = N_BOOT, seed: int = 0, chunk: int = 50) -> tuple[float, np.ndarray]:
    """Bootstrap stability: resample the pairs (one resample for all candidates: they are paired), re-rank
    (ties to the earlier candidate), count. x [a, n, L] -> (frequency that exactly `chosen` is the top k,
    per-candidate frequency of being in the top k)."""
    a, n = x.shape[:2]
    if n_boot <= 0:
        return math.nan, np.full(a, math.nan)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    in_top = np.zeros((a, n_boot), bool)
    for s in range(0, n_boot, chunk):
        values = objective_value(x[:, idx[s:s + chunk]])  # [a, b]
        order = np.argsort(-values, axis=0, kind="stable")[:top_k]
        np.put_along_axis(in_top[:, s:s + chunk], order, True, axis=0)
    return float(in_top[list(chosen)].all(0).mean()), in_top.mean(1)


def _as_scores(a: np.ndarray, n: int, name: str) -> np.ndarray:
    a = np.asarray(a, np.float64)
    a = a[:, None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[0] != n:
        raise RacingError(f"get({name!r}, {n}) returned shape {a.shape}; expected [{n}, leaves]")
    return a


def run_round(
    candidates: Sequence[str],
    fetch: Callable[[dict[str, int]], None],
    get: Callable[[str, int], np.ndarray],
    *,
    total_pairs: int,
    top_k: int,
    objective_value: ObjectiveValue = mean_objective,
    contributions: Callable[[np.ndarray], np.ndarray] = first_leaf,
    first_pairs: int = 8,
    budget: float = 0.5,
    alpha: float = 0.05,
    level: float = 0.95,
    spending: Sequence[float] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> RoundOutcome:
    """Race `candidates` (module docstring) and pick the top `top_k`.

    fetch({name: n}): make sure each named candidate (and REFERENCE) has scores on its first n pairs.
    get(name, n): those scores, [n, leaves] (or [n]). objective_value: scores [..., n, L] -> [...]
    (default: mean of the single leaf); contributions: scores [..., n, L] -> per-pair [..., n] whose mean is
    the objective (the drop test's input). budget: most candidate images, as a fraction of the exhaustive
    round's len(candidates) * total_pairs; alpha: the round's family-wise error of dropping a top-k
    candidate (and, separately, of excluding one from `leaders`); level: of the marginal `vs_set` intervals;
    spending: relative shares of alpha per look (default equal); n_boot, seed: the stability bootstrap
    (n_boot = 0 skips it: stability and frequency are NaN). Raises RacingError for impossible parameters."""
    k_all = len(candidates)
    if not 1 <= top_k <= k_all:
        raise RacingError(f"top_k={top_k} but the round has {k_all} candidates; allowed: 1..{k_all}")
    if len(set(candidates)) != k_all or REFERENCE in candidates:
        raise RacingError(f"candidates must be distinct names other than {REFERENCE!r}")
    if not 2 <= first_pairs <= total_pairs:
        raise RacingError(f"first_pairs={first_pairs} must be in 2..total_pairs={total_pairs}")
    if not 0.0 < budget <= 1.0 or budget * total_pairs < first_pairs:
        raise RacingError(f"budget={budget} must be in (0, 1] and cover the first stage "
                          f"(at least first_pairs/total_pairs = {first_pairs / total_pairs:.3g})")
    if not 0.0 < alpha < 0.5 or not 0.5 < level < 1.0:
        raise RacingError(f"alpha={alpha} must be in (0, 0.5) and level={level} in (0.5, 1)")
    plan = planned_stages(first_pairs, total_pairs)
    n_looks = max(1, len(plan) - 1)
    weights = np.ones(n_looks) if spending is None else np.asarray(spending, np.float64)
    if weights.shape != (n_looks,) or (weights <= 0).any():
        raise RacingError(f"spending must give {n_looks} positive weights (one per look at {plan[:-1]}); got {spending}")
    alpha_looks = alpha * weights / weights.sum()
    cap = budget * k_all * total_pairs
    alive = list(range(k_all))
    dropped: dict[str, int] = {}
    stages: list[int] = []
    looks: list[Look] = []
    spent, seen, j = 0, 0, 0
    n = plan[0]
    while True:
        fetch({**{candidates[c]: n for c in alive}, REFERENCE: n})
        spent += (n - seen) * len(alive)
        seen = n
        stages.append(n)
        nxt = plan[j + 1] if j + 1 < len(plan) and n == plan[j] else None
        if nxt is None or len(alive) <= top_k:
            break
        x = np.stack([_as_scores(get(candidates[c], n), n, candidates[c]) for c in alive])
        behind, q, dof = confidently_behind(contributions(x), top_k, float(alpha_looks[j]), k_all - 1)
        looks.append(Look(n, len(alive), float(alpha_looks[j]), q, dof, int(behind.sum())))
        dropped.update({candidates[c]: n for c, b in zip(alive, behind) if b})
        alive = [c for c, b in zip(alive, behind) if not b]
        if len(alive) <= top_k:
            break
        room = int((cap - spent) // len(alive))
        if room <= 0:
            break
        n, j = min(nxt, n + room), j + 1  # a budget-truncated stage (n < plan[j]) is the last
    x = np.stack([_as_scores(get(candidates[c], n), n, candidates[c]) for c in alive])
    means = objective_value(x)
    ranked = [alive[i] for i in np.argsort(-means, kind="stable")]
    selected = ranked[:top_k]
    ref = _as_scores(get(REFERENCE, n), n, REFERENCE)
    pairs = {c: dropped.get(c, n) for c in candidates}
    scores, vs_set = {}, {}
    for c in candidates:
        sc = _as_scores(get(c, pairs[c]), pairs[c], c)
        scores[c] = float(objective_value(sc[None])[0])
        vs_set[c] = paired_interval(contributions(sc) - contributions(ref[:pairs[c]]), level)
    behind, _, _ = confidently_behind(contributions(x), top_k, alpha, k_all - 1)
    leaders = [candidates[c] for c in ranked if c in selected or not behind[alive.index(c)]]
    stability, freq = selection_frequency(x, objective_value, top_k, [alive.index(c) for c in selected], n_boot, seed)
    frequency = {candidates[c]: float(f) for c, f in zip(alive, freq)}
    return RoundOutcome([candidates[c] for c in selected], scores, pairs, vs_set, dropped, leaders, stability,
                        frequency, spent, stages, looks)


# ----- calibration ("hunt --calibrate") ---------------------------------------------------------------
@dataclass(frozen=True)
class NullModel:
    """A null for one round: every candidate tied with S (mean 0), with the measured spread.

    A null round's paired difference is d*[c, j] = g_j + e_cj: g the per-pair component shared by all
    candidates (S's own noise, prompt/seed difficulty), e the candidate's own noise.
    parametric: g ~ N(0, sigma_g^2), e_cj = sigma_c * (a unit-variance Student t on `tail_df` dof, or a
      standard normal when tail_df is inf), sigma_c^2 the candidate's moderated two-way residual variance
      on the complete first stage (pooled when the data show no excess spread), rescaled so that their
      mean is the unbiased pooled variance (the log-moment prior scale of `squeeze_variances` is low under
      heavy tails), tail_df matched to the
      excess kurtosis of those residuals (4 + 6 / kurtosis, at least 4.5; normal when <= 0). A Gaussian
      null under heavy-tailed data made the gain test liberal (7.5 % at a nominal 5 % under t3).
    signflip: e_.j = eps_j * (a whole first-stage row of two-way residuals, drawn with replacement), and
      g_j = eps'_j * (a measured row effect, drawn with replacement), eps = +-1 independent signs; both
      rescaled to unbiased variance. Keeps unequal variances, cross-candidate correlation and tails as
      observed, symmetrised by the sign (assumes the null differences are symmetric)."""

    kind: str
    sigma_c: np.ndarray  # [K]
    sigma_g: float
    prior_df: float
    tail_df: float
    residual_rows: np.ndarray  # [n1, K]
    shared: np.ndarray  # [n_g] centred row effects with variance sigma_g^2
    shared_pairs: int

    def sample(self, rng: np.random.Generator, total_pairs: int) -> np.ndarray:
        """One null round: paired differences [K, total_pairs] (S is the zero row)."""
        k = self.sigma_c.size
        if self.kind == "parametric":
            g = rng.standard_normal(total_pairs) * self.sigma_g
            if math.isinf(self.tail_df):
                e = rng.standard_normal((k, total_pairs))
            else:
                e = rng.standard_t(self.tail_df, (k, total_pairs)) * math.sqrt((self.tail_df - 2) / self.tail_df)
            return g[None, :] + e * self.sigma_c[:, None]
        signs = np.array([-1.0, 1.0])
        e = self.residual_rows[rng.integers(0, self.residual_rows.shape[0], total_pairs)]
        e = e * rng.choice(signs, total_pairs)[:, None]
        g = self.shared[rng.integers(0, self.shared.size, total_pairs)] * rng.choice(signs, total_pairs)
        return (g[:, None] + e).T


def _two_way(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(two-way residuals, candidate-centred row effects, residual dof per candidate) of d [a, n]."""
    a, n = d.shape
    m = d.mean(1)
    row = d.mean(0) - m.mean()
    return d - m[:, None] - row[None, :], row, (n - 1) * (a - 1) / a


def shared_component(d: np.ndarray) -> tuple[float, np.ndarray]:
    """Variance of the per-pair component shared by all candidates, from candidates' paired differences d
    [a >= 3, n] on the same pairs: var(row effects) - mean(s_c^2) / a (floored at 0), and the row effects
    rescaled to that variance (for resampling). Candidate means are removed first, so real effects do not
    enter; the drop rule is invariant to this component (it cancels in candidate-candidate differences),
    so the survivors of a racing round estimate it without selection bias."""
    r, row, df = _two_way(d)
    a, n = d.shape
    v = float(row.var(ddof=1))
    sigma_g2 = max(0.0, v - float(((r * r).sum(1) / df).mean()) / a)
    scale = math.sqrt(sigma_g2 / v * n / (n - 1)) if v > 0 else 0.0
    return sigma_g2, (row - row.mean()) * scale


def tail_dof(r: np.ndarray, sigma: np.ndarray) -> float:
    """Student t dof matching the excess kurtosis of two-way residuals r [K, n] standardised by sigma [K]
    (the pooled sd: unequal variances then read as tails too, which only makes the null wider)
    (corrected for the removal of each candidate's mean over n pairs, which shrinks kurtosis by
    sum(w^4)/sum(w^2)^2); inf (normal) when the excess is <= 0."""
    n = r.shape[1]
    z = (r / np.where(sigma > 0, sigma, 1.0)[:, None]).ravel()
    excess = float(np.mean(z**4) / np.mean(z**2) ** 2 - 3.0)
    shrink = ((1 - 1 / n) ** 4 + (n - 1) / n**4) / ((n - 1) / n) ** 2
    excess /= shrink
    return math.inf if excess <= 0 else max(4.5, 4.0 + 6.0 / excess)


def null_model(d: np.ndarray, kind: str = "parametric", final: np.ndarray | None = None) -> NullModel:
    """The null of `calibrate` from the complete first-stage paired differences d [K, n1] (NullModel).

    The shape of the candidates' own noise (their relative variances, the signflip rows) comes from the
    complete first stage. final: the survivors' paired differences on the round's final pairs [a, n_f];
    when given with a >= 3 and n_f > n1 it also sets the noise *scale* (pooled residual variance), the
    tails (kurtosis) and the shared component, from a * n_f values instead of K * n1. Measured: scale and
    shared component from 8 pairs alone made the gain test liberal (8.5 % at a nominal 5 % with shared
    noise, 7.5-10 % under t3 tails, where a variance from 384 values is very noisy)."""
    if kind not in NULLS:
        raise RacingError(f"unknown null {kind!r}; choose one of {', '.join(NULLS)}")
    d = np.asarray(d, np.float64)
    k, n1 = d.shape
    if k < 3 or n1 < 3:
        raise RacingError(f"a null needs at least 3 candidates on 3 pairs in the first stage; got {k} x {n1}")
    r, _, df = _two_way(d)
    raw = (r * r).sum(1) / df
    s2, _, d0, _ = squeeze_variances(raw, df)
    later = final is not None and final.shape[0] >= 3 and final.shape[1] > n1
    if later:
        f = np.asarray(final, np.float64)
        r_scale, _, df_scale = _two_way(f)
        scale2 = float(((r_scale * r_scale).sum(1) / df_scale).mean())
        sigma_g2, shared = shared_component(f)
    else:
        r_scale, scale2 = r, float(raw.mean())
        sigma_g2, shared = shared_component(d)
    ratio = scale2 / float(raw.mean()) if raw.mean() > 0 else 1.0
    s2 = s2 * (scale2 / float(s2.mean())) if s2.mean() > 0 else s2  # the unbiased pooled scale
    rows = r.T * math.sqrt(n1 / (n1 - 1) * k / (k - 1) * ratio)
    tails = tail_dof(r_scale, np.full(r_scale.shape[0], math.sqrt(scale2)))
    return NullModel(kind, np.sqrt(s2), math.sqrt(sigma_g2), d0, tails, rows, shared,
                     f.shape[1] if later else n1)


def _spread(d: np.ndarray) -> float:
    """First-stage spread of candidate means over its null expectation: var(m_c) / mean(s_c^2 / n1)
    (an F-type statistic: about 1 when the candidates are tied, large when they differ)."""
    k, n1 = d.shape
    m = d.mean(1)
    r = d - m[:, None] - d.mean(0)[None, :] + m.mean()
    s2 = (r * r).sum(1) / ((n1 - 1) * (k - 1) / k)
    return float(m.var(ddof=1) / max(s2.mean() / n1, 1e-300))


@dataclass
class Calibration:
    """Null distribution of a round's statistics beside the real ones, and the verdict.

    stats: drops, leaders, stability, gain (selected - S on the final pairs), spread (first stage).
    p_value: one-sided Monte Carlo p of the real gain, (1 + #{null gain >= real}) / (1 + n_null);
    distinguishable: p_value <= alpha (the real gain beats the null's 1 - alpha quantile, `threshold`).
    spread_p: the same test for the first-stage spread ("do the candidates differ at all")."""

    null: str
    params: dict[str, float]
    real: dict[str, float]
    null_stats: dict[str, np.ndarray]
    threshold: float
    p_value: float
    spread_p: float
    distinguishable: bool
    alpha: float
    test: str

    def table(self) -> str:
        """Real vs null (median, 5-95 % range, percentile of the real value), as Markdown."""
        lines = ["| statistic | real | null median | null 5-95 % | real's null percentile |", "|---|---|---|---|---|"]
        for key, real in self.real.items():
            v = self.null_stats[key]
            v = v[np.isfinite(v)]
            lo, med, hi = np.percentile(v, [5, 50, 95]) if v.size else (math.nan,) * 3
            pct = 100.0 * float((v <= real).mean()) if v.size else math.nan
            lines.append(f"| {key} | {real:.4g} | {med:.4g} | [{lo:.4g}, {hi:.4g}] | {pct:.0f} |")
        verdict = "distinguishable from null" if self.distinguishable else "indistinguishable from null"
        lines.append(f"\n**{verdict}**: {self.test}")
        return "\n".join(lines)


def _round_stats(out: RoundOutcome) -> dict[str, float]:
    return {"drops": float(len(out.dropped)), "leaders": float(len(out.leaders)), "stability": out.stability,
            "gain": out.gain}


def _matrix(scores: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
    if isinstance(scores, Mapping):
        return np.stack([np.asarray(v, np.float64).reshape(-1) for v in scores.values()])
    return np.asarray(scores, np.float64)


def calibrate(
    first_stage: np.ndarray | Mapping[str, np.ndarray],
    reference: np.ndarray,
    real: RoundOutcome,
    *,
    total_pairs: int,
    top_k: int,
    final_stage: np.ndarray | Mapping[str, np.ndarray] | None = None,
    final_reference: np.ndarray | None = None,
    first_pairs: int = 8,
    budget: float = 0.5,
    alpha: float = 0.05,
    spending: Sequence[float] | None = None,
    null: str = "parametric",
    n_null: int = 200,
    n_boot: int = 200,
    seed: int = 0,
) -> Calibration:
    """Is this round distinguishable from a pool of candidates all tied with S?

    first_stage: every candidate's per-pair contributions on the first `first_pairs` pairs ([K, n1] in pool
    order, or {name: [n1]}); reference: S's on the same pairs [n1]; real: the round's RoundOutcome (made by
    `run_round` with the same settings); final_stage, final_reference (optional, recommended): the
    survivors' and S's contributions on the round's final pairs, used only for the shared component's
    variance (see `null_model`). Builds `null_model(first_stage - reference, null, final)`, replays
    run_round on `n_null` null rounds (seeded) and tests the real apparent gain against the null's.

    Why the null is valid under racing, where dropped candidates have no later scores: the candidates' own
    noise is measured on the complete first stage only, which racing never truncates, and from residuals
    with every candidate's mean removed, so real effects do not inflate it; the shared component cancels
    in every drop decision, so the survivors' later pairs measure it without selection bias. The replay
    applies the same allocation, so the null statistics carry the same winner's curse as the real ones.
    Assumes the objective is the mean of the contributions (the default of run_round)."""
    x, ref = _matrix(first_stage), np.asarray(reference, np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != ref.size or x.shape[1] < first_pairs:
        raise RacingError(f"first_stage must be [K, n1 >= first_pairs={first_pairs}] with reference [n1]; "
                          f"got {x.shape} and {ref.shape}")
    if n_null < 20:
        raise RacingError(f"n_null={n_null} is too few for a 5 % test; use at least 20 (200 recommended)")
    final = None
    if final_stage is not None:
        f, fr = _matrix(final_stage), np.asarray(final_reference, np.float64).reshape(-1)
        if f.ndim != 2 or f.shape[1] != fr.size:
            raise RacingError(f"final_stage must be [survivors, n_f] with final_reference [n_f]; got {f.shape}, {fr.shape}")
        final = f - fr
    d = x[:, :first_pairs] - ref[:first_pairs]
    model = null_model(d, null, final)
    names = [f"c{i}" for i in range(d.shape[0])]
    index = {c: i for i, c in enumerate(names)}
    rng = np.random.default_rng(seed)
    stats: dict[str, list[float]] = {key: [] for key in ("drops", "leaders", "stability", "gain", "spread")}
    zero = np.zeros((total_pairs, 1))
    for b in range(n_null):
        sim = model.sample(rng, total_pairs)[:, :, None]
        get = (lambda c, n, sim=sim: zero[:n] if c == REFERENCE else sim[index[c], :n])
        out = run_round(names, lambda wanted: None, get, total_pairs=total_pairs, top_k=top_k,
                        first_pairs=first_pairs, budget=budget, alpha=alpha, spending=spending, n_boot=n_boot, seed=b)
        for key, value in _round_stats(out).items():
            stats[key].append(value)
        stats["spread"].append(_spread(sim[:, :first_pairs, 0]))
    null_stats = {key: np.asarray(v) for key, v in stats.items()}
    real_stats = {**_round_stats(real), "spread": _spread(d)}
    gain = null_stats["gain"]
    p = (1 + int((gain >= real_stats["gain"]).sum())) / (1 + n_null)
    spread_p = (1 + int((null_stats["spread"] >= real_stats["spread"]).sum())) / (1 + n_null)
    threshold = float(np.quantile(gain, 1 - alpha))
    test = (f"one-sided Monte Carlo test of the apparent gain (selected - S on its final pairs) against "
            f"{n_null} replays of the same racing on a {null} null (all {d.shape[0]} candidates tied with S; "
            f"noise shape from the complete first stage of {first_pairs} pairs, scale, tails and shared "
            f"component from {model.shared_pairs} pairs): real {real_stats['gain']:+.4g}, null {100 * (1 - alpha):.0f}th "
            f"percentile {threshold:+.4g}, p = {p:.3g}; first-stage spread p = {spread_p:.3g}")
    params = {"sigma_e": float(np.sqrt(np.mean(model.sigma_c ** 2))), "sigma_g": model.sigma_g,
              "prior_df": model.prior_df, "tail_df": model.tail_df, "candidates": float(d.shape[0]), "first_pairs": float(first_pairs),
              "shared_pairs": float(model.shared_pairs)}
    return Calibration(null, params, real_stats, null_stats, threshold, p, spread_p, p <= alpha, alpha, test)


def calibrate_round(candidates: Sequence[str], get: Callable[[str, int], np.ndarray], real: RoundOutcome, *,
                    contributions: Callable[[np.ndarray], np.ndarray] = first_leaf, **settings: object
                    ) -> Calibration:
    """`calibrate` from the scores a round left behind (what `hunt --calibrate` calls after run_round):
    the complete first stage of every candidate and the survivors' final stage, read with `get`.
    settings: those of `calibrate` (total_pairs, top_k, first_pairs, budget, alpha, null, ...)."""
    n1 = int(settings.get("first_pairs", 8))
    n_f = real.stages[-1]
    survivors = [c for c in candidates if c not in real.dropped]
    row = lambda c, n: contributions(_as_scores(get(c, n), n, c)[None])[0]  # noqa: E731
    return calibrate(np.stack([row(c, n1) for c in candidates]), row(REFERENCE, n1), real,
                     final_stage=np.stack([row(c, n_f) for c in survivors]), final_reference=row(REFERENCE, n_f),
                     **settings)  # type: ignore[arg-type]
