"""Schedules: a head set's strengths over intervals of the flow-matching noise level sigma in [0, 1].

A schedule is a partition of [0, 1] by boundaries `0 = b0 < b1 < ... < bK = 1` into K intervals
`[b0, b1), [b1, b2), ..., [b(K-1), 1]` (half-open, the top one closed so sigma = 1, the first step of every
flow-matching sampler, has an interval), with one strength map per interval. sigma is the value the
scheduler steps through (`scheduler.sigmas[step_index]`, docs/guidance.md "Schedules"); the step window of
`GuidanceSettings` (fractions of the steps) is a separate setting that still applies.

This module owns the arithmetic (checking boundaries, finding the interval of a sigma, refining two
partitions) and the interval part of the paper notation (docs/format.md, "Paper notation"):

    item     := "L" layer "H" head [ "@" strength ] [ "@" interval ]
    interval := "[" lo "," hi ")"      with 0 <= lo < hi < 1
              | "[" lo "," "1" "]"     the top interval, closed at sigma = 1

e.g. `L3H2@[0,0.4)`, `L3H2@0.5@[0.4,1]`. A head without an interval acts at every sigma.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Sequence

from headhunter.errors import HeadSetError

#: An interval of sigma: (lo, hi), meaning [lo, hi) for hi < 1 and [lo, 1] for hi == 1.
Interval = tuple[float, float]
#: The whole range: a head set without a schedule acts on it.
FULL: Interval = (0.0, 1.0)
#: Most intervals one head set may hold (bounds memory for files from outside; a 1000-step schedule fits).
MAX_INTERVALS = 1024

_NUMBER = r"[0-9.eE+-]+"
_ITEM = re.compile(
    rf"^\s*L(\d+)H(\d+)(?:@({_NUMBER}))?(?:@\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([)\]]))?\s*$"
)


def format_number(value: float) -> str:
    """The shortest text that reads back to exactly `value` (`0.4`, `0`, `1`, `0.30000000000000004`)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def format_interval(interval: Interval) -> str:
    """`[0,0.4)` for an inner interval, `[0.4,1]` for the top one (closed at sigma = 1)."""
    lo, hi = interval
    return f"[{format_number(lo)},{format_number(hi)}{']' if hi == 1.0 else ')'}"


def check_interval(lo: float, hi: float, where: str = "") -> Interval:
    """(lo, hi) as floats, checked: finite, 0 <= lo < hi <= 1. HeadSetError names the bad value."""
    prefix = f"{where}: " if where else ""
    for value in (lo, hi):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HeadSetError(f"{prefix}interval bound {value!r} must be a number in [0, 1]")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi <= 1.0):
        raise HeadSetError(f"{prefix}interval [{lo:g}, {hi:g}) of the noise level sigma is out of range; "
                           "allowed: 0 <= lo < hi <= 1")
    return lo, hi


def check_boundaries(bounds: Sequence[float], where: str = "") -> tuple[float, ...]:
    """Boundaries `0 = b0 < b1 < ... < bK = 1` (K >= 1, at most MAX_INTERVALS), as floats."""
    prefix = f"{where}: " if where else ""
    values = list(bounds)
    if len(values) < 2 or len(values) > MAX_INTERVALS + 1:
        raise HeadSetError(f"{prefix}a schedule needs between 1 and {MAX_INTERVALS} intervals, got {len(values) - 1}")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise HeadSetError(f"{prefix}interval bound {value!r} must be a finite number in [0, 1]")
        out.append(float(value))
    if out[0] != 0.0 or out[-1] != 1.0:
        raise HeadSetError(f"{prefix}the intervals must cover sigma in [0, 1] from 0 to 1; got bounds "
                           f"{format_number(out[0])} .. {format_number(out[-1])}")
    for a, b in zip(out, out[1:]):
        if not a < b:
            raise HeadSetError(f"{prefix}interval bounds must increase strictly; got {format_number(a)} then "
                               f"{format_number(b)}")
    return tuple(out)


def intervals_of(bounds: Sequence[float]) -> list[Interval]:
    """The K intervals of boundaries b0..bK."""
    return list(zip(bounds[:-1], bounds[1:]))


def bounds_of(intervals: Sequence[Sequence[float]], where: str = "") -> tuple[float, ...]:
    """Boundaries from a list of contiguous intervals `[[0, a], [a, b], ..., [c, 1]]` (the file's form)."""
    prefix = f"{where}: " if where else ""
    if not isinstance(intervals, (list, tuple)) or not intervals:
        raise HeadSetError(f"{prefix}intervals must be a non-empty list of [lo, hi] pairs, got {intervals!r}"[:300])
    bounds = []
    for i, pair in enumerate(intervals):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise HeadSetError(f"{prefix}interval {i} must be a [lo, hi] pair, got {pair!r}"[:300])
        if bounds and pair[0] != bounds[-1]:
            raise HeadSetError(f"{prefix}interval {i} starts at {pair[0]!r} but interval {i - 1} ends at "
                               f"{bounds[-1]!r}; the intervals must be contiguous")
        if not bounds:
            bounds.append(pair[0])
        bounds.append(pair[1])
    return check_boundaries(bounds, where)


