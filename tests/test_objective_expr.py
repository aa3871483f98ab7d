"""The objective grammar and the composition objects: canonical text, formulas, errors."""

from __future__ import annotations

import math

import pytest
import torch

from headhunter import ObjectiveError, hookimpl
from headhunter.contracts.objective import Objective
from headhunter.objective.expr import (
    HarmonicMean,
    Leaf,
    ThresholdGate,
    WeightedSum,
    combine,
    components,
    expression,
    format_leaf,
    leaves,
    parse_objective,
)
from headhunter.plugin_system.registry import Registry, get_plugin_manager

CALLS: dict[str, int] = {}


class Table(Objective):
    """Scores from a fixed table: image i gets VALUES[name][i] (+ `shift`); counts its calls."""

    VALUES = {"p": [22.0, 18.0, 21.0], "c": [30.0, 33.0, 10.0], "a": [6.5, 7.0, 5.0]}

    def __init__(self, key: str, shift: float = 0.0, label: str = "") -> None:
        self.name, self.shift, self.label = key, float(shift), label

    def score(self, images, prompts):
        CALLS[self.name] = CALLS.get(self.name, 0) + 1
        return torch.tensor(self.VALUES[self.name][: len(images)]) + self.shift

    def __str__(self) -> str:
        params = {k: v for k, v in (("shift", self.shift), ("label", self.label)) if v}
        return format_leaf(self.name, params)


class Anonymous(Objective):
    """A third-party objective without a str() of its own."""

    name = "anon"

    def __init__(self, level: float = 1.0) -> None:
        self.level = level

    def score(self, images, prompts):
        return torch.full((len(images),), float(self.level))


class TablePlugin:
    @hookimpl
    def register_objectives(self, register):
        for key in Table.VALUES:
            register(key, lambda key=key, **params: Table(key, **params), description=f"table {key}")
        register("anon", Anonymous)
        register("digit-logprob", lambda: Table("p"))


@pytest.fixture
def registry() -> Registry:
    pm = get_plugin_manager(load_entry_points=False, builtins=False)
    pm.register(TablePlugin(), name="table")
    CALLS.clear()
    return Registry(pm)


IMAGES = torch.zeros(3, 3, 4, 4)
PROMPTS = ["x", "y", "z"]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("p", "p"),
        ("  p  ", "p"),
        ("0.7*p + 0.3*c", "0.7*p + 0.3*c"),
        ("p*0.5", "0.5*p"),
        ("2 * 3 * p", "6*p"),
        ("p - 0.5*a", "p - 0.5*a"),
        ("-p + c", "-p + c"),
        ("0.5*(p + c)", "0.5*p + 0.5*c"),
        ("(p)", "p"),
        ("harmonic(p,c)", "harmonic(p, c)"),
        ("harmonic(p, c, 2*a)", "harmonic(p, c, 2*a)"),
        ("gate(p>=20, a>=6; c)", "gate(p>=20, a>=6; c)"),
        ("gate(p >= 20 ; c ; -1)", "gate(p>=20; c; -1)"),
        ("gate(harmonic(p, c) > 1e1, a < 7.25; 0.5*c + a)", "gate(harmonic(p, c)>10, a<7.25; 0.5*c + a)"),
        ("p:shift=1", "p:shift=1"),
        ("p:shift=0.25 + c", "p:shift=0.25 + c"),
        ("c:label=golden hour", "c:label=golden hour"),
        ("c:label=sci-fi", "c:label=sci-fi"),
        ('c:label="sunlit, warm glow, golden hour"', 'c:label="sunlit, warm glow, golden hour"'),
        ("c:label='say \"hi\"'", 'c:label="say \\"hi\\""'),
        ('c:label="12"', 'c:label="12"'),
        ("c:shift=2:label=x", "c:label=x:shift=2"),
        ("harmonic(p, c:label=golden hour)", "harmonic(p, c:label=golden hour)"),
        ("c:label=a - p", "c:label=a - p"),
        ("digit-logprob", "p"),
        ("anon", "anon"),
        ("anon:level=3", "anon:level=3"),
    ],
)
def test_canonical_text_round_trips(registry, text, canonical):
    objective = parse_objective(text, registry=registry)
    assert str(objective) == canonical
    assert str(parse_objective(str(objective), registry=registry)) == canonical


def test_values_are_typed_by_their_text(registry):
    assert parse_objective("p:shift=2", registry=registry).shift == 2.0
    assert parse_objective("c:label=golden hour", registry=registry).label == "golden hour"
    assert parse_objective("anon:level=3", registry=registry).objective.level == 3
    assert parse_objective("anon:level=-1.5e1", registry=registry).objective.level == -15.0


def test_weighted_sum_is_the_hand_sum(registry):
    p, c = torch.tensor(Table.VALUES["p"]), torch.tensor(Table.VALUES["c"])
    scores = parse_objective("0.7*p - 0.3*c + 2*(p + c)", registry=registry)(IMAGES, PROMPTS)
    torch.testing.assert_close(scores, 0.7 * p - 0.3 * c + 2 * p + 2 * c)
    assert scores.dtype == torch.float32 and scores.shape == (3,)


