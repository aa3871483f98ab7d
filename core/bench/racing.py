"""Simulation harness for racing.py: nulls first, then partial nulls, power, images and calibration.

Every figure is reproducible: each cell of each table draws from its own `np.random.default_rng(seed)` with
a fixed seed derived from the cell. Scores are simulated as paired differences candidate - S per pair
(the S row is zero): the seed's own effect cancels in the pairing and never reaches the rules.

Units: sigma = 0.27 is the per-pair sd of a candidate's paired difference to S measured on the demo
(docs/search.md); effects are in units of sigma. The demo schedule: M = 64 pairs, first stage 8, doubling,
budget 0.5, top_k = 1, alpha = 0.05.

    python sims.py              # every table (a few minutes on one core), Markdown on stdout
    python sims.py --quick      # fewer repeats
    python sims.py --only null,power
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

import headhunter.search.racing as R

SIGMA = 0.27
M, FIRST, BUDGET, ALPHA = 64, 8, 0.5, 0.05
NULL_KINDS = ("gaussian", "t3", "shared", "unequal")


# ----- data -------------------------------------------------------------------------------------------
def noise(rng: np.random.Generator, k: int, m: int, kind: str, sigma: float = SIGMA, rho: float = 0.5) -> np.ndarray:
    """Paired differences c - S with mean 0, per-pair sd `sigma`, [k, m].

    gaussian: iid N(0, sigma^2). t3: iid Student t with 3 dof scaled to sd sigma (heavy tails).
    shared: every candidate shares S's per-pair noise plus a per-pair component common to all
      candidates (together a fraction rho = 0.5 of the variance; both Gaussian), and its own rest.
    unequal: Gaussian with per-candidate sd sigma * exp(N(0, 0.35^2)) (some heads far noisier).
    shared_t3: the shared structure with every component t3."""
    if kind == "gaussian":
        return rng.standard_normal((k, m)) * sigma
    if kind == "t3":
        return rng.standard_t(3, (k, m)) * sigma / math.sqrt(3)
    if kind in ("shared", "shared_t3"):
        draw = (lambda *s: rng.standard_t(3, s) / math.sqrt(3)) if kind == "shared_t3" \
            else (lambda *s: rng.standard_normal(s))
        s_noise = draw(m) * sigma * math.sqrt(rho / 2)  # S's own per-pair noise (enters every c - S)
        common = draw(m) * sigma * math.sqrt(rho / 2)   # prompt/seed component shared by all candidates
        return (common - s_noise)[None, :] + draw(k, m) * sigma * math.sqrt(1 - rho)
    if kind == "unequal":
        return rng.standard_normal((k, m)) * (sigma * np.exp(rng.normal(0.0, 0.35, k)))[:, None]
    raise ValueError(kind)


def mix_effects(rng: np.random.Generator, k: int, spread: float = 1.5, top: float = 0.75,
                near: float = 0.05, plateau: int = 1) -> np.ndarray:
    """The realistic mix, effects vs S in units of sigma, in random pool order: `plateau` best heads at
    +top; round(near * k) (at least 2) near the top, behind the best by U(0, 0.5); the rest behind by
    0.5 + Exponential(mean `spread`) (median gap 0.5 + 0.69 spread; a tail of heads that wreck images)."""
    n_near = max(2, round(near * k))
    gaps = np.concatenate([np.zeros(plateau), rng.uniform(0, 0.5, n_near),
                           0.5 + rng.exponential(spread, k - plateau - n_near)])
    return rng.permutation(top - gaps)


# ----- rules under test -------------------------------------------------------------------------------
def calibrated(d: np.ndarray, top_k: int = 1, budget: float = BUDGET, n_boot: int = 0, alpha: float = ALPHA,
               seed: int = 0) -> R.RoundOutcome:
    """racing.run_round on a simulated round d [K, M] (paired differences, S = 0)."""
    k, m = d.shape
    names = [f"c{i}" for i in range(k)]
    index = {c: i for i, c in enumerate(names)}
    x, zero = d[:, :, None], np.zeros((m, 1))
    get = lambda c, n: zero[:n] if c == R.REFERENCE else x[index[c], :n]  # noqa: E731
    return R.run_round(names, lambda wanted: None, get, total_pairs=m, top_k=top_k, first_pairs=FIRST,
                       budget=budget, alpha=alpha, n_boot=n_boot, seed=seed)


def legacy(d: np.ndarray, top_k: int = 1, budget: float = BUDGET, n_boot: int = 0, level: float = 0.95,
           seed: int = 0) -> R.RoundOutcome:
    """The rule of headhunter.schedule.run_round today (issue 23), ported: drop c when the upper end of
    the marginal `level` t interval of c - (k-th best by mean) is below 0; leaders: interval vs the
    weakest selected includes 0. Same stages and budget handling."""
    k, m = d.shape
    names = [f"c{i}" for i in range(k)]
    alive, dropped, stages = list(range(k)), {}, []
    cap, spent, seen, n = budget * k * m, 0, 0, FIRST
    while True:
        spent += (n - seen) * len(alive)
        seen = n
        stages.append(n)
        ranked = [alive[i] for i in np.argsort(-d[alive, :n].mean(1), kind="stable")]
        if len(ranked) > top_k:
            diff = d[ranked[top_k:], :n] - d[ranked[top_k - 1], :n]
            high = diff.mean(1) + R.t_isf((1 - level) / 2, n - 1) * diff.std(1, ddof=1) / math.sqrt(n)
            dropped.update({c: n for c, h in zip(ranked[top_k:], high) if h < 0})
            alive = [c for c in alive if c not in dropped]
        if len(alive) <= top_k or n >= m:
            break
        nxt = min(m, 2 * n, n + int((cap - spent) // len(alive)))
        if nxt <= n:
            break
        n = nxt
    ranked = [alive[i] for i in np.argsort(-d[alive, :n].mean(1), kind="stable")]
    selected = ranked[:top_k]
    diff = d[ranked, :n] - d[selected[-1], :n]
    half = R.t_isf((1 - level) / 2, n - 1) * diff.std(1, ddof=1) / math.sqrt(n)
    leaders = [names[c] for c, mu, h in zip(ranked, diff.mean(1), half) if c in selected or mu + h >= 0]
    stab, _ = R.selection_frequency(d[alive, :n, None], R.mean_objective, top_k,
                                    [alive.index(c) for c in selected], n_boot, seed)
    vs = {names[c]: R.paired_interval(d[c, :dropped.get(c, n)], level) for c in range(k)}
    return R.RoundOutcome([names[c] for c in selected], {}, {names[c]: dropped.get(c, n) for c in range(k)}, vs,
                          {names[c]: v for c, v in dropped.items()}, leaders, stab, {}, spent, stages)


def exhaustive(d: np.ndarray, top_k: int = 1, budget: float = 1.0, n_boot: int = 0, seed: int = 0) -> R.RoundOutcome:
    """Paper Algorithm 1: every candidate on all pairs, the top k by mean (the reference; 1.0x images)."""
    k, m = d.shape
    names = [f"c{i}" for i in range(k)]
    ranked = np.argsort(-d.mean(1), kind="stable")
    return R.RoundOutcome([names[c] for c in ranked[:top_k]], {}, dict.fromkeys(names, m), {}, {}, [], math.nan,
                          {}, k * m, [m])


RULES: dict[str, Callable[..., R.RoundOutcome]] = {"calibrated": calibrated, "legacy": legacy, "exhaustive": exhaustive}


# ----- summaries ----------------------------------------------------------------------------------------
def wilson(x: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a binomial proportion x / n."""
    if n == 0:
        return math.nan, math.nan
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(x: int, n: int) -> str:
    lo, hi = wilson(x, n)
    return f"{x / n:.3f} [{lo:.3f}, {hi:.3f}]"