def interval_index(bounds: Sequence[float], sigma: float) -> int:
    """Index of the interval holding `sigma` in [0, 1] (`b_i <= sigma < b_(i+1)`; sigma = 1 is in the top
    one). ValueError for a sigma outside [0, 1] (callers name the scheduler)."""
    if not 0.0 <= sigma <= 1.0:  # also refuses NaN
        raise ValueError(f"noise level sigma={sigma!r} is outside [0, 1]")
    return min(bisect.bisect_right(bounds, sigma) - 1, len(bounds) - 2)


def refine(*bounds: Sequence[float]) -> tuple[float, ...]:
    """The common refinement of several partitions: the sorted union of their boundaries."""
    return tuple(sorted({float(b) for part in bounds for b in part}))


def parse_item(text: str) -> tuple[int, int, float | None, Interval | None]:
    """One head in paper notation with an optional strength and interval: (layer, head, strength or None,
    interval or None). HeadSetError names the item and the expected form."""
    match = _ITEM.match(text)
    if match is None:
        raise HeadSetError(
            f"cannot parse head {text.strip()[:80]!r}: expected paper notation like 'L12H3', 'L12H3@0.5', "
            "'L12H3@[0,0.4)' or 'L12H3@0.5@[0.4,1]' (layer and head 0-based, strength in [0, 1], interval of "
            "the noise level sigma)"
        )
    layer, head, strength, lo, hi, close = match.groups()
    try:
        value = None if strength is None else float(strength)
    except ValueError:
        raise HeadSetError(f"cannot parse strength {strength!r} in head {text.strip()!r}") from None
    if lo is None:
        return int(layer), int(head), value, None
    try:
        lo_value, hi_value = float(lo), float(hi)
    except ValueError:
        raise HeadSetError(f"cannot parse interval [{lo},{hi}{close} in head {text.strip()!r}") from None
    interval = check_interval(lo_value, hi_value, where=f"head {text.strip()!r}")
    if (interval[1] == 1.0) != (close == "]"):
        want = f"[{lo},{hi}]" if interval[1] == 1.0 else f"[{lo},{hi})"
        raise HeadSetError(f"interval [{lo},{hi}{close} in head {text.strip()!r}: write {want} (the top interval "
                           "is closed at sigma = 1, every other one is half-open)")
    return int(layer), int(head), value, interval


def equal_intervals(k: int, error: type[Exception] = HeadSetError) -> list[Interval]:
    """K equal intervals of sigma in [0, 1]: `[(0, 1/K), ..., ((K-1)/K, 1)]` (the atlas's and the scheduled
    search's default partition). `error` (default HeadSetError) for K that is not an integer in [2, 64]."""
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 64:
        raise error(f"intervals={k!r}: give a number of intervals in [2, 64], or the intervals themselves")
    return [(i / k, (i + 1) / k if i + 1 < k else 1.0) for i in range(k)]


def item_spec(text: str, strength: float) -> tuple[int, int, float, Interval]:
    """`(layer, head, strength, interval)` of one notation item, the item's own strength ignored (the search
    gives every head its strength u) and its interval FULL when it has none: what `HeadSet.from_heads` takes.
    HeadSetError for text that is not an item (`parse_item`)."""
    layer, head, _, interval = parse_item(text)
    return layer, head, strength, interval or FULL


def item_order(text: str) -> tuple[int, int, Interval]:
    """Sort key of a notation item: layer, head, then interval (lowest sigma first)."""
    layer, head, _, interval = parse_item(text)
    return layer, head, interval or FULL


def split_items(text: str) -> list[str]:
    """Split a notation string at commas and semicolons outside brackets (`L0H1@[0,0.4), L1H2`)."""
    items, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char in ")]" and depth:
            depth -= 1
        if char in ",;" and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item for item in items if item.strip()]


def runs(values: Iterable[float], bounds: Sequence[float]) -> list[tuple[float, Interval]]:
    """Maximal runs of equal non-zero values over the intervals of `bounds` (one value per interval):
    [(value, (lo, hi)), ...]. How a head's strengths over a schedule are written in notation."""
    out: list[tuple[float, Interval]] = []
    previous = None
    for (lo, hi), value in zip(intervals_of(bounds), values):
        if value != 0.0 and previous == value and out and out[-1][1][1] == lo:
            out[-1] = (value, (out[-1][1][0], hi))
        elif value != 0.0:
            out.append((value, (lo, hi)))
        previous = value
    return out


__all__ = ["FULL", "Interval", "MAX_INTERVALS", "bounds_of", "check_boundaries", "check_interval",
           "equal_intervals", "format_interval", "format_number", "interval_index", "intervals_of", "item_order", "item_spec", "parse_item", "refine", "runs",
           "split_items"]
