"""Objective composition (weighted sum, harmonic mean, threshold gate) and the one-string grammar.

    parse_objective("harmonic(pickscore, clipscore:style=golden hour)")
    parse_objective("0.7*brightness + 0.3*contrast")
    parse_objective("gate(pickscore>=20, aesthetic>=6; clipscore)")

`str(objective)` is the canonical expression (stored in head-set provenance); parsing it gives an equal
objective. The grammar (docs/objectives.md has the full description):

    expression := sum
    sum        := ['-'] product (('+' | '-') product)*
    product    := factor ('*' factor)*            (numbers multiply; at most one objective per product)
    factor     := NUMBER | '(' sum ')' | 'harmonic' '(' sum (',' sum)* ')'
                | 'gate' '(' condition (',' condition)* ';' sum [';' NUMBER] ')' | leaf
    condition  := sum ('>=' | '>' | '<=' | '<') NUMBER
    leaf       := NAME (':' KEY '=' VALUE)*       (VALUE: "quoted", 'quoted', or bare text)

Composites score by combining the scores of their leaves: `components(obj, images, prompts)` gives the
leaf scores (each leaf scored once, even if used twice) and `combine(obj, values)` applies the formula to
any tensors of leaf scores. The paper's code combines **per-candidate means** (it averages PickScore, CLIP
and aesthetic over a head's M images, then gates / takes the harmonic mean); `combine(obj, means)` does
exactly that, while `obj(images, prompts)` combines per image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

from .errors import ObjectiveError, PluginError
from .objective import Images, Objective

# ---------------------------------------------------------------- canonical text

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BARE_VALUE = re.compile(r"[A-Za-z0-9_#./{}@%!?&|~^$\[\]]+(?:[ -][A-Za-z0-9_#./{}@%!?&|~^$\[\]]+)*")


def format_number(x: float) -> str:
    """Shortest text that reads back as the same float: 0.7, 20, -1.5e-05."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def format_value(value: Any) -> str:
    """A parameter value as the grammar writes it: numbers and plain words bare, other text double-quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format_number(value)
    text = str(value)
    if _BARE_VALUE.fullmatch(text) and not _NUMBER.fullmatch(text) and text not in ("true", "false"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_leaf(name: str, params: Mapping[str, Any]) -> str:
    """Canonical text of a leaf objective: `name:key=value:key=value`, keys sorted."""
    return name + "".join(f":{key}={format_value(params[key])}" for key in sorted(params))


def expression(objective: Objective) -> str:
    """The canonical expression of any objective: its `str()` if it defines one, else its name."""
    if type(objective).__str__ is object.__str__:
        return str(getattr(objective, "name", type(objective).__name__))
    return str(objective)


# ---------------------------------------------------------------- composition

class Composite(Objective):
    """An objective computed from the scores of other objectives (its leaves)."""

    def children(self) -> list[Objective]:
        raise NotImplementedError

    def combine(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Apply the formula to leaf scores keyed by leaf expression (any shape, e.g. [B] or means [])."""
        raise NotImplementedError

    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        return self.combine(components(self, images, prompts)).float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


def leaves(objective: Objective) -> dict[str, Objective]:
    """The leaf objectives of `objective` by canonical expression (a leaf used twice appears once)."""
    if not isinstance(objective, Composite):
        return {expression(objective): objective}
    found: dict[str, Objective] = {}
    for child in objective.children():
        found.update(leaves(child))
    return found