def seed_of(*parts: object) -> int:
    """A fixed seed per table cell (stable across runs and Python versions)."""
    return int.from_bytes(repr(parts).encode(), "little") % (2**63)


@dataclass
class Cell:
    """Per-repeat records of one table cell."""

    errors: int = 0
    reps: int = 0
    drops: list[float] | None = None
    leaders_tied: list[float] | None = None
    leaders: list[float] | None = None
    stability: list[float] | None = None
    images: list[float] | None = None


def null_table(reps48: int, reps576: int, out: Callable[[str], None]) -> None:
    """FWER of any drop on complete nulls (every candidate tied), per null and K; legacy rule beside it."""
    out("## 1. Complete nulls: K candidates all tied (and tied with S)\n")
    out("FWER = P(at least one candidate dropped in the round); Wilson 95 % intervals. Leaders: median size, "
        "and mean fraction of the K tied candidates in it. Images: mean, as a fraction of exhaustive K x 64.\n")
    out("| rule | null | K | repeats | FWER | median drops | leaders (median) | tied in leaders (mean) | stability (median) | images / exhaustive |")
    out("|---|---|---|---|---|---|---|---|---|---|")
    cases = [("legacy", "gaussian", 48, 100)]
    cases += [("calibrated", kind, k, reps48 if k == 48 else reps576) for k in (48, 576) for kind in (*NULL_KINDS, "shared_t3")]
    for rule, kind, k, reps in cases:
        rng = np.random.default_rng(seed_of("null", rule, kind, k))
        errs, drops, lead, stab, img = 0, [], [], [], []
        boot = 200 if k == 48 else 0
        for b in range(reps):
            o = RULES[rule](noise(rng, k, M, kind), n_boot=boot if b < 200 else 0, seed=b)
            errs += bool(o.dropped)
            drops.append(len(o.dropped))
            lead.append(len(o.leaders))
            if not math.isnan(o.stability):
                stab.append(o.stability)
            img.append(o.images / (k * M))
        st = f"{np.median(stab):.2f}" if stab else "-"
        out(f"| {rule} | {kind} | {k} | {reps} | {rate(errs, reps)} | {np.median(drops):.0f} | {np.median(lead):.0f} | "
            f"{np.mean(lead) / k:.3f} | {st} | {np.mean(img):.3f} |")
    out("")