def test_harmonic_is_the_official_harmonic_pick_clip(registry):
    objective = parse_objective("harmonic(p, c)", registry=registry)
    expected = [2 * p * c / (p + c) for p, c in zip(Table.VALUES["p"], Table.VALUES["c"])]
    torch.testing.assert_close(objective(IMAGES, PROMPTS), torch.tensor(expected))
    three = parse_objective("harmonic(p, c, a)", registry=registry)(IMAGES, PROMPTS)
    expected3 = [3 / (1 / p + 1 / c + 1 / a) for p, c, a in zip(*(Table.VALUES[k] for k in "pca"))]
    torch.testing.assert_close(three, torch.tensor(expected3))


def test_harmonic_of_a_non_positive_score_is_zero(registry):
    scores = parse_objective("harmonic(p:shift=-20, c)", registry=registry)(IMAGES, PROMPTS)
    assert scores[1].item() == 0.0  # 18 - 20 < 0
    assert scores[0].item() == pytest.approx(2 * 2 * 30 / 32)


def test_gate_per_image(registry):
    scores = parse_objective("gate(p>=20, a>=6; c)", registry=registry)(IMAGES, PROMPTS)
    assert scores.tolist() == [30.0, 0.0, 0.0]  # image 1 fails p, image 2 fails a
    low = parse_objective("gate(p>=20, a>=6; c; -5)", registry=registry)(IMAGES, PROMPTS)
    assert low.tolist() == [30.0, -5.0, -5.0]


def test_combine_on_means_is_the_paper_codes_thresholding(registry):
    """The official code gates and ranks per-candidate means: combine(obj, means) does that."""
    objective = parse_objective("gate(p>=20, a>=6; c)", registry=registry)
    per_image = components(objective, IMAGES, PROMPTS)
    assert set(per_image) == {"p", "a", "c"}
    means = {k: v.mean() for k, v in per_image.items()}  # p 20.33, a 6.17, c 24.33: passes on means
    assert combine(objective, means).item() == pytest.approx(sum(Table.VALUES["c"]) / 3)
    assert objective(IMAGES, PROMPTS).mean().item() == pytest.approx(10.0)  # per image: only image 0 passes
    harmonic = parse_objective("harmonic(p, c)", registry=registry)
    pm, cm = means["p"].item(), means["c"].item()
    assert combine(harmonic, means).item() == pytest.approx(2 * pm * cm / (pm + cm))
    assert combine(parse_objective("p", registry=registry), means).item() == pytest.approx(pm)


def test_each_leaf_is_scored_once(registry):
    objective = parse_objective("gate(p>=20; harmonic(p, c) + 0.1*p)", registry=registry)
    assert list(leaves(objective)) == ["p", "c"]
    objective(IMAGES, PROMPTS)
    assert CALLS == {"p": 1, "c": 1}


def test_combine_names_missing_scores(registry):
    with pytest.raises(ObjectiveError, match="no scores for 'c'; got scores for: p"):
        combine(parse_objective("p + c", registry=registry), {"p": torch.tensor(1.0)})


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("harmonic(p,, c)", ["column 12", "expected an objective name", "found ','"]),
        ("pp", ["Unknown objective 'pp'", "installed: a, anon, c, digit-logprob, p", "Did you mean 'p'?", "column 1"]),
        ("p + cc", ["Unknown objective 'cc'", "column 5"]),
        ("p-c", ["Unknown objective 'p-c'", "put spaces around '-': 'p - c'"]),
        ("harmonc(p, c)", ["unknown function 'harmonc'", "allowed: harmonic(a, b, ...), gate(cond, ...; ranked)"]),
        ("0.5", ["a number on its own"]),
        ("p * c", ["two objectives multiplied"]),
        ("p +", ["expected an objective name", "the end of the expression"]),
        ("p c", ["unexpected 'c'", "expected '+', '-', '*' or the end"]),
        ("(p + c", ["expected ')'"]),
        ("harmonic(p)", ["needs at least two objectives"]),
        ("harmonic(p c)", ["expected ',' or ')' in harmonic(...)", "found 'c'"]),
        ("gate(p; c)", ["expected a comparison (>=, >, <=, <)", "found ';'"]),
        ("gate(p >= x; c)", ["expected a threshold number after '>='"]),
        ("gate(p >= 20, c)", ["expected a comparison"]),
        ("gate(p >= 20)", ["',' (another condition) or ';'"]),
        ("gate(p >= 20; c; x)", ["the number scored when a condition fails"]),
        ("p:=1", ["expected a parameter name after ':'"]),
        ("p:shift", ["expected '=' after parameter 'shift'"]),
        ("p:shift=", ["expected a value after '='"]),
        ("p:shift=1:shift=2", ["parameter 'shift' given twice"]),
        ("c:label='open", ["unterminated string"]),
        ("p:bogus=1", ["bad parameters for objective 'p'", "bogus"]),
        ("", ["non-empty string"]),
    ],
)
def test_errors_name_the_bad_token_and_what_is_allowed(registry, text, fragments):
    with pytest.raises(ObjectiveError) as info:
        parse_objective(text, registry=registry)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_error_shows_a_caret_under_the_bad_token(registry):
    with pytest.raises(ObjectiveError) as info:
        parse_objective("harmonic(p, qq)", registry=registry)
    lines = str(info.value).splitlines()
    assert lines[1] == "  harmonic(p, qq)"
    assert lines[2] == "  " + " " * 12 + "^"


