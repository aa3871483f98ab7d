"""Verdicts that replicate: the found head set judged on a fresh block against its controls.

Every comparison is paired (the same fresh prompt-seed pairs for every setting) and says what it can
detect: the minimum detectable effect at 80 % power for a two-sided 5 % test on those pairs,
`MDE = (z_0.975 + z_0.8) * sd(paired differences) / sqrt(n)`. The controls:

- **no guidance**;
- **random head sets** of the found set's size, drawn from the search's candidate pool (never the found
  heads) with a seed fixed by the search settings, at the same strength u and scale w: the found set's
  paired difference to their per-pair mean, and the fraction of them it beats (paired 95 % bootstrap
  interval above 0);
- **every whole layer** at the same w: the found set "dominates" a layer, or a layer dominates it, only when
  the paired intervals of both differences (the objective, and the yardstick: the first set metric that
  offers per-sample features, e.g. FD-digits, bootstrapped over the same resampled pairs) say so; otherwise
  "neither dominates".

A verdict is made on seeds never used for the selection; `headhunter.workflow.hunt` uses the model's
evaluation seeds (or `eval_seeds`) and, with `eval_prompts`, also prompts the search never saw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from headhunter.format.headset import HeadSet
from headhunter.format.schedule import item_spec
from headhunter.format.sites import Site
from headhunter.search.stats import Estimate

#: z_{0.975} + z_{0.80}: the minimum detectable effect in standard errors (two-sided 5 %, 80 % power).
MDE_Z = 1.959964 + 0.841621
RANDOM_PREFIX = "random set "
#: How many random head sets a verdict compares with by default.
DEFAULT_CONTROLS = 20


def mde(differences: np.ndarray) -> float:
    """Minimum detectable mean difference at 80 % power (two-sided 5 %) for these paired differences."""
    x = np.asarray(differences, dtype=np.float64)
    return float(MDE_Z * x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("inf")


def paired(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean of a - b with a 95 % percentile bootstrap interval over the pairs."""
    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))


def random_headsets(pool: list[str], size: int, count: int, sites: list[Site], strength: float,
                    architecture: str, seed: int, exclude: set[str]) -> dict[str, HeadSet]:
    """`count` head sets of `size` heads each, drawn without replacement from `pool` minus `exclude` (a
    fixed numpy seed, so a rerun draws the same sets); fewer when the pool is too small for distinct sets."""
    choices = [h for h in pool if h not in exclude]
    if size < 1 or len(choices) < size:
        return {}
    rng = np.random.default_rng(seed)
    out: dict[str, HeadSet] = {}
    seen: set[tuple[str, ...]] = set()
    for _ in range(50 * count):
        if len(out) == count:
            break
        pick = tuple(sorted(rng.choice(len(choices), size=size, replace=False).tolist()))
        if pick in seen:
            continue
        seen.add(pick)
        heads = [choices[i] for i in pick]
        name = f"{RANDOM_PREFIX}{len(out) + 1}"
        out[name] = HeadSet.from_heads([item_spec(h, strength) for h in heads], sites=sites,
                                       architecture=architecture, name=name)
    return out


@dataclass
class Comparison:
    """found - rival on the fresh block: the paired difference, its MDE and the plain outcome."""

    rival: str
    difference: Estimate
    mde: float
    outcome: str  # "beats" | "is worse than" | "is not distinguishable from"

    def sentence(self, found: str = "found head set") -> str:
        d = self.difference
        return (f"{found} {self.outcome} {self.rival}: {d.mean:+.4g} [{d.low:+.4g}, {d.high:+.4g}] "
                f"(n = {d.n}; detectable at 80 % power: {self.mde:.3g})")


def compare(found: np.ndarray, rival: np.ndarray, name: str) -> Comparison:
    d = paired(found, rival)
    outcome = "beats" if d.low > 0 else "is worse than" if d.high < 0 else "is not distinguishable from"
    return Comparison(name, d, mde(np.asarray(found) - np.asarray(rival)), outcome)