def partial_table(reps48: int, reps576: int, out: Callable[[str], None]) -> None:
    """FWER when only some candidates are tied at the top: the realistic mix with a plateau of tied best."""
    out("## 2. Partial nulls: a plateau of tied best heads inside the realistic mix\n")
    out("Error = a head of the tied top plateau dropped (P per round, Wilson 95 %). Mix: plateau heads at "
        "+0.75 sigma, 5 % near the top (gap U(0, 0.5) sigma), the rest behind by 0.5 + Exp(1.5) sigma; "
        "uncapped (budget 1) and demo budget 0.5.\n")
    out("| null | K | plateau | budget | repeats | FWER (plateau head dropped) | images / exhaustive |")
    out("|---|---|---|---|---|---|---|")
    for k in (48, 576):
        reps = reps48 if k == 48 else reps576
        for kind in ("gaussian", "t3", "shared"):
            for plateau in (1, 5):
                for budget in (1.0, 0.5):
                    rng = np.random.default_rng(seed_of("partial", kind, k, plateau, budget))
                    errs, img = 0, []
                    for _ in range(reps):
                        mu = mix_effects(rng, k, plateau=plateau)
                        o = calibrated(mu[:, None] * SIGMA + noise(rng, k, M, kind), budget=budget)
                        top = {f"c{i}" for i in np.flatnonzero(mu == mu.max())}
                        errs += bool(top & set(o.dropped))
                        img.append(o.images / (k * M))
                    out(f"| {kind} | {k} | {plateau} | {budget} | {reps} | {rate(errs, reps)} | {np.mean(img):.3f} |")
    out("")


def power_table(reps48: int, reps576: int, out: Callable[[str], None]) -> dict[tuple[str, int, str], float]:
    """One planted head +delta sigma among K - 1 heads tied with S: kept, selected, separated; the MDE."""
    out("## 3. Power: one planted head better by delta (units of sigma = 0.27) among K - 1 tied heads\n")
    out("kept = never dropped; selected = the round picks it (the power figure); separated = leaders is "
        "exactly {planted}; exhaustive = the top head by mean on all 64 pairs is the planted one (the "
        "ceiling: every candidate on every pair). Demo schedule, budget 0.5.\n")
    out("| rule | noise | K | delta | repeats | kept | selected | separated | exhaustive selects | images / exhaustive |")
    out("|---|---|---|---|---|---|---|---|---|---|")
    deltas = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
    curves: dict[tuple[str, int, str], list[float]] = {}
    for rule in ("calibrated", "legacy"):
        for kind in ("gaussian", "shared"):
            for k in (48, 576):
                if rule == "legacy" and (k == 576 or kind == "shared"):
                    continue
                reps = reps48 if k == 48 else reps576
                for delta in deltas:
                    rng = np.random.default_rng(seed_of("power", rule, kind, k, delta))
                    kept = sel = sep = exh = 0
                    img = []
                    for _ in range(reps):
                        d = noise(rng, k, M, kind)
                        d[0] += delta * SIGMA
                        o = RULES[rule](d)
                        kept += "c0" not in o.dropped
                        sel += o.selected == ["c0"]
                        sep += o.leaders == ["c0"]
                        exh += int(np.argmax(d.mean(1)) == 0)
                        img.append(o.images / (k * M))
                    curves.setdefault((rule, k, kind), []).append(sel / reps)
                    if rule == "calibrated":
                        curves.setdefault(("exhaustive (64 pairs each)", k, kind), []).append(exh / reps)
                    out(f"| {rule} | {kind} | {k} | {delta} | {reps} | {rate(kept, reps)} | {rate(sel, reps)} | "
                        f"{rate(sep, reps)} | {rate(exh, reps)} | {np.mean(img):.3f} |")
    out("\nMinimum detectable effect (P(selected) = 0.8, linear interpolation on the delta grid):\n")
    out("| rule | noise | K | MDE (sigma) | MDE (demo units, x 0.27) |")
    out("|---|---|---|---|---|")
    mde = {}
    for key, ps in curves.items():
        x = next((i for i, p in enumerate(ps) if p >= 0.8), None)
        if x is None:
            v = math.inf
        elif x == 0:
            v = deltas[0]
        else:
            v = deltas[x - 1] + (0.8 - ps[x - 1]) / (ps[x] - ps[x - 1]) * (deltas[x] - deltas[x - 1])
        mde[key] = v
        out(f"| {key[0]} | {key[2]} | {key[1]} | {v:.2f} | {v * SIGMA:.3f} |")
    out("")
    return mde


