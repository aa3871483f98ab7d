"""The one-string objective grammar: text -> objective (composites are in headhunter.objective.composite).

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

The objects the grammar builds (WeightedSum, HarmonicMean, ThresholdGate, Leaf) and the helpers that
score them (`components`, `combine`) live in `headhunter.objective.composite`; they are re-exported here so
`from headhunter.objective.expr import combine` keeps working.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from headhunter.objective.composite import (  # noqa: F401 (re-exported: the names this module offered before the split)
    _NUMBER,
    Composite,
    HarmonicMean,
    Leaf,
    ThresholdGate,
    WeightedSum,
    combine,
    components,
    expression,
    format_leaf,
    format_number,
    format_value,
    leaves,
    _check_objective,
)
from headhunter.errors import ObjectiveError, PluginError
from headhunter.contracts.objective import Objective
from headhunter.plugin_system.registry import get_registry

# ---------------------------------------------------------------- the grammar

FUNCTIONS = ("harmonic", "gate")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE_STOP = set(",;:()+*<>=\"'")


def _convert(text: str) -> Any:
    if _NUMBER.fullmatch(text):
        if re.fullmatch(r"[+-]?[0-9]{1,40}", text):
            return int(text)
        number = float(text)
        if not math.isfinite(number):
            raise ObjectiveError(f"parameter value {text[:40]!r} is not a finite number")
        return number
    if text in ("true", "false"):
        return text == "true"
    return text


#: Deepest nesting of parentheses and function calls in an objective expression.
MAX_DEPTH = 32


class _Parser:
    def __init__(self, text: str, make_leaf: Callable[[str, dict[str, Any], int], Objective]) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
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

    def number(self, match: re.Match[str]) -> float:
        """A number literal of the expression; must be finite (e.g. '1e999' overflows)."""
        value = float(match.group(0))
        if not math.isfinite(value):
            raise self.error(f"number {match.group(0)[:40]!r} is not finite; numbers must be finite", match.start())
        return value

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
        """A sum, counting nesting: parentheses and function calls deeper than MAX_DEPTH are an error."""
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.error(f"nested more than {MAX_DEPTH} levels deep")
            return self._sum()
        finally:
            self.depth -= 1

    def _sum(self) -> Objective:
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
            return self.number(number)
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
            otherwise = self.number(number)
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
        return lhs, op, self.number(number)

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
