"""Composite objectives (weighted sum, harmonic mean, threshold gate) and their canonical text.

A composite scores by combining the scores of its leaves: `components(obj, images, prompts)` gives the
leaf scores (each leaf scored once, even if used twice) and `combine(obj, values)` applies the formula to
any tensors of leaf scores. The paper's code combines **per-candidate means** (it averages PickScore, CLIP
and aesthetic over a head's M images, then gates / takes the harmonic mean); `combine(obj, means)` does
exactly that, while `obj(images, prompts)` combines per image. `str(objective)` is the canonical
expression; the grammar that reads it back is `headhunter.objective.expr.parse_objective`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch

from headhunter.errors import ObjectiveError
from headhunter.contracts.objective import Images, Objective

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


__all__ = [
    "Composite", "HarmonicMean", "Leaf", "ThresholdGate", "WeightedSum", "combine", "components", "expression",
    "format_leaf", "format_number", "format_value", "leaves",
]
