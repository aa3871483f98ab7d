"""Screen cheaply, confirm exactly, on the embedded digits model:
`python -m headhunter.plugins.digits.fidelity_study collect --out DIR` then `... analyse --out DIR`.

`collect` generates no guidance and every single-head candidate (round 0: prompt "", u = 1, w = 2, 12 Euler
steps, the demo's settings) on `seeds` seeds at every fidelity of `FIDELITIES` (headhunter.search.fidelity:
full; x0:K = the full schedule stopped after step K, scored on the predicted x0; steps:K = a K-step
schedule) and stores each image's objective (default `sharpness`, an image statistic single heads move
measurably, where `digit-logprob` is noise at these sample sizes: docs/search.md). Resumable:
`DIR/fidelity.json` is rewritten atomically after every batch.

`analyse` reports, per cheap fidelity: the rank agreement of the 48 heads' paired gains over no guidance
with the full-fidelity ones (Kendall tau on all seeds, with a 95 % bootstrap interval over seeds; the
full fidelity's own split-half tau is the noise ceiling); and, over random splits of the seeds into a
search pool and a disjoint reference, how often the multi-fidelity pick (`run_multi_fidelity`: screen on
the pool's first pairs at the cheap fidelity, race the survivors at full fidelity) lies in the reference's
full-fidelity indistinguishable set (the leaders of an exhaustive full-fidelity round on the reference
seeds), next to the exhaustive and racing picks, with each allocation's image-steps per decision.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

FIDELITIES = ("full", "x0:3", "x0:6", "steps:3", "steps:6")


def collect(out: Path, seeds: int = 48, objective: str = "sharpness", batch_size: int = 49,
            fidelities: tuple[str, ...] = FIDELITIES) -> Path:
    """Per-image scores of no guidance and every single head, per fidelity and seed (resumable)."""
    import torch

    from headhunter import HeadSet, get_registry
    from headhunter.engine.models import load_model
    from headhunter.engine.runner import Row, run_batches
    from headhunter.format.files import write_atomic
    from headhunter.format.schema import GenerationSettings, GuidanceSettings
    from headhunter.search.fidelity import X0Readout, parse_fidelity

    from . import DEMO_DEFAULTS

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fidelity.json"
    pipe = load_model("digits")
    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    u, w, steps = DEMO_DEFAULTS["strength"], DEMO_DEFAULTS["scale"], DEMO_DEFAULTS["steps"]
    units: dict[str, Any] = {"baseline": None}
    for layer, site in enumerate(sites):
        for head in range(site.num_heads):
            units[f"L{layer}H{head}"] = HeadSet.from_heads([(layer, head, u)], sites=sites,
                                                           architecture=adapter.architecture)
    settings = {"seeds": seeds, "strength": u, "scale": w, "steps": steps, "objective": objective, "prompt": "",
                "batch_size": batch_size, "fidelities": list(fidelities)}
    data = json.loads(path.read_text()) if path.exists() else {"settings": settings, "scores": {}, "done": {},
                                                               "seconds": {}}
    if data["settings"] != settings:
        raise SystemExit(f"{path} was collected with {data['settings']}; use another --out")
    scorer = get_registry().objective(objective)
    rows = [Row(units[k], "", s) for s in range(seeds) for k in units]
    keys = [(k, s) for s in range(seeds) for k in units]
    for name in fidelities:
        fid = parse_fidelity(name, steps)
        gen = GenerationSettings(guidance=GuidanceSettings(scale=w), steps=fid.k if fid.kind == "steps" else steps)
        callback = (lambda k=fid.k: X0Readout(k)) if fid.kind == "x0" else None
        done = set(data["done"].get(name, []))
        scores = data["scores"].setdefault(name, {})
        clock = [time.perf_counter()]

        def on_batch(start: int, images: torch.Tensor, name=name, scores=scores, clock=clock) -> None:
            values = scorer(images, [""] * len(images)).double().tolist()
            for (unit, seed), value in zip(keys[start: start + len(images)], values):
                scores.setdefault(unit, {})[str(seed)] = value
            data["done"].setdefault(name, []).append(start)
            now = time.perf_counter()
            data["seconds"][name] = data["seconds"].get(name, 0.0) + now - clock[0]
            clock[0] = now
            write_atomic(path, json.dumps(data).encode())
            print(f"{name}: {len(data['done'][name])}/{math.ceil(len(rows) / batch_size)} batches", flush=True)

        run_batches(pipe, rows, gen, batch_size, on_batch, skip=lambda start, done=done: start in done,
                    step_callback=callback)
    return path


def load(out: Path) -> tuple[dict[str, Any], list[str], dict[str, np.ndarray]]:
    """(data, unit names with 'baseline' first, {fidelity: scores [units, seeds]})."""
    data = json.loads((out / "fidelity.json").read_text())
    seeds = data["settings"]["seeds"]
    units = list(data["scores"]["full"])
    complete = {f: per for f, per in data["scores"].items()
                if all(len(per.get(u, {})) == seeds for u in units)}  # a collection still running: the finished ones
    return data, units, {f: np.array([[per[u][str(s)] for s in range(seeds)] for u in units])
                         for f, per in complete.items()}


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors (scipy)."""
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def analyse(out: Path, splits: int = 40, pool: int = 16, resamples: int = 1000, screen_pairs: int = 4,
            survivors: tuple[float, ...] = (0.1, 0.25), seed: int = 0) -> str:
    """The rank-agreement table and the multi-fidelity pick's membership in the full-fidelity leaders."""
    from headhunter.objective.expr import parse_objective
    from headhunter.search.allocation import REFERENCE, run_round
    from headhunter.search.fidelity import parse_fidelity, run_multi_fidelity

    data, units, matrices = load(out)
    steps = data["settings"]["steps"]
    heads = units[1:]
    rng = np.random.default_rng(seed)
    gains = {f: m[1:] - m[0] for f, m in matrices.items()}  # [heads, seeds] paired differences vs no guidance
    n_seeds = gains["full"].shape[1]
    full_mean = gains["full"].mean(1)
    lines = [f"objective {data['settings']['objective']}, {len(heads)} single heads, {n_seeds} seeds, "
             f"{steps} steps, u = {data['settings']['strength']}, w = {data['settings']['scale']}", ""]
    # the noise ceiling: full fidelity against itself on two halves of the seeds
    halves = []
    for _ in range(200):
        perm = rng.permutation(n_seeds)
        a, b = perm[: n_seeds // 2], perm[n_seeds // 2:]
        halves.append(kendall_tau(gains["full"][:, a].mean(1), gains["full"][:, b].mean(1)))
    spread = full_mean.std()
    per_pair = gains["full"].std(1).mean()
    lines += [f"full fidelity: head gains sd {spread:.4g} across heads, per-pair sd {per_pair:.4g}; split-half tau "
              f"(full vs full, 200 random halves) median {np.median(halves):.3f} "
              f"[{np.percentile(halves, 2.5):.3f}, {np.percentile(halves, 97.5):.3f}]", ""]
    lines += ["| fidelity | cost vs full | Kendall tau vs full (all seeds) | 95 % bootstrap | top-5 overlap | "
              "full-fidelity best head's rank here |", "|---|---:|---:|---|---:|---:|"]
    best_full = int(np.argmax(full_mean))
    table = {}
    for f in matrices:
        if f == "full":
            continue
        mean = gains[f].mean(1)
        tau = kendall_tau(mean, full_mean)
        boots = []
        for _ in range(resamples):
            idx = rng.integers(0, n_seeds, n_seeds)
            boots.append(kendall_tau(gains[f][:, idx].mean(1), gains["full"][:, idx].mean(1)))
        top = len(set(np.argsort(-mean)[:5]) & set(np.argsort(-full_mean)[:5]))
        rank = int((mean > mean[best_full]).sum()) + 1
        cost = parse_fidelity(f, steps).cost(steps)
        table[f] = tau
        lines.append(f"| {f} | {cost:.2f} | {tau:+.3f} | [{np.percentile(boots, 2.5):+.3f}, "
                     f"{np.percentile(boots, 97.5):+.3f}] | {top}/5 | {rank} |")
    lines.append("")
    # picks over random pool / reference splits
    # the stored value is the objective's per-image score, so the replay treats it as one plain leaf: exact for
    # a plain objective and for a linear composite such as digit-sharpness (a mean of weighted sums is the
    # weighted sum of the means); a non-linear composite would need its leaves stored
    parse_objective(data["settings"]["objective"])
    objective, leaves = "score", ["score"]
    index = {u: i for i, u in enumerate(units)}

    def getter(matrix: np.ndarray, cols: np.ndarray):
        def get(c: str, n: int) -> np.ndarray:
            row = index["baseline"] if c == REFERENCE else index[c]
            return matrix[row, cols[:n]][:, None]
        return get

    nothing = lambda wanted: None  # noqa: E731 (scores are precomputed)
    results: dict[str, dict[str, list]] = {}
    for _ in range(splits):
        perm = rng.permutation(n_seeds)
        pool_cols, ref_cols = perm[:pool], perm[pool:]
        ref = run_round(heads, nothing, getter(matrices["full"], ref_cols), total_pairs=len(ref_cols), top_k=1,
                        objective=objective, leaves=leaves, schedule="exhaustive")
        leaders = set(ref.leaders)
        full_get = getter(matrices["full"], pool_cols)
        exhaustive_steps = (len(heads) + 1) * pool * steps
        cases = {"exhaustive": run_round(heads, nothing, full_get, total_pairs=pool, top_k=1, objective=objective,
                                         leaves=leaves, schedule="exhaustive"),
                 "racing (first 4)": run_round(heads, nothing, full_get, total_pairs=pool, top_k=1,
                                               objective=objective, leaves=leaves, schedule="racing",
                                               first_pairs=4)}
        spent = {k: (o.images + o.stages[-1]) * steps for k, o in cases.items()}
        for f in matrices:
            if f == "full":
                continue
            for share in survivors:
                mf = run_multi_fidelity(heads, nothing, getter(matrices[f], pool_cols), nothing, full_get,
                                        total_pairs=pool, top_k=1, objective=objective, leaves=leaves, fidelity=f,
                                        screen_pairs=screen_pairs, survivors=share, schedule="racing",
                                        first_pairs=4)
                key = f"multi-fidelity {f}, top {share:.0%} -> racing"
                cases[key] = mf.outcome
                spent[key] = mf.image_steps(steps)
        for key, outcome in cases.items():
            pick = outcome.selected[0]
            r = results.setdefault(key, {"in_leaders": [], "steps": [], "rank": [], "leaders": []})
            r["in_leaders"].append(pick in leaders)
            r["steps"].append(spent[key] / exhaustive_steps)
            ranked = sorted(heads, key=lambda c: -ref.scores[c])
            r["rank"].append(ranked.index(pick) + 1)
            r["leaders"].append(len(leaders))
    lines += [f"{splits} random splits of the {n_seeds} seeds: search pool {pool} seeds, reference the other "
              f"{n_seeds - pool} (full-fidelity exhaustive; its leaders = the indistinguishable set, median "
              f"{int(np.median(results['exhaustive']['leaders']))} heads). Multi-fidelity: screen {screen_pairs} "
              f"pairs at the fidelity, the top fraction promoted, racing (first 4 pairs) at full fidelity.", "",
              "| allocation | pick in the full-fidelity leaders | median rank of the pick on the reference | "
              "image-steps per decision vs exhaustive (median) |", "|---|---:|---:|---:|"]
    for key, r in results.items():
        lines.append(f"| {key} | {sum(r['in_leaders'])}/{len(r['in_leaders'])} | {int(np.median(r['rank']))} | "
                     f"{np.median(r['steps']):.3f} |")
    secs = data.get("seconds", {})
    if secs:
        lines += ["", "collection wall seconds per fidelity (1 torch thread, shared machine): " +
                  ", ".join(f"{k} {v:.0f} s" for k, v in secs.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["collect", "analyse"])
    parser.add_argument("--out", default="runs/fidelity", type=Path)
    parser.add_argument("--seeds", type=int, default=48)
    parser.add_argument("--objective", default="sharpness")
    args = parser.parse_args(argv)
    if args.step == "collect":
        collect(args.out, seeds=args.seeds, objective=args.objective)
    else:
        print(analyse(args.out))


if __name__ == "__main__":
    main()
