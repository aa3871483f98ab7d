"""Scheduled vs constant search on the embedded digits model, with the same image budget (issue 26's evidence):
`python -m headhunter.plugins.digits.schedule_study --out DIR`.

1. The constant search: the demo's settings (`hunt --calibrate`: digit-sharpness, prompt "", 64 search seeds,
   racing with budget 1/2 and 8 first pairs, 1 round of top 2, u = 1, w = 2, 12 steps), into DIR/constant.
2. The scheduled search: the same settings with every head a candidate in each of K = 3 equal intervals of the
   noise level sigma (144 candidates), racing from 4 first pairs with its cap set to the constant search's
   candidate images (so both spend about the same), into DIR/scheduled.
3. Both found sets and no guidance on fresh seeds neither search saw (20,000 .. 20,255): the objective with
   95 % bootstrap intervals, the paired difference scheduled - constant, FD-digits of each with its interval
   and the paired FD difference (bootstrapped over the same pairs).

Both searches are resumable (their checkpoints are in DIR); the table is printed and written to DIR/study.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

FRESH = list(range(20_000, 20_256))


def run(out: Path, intervals: int = 3, fresh: list[int] = FRESH) -> str:
    import numpy as np

    import headhunter
    from headhunter.search.evaluation import evaluate
    from headhunter.search.verdicts import paired, paired_set_metric
    from headhunter.search.defaults import model_defaults
    from headhunter.objective.expr import parse_objective

    pipe = headhunter.load_model("digits")
    common = dict(calibrate=True, controls=0, eval_prompts=[], progress=True)
    t0 = time.time()
    constant = headhunter.hunt(pipe, out_dir=out / "constant", **common)
    t1 = time.time()
    images = sum(r.candidate_images for r in constant.rounds)
    pool = len(constant.settings.candidates) * intervals
    budget = images / (pool * len(constant.settings.seeds))
    scheduled = headhunter.hunt(pipe, out_dir=out / "scheduled", intervals=intervals, first_pairs=4, budget=budget,
                                **common)
    t2 = time.time()
    defaults = model_defaults(pipe)
    objective = parse_objective(constant.settings.objective)
    evaluation = evaluate(pipe, {"no guidance": None, "constant": constant.headset, "scheduled": scheduled.headset},
                          objective, constant.settings.prompts, fresh, constant.generation(),
                          set_metrics=defaults.set_metrics)
    fd_name = next(iter(defaults.set_metrics))
    fd = defaults.set_metrics[fd_name]
    s = evaluation.settings
    diff = paired(np.asarray(s["scheduled"].scores), np.asarray(s["constant"].scores))
    fd_diff = paired_set_metric(fd, s["scheduled"].features[fd_name], s["constant"].features[fd_name])
    gain = {k: evaluation.difference(k, "no guidance") for k in ("constant", "scheduled")}
    rows = [
        f"# Scheduled vs constant search (digits, K = {intervals}, fresh seeds {fresh[0]}..{fresh[-1]})",
        "",
        "| search | found set | candidate images | objective (fresh) | vs no guidance | " + fd_name + " |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in (("constant", constant), ("scheduled", scheduled)):
        e, g, m = s[name].objective, gain[name], s[name].metrics[fd_name]
        rows.append(f"| {name} | {result.headset.notation()} | {sum(r.candidate_images for r in result.rounds):,} | "
                    f"{e.mean:.4f} [{e.low:.4f}, {e.high:.4f}] | {g.mean:+.4f} [{g.low:+.4f}, {g.high:+.4f}] | "
                    f"{m.mean:.0f} [{m.low:.0f}, {m.high:.0f}] |")
    e, m = s["no guidance"].objective, s["no guidance"].metrics[fd_name]
    rows.append(f"| no guidance | - | - | {e.mean:.4f} [{e.low:.4f}, {e.high:.4f}] | - | {m.mean:.0f} [{m.low:.0f}, {m.high:.0f}] |")
    rows += [
        "",
        f"Scheduled - constant, paired over {len(fresh)} fresh pairs: objective {diff.mean:+.4f} "
        f"[{diff.low:+.4f}, {diff.high:+.4f}]; {fd_name} {fd_diff.mean:+.0f} [{fd_diff.low:+.0f}, {fd_diff.high:+.0f}].",
        "",
        "Rounds: " + "; ".join(
            f"{name}: stability {r.stability:.0%}, {len(r.dropped)} dropped, {len(r.leaders)} leaders"
            + ("" if r.calibration is None else f", null p = {r.calibration.p_value:.3f}")
            for name, result in (("constant", constant), ("scheduled", scheduled)) for r in result.rounds),
        "",
        f"Wall time: constant search + evaluation {t1 - t0:.0f} s, scheduled {t2 - t1:.0f} s, "
        f"comparison {time.time() - t2:.0f} s.",
        "",
    ]
    text = "\n".join(rows)
    (out / "study.md").write_text(text, encoding="utf-8")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/schedule_study"))
    parser.add_argument("--intervals", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(run(args.out, args.intervals))


if __name__ == "__main__":
    main()
