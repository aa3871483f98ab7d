"""Verdicts against controls: paired differences with their minimum detectable effect, random head sets of
the found set's size, whole layers; and the hunt's evaluation on prompts the search never saw."""

from __future__ import annotations

import numpy as np
import pytest

from headhunter.format.sites import Site
from headhunter.search.evaluation import Evaluation, SettingResult, bootstrap_mean
from headhunter.search.verdicts import MDE_Z, RANDOM_PREFIX, compare, mde, random_headsets, verdicts


def test_mde_is_the_80_percent_power_distance_and_has_that_power():
    """Simulated: a true effect equal to the MDE is detected (paired t-style test at 5 %) about 80 % of the time."""
    rng = np.random.default_rng(0)
    n, sd = 64, 1.0
    effect = MDE_Z * sd / np.sqrt(n)
    hits = 0
    for _ in range(400):
        d = rng.normal(effect, sd, n)
        hits += compare(d, np.zeros(n), "zero").outcome == "beats"
    assert 0.70 <= hits / 400 <= 0.90
    assert mde(rng.normal(0, sd, 10_000)) == pytest.approx(MDE_Z * sd / 100, rel=0.05)


def test_random_sets_are_fixed_distinct_and_never_the_found_heads():
    sites = [Site(name=f"b{i}", num_heads=4, kind="joint") for i in range(3)]
    pool = [f"L{i}H{h}" for i in range(3) for h in range(4)]
    a = random_headsets(pool, 2, 20, sites, 0.5, "sd3", seed=7, exclude={"L0H1", "L2H3"})
    b = random_headsets(pool, 2, 20, sites, 0.5, "sd3", seed=7, exclude={"L0H1", "L2H3"})
    assert list(a) == [f"{RANDOM_PREFIX}{i}" for i in range(1, 21)]
    assert [hs.notation() for hs in a.values()] == [hs.notation() for hs in b.values()]
    notations = {hs.notation() for hs in a.values()}
    assert len(notations) == 20 and not any("L0H1" in n.split(", ") or "L2H3" in n for n in notations)
    assert all(len(hs) == 2 and {u for heads in hs.strengths().values() for u in heads.values()} == {0.5}
               for hs in a.values())
    assert random_headsets(pool[:2], 3, 5, sites, 0.5, "sd3", seed=1, exclude=set()) == {}


def _evaluation(found_shift: float, n: int = 128, randoms: int = 20) -> Evaluation:
    rng = np.random.default_rng(3)
    pair = rng.normal(0, 1, n)  # what every setting shares on a pair (the seed)

    def setting(name, shift):
        scores = (pair + shift + rng.normal(0, 0.3, n)).tolist()
        return SettingResult(name, bootstrap_mean(scores), scores)

    settings = {"no guidance": setting("no guidance", 0.0), "found head set": setting("found head set", found_shift),
                "layer L0": setting("layer L0", found_shift)}
    settings.update({f"{RANDOM_PREFIX}{i}": setting(f"{RANDOM_PREFIX}{i}", 0.0) for i in range(1, randoms + 1)})
    return Evaluation(settings, [""], list(range(n)), "toy")


def test_a_real_effect_beats_no_guidance_and_the_random_sets_and_ties_an_equal_layer():
    v = verdicts(_evaluation(0.3))
    assert v["vs_no_guidance"]["outcome"] == "beats" and v["vs_no_guidance"]["mde"] < 0.3
    assert v["vs_random"]["outcome"] == "beats" and v["vs_random"]["beats_fraction"] >= 0.9
    assert v["vs_layers"][0]["outcome"] == "is not distinguishable from"
    assert "detectable at 80 % power" in v["vs_no_guidance"]["sentence"]


def test_no_effect_is_not_distinguishable_from_its_controls():
    v = verdicts(_evaluation(0.0))
    assert v["vs_no_guidance"]["outcome"] == "is not distinguishable from"
    assert v["vs_random"]["outcome"] == "is not distinguishable from"
    assert v["vs_random"]["beats_fraction"] <= 0.2


class _MeanDistance:
    """A toy set metric with features: the mean feature (lower is better)."""

    def from_features(self, features):
        return float(np.asarray(features).mean())


def test_dominance_needs_both_paired_intervals():
    rng = np.random.default_rng(5)
    ev = _evaluation(0.3, randoms=0)
    metric = "toy distance (lower is better)"
    ev.set_metrics = {metric: _MeanDistance()}
    shared = rng.normal(0, 1, 128)
    ev.settings["found head set"].features = {metric: (shared + 0.0)[:, None]}
    ev.settings["no guidance"].features = {metric: (shared + 0.1)[:, None]}
    ev.settings["layer L0"].features = {metric: (shared + 0.5 + rng.normal(0, 0.1, 128))[:, None]}
    layer = verdicts(ev)["vs_layers"][0]
    # equal objective (not distinguishable) -> neither dominates, whatever the yardstick says
    assert layer["dominance"].startswith("neither dominates") and layer["yardstick_difference"]["high"] < 0
    # each axis is named: the objective is a tie, the yardstick favours the found set
    assert layer["dominance"] == f"neither dominates: objective not distinguishable, {metric} better for the found set"
    from headhunter.report.report import _pareto_section
    from headhunter.search.stats import Estimate

    for r in ev.settings.values():  # the report's yardstick is the metric every setting shows
        r.metrics[metric] = Estimate(0.0, 0.0, 0.0, 128)
    text = "\n".join(_pareto_section(ev, None))  # the report judges layers with the same paired intervals
    assert "paired 95 % intervals of both differences" in text and f"- layer L0: {layer['dominance']}" in text
    assert "point estimates" not in text
    ev.settings["layer L0"].scores = (np.asarray(ev.settings["layer L0"].scores) - 0.3).tolist()
    assert verdicts(ev)["vs_layers"][0]["dominance"] == "the found set dominates layer L0"