def components(objective: Objective, images: Images, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each leaf's float32 scores [B] for these images, keyed by leaf expression."""
    return {key: leaf(images, prompts).float() for key, leaf in leaves(objective).items()}


def combine(objective: Objective, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """`objective`'s formula applied to leaf scores (e.g. per-candidate means, as the paper's code does)."""
    if isinstance(objective, Composite):
        return objective.combine(values)
    key = expression(objective)
    try:
        return torch.as_tensor(values[key], dtype=torch.float32)
    except KeyError:
        raise ObjectiveError(f"no scores for {key!r}; got scores for: {', '.join(values) or '(none)'}") from None


def _check_objective(obj: Any, where: str) -> Objective:
    if not isinstance(obj, Objective):
        raise ObjectiveError(f"{where} must be a headhunter.Objective, got {type(obj).__name__}")
    return obj


def _check_finite(x: Any, where: str) -> float:
    try:
        value = float(x)
    except (TypeError, ValueError):
        raise ObjectiveError(f"{where} must be a number, got {x!r}") from None
    if not math.isfinite(value):
        raise ObjectiveError(f"{where} must be finite, got {value}")
    return value


class WeightedSum(Composite):
    """sum_i w_i * O_i. Nested sums are flattened; terms keep their order."""

    name = "sum"

    def __init__(self, terms: Sequence[tuple[float, Objective]]) -> None:
        flat: list[tuple[float, Objective]] = []
        for i, (weight, obj) in enumerate(terms):
            w = _check_finite(weight, f"weight of term {i}")
            obj = _check_objective(obj, f"term {i}")
            if isinstance(obj, WeightedSum):
                flat.extend((w * inner_w, inner) for inner_w, inner in obj.terms)
            else:
                flat.append((w, obj))
        if not flat:
            raise ObjectiveError("a weighted sum needs at least one term")
        self.terms = flat

    def children(self) -> list[Objective]:
        return [obj for _, obj in self.terms]

    def combine(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(w * combine(obj, values) for w, obj in self.terms)  # type: ignore[return-value]

    def __str__(self) -> str:
        parts = []
        for i, (w, obj) in enumerate(self.terms):
            text = expression(obj) if abs(w) == 1 else f"{format_number(abs(w))}*{expression(obj)}"
            if i == 0:
                parts.append(f"-{text}" if w < 0 else text)
            else:
                parts.append(f"{'-' if w < 0 else '+'} {text}")
        return " ".join(parts)


class HarmonicMean(Composite):
    """n / sum_i (1 / O_i) when every O_i > 0, else 0 (the paper code's harmonic_pick_clip for n = 2)."""

    name = "harmonic"

    def __init__(self, objectives: Sequence[Objective]) -> None:
        self.objectives = [_check_objective(o, f"term {i}") for i, o in enumerate(objectives)]
        if len(self.objectives) < 2:
            raise ObjectiveError(f"harmonic(...) needs at least two objectives, got {len(self.objectives)}")

    def children(self) -> list[Objective]:
        return list(self.objectives)

    def combine(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = torch.stack(torch.broadcast_tensors(*[combine(o, values) for o in self.objectives]))
        positive = (x > 0).all(dim=0)
        mean = len(self.objectives) / (1.0 / x.clamp_min(torch.finfo(x.dtype).tiny)).sum(dim=0)
        return torch.where(positive, mean, torch.zeros_like(mean))

    def __str__(self) -> str:
        return f"harmonic({', '.join(expression(o) for o in self.objectives)})"


_COMPARISONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    ">=": lambda a, t: a >= t,
    ">": lambda a, t: a > t,
    "<=": lambda a, t: a <= t,
    "<": lambda a, t: a < t,
}


class ThresholdGate(Composite):
    """`then` where every condition holds, else `otherwise` (default 0: last, for the positive scorers).

    The paper code's `pickscore_thresholding_clip` is `gate(pickscore>=20, aesthetic>=6; clipscore)`
    combined on per-candidate means (its failing candidates are dropped; here they score `otherwise`).
    `otherwise` is finite so means, checkpoints and head-set provenance stay plain numbers.
    """

    name = "gate"

    def __init__(
        self,
        conditions: Sequence[tuple[Objective, str, float]],
        then: Objective,
        otherwise: float = 0.0,
    ) -> None:
        checked = []
        for i, (obj, op, threshold) in enumerate(conditions):
            if op not in _COMPARISONS:
                raise ObjectiveError(f"comparison {op!r} in condition {i}; allowed: {', '.join(_COMPARISONS)}")
            checked.append((_check_objective(obj, f"condition {i}"), op, _check_finite(threshold, f"threshold {i}")))
        if not checked:
            raise ObjectiveError("gate(...) needs at least one condition")
        self.conditions = checked
        self.then = _check_objective(then, "the ranked objective of gate(...)")
        self.otherwise = _check_finite(otherwise, "the value of gate(...) when a condition fails")

    def children(self) -> list[Objective]:
        return [obj for obj, _, _ in self.conditions] + [self.then]

    def combine(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ranked = combine(self.then, values)
        passed = torch.ones_like(ranked, dtype=torch.bool)
        for obj, op, threshold in self.conditions:
            passed = passed & _COMPARISONS[op](combine(obj, values), threshold)
        return torch.where(passed, ranked, torch.full_like(ranked, self.otherwise))

    def __str__(self) -> str:
        conds = ", ".join(f"{expression(o)}{op}{format_number(t)}" for o, op, t in self.conditions)
        otherwise = f"; {format_number(self.otherwise)}" if self.otherwise != 0 else ""
        return f"gate({conds}; {expression(self.then)}{otherwise})"


class Leaf(Objective):
    """A registered objective that has no canonical `str()` of its own, with the name and params it was made from."""

    def __init__(self, name: str, params: Mapping[str, Any], objective: Objective) -> None:
        self.name = name
        self.params = dict(params)
        self.objective = objective

    def score(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        return self.objective(images, prompts)

    def __str__(self) -> str:
        return format_leaf(self.name, self.params)


# ---------------------------------------------------------------- the grammar

FUNCTIONS = ("harmonic", "gate")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE_STOP = set(",;:()+*<>=\"'")


def _convert(text: str) -> Any:
    if _NUMBER.fullmatch(text):
        number = float(text)
        return int(number) if re.fullmatch(r"[+-]?[0-9]+", text) else number
    if text in ("true", "false"):
        return text == "true"
    return text


class _Parser:
    def __init__(self, text: str, make_leaf: Callable[[str, dict[str, Any], int], Objective]) -> None:
        self.text = text
        self.pos = 0
        self.make_leaf = make_leaf

    # -- helpers
    def error(self, message: str, pos: int | None = None) -> ObjectiveError:
        at = self.pos if pos is None else pos
        return ObjectiveError(
            f"bad objective expression at column {at + 1}: {message}\n  {self.text}\n  {' ' * at}^"
        )

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, *options: str) -> str | None:
        self.skip()
        for option in options:
            if self.text.startswith(option, self.pos):
                return option
        return None

    def found(self) -> str:
        self.skip()
        if self.pos >= len(self.text):
            return "the end of the expression"
        match = _NAME.match(self.text, self.pos) or _NUMBER.match(self.text, self.pos)
        return repr(match.group(0) if match else self.text[self.pos])

    def expect(self, token: str, what: str) -> None:
        if self.peek(token) is None:
            raise self.error(f"expected {what} but found {self.found()}")
        self.pos += len(token)

    # -- grammar
    def parse(self) -> Objective:
        result = self.sum()
        self.skip()
        if self.pos < len(self.text):
            raise self.error(f"unexpected {self.found()}; expected '+', '-', '*' or the end of the expression")
        return result

    def sum(self) -> Objective:
        start = self.pos
        sign = -1.0 if self.peek("-") else 1.0
        if sign < 0:
            self.pos += 1
        terms = [self.product(sign)]
        while (op := self.peek("+", "-")) is not None:
            self.pos += 1
            terms.append(self.product(-1.0 if op == "-" else 1.0))
        if len(terms) == 1 and terms[0][0] == 1.0:
            return terms[0][1]
        try:
            return WeightedSum(terms)
        except ObjectiveError as err:
            raise self.error(str(err), start) from None

    def product(self, weight: float) -> tuple[float, Objective]:
        start = self.pos
        objective: Objective | None = None
        while True:
            self.skip()
            factor_at = self.pos
            factor = self.factor()
            if isinstance(factor, float):
                weight *= factor
            elif objective is not None:
                raise self.error("two objectives multiplied; only numbers may multiply an objective", factor_at)
            else:
                objective = factor
            if self.peek("*") is None:
                break
            self.pos += 1
        if objective is None:
            raise self.error("a number on its own; numbers only weight objectives, as in 0.5*brightness", start)
        if isinstance(objective, WeightedSum) and weight != 1.0:
            return 1.0, WeightedSum([(weight * w, o) for w, o in objective.terms])
        return weight, objective

    def factor(self) -> float | Objective:
        self.skip()
        number = _NUMBER.match(self.text, self.pos)
        if number and not self.text[self.pos] in "+-":
            self.pos = number.end()
            return float(number.group(0))
        if self.peek("("):
            self.pos += 1
            inner = self.sum()
            self.expect(")", "')'")
            return inner
        name_match = _NAME.match(self.text, self.pos)
        if name_match is None:
            raise self.error(f"expected an objective name, a number, '(' or harmonic(...)/gate(...) but found {self.found()}")
        name_at = self.pos
        self.pos = name_match.end()
        name = name_match.group(0)
        if self.peek("("):
            if name not in FUNCTIONS:
                raise self.error(f"unknown function {name!r}; allowed: harmonic(a, b, ...), gate(cond, ...; ranked)", name_at)
            self.pos += 1
            return self.harmonic(name_at) if name == "harmonic" else self.gate(name_at)
        return self.leaf(name, name_at)

    def harmonic(self, at: int) -> Objective:
        terms = [self.sum()]
        while self.peek(","):
            self.pos += 1
            terms.append(self.sum())
        self.expect(")", "',' or ')' in harmonic(...)")
        try:
            return HarmonicMean(terms)
        except ObjectiveError as err:
            raise self.error(str(err), at) from None

    def gate(self, at: int) -> Objective:
        conditions = [self.condition()]
        while self.peek(","):
            self.pos += 1
            conditions.append(self.condition())
        self.expect(";", "',' (another condition) or ';' (then the objective to rank by) in gate(...)")
        then = self.sum()
        otherwise = 0.0
        if self.peek(";"):
            self.pos += 1
            self.skip()
            number = _NUMBER.match(self.text, self.pos)
            if number is None:
                raise self.error(f"expected the number scored when a condition fails but found {self.found()}")
            self.pos = number.end()
            otherwise = float(number.group(0))
        self.expect(")", "')' closing gate(...)" + ("" if otherwise else " (or ';' and the score when a condition fails)"))
        return ThresholdGate(conditions, then, otherwise)

    def condition(self) -> tuple[Objective, str, float]:
        lhs = self.sum()
        op = self.peek(">=", "<=", ">", "<")
        if op is None:
            raise self.error(f"expected a comparison (>=, >, <=, <) but found {self.found()}")
        self.pos += len(op)
        self.skip()
        number = _NUMBER.match(self.text, self.pos)
        if number is None:
            raise self.error(f"expected a threshold number after {op!r} but found {self.found()}")
        self.pos = number.end()
        return lhs, op, float(number.group(0))

    def leaf(self, name: str, at: int) -> Objective:
        params: dict[str, Any] = {}
        while self.peek(":"):
            self.pos += 1
            self.skip()
            key = _KEY.match(self.text, self.pos)
            if key is None:
                raise self.error(f"expected a parameter name after ':' (as in {name}:key=value) but found {self.found()}")
            self.pos = key.end()
            self.expect("=", f"'=' after parameter {key.group(0)!r}")
            if key.group(0) in params:
                raise self.error(f"parameter {key.group(0)!r} given twice", key.start())
            params[key.group(0)] = self.value()
        try:
            return self.make_leaf(name, params, at)
        except _UnknownName as err:
            raise self.error(str(err), at) from None

    def value(self) -> Any:
        self.skip()
        if self.pos < len(self.text) and self.text[self.pos] in "\"'":
            return self.quoted()
        start = self.pos
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in _VALUE_STOP or (ch == "-" and self.pos > start and self.text[self.pos - 1].isspace()):
                break
            self.pos += 1
        text = self.text[start : self.pos].strip()
        if not text:
            raise self.error(f"expected a value after '=' but found {self.found()} (quote values with special characters)")
        return _convert(text)

    def quoted(self) -> str:
        quote, start = self.text[self.pos], self.pos
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            self.pos += 1
            if ch == quote:
                return "".join(out)
            out.append(ch)
        raise self.error(f"unterminated string starting with {quote}", start)


class _UnknownName(ObjectiveError):
    """An unknown objective name (the parser adds the column and a caret)."""


def _registry_leaf(registry: Any) -> Callable[[str, dict[str, Any], int], Objective]:
    def make(name: str, params: dict[str, Any], at: int) -> Objective:
        try:
            factory = registry.get("objective", name)
        except PluginError as err:
            hint = ""
            if "-" in name and all(part in registry.names("objective") for part in name.split("-")):
                hint = f" To subtract, put spaces around '-': {' - '.join(name.split('-'))!r}."
            raise _UnknownName(f"{err}{hint}") from None
        try:
            obj = factory(**params)
        except ObjectiveError as err:
            raise ObjectiveError(f"objective {format_leaf(name, params)!r}: {err}") from None
        except (TypeError, ValueError) as err:
            raise ObjectiveError(f"bad parameters for objective {name!r} ({err}); given: {', '.join(params) or '(none)'}") from None
        obj = _check_objective(obj, f"objective {name!r} (its factory's result)")
        return obj if type(obj).__str__ is not object.__str__ else Leaf(name, params, obj)

    return make


def parse_objective(text: str | Objective, registry: Any = None) -> Objective:
    """An objective from an expression such as `harmonic(pickscore, clipscore:style=golden hour)`.

    Leaf names resolve through the plugin registry (`registry`, default the process-wide one); an objective
    passed in is returned unchanged. Errors name the column, what was found and what is allowed.
    """
    if isinstance(text, Objective):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ObjectiveError(f"objective expression must be a non-empty string, got {text!r}")
    if registry is None:
        from .registry import get_registry

        registry = get_registry()
    return _Parser(text, _registry_leaf(registry)).parse()


__all__ = [
    "Composite",
    "HarmonicMean",
    "Leaf",
    "ThresholdGate",
    "WeightedSum",
    "combine",
    "components",
    "expression",
    "format_leaf",
    "format_value",
    "leaves",
    "parse_objective",
]