def few_table(reps: int, out: Callable[[str], None]) -> None:
    """Three planted heads at +delta, top_k = 3: are all three selected?"""
    out("## 4. A few planted heads: 3 at +delta among K - 3 tied, top_k = 3 (Gaussian)\n")
    out("| K | delta | repeats | all 3 kept | all 3 selected | exactly the 3 are leaders | images / exhaustive |")
    out("|---|---|---|---|---|---|---|")
    for k in (48, 576):
        for delta in (0.75, 1.0):
            rng = np.random.default_rng(seed_of("few", k, delta))
            kept = sel = sep = 0
            img = []
            n = reps if k == 48 else max(50, reps // 4)
            for _ in range(n):
                d = noise(rng, k, M, "gaussian")
                d[:3] += delta * SIGMA
                o = calibrated(d, top_k=3)
                want = {"c0", "c1", "c2"}
                kept += not (want & set(o.dropped))
                sel += set(o.selected) == want
                sep += set(o.leaders) == want
                img.append(o.images / (k * M))
            out(f"| {k} | {delta} | {n} | {rate(kept, n)} | {rate(sel, n)} | {rate(sep, n)} | {np.mean(img):.3f} |")
    out("")


def images_table(reps48: int, reps576: int, out: Callable[[str], None]) -> None:
    """Images spent on the realistic mix, uncapped and at budget 0.5, and the sensitivity to the spread."""
    out("## 5. Images on the realistic mix (best head +0.75 sigma; 5 % near the top; the rest behind by 0.5 + Exp(spread))\n")
    out("images = mean candidate images / exhaustive (K x 64). best selected / best dropped: P per round. "
        "regret: mean true gap (sigma) between the best head and the selected one. best's pairs: median pairs "
        "the best head got. Uncapped = budget 1 (what the rule needs by itself); exhaustive = every head on "
        "all 64 pairs (the same simulated rounds: same seeds).\n")
    out("| rule | noise | K | spread (sigma) | budget | repeats | images / exhaustive | best selected | best dropped | regret (sigma) | best's pairs | leaders (median) |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in (48, 576):
        reps = reps48 if k == 48 else reps576
        for kind in ("gaussian", "shared", "t3"):
            for spread in (0.75, 1.5, 3.0):
                if kind != "gaussian" and spread != 1.5:
                    continue
                for rule, budget in (("exhaustive", 1.0), ("calibrated", 1.0), ("calibrated", 0.5), ("legacy", 0.5)):
                    if rule == "legacy" and (kind != "gaussian" or spread != 1.5):
                        continue
                    rng = np.random.default_rng(seed_of("images", k, kind, spread))  # same rounds for every rule
                    img, sel, drop, pairs, lead, regret = [], 0, 0, [], [], []
                    for _ in range(reps):
                        mu = mix_effects(rng, k, spread=spread)
                        best = f"c{int(np.argmax(mu))}"
                        o = RULES[rule](mu[:, None] * SIGMA + noise(rng, k, M, kind), budget=budget)
                        img.append(o.images / (k * M))
                        sel += o.selected == [best]
                        drop += best in o.dropped
                        regret.append(mu.max() - mu[int(o.selected[0][1:])])
                        pairs.append(o.pairs[best])
                        lead.append(len(o.leaders))
                    ld = f"{np.median(lead):.0f}" if rule != "exhaustive" else "-"
                    out(f"| {rule} | {kind} | {k} | {spread} | {budget} | {reps} | {np.mean(img):.3f} | "
                        f"{rate(sel, reps)} | {rate(drop, reps)} | {np.mean(regret):.3f} | {np.median(pairs):.0f} | {ld} |")
    out("")


def calibrate(d: np.ndarray, real: R.RoundOutcome, null: str, n_null: int, n_boot: int, seed: int) -> R.Calibration:
    """racing.calibrate_round on a simulated round (what `hunt --calibrate` would run after it)."""
    names = [f"c{i}" for i in range(d.shape[0])]
    x, zero = d[:, :, None], np.zeros((d.shape[1], 1))
    get = lambda c, n: zero[:n] if c == R.REFERENCE else x[int(c[1:]), :n]  # noqa: E731
    return R.calibrate_round(names, get, real, total_pairs=M, top_k=1, first_pairs=FIRST, budget=BUDGET,
                             alpha=ALPHA, null=null, n_null=n_null, n_boot=n_boot, seed=seed)


def calibration_table(runs48: int, runs576: int, n_null: int, out: Callable[[str], None]) -> list[str]:
    """How often calibrate() calls a round distinguishable: on null rounds (size) and planted rounds (power)."""
    out("## 6. Calibration (`calibrate`): verdict rates\n")
    out("Each run: simulate a round, race it (demo schedule), then `calibrate_round` it: noise shape from the "
        f"complete first stage; scale, tails and shared component from the survivors' final pairs; {n_null} null replays. distinguishable = the real apparent gain above the null's 95th percentile "
        "(Monte Carlo p <= 0.05). Null rounds: the rate is the test's size; planted rounds (one head at +delta "
        "among tied heads): its power. spread p <= 0.05: the first-stage spread test.\n")
    out("| truth | noise | K | null model | runs | distinguishable | spread p <= 0.05 |")
    out("|---|---|---|---|---|---|---|")
    examples = []
    combos = [(48, "null", 0.0, kind, model) for kind in ("gaussian", "t3", "shared") for model in ("parametric", "signflip")]
    combos += [(48, f"planted +{delta}", delta, kind, model) for delta in (0.75, 1.0)
               for kind, model in (("gaussian", "parametric"), ("gaussian", "signflip"), ("shared", "parametric"))]
    combos += [(576, "null", 0.0, kind, "parametric") for kind in ("gaussian", "t3", "shared")]
    combos += [(576, "planted +0.75", 0.75, "gaussian", "parametric")]
    for k, truth, delta, kind, model in combos:
        runs = (runs48 if truth == "null" else runs48 // 2) if k == 48 else runs576
        rng = np.random.default_rng(seed_of("calib", k, truth, kind, model))
        yes = spread = 0
        for b in range(runs):
            d = noise(rng, k, M, kind)
            d[0] += delta * SIGMA
            real = calibrated(d, n_boot=200 if k == 48 else 0, seed=b)
            cal = calibrate(d, real, model, n_null, n_boot=200 if k == 48 else 0, seed=b)
            yes += cal.distinguishable
            spread += cal.spread_p <= ALPHA
            if b == 0 and k == 48 and kind == "gaussian" and model == "parametric":
                examples.append(f"**Example, {truth}, K = 48, Gaussian noise, parametric null** "
                                f"(selected {real.selected}, stages {real.stages}):\n\n{cal.table()}\n")
        out(f"| {truth} | {kind} | {k} | {model} | {runs} | {rate(yes, runs)} | {rate(spread, runs)} |")
    out("")
    return examples


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--only", default="null,partial,power,few,images,calibration")
    ap.add_argument("--out", default=None, help="also write the Markdown here")
    args = ap.parse_args(argv)
    q = args.quick
    lines: list[str] = []

    def out(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    only = set(args.only.split(","))
    t0 = time.time()
    if "null" in only:
        null_table(400 if q else 4000, 100 if q else 1000, out)
    if "partial" in only:
        partial_table(200 if q else 1000, 40 if q else 200, out)
    if "power" in only:
        power_table(100 if q else 500, 40 if q else 200, out)
    if "few" in only:
        few_table(100 if q else 400, out)
    if "images" in only:
        images_table(100 if q else 500, 40 if q else 150, out)
    if "calibration" in only:
        examples = calibration_table(40 if q else 200, 6 if q else 20, 50 if q else 100, out)
        out("\n".join(examples))
    out(f"_sims.py {'--quick ' if q else ''}--only {args.only}: {time.time() - t0:.0f} s_")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
