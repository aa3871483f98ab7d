"""Search statistics against explicit references: t quantiles (published table values), the paired t
interval written out by hand, the bootstrap for composite objectives, selection stability, Kendall tau."""

from __future__ import annotations

import math

import numpy as np
import pytest

from headhunter.errors import SearchError
from headhunter.contracts.objective import Objective
from headhunter.objective.expr import HarmonicMean
from headhunter.search.stats import kendall_tau, paired_difference, selection_frequency, t_quantile


class Leaf(Objective):
    def __init__(self, name):
        self.name = name

    def score(self, images, prompts):  # never called: the statistics work on stored scores
        raise AssertionError


@pytest.mark.parametrize("dof,expected", [(1, 12.7062047), (2, 4.3026527), (3, 3.1824463), (5, 2.5705818),
                                          (10, 2.2281389), (30, 2.0422725), (63, 1.9983405)])
def test_t_quantile_matches_published_tables(dof, expected):
    assert t_quantile(0.975, dof) == pytest.approx(expected, abs=2e-6)
    assert t_quantile(0.025, dof) == pytest.approx(-expected, abs=2e-6)


def test_paired_difference_is_the_t_interval_of_per_pair_differences():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(12, 1))
    a = b + 0.3 + 0.1 * rng.normal(size=(12, 1))  # shared seed noise cancels in the paired difference
    est = paired_difference(a, b, Leaf("x"), ["x"])
    d = (a - b)[:, 0]
    half = 2.2009852 * d.std(ddof=1) / math.sqrt(12)  # t(0.975, 11)
    assert est.mean == pytest.approx(d.mean()) and est.n == 12
    assert (est.low, est.high) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-6)
    unpaired_half = 2.2009852 * math.sqrt(a.var(ddof=1) / 12 + b.var(ddof=1) / 12)
    assert half < unpaired_half / 3
    one = paired_difference(a[:1], b[:1], Leaf("x"), ["x"])
    assert math.isinf(one.low) and math.isinf(one.high)
    with pytest.raises(SearchError, match="equal shapes"):
        paired_difference(a, b[:5], Leaf("x"), ["x"])


def test_composite_difference_is_the_formula_of_means_with_a_bootstrap_interval():
    objective = HarmonicMean([Leaf("p"), Leaf("q")])
    leaves = ["p", "q"]
    rng = np.random.default_rng(1)
    b = rng.uniform(0.2, 0.8, size=(40, 2))
    a = b + 0.05
    est = paired_difference(a, b, objective, leaves)
    hm = lambda m: 2 / (1 / m[0] + 1 / m[1])  # noqa: E731
    assert est.mean == pytest.approx(hm(a.mean(0)) - hm(b.mean(0)))
    assert est.low < est.mean < est.high and est.low > 0  # a is better on every pair


def test_selection_frequency_counts_bootstrap_top_k():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(30, 1))
    scores = {"clear": base + 1.0, "noise1": base + 0.01 * rng.normal(size=(30, 1)),
              "noise2": base + 0.01 * rng.normal(size=(30, 1))}
    exact, freq = selection_frequency(scores, Leaf("x"), ["x"], 1, ["clear"])
    assert exact == 1.0 and freq["clear"] == 1.0 and freq["noise1"] == 0.0
    exact, freq = selection_frequency({k: v for k, v in scores.items() if k != "clear"}, Leaf("x"), ["x"], 1, ["noise1"])
    assert 0.05 < exact < 0.95 and freq["noise1"] + freq["noise2"] == pytest.approx(1.0)


def test_kendall_tau_reference_values():
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4, 5], [3, 4, 1, 2, 5]) == pytest.approx(0.2)  # 6 concordant, 4 discordant
    assert kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / math.sqrt(3 * 2))  # tau-b with a tie


def test_dominance_verdict_names_layers_better_on_both_axes():
    """A layer with a better objective (paired interval > 0) and a better FD beyond both intervals dominates
    beyond noise; one better on point estimates only dominates within noise; a worse one is not listed."""
    from headhunter.search.evaluation import Evaluation, SettingResult, bootstrap_mean
    from headhunter.report.report import _pareto_section, dominance
    from headhunter.search.stats import Estimate

    rng = np.random.default_rng(3)
    base = rng.normal(size=64)
    fd = "FD (lower is better)"

    def setting(name, shift, fd_value, fd_half):
        scores = list(base + shift + 0.01 * rng.normal(size=64))
        return SettingResult(name, bootstrap_mean(scores), scores, {fd: Estimate(fd_value, fd_value - fd_half, fd_value + fd_half, 64)})

    settings = {s.name: s for s in [
        setting("no guidance", 0.0, 100, 10), setting("found head set", 0.1, 120, 10),
        setting("layer L1", 0.3, 90, 5), setting("layer L2", 0.105, 115, 20), setting("layer L3", 0.5, 300, 20)]}
    evaluation = Evaluation(settings, [""], list(range(64)), "obj")
    found = {d["setting"]: d["beyond_noise"] for d in dominance(evaluation)}
    assert found == {"layer L1": True, "layer L2": False}
    text = "\n".join(_pareto_section(evaluation, None))
    assert "**layer L1 dominates the found set beyond noise**" in text
    assert "layer L2 dominates the found set on point estimates only" in text and "L3" not in text
    assert "within the 95 % intervals" in text  # a point-estimate dominance says it is not a finding


def test_verdict_leads_with_the_cost_and_names_the_unconditional_prompt():
    """The verdict sentence that beats no guidance also says, in the same sentence, which yardstick got
    worse (with both intervals and whether they overlap); the prompt phrase names "" as unconditional."""
    from headhunter.report.report import prompts_phrase, verdict
    from headhunter.search.evaluation import Evaluation, SettingResult, bootstrap_mean
    from headhunter.search.stats import Estimate

    rng = np.random.default_rng(5)
    base = rng.normal(size=64)
    fd, conf = "FD-digits (lower is better)", "digit-confidence"

    def setting(name, shift, fd_value, conf_value):
        scores = list(base + shift + 0.01 * rng.normal(size=64))
        return SettingResult(name, bootstrap_mean(scores), scores,
                             {fd: Estimate(fd_value, fd_value - 60, fd_value + 60, 64),
                              conf: Estimate(conf_value, conf_value - 0.01, conf_value + 0.01, 64)})

    evaluation = Evaluation({s.name: s for s in [setting("no guidance", 0.0, 109, 0.80),
                                                 setting("found head set", 0.1, 177, 0.90)]}, [""], list(range(64)), "obj")
    line = verdict(evaluation, "found head set", "no guidance")
    assert line.startswith("**found head set beats no guidance** on fresh seeds")
    assert "; but **FD-digits (lower is better) is worse**: 177 [117, 237] vs 109 [49, 169] (the intervals overlap: within noise)" in line
    assert "digit-confidence" not in line  # better, so no cost
    worse = verdict(evaluation, "no guidance", "found head set")  # the other way round: worse, and no cost
    assert worse.startswith("**no guidance is worse than found head set**") and "; but" not in worse
    assert prompts_phrase([""]) == '1 prompt ("" (unconditional))'
    assert prompts_phrase(list("0123456789")) == "10 prompts ('0', '1', '2', '3', ...)"
