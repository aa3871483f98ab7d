"""Screen cheaply, confirm exactly: fidelities of a candidate's score, and the multi-fidelity round.

A **fidelity** says how a candidate image is made before the objective scores it:

- `full`: the search's own setting (all `steps` denoising steps);
- `steps:K`: a K-step schedule instead of `steps` (costs K / steps of a full image);
- `x0:K`: the full schedule, stopped after its K-th step, scored on the predicted clean image
  x̂0 = x_i - sigma_i v_i of that step (flow matching; v_i the guided velocity, recovered from two consecutive
  latents as (x_{i+1} - x_i) / (sigma_{i+1} - sigma_i)); costs K / steps. K >= 2 (the readout needs the
  latents before the K-th step), K < steps.

Lower resolution is a third lever on large models; on the embedded 16x16 model it is none (8x8 tokens), so
it is not offered here and its rank transfer is an assumption of the cost model (headhunter.bench.searchcost).

`run_multi_fidelity` is one search round: every candidate is scored on the first `screen_pairs` pairs at
the cheap fidelity (paired with the current set S at the same fidelity), the best `survivors` (a fraction
of the pool, at least k) are promoted, and the round's decision is `allocation.run_round` over the
survivors **at full fidelity** (racing or exhaustive, on paired seeds). The selection, the scores, the
intervals and the leaders it returns are full-fidelity figures only; the screen's figures are kept apart
(`screen_scores`) and never reported as a candidate's score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headhunter.errors import SearchError
from headhunter.search.allocation import REFERENCE, RoundOutcome, run_round
from headhunter.search.stats import objective_value

FULL = "full"


@dataclass(frozen=True)
class Fidelity:
    """How a score is made: `kind` full | steps | x0, with `k` steps (None for full)."""

    kind: str
    k: int | None = None

    def __str__(self) -> str:
        return FULL if self.kind == FULL else f"{self.kind}:{self.k}"

    def cost(self, steps: int) -> float:
        """Fraction of a full image's transformer work (model evaluations K / steps; 1 for full)."""
        return 1.0 if self.kind == FULL else self.k / steps


def parse_fidelity(text: str, steps: int) -> Fidelity:
    """`full`, `steps:K` or `x0:K` for a search of `steps` steps. Raises SearchError naming the value and
    what is allowed."""
    if not isinstance(text, str):
        raise SearchError(f"fidelity must be a string like 'x0:4', 'steps:4' or 'full'; got {text!r}")
    value = text.strip()
    if value == FULL:
        return Fidelity(FULL)
    kind, sep, k = value.partition(":")
    if not sep or kind not in ("steps", "x0") or not k.isdigit():
        raise SearchError(f"fidelity {text!r} is not one of full, steps:K, x0:K (K an integer)")
    k_int = int(k)
    low = 2 if kind == "x0" else 1
    if not low <= k_int < steps:
        raise SearchError(f"fidelity {text!r}: K must be in [{low}, {steps - 1}] for a {steps}-step search "
                          f"(K = {steps} is 'full')")
    return Fidelity(kind, k_int)