def verdicts(evaluation: Any, found: str = "found head set") -> dict[str, Any]:
    """The found set against no guidance, the random sets (their per-pair mean, and one by one) and every
    whole layer, on `evaluation` (a `headhunter.search.evaluation.Evaluation`). Returns plain data (JSON-able)
    with the sentences the report prints."""
    settings = evaluation.settings
    mine = np.asarray(settings[found].scores)
    out: dict[str, Any] = {"pairs": len(mine), "prompts": list(evaluation.prompts)}
    if "no guidance" in settings:
        c = compare(mine, np.asarray(settings["no guidance"].scores), "no guidance")
        out["vs_no_guidance"] = {**asdict(c), "sentence": c.sentence(found)}
    randoms = [n for n in settings if n.startswith(RANDOM_PREFIX)]
    if randoms:
        mean = np.mean([settings[n].scores for n in randoms], axis=0)
        c = compare(mine, mean, f"the mean of {len(randoms)} random head sets of its size")
        beaten = sum(compare(mine, np.asarray(settings[n].scores), n).outcome == "beats" for n in randoms)
        out["vs_random"] = {**asdict(c), "sentence": c.sentence(found), "random_sets": len(randoms),
                            "beats_fraction": beaten / len(randoms)}
    stick = _yardstick(evaluation, found)
    layers = []
    for name in (n for n in settings if n.startswith("layer ")):
        c = compare(mine, np.asarray(settings[name].scores), name)
        entry = {**asdict(c), "sentence": c.sentence(found)}
        if stick is not None:
            metric, lower, fn = stick
            d = paired_set_metric(fn, settings[found].features[metric], settings[name].features[metric])
            better = (d.high < 0) if lower else (d.low > 0)   # the found set better on the yardstick
            worse = (d.low > 0) if lower else (d.high < 0)
            if c.outcome == "beats" and better:
                word = f"the found set dominates {name}"
            elif c.outcome == "is worse than" and worse:
                word = f"{name} dominates the found set"
            else:
                word = "neither dominates: " + _axes(c.outcome, better, worse, name, metric)
            entry.update(yardstick=metric, yardstick_difference=asdict(d), dominance=word)
            entry["sentence"] += (f"; {metric} difference {d.mean:+.4g} [{d.low:+.4g}, {d.high:+.4g}] "
                                  f"(paired bootstrap); {word}")
        layers.append(entry)
    out["vs_layers"] = layers
    return out


def _axes(outcome: str, better: bool, worse: bool, name: str, metric: str) -> str:
    """What each axis says when neither side dominates, e.g. "objective not distinguishable, FD-digits better
    for layer L2" (the found set is the other side)."""
    obj = {"beats": "objective better for the found set", "is worse than": f"objective better for {name}"}.get(
        outcome, "objective not distinguishable")
    stick = (f"{metric} better for the found set" if better else f"{metric} better for {name}" if worse
             else f"{metric} not distinguishable")
    return f"{obj}, {stick}"


def _yardstick(evaluation: Any, found: str) -> tuple[str, bool, Any] | None:
    """The first set metric with per-sample features on every setting: (name, lower is better, metric)."""
    for metric, fn in getattr(evaluation, "set_metrics", {}).items():
        if all(metric in r.features for r in evaluation.settings.values()) and callable(getattr(fn, "from_features", None)):
            return metric, "lower is better" in metric, fn
    return None


def paired_set_metric(fn: Any, found: np.ndarray, rival: np.ndarray, n_boot: int = 200, seed: int = 0) -> Estimate:
    """A set metric's difference found - rival on the same pairs, with a 95 % percentile bootstrap interval:
    the same resampled pair indices for both settings (paired), the metric recomputed from their features."""
    found, rival = np.asarray(found), np.asarray(rival)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(found), len(found))
        boots.append(fn.from_features(found[idx]) - fn.from_features(rival[idx]))
    low, high = np.percentile(boots, [2.5, 97.5])
    return Estimate(float(fn.from_features(found) - fn.from_features(rival)), float(low), float(high), len(found))
