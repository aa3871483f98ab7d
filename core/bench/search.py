"""Search throughput: candidate evaluations per second, many candidates per forward vs one at a time.

A candidate evaluation is M guided images (prompt-seed pairs) of one head set. The model is any registered
model (default: the embedded demo `digits`, loaded through the registry like any plugin's model).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from headhunter.engine.runner import Row, run_batches
from headhunter.format.schema import GenerationSettings
from headhunter.format.headset import HeadSet
from headhunter.format.schema import GuidanceSettings
from headhunter.plugin_system.registry import get_registry


def registered_pipe(model: str = "digits") -> Any:
    """A registered model (by name, through the registry), progress bar off (for timing only)."""
    pipe = get_registry().model_loader(model)()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def candidate_rows(pipe: Any, candidates: int, prompts: list[str], seeds: list[int]) -> list[Row]:
    """Rows of `candidates` single-head head sets (spread over the sites), each over all prompt-seed pairs."""
    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    heads = [(layer, head) for layer, s in enumerate(sites) for head in range(s.num_heads)]
    rows = []
    for i in range(candidates):
        layer, head = heads[(i * 7) % len(heads)]
        hs = HeadSet.from_heads([(layer, head, 1.0)], sites=sites, architecture=adapter.architecture)
        rows += [Row(hs, p, s) for p in prompts for s in seeds]
    return rows


def time_candidates(pipe: Any, candidates: int, pairs: int, batch_size: int, steps: int, repeats: int = 3) -> float:
    """Median seconds to evaluate `candidates` candidates of `pairs` images each, `batch_size` images per call."""
    prompts = [str(i % 10) for i in range(pairs)]
    rows = candidate_rows(pipe, candidates, prompts[:1], list(range(pairs)))
    rows = [Row(r.headset, prompts[i % pairs], r.seed) for i, r in enumerate(rows)]
    gen = GenerationSettings(guidance=GuidanceSettings(scale=3.0), steps=steps)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_batches(pipe, rows, gen, batch_size, lambda s, images: None)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(candidates: int = 8, pairs: int = 8, steps: int = 12, batch_sizes: tuple[int, ...] = (64,), repeats: int = 3,
        pipe: Any = None) -> dict[str, Any]:
    """Candidate evaluations per second, batched vs one candidate per call, measured side by side."""
    pipe = pipe or registered_pipe()
    single = time_candidates(pipe, candidates, pairs, pairs, steps, repeats)
    result = {"candidates": candidates, "pairs": pairs, "steps": steps,
              "one_candidate_per_call": {"seconds": single, "candidates_per_s": candidates / single}}
    for b in batch_sizes:
        t = time_candidates(pipe, candidates, pairs, b, steps, repeats)
        result[f"batch_{b}"] = {"seconds": t, "candidates_per_s": candidates / t, "speedup": single / t}
    return result


def format_report(result: dict[str, Any]) -> str:
    lines = [f"search throughput: {result['candidates']} candidates x {result['pairs']} images x {result['steps']} steps (median)"]
    for key, value in result.items():
        if isinstance(value, dict):
            extra = f"  speed-up {value['speedup']:.2f}x" if "speedup" in value else ""
            lines.append(f"  {key:<24} {value['seconds']:.2f} s  {value['candidates_per_s']:.2f} candidates/s{extra}")
    return "\n".join(lines)