class X0Readout:
    """A `callback_on_step_end` that stops the pipeline after its K-th step with the latents replaced by the
    predicted clean sample of that step; the pipeline then decodes them as its output (diffusers pipelines
    and the digits pipeline skip the remaining steps once `_interrupt` is set).

    Flow matching (sigma from 1 to 0, x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v_i): x̂0 = x_{i+1} - sigma_{i+1} v_i,
    with v_i recovered from the latents before and after the step. Needs `scheduler.sigmas`."""

    def __init__(self, k: int) -> None:
        if k < 2:
            raise SearchError(f"x0 readout after step {k}: needs K >= 2 (the latents before the K-th step)")
        self.k = k
        self._before: Any = None

    def __call__(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        latents = kwargs["latents"]
        if i == self.k - 1:
            sigmas = getattr(pipe.scheduler, "sigmas", None)
            if sigmas is None or self._before is None:
                raise SearchError(f"x0 readout needs a flow-matching scheduler with sigmas; "
                                  f"{type(pipe.scheduler).__name__} has none")
            s0, s1 = float(sigmas[i]), float(sigmas[i + 1])
            v = (latents - self._before) / (s1 - s0)
            pipe._interrupt = True
            self._before = None
            return {"latents": latents - s1 * v}
        self._before = latents
        return {"latents": latents}


@dataclass
class MultiFidelityOutcome:
    """A multi-fidelity round: the full-fidelity outcome over the survivors (`outcome`: selection, scores,
    intervals, leaders, all at full fidelity), what the screen saw (`screen_scores`: objective at the cheap
    fidelity on `screen_pairs` pairs, never a result), who was promoted, and the images per fidelity."""

    outcome: RoundOutcome
    fidelity: str
    screen_pairs: int
    screen_scores: dict[str, float]
    survivors: list[str]
    screened_out: list[str] = field(default_factory=list)
    screen_images: int = 0
    full_images: int = 0

    def image_steps(self, steps: int) -> float:
        """Full-fidelity-equivalent image-steps: screen images x K + full images x steps."""
        k = steps if self.fidelity == FULL else int(self.fidelity.split(":")[1])
        return self.screen_images * k + self.full_images * steps


def run_multi_fidelity(
    candidates: Sequence[str],
    fetch_screen: Callable[[dict[str, int]], None],
    get_screen: Callable[[str, int], np.ndarray],
    fetch: Callable[[dict[str, int]], None],
    get: Callable[[str, int], np.ndarray],
    *,
    total_pairs: int,
    top_k: int,
    objective: Any,
    leaves: Sequence[str],
    fidelity: str = "x0:4",
    screen_pairs: int = 4,
    survivors: float = 0.25,
    schedule: str = "racing",
    first_pairs: int = 8,
    budget: float = 1.0,
    level: float = 0.95,
) -> MultiFidelityOutcome:
    """Screen `candidates` at `fidelity` on `screen_pairs` pairs, promote the best `survivors` fraction
    (at least `top_k`; ties to the earlier candidate), then decide by `run_round(schedule)` at full fidelity.

    fetch_screen/get_screen and fetch/get are `run_round`'s fetch/get for the cheap and the full fidelity
    (REFERENCE is the current set S). The screen ranks by the paired difference to S at the cheap fidelity
    (the same pairs for everyone, so the ranking equals the ranking of the candidates' own means). `budget`
    is the full-fidelity race's, as a fraction of the survivors' exhaustive images.
    Raises SearchError for impossible parameters."""
    if not 0.0 < survivors <= 1.0:
        raise SearchError(f"survivors must be a fraction in (0, 1] of the pool; got {survivors}")
    if not 1 <= screen_pairs <= total_pairs:
        raise SearchError(f"screen_pairs={screen_pairs} must be in [1, {total_pairs}] (the search's pairs)")
    if not 1 <= top_k <= len(candidates):
        raise SearchError(f"top_k={top_k} but the round has {len(candidates)} candidates")
    order = {c: i for i, c in enumerate(candidates)}
    fetch_screen({**{c: screen_pairs for c in candidates}, REFERENCE: screen_pairs})
    screen = {c: float(objective_value(objective, get_screen(c, screen_pairs).mean(0), leaves)) for c in candidates}
    keep = max(top_k, math.ceil(survivors * len(candidates)))
    ranked = sorted(candidates, key=lambda c: (-screen[c], order[c]))
    promoted = [c for c in candidates if c in set(ranked[:keep])]  # pool order
    outcome = run_round(promoted, fetch, get, total_pairs=total_pairs, top_k=top_k, objective=objective,
                        leaves=leaves, schedule=schedule, first_pairs=first_pairs, budget=budget, level=level)
    return MultiFidelityOutcome(outcome, fidelity, screen_pairs, screen, promoted,
                                [c for c in candidates if c not in set(promoted)],
                                screen_images=(len(candidates) + 1) * screen_pairs,
                                full_images=outcome.images + outcome.stages[-1])


__all__ = ["FULL", "Fidelity", "MultiFidelityOutcome", "X0Readout", "parse_fidelity", "run_multi_fidelity"]