def test_python_objects_match_the_grammar(registry):
    p, c, a = (registry.objective(k) for k in "pca")
    assert str(WeightedSum([(0.7, p), (-0.3, c)])) == "0.7*p - 0.3*c"
    assert str(WeightedSum([(1, WeightedSum([(2, p), (1, c)])), (1, a)])) == "2*p + c + a"
    assert str(HarmonicMean([p, c])) == "harmonic(p, c)"
    gate = ThresholdGate([(p, ">=", 20), (a, ">=", 6)], c)
    assert str(gate) == "gate(p>=20, a>=6; c)"
    assert gate(IMAGES, PROMPTS).tolist() == parse_objective(str(gate), registry=registry)(IMAGES, PROMPTS).tolist()
    assert "harmonic(p, c)" in repr(HarmonicMean([p, c]))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: WeightedSum([]), "at least one term"),
        (lambda p: WeightedSum([(math.nan, p)]), "weight of term 0 must be finite"),
        (lambda p: WeightedSum([("x", p)]), "weight of term 0 must be a number"),
        (lambda p: WeightedSum([(1.0, "p")]), "term 0 must be a headhunter.Objective"),
        (lambda p: HarmonicMean([p]), "at least two"),
        (lambda p: ThresholdGate([(p, "=>", 1)], p), "comparison '=>'"),
        (lambda p: ThresholdGate([], p), "at least one condition"),
        (lambda p: ThresholdGate([(p, ">", 1)], p, otherwise=math.inf), "must be finite"),
    ],
)
def test_python_objects_validate_input(registry, build, message):
    with pytest.raises(ObjectiveError, match=message):
        build(registry.objective("p"))


def test_objects_pass_through_and_third_party_leaves_keep_their_name(registry):
    p = registry.objective("p")
    assert parse_objective(p) is p
    anon = parse_objective("anon:level=2", registry=registry)
    assert isinstance(anon, Leaf) and anon(IMAGES, PROMPTS).tolist() == [2.0, 2.0, 2.0]
    assert expression(Anonymous()) == "anon"
    assert str(WeightedSum([(0.5, Anonymous()), (0.5, p)])) == "0.5*anon + 0.5*p"


def test_builtin_registry_expression(fresh_registry):
    """With the process-wide registry: the built-in image statistics compose."""
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    objective = parse_objective("0.7*brightness + 0.3*contrast")
    assert str(objective) == "0.7*brightness + 0.3*contrast"
    y = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    expected = 0.7 * y.mean(dim=(1, 2)) + 0.3 * y.flatten(1).std(dim=1, unbiased=False)
    torch.testing.assert_close(objective(images, ["a"]), expected)


class StandIn(Objective):
    """Stands in for a weight-backed objective so doc examples parse without downloads."""

    def __init__(self, name: str, **params) -> None:
        self.name, self.params = name, params

    def score(self, images, prompts):
        return torch.ones(len(images))

    def __str__(self) -> str:
        return format_leaf(self.name, self.params)


class StandInPlugin:
    @hookimpl
    def register_objectives(self, register):
        for name in ("pickscore", "clipscore", "aesthetic", "brightness", "darkness", "contrast", "p", "c"):
            register(name, lambda name=name, **params: StandIn(name, **params))


def test_docs_examples_parse():
    """docs/objectives.md: every expression in its text blocks parses, round-trips, and its errors are real."""
    from pathlib import Path

    pm = get_plugin_manager(load_entry_points=False, builtins=False)
    pm.register(StandInPlugin(), name="stand-ins")
    registry = Registry(pm)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "objectives.md").read_text()
    block = docs.split("The paper's three searches:")[1].split("```")[1]
    expressions = [line.strip() for line in block.splitlines() if line.strip()]
    assert len(expressions) == 3
    for text in expressions + ["0.7*brightness + 0.3*contrast", "harmonic(pickscore, clipscore:style=golden hour)",
                               'clipscore:style="sunlit, warm glow, golden hour"', "brightness - darkness"]:
        assert text in docs
        canonical = str(parse_objective(text, registry=registry))
        assert str(parse_objective(canonical, registry=registry)) == canonical
    with pytest.raises(ObjectiveError) as info:
        parse_objective("harmonic(p,, c)", registry=registry)
    assert str(info.value) in docs
