"""The paper in miniature on the embedded digits model: `python -m headhunter.plugins.digits.study --out DIR`.

Unconditional generation (prompt ""), as in the paper's analysis: no guidance vs layer-level PAG (every
layer) vs single-head PAG for every head (round 0 of the search is exactly that: a heatmap like the
paper's Fig. 2) vs a greedy head set (HeadHunter), then SoftPAG u in {0.25, 0.5, 1} for the found set and
the best layer, all evaluated on fresh seeds with the classifier objective and FD-digits (95 % intervals).
Writes `study.md` (numbers) next to the search report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from headhunter import load_model
from headhunter.search.evaluation import Evaluation, evaluate
from headhunter.objective.expr import parse_objective
from headhunter.workflow.hunt import hunt

from . import fd_digits_metric


def softpag_table(pipe: Any, result: Any, objective: Any, seeds: list[int], strengths: list[float],
                  scales: list[float]) -> Evaluation:
    """The found set and the best layer at every (u, w), plus no guidance, on the same fresh seeds."""
    from headhunter.format.schema import GenerationSettings

    best_layer, _ = result.best_layer
    layer = int(best_layer[1:])
    sites = result.sites
    arch = result.headset.metadata.architecture
    from headhunter import HeadSet

    full_layer = HeadSet.from_heads([(layer, h, 1.0) for h in range(sites[layer].num_heads)], sites=sites,
                                    architecture=arch, name=best_layer)
    found_full = HeadSet.from_heads([(h.layer, h.head, 1.0) for h in result.headset], sites=sites, architecture=arch)
    table = {"no guidance": None}
    for u in strengths:
        table[f"found set, u={u:g}"] = found_full.scaled(u)
        table[f"layer {best_layer}, u={u:g}"] = full_layer.scaled(u)
    evaluations = {}
    for w in scales:
        gen = GenerationSettings(guidance={**result.settings.guidance.model_dump(), "scale": w},
                                 perturbation=result.settings.perturbation, steps=result.settings.steps)
        evaluations[w] = evaluate(pipe, table, objective, result.settings.prompts, seeds, gen,
                                  batch_size=result.settings.batch_size, metrics={},
                                  set_metrics={"FD-digits (lower is better)": fd_digits_metric}, keep_images=0)
    return evaluations


def write_study(out: Path, result: Any, tables: dict[float, Evaluation], seconds: float) -> Path:
    lines = ["# Digits study: the paper in miniature (unconditional generation)", "",
             f"Search: `{result.settings.objective}` on {len(result.settings.seeds)} seeds, "
             f"{result.settings.rounds} greedy rounds, w = {result.settings.guidance.scale:g}, u = {result.settings.strength:g}, "
             f"{result.settings.steps} Euler steps. Found: **{result.headset.notation()}**. "
             f"Wall time {seconds / 60:.1f} min. The search report with the per-head heatmaps is "
             "[hunt/index.md](hunt/index.md).", ""]
    for w, evaluation in tables.items():
        lines += [f"## SoftPAG strengths at w = {w:g} (fresh seeds, n = {len(evaluation.seeds)})", "",
                  "| setting | objective | FD-digits |", "|---|---|---|"]
        for name, r in evaluation.settings.items():
            fd = next(iter(r.metrics.values()))
            lines.append(f"| {name} | {r.objective} | {fd} |")
        lines.append("")
    path = out / "study.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=40, help="search seeds (unconditional samples per candidate)")
    parser.add_argument("--eval-seeds", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--objective", default="digit-logprob")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    pipe = load_model("digits")
    objective = parse_objective(args.objective)
    fresh = list(range(100_000, 100_000 + args.eval_seeds))
    result = hunt(pipe, objective, prompts=[""], seeds=range(args.seeds), rounds=args.rounds, top_k=1,
                  strength=1.0, scale=args.scale, steps=args.steps, out_dir=args.out / "hunt", eval_seeds=fresh)
    tables = softpag_table(pipe, result, objective, fresh, [0.25, 0.5, 1.0], [args.scale])
    path = write_study(args.out, result, tables, time.perf_counter() - start)
    summary = {str(w): {n: {"objective": r.objective.mean, **{m: e.mean for m, e in r.metrics.items()}}
                        for n, r in ev.settings.items()} for w, ev in tables.items()}
    (args.out / "study.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
