"""Guided steps under torch.compile vs eager, and how often dynamo compiles across head sets.

`run()` builds, per model (tiny widths, real depths: SD3 24 joint blocks, FLUX 19 + 38; the same configs as
`headhunter.bench.fanout`), two transformers with equal weights: one eager, one compiled in place
(`transformer.compile(backend=...)`, inductor by default). For each head set of `headhunter.bench.fanout.cases`
(first perturbed block 0, N/4, N/2, 3N/4) it times, interleaved in one process (CPU time, medians of
`rounds` samples), the batched guided step (B = 1, no CFG):

- `eager shared`: eager with rows computed once (`headhunter.engine.fanout`, the default);
- `eager full`: eager, every row computed at every block (fan-out off);
- `compiled`: the compiled transformer with rows computed once (the fan-out hooks run outside dynamo's
  tracing and each block's forward is a compiled frame of its own; every installed site gets strengths,
  zeros where nothing is perturbed, so the graphs depend on the rows present only);
- `compiled full`: a second compiled transformer, applied with `headhunter.engine.fanout.enabled = False`
  (no hooks: one graph for the whole transformer, every row at every block).

It counts dynamo's compiled graphs (`torch._dynamo.utils.counters["stats"]["unique_graphs"]`) on the first
head set and on all later ones (which should compile nothing), and checks the compiled step's output
against the eager one (`max_diff`). `format_report` renders Markdown. `headhunter bench --suite compiled`.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch


def _build(family: str) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from headhunter.bench.fanout import FLUX_57, SD3_24

    torch.manual_seed(0)
    model = SD3Transformer2DModel(**SD3_24) if family == "sd3" else FluxTransformer2DModel(**FLUX_57)
    return model.eval()


def model_case(family: str, backend: str = "inductor", rounds: int = 5, min_time: float = 0.2,
               scale: float = 3.0) -> list[dict[str, Any]]:
    """One model's rows: per head set, eager shared / eager full / compiled ms per guided step, ratios,
    graphs compiled, max |compiled - eager|."""
    import headhunter
    from torch._dynamo.utils import counters

    from headhunter.bench.fanout import _Holder, _calibrate, _call, _time, cases, default_inputs

    import headhunter.engine.fanout as fanout_module

    eager = _build(family)
    compiled, compiled_full = copy.deepcopy(eager), copy.deepcopy(eager)
    compiled.compile(backend=backend)
    compiled_full.compile(backend=backend)
    make = default_inputs(eager)
    inputs = make(1)
    holders = {"eager": _Holder(eager, False), "compiled": _Holder(compiled, False),
               "compiled full": _Holder(compiled_full, False)}
    now, sync = time.process_time, (lambda: None)
    rows = []
    graphs_before = counters["stats"]["unique_graphs"]
    for index, (label, headset) in enumerate(cases(eager).items()):
        handles = {}
        for k, h in holders.items():
            fanout_module.enabled = k != "compiled full"  # read at apply: no hooks, one whole-model graph
            try:
                handles[k] = headhunter.apply(h, headset, scale=scale)
            finally:
                fanout_module.enabled = True
        fanout = handles["eager"].fanout

        def step(which: str, share: bool = True) -> Any:
            handle = handles[which]
            if which == "eager":
                handle.fanout = fanout if share else None
            handle._end_of_call()
            return _call(holders[which], inputs)

        timed = {"eager shared": lambda: step("eager", True), "eager full": lambda: step("eager", False),
                 "compiled": lambda: step("compiled"), "compiled full": lambda: step("compiled full")}
        try:
            with torch.no_grad():
                start_graphs = counters["stats"]["unique_graphs"]
                compile_start = time.perf_counter()
                out_c = timed["compiled"]().clone()
                first_call_s = time.perf_counter() - compile_start
                out_cf = timed["compiled full"]().clone()
                out_e = timed["eager full"]().clone()
                reps = _calibrate(timed["eager full"], sync, min_time, now)
                samples: dict[str, list[float]] = {k: [] for k in timed}
                for r in range(rounds):
                    order = list(timed)[r % len(timed):] + list(timed)[: r % len(timed)]
                    for name in order:
                        samples[name].append(_time(timed[name], sync, reps, now))
                graphs = counters["stats"]["unique_graphs"] - start_graphs
                fallback = handles["compiled"].fallback
        finally:
            handles["eager"].fanout = fanout
            for h in handles.values():
                h.remove()
        ms = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
        rows.append({"model": family, "case": label, "backend": backend, "eager_shared_ms": ms["eager shared"],
                     "eager_full_ms": ms["eager full"], "compiled_ms": ms["compiled"],
                     "compiled_full_ms": ms["compiled full"],
                     "compiled_vs_compiled_full": ms["compiled"] / ms["compiled full"],
                     "compiled_vs_eager_shared": ms["compiled"] / ms["eager shared"],
                     "compiled_vs_eager_full": ms["compiled"] / ms["eager full"], "graphs_compiled": graphs,
                     "first_call_s": first_call_s, "first_head_set": index == 0,
                     "max_diff": max((out_c - out_e).abs().max().item(), (out_cf - out_e).abs().max().item()),
                     "compiled_fallback": fallback, "shared_row_blocks": handles["compiled"].shared_row_blocks,
                     "reps": reps, "rounds": rounds})
    rows[-1]["graphs_total"] = counters["stats"]["unique_graphs"] - graphs_before
    return rows


def run(models: tuple[str, ...] = ("sd3", "flux"), backend: str = "inductor", rounds: int = 5,
        min_time: float = 0.2) -> list[dict[str, Any]]:
    """Every model's rows (see `model_case`)."""
    out = []
    for family in models:
        out += model_case(family, backend, rounds, min_time)
    return out


def format_report(rows: list[dict[str, Any]]) -> str:
    """Markdown table of `run()`'s rows."""
    lines = ["| model | head set | eager shared ms | eager full ms | compiled shared ms | compiled full ms | "
             "compiled shared / compiled full | compiled shared / eager shared | compiled shared / eager full | "
             "graphs compiled | first call s | max diff |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['case']} | {r['eager_shared_ms']:.1f} | {r['eager_full_ms']:.1f} | "
                     f"{r['compiled_ms']:.1f} | {r['compiled_full_ms']:.1f} | {r['compiled_vs_compiled_full']:.2f} | "
                     f"{r['compiled_vs_eager_shared']:.2f} | {r['compiled_vs_eager_full']:.2f} | "
                     f"{r['graphs_compiled']} | {r['first_call_s']:.1f} | {r['max_diff']:.1e} |")
    return "\n".join(lines)


__all__ = ["format_report", "model_case", "run"]
