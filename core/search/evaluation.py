"""Evaluation on fresh seeds: compare head sets (and baseline, and layers) with bootstrap intervals.

A search's score is optimistic (it chose the heads on those very seeds); only fresh seeds tell whether a
found head set really beats the unguided model and the best whole layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from headhunter.engine.runner import Row
from headhunter.format.schema import GenerationSettings
from headhunter.errors import SearchError
from headhunter.search.stats import Estimate
from headhunter.search.verdicts import RANDOM_PREFIX, verdicts
import headhunter.engine.runner as _runner
from headhunter.search.distributed import context
from headhunter.plugin_system.registry import get_registry

#: A set-level metric: (images [N, C, H, W] in [0, 1], prompts) -> (value, (low, high)); lower or higher
#: is better as its name documents (e.g. FD: lower).
SetMetric = Callable[[torch.Tensor, Sequence[str]], tuple[float, tuple[float, float]]]


@dataclass
class SettingResult:
    """One evaluated setting: per-image objective scores, per-metric estimates, and its images."""

    name: str
    objective: Estimate
    scores: list[float]
    metrics: dict[str, Estimate] = field(default_factory=dict)
    images: torch.Tensor | None = None
    #: Per-sample features of the set metrics that offer them (`features(images, prompts) -> [N, D]` and
    #: `from_features(features) -> value`), so a set-metric difference can be bootstrapped over the pairs.
    features: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Evaluation:
    """All settings on the same fresh prompt-seed pairs (so comparisons are paired)."""

    settings: dict[str, SettingResult]
    prompts: list[str]
    seeds: list[int]
    objective: str
    #: The set metrics by name (to recompute one on resampled features: `from_features`).
    set_metrics: dict[str, Any] = field(default_factory=dict)

    def difference(self, a: str, b: str, n_boot: int = 2000, seed: int = 0) -> Estimate:
        """Paired bootstrap of mean(objective of a) - mean(objective of b) over the same samples."""
        x = np.asarray(self.settings[a].scores) - np.asarray(self.settings[b].scores)
        return bootstrap_mean(x, n_boot=n_boot, seed=seed)


def bootstrap_mean(values: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean and 95 % percentile bootstrap interval (resampling samples with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise SearchError("cannot estimate a mean of no samples")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))


def evaluate(
    pipe: Any,
    headsets: Mapping[str, Any],
    objective: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    generation: GenerationSettings,
    *,
    batch_size: int = 64,
    metrics: Mapping[str, Any] | None = None,
    set_metrics: Mapping[str, SetMetric] | None = None,
    keep_images: int = 10,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Generate every setting on the same (prompt, seed) pairs and score them.

    headsets: name -> HeadSet or None (unguided). metrics: extra per-image objectives (name -> Objective);
    set_metrics: set-level metrics such as a Fréchet distance. Intervals are 95 % bootstrap over samples.
    Under torchrun (`headhunter.search.distributed`) the fixed batches are dealt out to the ranks and the images
    all-gathered, so every rank returns the same Evaluation, equal to a single process's.
    """
    ctx = context()
    pairs = [(p, int(s)) for p in prompts for s in seeds]
    results = {}
    for name, headset in headsets.items():
        rows = [Row(headset, p, s) for p, s in pairs]
        starts = list(range(0, len(rows), batch_size))
        chunks: dict[int, torch.Tensor] = {}
        for group in range(0, len(starts), ctx.world):
            mine = starts[group : group + ctx.world]
            start = mine[ctx.rank] if ctx.rank < len(mine) else None
            made = None if start is None else _runner.generate_rows(pipe, rows[start : start + batch_size], generation)
            for got_start, images in ctx.all_gather((start, made)):
                if got_start is not None:
                    chunks[got_start] = images
                    if progress is not None:
                        progress(len(images))
        images = torch.cat([chunks[start] for start in starts])
        results[name] = _score(name, images, [p for p, _ in pairs], objective, metrics or {}, set_metrics or {}, keep_images)
    return Evaluation(results, list(prompts), [int(s) for s in seeds], str(getattr(objective, "name", objective)),
                      dict(set_metrics or {}))


def _score(name, images, prompts, objective, metrics, set_metrics, keep) -> SettingResult:
    scores = objective(images, prompts).double().cpu().tolist()
    if not all(math.isfinite(v) for v in scores):
        raise SearchError(f"objective returned a non-finite score for setting {name!r}")
    estimates = {m: bootstrap_mean(obj(images, prompts).double().cpu().numpy()) for m, obj in metrics.items()}
    features = {}
    for m, fn in set_metrics.items():
        value, (low, high) = fn(images, prompts)
        estimates[m] = Estimate(float(value), float(low), float(high), len(images))
        if callable(getattr(fn, "features", None)) and callable(getattr(fn, "from_features", None)):
            features[m] = np.asarray(fn.features(images, prompts), dtype=np.float64)
    return SettingResult(name, bootstrap_mean(scores), scores, estimates, images[:keep].clone(), features)


def evaluate_result(pipe: Any, result: Any, objective: Any, seeds: Sequence[int], *,
                    metrics: Sequence[str] | Mapping[str, Any] = (), set_metrics: Mapping[str, SetMetric] | None = None,
                    progress: bool = True, prompts: Sequence[str] | None = None, controls: int = 0) -> Evaluation:
    """Fresh-seed comparison of a search result (`headhunter.search.search.HuntResult`): no guidance, the best
    layer, the found head set, each earlier round's set, every whole layer and `controls` random head sets
    of its size (`result.comparison_headsets(controls)`), on the search's prompts (or `prompts`, e.g. ones
    the search never saw) and generation settings. metrics: per-image objective names (or name -> Objective)."""
    from tqdm.auto import tqdm

    settings = result.comparison_headsets(controls)
    if not isinstance(metrics, Mapping):
        metrics = {m: get_registry().objective(m) for m in metrics}
    prompts = list(prompts) if prompts is not None else result.settings.prompts
    bar = tqdm(total=len(settings) * len(prompts) * len(seeds), unit="img", disable=not progress,
               desc=f"evaluation: {len(settings)} settings x {len(prompts) * len(seeds)} fresh pairs")
    evaluation = evaluate(pipe, settings, objective, prompts, seeds, result.generation(),
                          batch_size=result.settings.batch_size, metrics=metrics, set_metrics=set_metrics or {},
                          progress=bar.update)
    bar.close()
    return evaluation


def evaluation_summary(evaluation: Evaluation) -> dict[str, Any]:
    """The figures stored in the found head set's metadata: means, 95 % intervals, metrics per setting
    (whole layers other than the best one are left out)."""
    summary = {"seeds": evaluation.seeds,
               **{name: {"objective": r.objective.mean, "ci95": [r.objective.low, r.objective.high],
                         **{m: e.mean for m, e in r.metrics.items()}}
                  for name, r in evaluation.settings.items() if not name.startswith(("layer ", RANDOM_PREFIX))}}
    if "found head set" in evaluation.settings:
        found = verdicts(evaluation)
        for key in ("vs_no_guidance", "vs_random"):
            if key in found:
                d = found[key]["difference"]
                summary[key] = {"difference": d["mean"], "ci95": [d["low"], d["high"]], "n": d["n"],
                                "mde": found[key]["mde"] if math.isfinite(found[key]["mde"]) else None,
                                **({"beats_fraction": found[key]["beats_fraction"]} if key == "vs_random" else {})}
    return summary
