"""Analysis half of the allocation study (see allocation_study.py): replay the search's schedules against
the collected score matrix and compare them with an exhaustive run on many more seeds.

For each of the 5 disjoint pools: the schedules run on the pool's seeds (pairs in seed order, exactly as
`headhunter.search.search` feeds `headhunter.search.allocation.run_round`); the reference is the exhaustive ranking on every
other collected seed (the other pools and the reference block: disjoint from this pool, several times as
many seeds), which also serves as the fresh seeds that judge the selected head (paired gain over no guidance).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from headhunter.contracts.objective import Objective
from headhunter.search.allocation import REFERENCE, run_round
from headhunter.search.stats import kendall_tau, paired_difference

POOLS = 5
TOP = 5


class _Stored(Objective):
    """Stands for digit-logprob: the scores are already in the matrix."""

    name = "digit-logprob"

    def score(self, images, prompts):  # pragma: no cover - never called
        raise AssertionError("scores come from the matrix")


CONFIGS: dict[str, dict[str, Any]] = {
    "exhaustive": {"schedule": "exhaustive"},
    "racing, budget 1/3, first 4": {"schedule": "racing", "budget": 1 / 3, "first_pairs": 4},
    "racing, budget 1/2, first 8": {"schedule": "racing", "budget": 0.5, "first_pairs": 8},
    "racing, no cap, first 4": {"schedule": "racing", "budget": 1.0, "first_pairs": 4},
}


def _complete_seeds(data: dict[str, Any]) -> tuple[list[int], list[int]]:
    scores = data["scores"]
    ok = lambda s: all(str(s) in per for per in scores.values())  # noqa: E731
    pool_seeds = [s for name, block in data["plan"].items() if name != "reference" for s in block if ok(s)]
    reference = [s for s in data["plan"]["reference"] if ok(s)]
    return pool_seeds, reference


def analyse(out: Path, pool: int | None = None) -> str:
    """The adaptive-vs-exhaustive table (markdown) and per-pool details; also writes out/allocation.md."""
    import json

    data = json.loads((out / "matrix.json").read_text())
    heads = [u for u in data["scores"] if u != "baseline"]
    pool_seeds, reference = _complete_seeds(data)
    pool = pool or len(pool_seeds) // POOLS
    if pool < 4:
        raise SystemExit(f"only {len(pool_seeds)} complete seeds: too few for {POOLS} pools")
    pools = [pool_seeds[i * pool : (i + 1) * pool] for i in range(POOLS)]
    everything = pool_seeds[: POOLS * pool] + reference
    matrix = {u: np.array([data["scores"][u][str(s)] for s in everything]) for u in data["scores"]}
    col = {s: i for i, s in enumerate(everything)}
    objective, leaves = _Stored(), ["digit-logprob"]
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for index, seeds in enumerate(pools):
        fresh = [s for s in everything if s not in set(seeds)]
        fcols = [col[s] for s in fresh]
        gain = {h: matrix[h][fcols] - matrix["baseline"][fcols] for h in heads}
        ref_mean = {h: float(gain[h].mean()) for h in heads}
        ref_top = sorted(heads, key=lambda h: -ref_mean[h])[:TOP]
        pcols = [col[s] for s in seeds]
        get = lambda name, n, pcols=pcols: matrix["baseline" if name == REFERENCE else name][pcols[:n]][:, None]  # noqa: E731
        for name, config in CONFIGS.items():
            outcome = run_round(heads, lambda wanted: None, get, total_pairs=len(seeds), top_k=1, objective=objective,
                                leaves=leaves, **config)
            chosen = outcome.selected[0]
            top = sorted(heads, key=lambda h: (-outcome.scores[h] if h not in outcome.dropped else math.inf, -outcome.pairs[h]))[:TOP]
            fresh_gain = paired_difference(matrix[chosen][fcols][:, None], matrix["baseline"][fcols][:, None], objective, leaves)
            rows[name].append({
                "pool": index, "images": outcome.images, "selected": chosen, "stability": outcome.stability,
                "leaders": len(outcome.leaders), "top_overlap": len(set(top) & set(ref_top)) / TOP,
                "tau": kendall_tau([outcome.scores[h] for h in heads], [ref_mean[h] for h in heads]),
                "fresh_gain": fresh_gain, "regret": max(ref_mean.values()) - ref_mean[chosen],
                "ref_rank": sorted(heads, key=lambda h: -ref_mean[h]).index(chosen) + 1, "stages": outcome.stages,
            })
    exhaustive_images = rows["exhaustive"][0]["images"]
    lines = [f"Pools: {POOLS} disjoint pools of {pool} seeds (prompt \"\", u = 1, w = 2, 12 steps, 48 single-head "
             f"candidates, round 0 of the demo search); reference: exhaustive on the other {len(everything) - pool} "
             f"collected seeds of each pool (disjoint from it). Medians over the pools (per-pool values below).", "",
             "| schedule | images (vs exhaustive) | selection stability | leaders (indistinguishable) | top-5 overlap | Kendall tau | fresh gain of the pick | rank of the pick on the reference | regret |",
             "|---|---|---|---|---|---|---|---|---|"]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    for name, rs in rows.items():
        images = med([r["images"] for r in rs])
        lines.append(f"| {name} | {images:.0f} ({images / exhaustive_images:.2f}x) | {med([r['stability'] for r in rs]):.2f} | "
                     f"{med([r['leaders'] for r in rs]):.0f} | {med([r['top_overlap'] for r in rs]):.2f} | "
                     f"{med([r['tau'] for r in rs]):.2f} | {med([r['fresh_gain'].mean for r in rs]):+.4f} | "
                     f"{med([r['ref_rank'] for r in rs]):.0f} | {med([r['regret'] for r in rs]):.4f} |")
    lines += ["", "Per pool (selected head, its fresh gain over no guidance with 95 % CI, stability, images, racing stages):", ""]
    for name, rs in rows.items():
        lines.append(f"- {name}: " + "; ".join(
            f"pool {r['pool']}: {r['selected']} {r['fresh_gain'].mean:+.3f} [{r['fresh_gain'].low:+.3f}, {r['fresh_gain'].high:+.3f}], "
            f"stab {r['stability']:.2f}, {r['images']} img" + (f", stages {r['stages']}" if len(r['stages']) > 1 else "")
            for r in rs))
    text = "\n".join(lines) + "\n"
    (out / "allocation.md").write_text(text)
    return text
