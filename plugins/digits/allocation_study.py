"""Adaptive vs exhaustive allocation on the embedded digits model:
`python -m headhunter.plugins.digits.allocation_study collect --out DIR` then `... analyse --out DIR`.

`collect` generates, once, every single-head candidate (round 0 of the demo search: prompt "", u = 1,
w = 2, 12 Euler steps) and no guidance on a large seed pool and stores each image's `digit-logprob`
(resumable: `DIR/matrix.json` is rewritten atomically after every batch). Images depend only on (head set,
prompt, seed), so every schedule that asks for a (candidate, seed) pair gets exactly the score the matrix
holds: `analyse` replays the search's schedules (`headhunter.search.allocation`) against the matrix for free.

Seeds: 5 disjoint search pools of `pool` seeds each (0 .. 5*pool-1) and a reference block of `reference`
seeds (100,000 ..) that no pool touches. The reference block plays two parts: the exhaustive run "with many
more seeds" (its ranking is the yardstick for top-k overlap and Kendall tau) and the fresh seeds on which a
selection's quality is judged (paired gain over no guidance).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_START = 100_000


def seed_plan(pools: int, pool: int, reference: int) -> dict[str, list[int]]:
    """Pool seeds and reference seeds (disjoint)."""
    plan = {f"pool{i}": list(range(i * pool, (i + 1) * pool)) for i in range(pools)}
    plan["reference"] = list(range(REFERENCE_START, REFERENCE_START + reference))
    return plan


def collect(out: Path, pools: int = 5, pool: int = 16, reference: int = 64, batch_size: int = 64) -> Path:
    """Per-image scores of no guidance and every single head on every seed of the plan (resumable)."""
    import torch

    from headhunter import HeadSet, get_registry
    from headhunter.format.headset_io import write_atomic
    from headhunter.engine.models import load_model
    from headhunter.engine.runner import Row, run_batches
    from headhunter.format.schema import GenerationSettings, GuidanceSettings

    from . import DEMO_DEFAULTS

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "matrix.json"
    plan = seed_plan(pools, pool, reference)
    seeds = [s for block in plan.values() for s in block]
    pipe = load_model("digits")
    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    u, w, steps = DEMO_DEFAULTS["strength"], DEMO_DEFAULTS["scale"], DEMO_DEFAULTS["steps"]
    units: dict[str, Any] = {"baseline": None}
    for layer, site in enumerate(sites):
        for head in range(site.num_heads):
            units[f"L{layer}H{head}"] = HeadSet.from_heads([(layer, head, u)], sites=sites, architecture=adapter.architecture)
    settings = {"pools": pools, "pool": pool, "reference": reference, "strength": u, "scale": w, "steps": steps,
                "objective": "digit-logprob", "prompt": "", "batch_size": batch_size}
    data = json.loads(path.read_text()) if path.exists() else {"settings": settings, "plan": plan, "scores": {}, "done": []}
    if data["settings"] != settings:
        raise SystemExit(f"{path} was collected with {data['settings']}; use another --out")
    # seed-major order: an interrupted collection still holds complete blocks of seeds for every unit
    rows = [Row(units[k], "", s) for s in seeds for k in units]
    keys = [(k, s) for s in seeds for k in units]
    objective = get_registry().objective("digit-logprob")
    gen = GenerationSettings(guidance=GuidanceSettings(scale=w), steps=steps)
    done = set(data["done"])
    started = time.perf_counter()

    def on_batch(start: int, images: torch.Tensor) -> None:
        values = objective(images, [""] * len(images)).double().tolist()
        for (unit, seed), value in zip(keys[start : start + len(images)], values):
            data["scores"].setdefault(unit, {})[str(seed)] = value
        data["done"].append(start)
        data["seconds"] = data.get("seconds", 0.0) + (time.perf_counter() - on_batch.t0)
        on_batch.t0 = time.perf_counter()
        write_atomic(path, json.dumps(data).encode())
        print(f"{len(data['done'])}/{math.ceil(len(rows) / batch_size)} batches, {time.perf_counter() - started:.0f} s", flush=True)

    on_batch.t0 = time.perf_counter()
    run_batches(pipe, rows, gen, batch_size, on_batch, skip=lambda start: start in done)
    return path


def load_matrix(out: Path) -> tuple[dict[str, Any], list[str], dict[str, np.ndarray]]:
    """(data, candidate names, {block: scores [units, seeds]}) with row 0 = no guidance."""
    data = json.loads((out / "matrix.json").read_text())
    units = list(data["scores"])
    blocks = {name: np.array([[data["scores"][u][str(s)] for s in seeds] for u in units])
              for name, seeds in data["plan"].items()}
    return data, units, blocks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["collect", "analyse"])
    parser.add_argument("--out", default="runs/allocation", type=Path)
    parser.add_argument("--pool", type=int, default=16)
    parser.add_argument("--reference", type=int, default=64)
    args = parser.parse_args(argv)
    if args.step == "collect":
        collect(args.out, pool=args.pool, reference=args.reference)
    else:
        from .allocation_analysis import analyse

        print(analyse(args.out))


if __name__ == "__main__":
    main()
