"""Speed of rows computed once (headhunter.engine.fanout): a guided step vs the stock forward at the same batch.

For a head set whose first perturbed block is L of N, the perturbed rows cost (N - L) / N of a full pass,
so a guided step can be at most `2 / (1 + (N - L)/N)` times faster than the stock forward at the guided
batch without CFG, `3 / (2 + (N - L)/N)` with CFG (target: >= 0.9 of that; no slowdown at L = 0).

Per case, medians over interleaved rounds in one process (CPU time by default, so other processes on a
shared machine do not count): `stock` (the stock forward(s) of the guided step's rows: 2B, or 3B with CFG;
FLUX's true CFG is a separate B-row call plus the 2B-row guided call), `full` (the guided step with
fan-out off: every block computes every row) and `shared` (fan-out on). `max_diff`: max |shared - full| of
the step's outputs.

Reusable from a GPU script: `prefix_case(transformer_or_pipeline, headset, batch, cfg, make_inputs=...)`
times one case on any model an adapter recognises; `cases(model)` gives the standard head sets (L at 0,
N/4, N/2, 3N/4). `run()` times the CPU models of the issue (tiny widths, real depths: SD3 24 blocks,
FLUX 19 + 38 with the flux-golden-hour preset's layer); `format_report` renders Markdown.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

#: Tiny widths, real depths (issue 14): SD3-medium's 24 joint blocks; FLUX.1's 19 double + 38 single.
SD3_24 = dict(sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=24, attention_head_dim=16,
              num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=64, pooled_projection_dim=64,
              pos_embed_max_size=32)
FLUX_57 = dict(patch_size=1, in_channels=16, num_layers=19, num_single_layers=38, attention_head_dim=16,
               num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
               axes_dims_rope=(4, 6, 6))
GRID, TEXT_LEN = (16, 16), 32


class _Holder:
    """The least a pipeline is for guidance: its transformer, a scheduler with timesteps, the CFG flag."""

    def __init__(self, transformer: torch.nn.Module, cfg: bool) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.transformer = transformer
        self.scheduler = FlowMatchEulerDiscreteScheduler()
        self.scheduler.set_timesteps(10)
        self.do_classifier_free_guidance = cfg


def _call(self: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """The transformer called from a method of the holder, as pipelines do (guidance finds `self`)."""
    return self.transformer(**inputs, return_dict=False)[0]


def default_inputs(transformer: torch.nn.Module, grid: tuple[int, int] = GRID, text_len: int = TEXT_LEN,
                   device: Any = None, dtype: Any = None) -> Callable[[int], dict[str, Any]]:
    """`rows -> forward kwargs` with random inputs for an SD3 or FLUX transformer (made once per size)."""
    p = next(transformer.parameters())
    device, dtype = device or p.device, dtype or p.dtype
    c = transformer.config
    made: dict[int, dict[str, Any]] = {}

    def make(rows: int) -> dict[str, Any]:
        if rows in made:
            return made[rows]
        g = torch.Generator(device=device).manual_seed(rows)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g, device=device, dtype=dtype)

        h, w = grid
        if hasattr(c, "pos_embed_max_size"):  # SD3
            out = dict(hidden_states=randn(rows, c.in_channels, h * c.patch_size, w * c.patch_size),
                       encoder_hidden_states=randn(rows, text_len, c.joint_attention_dim),
                       pooled_projections=randn(rows, c.pooled_projection_dim),
                       timestep=torch.full((rows,), 500.0, device=device, dtype=dtype))
        else:  # FLUX
            ids = torch.zeros(h, w, 3, device=device)
            ids[..., 1] = torch.arange(h, device=device)[:, None]
            ids[..., 2] = torch.arange(w, device=device)[None, :]
            extra = {"guidance": torch.full((rows,), 3.5, device=device, dtype=dtype)} if c.guidance_embeds else {}
            out = dict(hidden_states=randn(rows, h * w, c.in_channels),
                       encoder_hidden_states=randn(rows, text_len, c.joint_attention_dim),
                       pooled_projections=randn(rows, c.pooled_projection_dim),
                       timestep=torch.full((rows,), 0.5, device=device, dtype=dtype), img_ids=ids.reshape(-1, 3),
                       txt_ids=torch.zeros(text_len, 3, device=device), **extra)
        made[rows] = out
        return out

    return make


def cases(model: Any) -> dict[str, Any]:
    """Head sets whose first perturbed block is 0, N/4, N/2, 3N/4 (a head there and one two blocks later),
    by label `L=<block>`; N = the number of blocks the adapter declares."""
    from headhunter.format.headset import HeadSet
    from headhunter.plan.plan import compile_plan
    from headhunter.plugin_system.registry import get_registry

    adapter = get_registry().adapter_for(model)
    sites = adapter.sites(model)
    blocks = adapter.blocks(model)
    n = len(blocks)
    probe = compile_plan(model, HeadSet.from_heads([(0, 0)], sites=sites, architecture=adapter.architecture))
    first_site = {}
    for i, site in enumerate(sites):
        first_site.setdefault(probe.site_block[site.name], i)
    out = {}
    for block in sorted({0, n // 4, n // 2, 3 * n // 4}):
        later = first_site[min(block + 2, n - 1)]
        heads = [(first_site[block], 0), (later, 1 % sites[later].num_heads)]
        out[f"L={block}"] = HeadSet.from_heads(heads, sites=sites, architecture=adapter.architecture,
                                               name=f"first block {block}")
    return out


def prefix_case(model: Any, headset: Any, batch: int = 1, cfg: bool = False, *,
                make_inputs: Callable[[int], dict[str, Any]] | None = None, rounds: int = 5,
                min_time: float = 0.2, clock: str = "cpu", scale: float = 3.0) -> dict[str, Any]:
    """Time one case: the stock forward(s) of a guided step's rows vs the guided step with fan-out off
    (`full`) and on (`shared`), interleaved, `rounds` medians of `min_time`-long samples.

    `model`: a transformer (or a pipeline's, taken from `.transformer`) an adapter recognises; `headset`:
    what is applied (its first perturbed block is L); `batch`: conditional rows B; `cfg`: with CFG (SD3: the
    pipeline's [uncond | cond] batch; other families: a separate B-row unconditional call, FLUX's true CFG);
    `make_inputs(rows)`: forward kwargs (default: `default_inputs`); `clock`: "cpu" or "wall" (GPU: wall,
    with synchronisation). Returns a dict with `L`, `N`, `stock_ms`, `full_ms`, `shared_ms`, `speedup`
    (stock / shared), `ideal`, `ratio` (speedup / ideal), `full_speedup` (full / shared) and `max_diff`.
    """
    import headhunter

    from headhunter.plugin_system.registry import get_registry

    transformer = getattr(model, "transformer", model)
    adapter = get_registry().adapter_for(transformer)
    batched_cfg = cfg and adapter.architecture == "sd3"
    separate_cfg = cfg and not batched_cfg
    holder = _Holder(transformer, batched_cfg)
    make_inputs = make_inputs or default_inputs(transformer)
    cuda = next(transformer.parameters()).device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    now = time.process_time if clock == "cpu" else time.perf_counter
    cond_in = make_inputs(2 * batch if batched_cfg else batch)
    rows = (3 if cfg else 2) * batch

    handle = headhunter.apply(holder, headset, scale=scale)
    fanout = handle.fanout

    def stock() -> Any:
        handle._inner = True  # the guidance hooks step aside: the stock forward of the same rows
        try:
            if separate_cfg:
                transformer(**make_inputs(batch), return_dict=False)
            return transformer(**make_inputs(rows if not separate_cfg else 2 * batch), return_dict=False)[0]
        finally:
            handle._inner = False

    def guided(share: bool) -> Callable[[], Any]:
        def go() -> Any:
            handle.fanout = fanout if share else None
            handle._end_of_call()  # every timed call is the first of a step (as in a new pipeline call)
            if separate_cfg:
                with transformer.cache_context("uncond"):
                    _call(holder, make_inputs(batch))
                with transformer.cache_context("cond"):
                    return _call(holder, cond_in)
            return _call(holder, cond_in)
        return go

    timed = {"stock": stock, "full": guided(False), "shared": guided(True)}
    try:
        with torch.no_grad():
            reps = _calibrate(timed["full"], sync, min_time, now)
            samples: dict[str, list[float]] = {k: [] for k in timed}
            for r in range(rounds):
                order = list(timed)[r % 3:] + list(timed)[: r % 3]
                for name in order:
                    samples[name].append(_time(timed[name], sync, reps, now))
            full_out = timed["full"]().clone()
            full_delta = handle._armed.delta.clone()
            shared_out = timed["shared"]()
            shared_delta = handle._armed.delta
            max_diff = max((shared_out - full_out).abs().max().item(),
                           (shared_delta - full_delta).abs().max().item() / scale)  # cond - perturbed
            first = handle.plan.first_block(headset)
            n = len(handle.plan.blocks)
    finally:
        handle.fanout = fanout
        handle.remove()
    ms = {k: 1e3 * statistics.median(v) for k, v in samples.items()}
    ideal = ideal_speedup(first, n, cfg)
    speedup = ms["stock"] / ms["shared"]
    return {"L": first, "N": n, "batch": batch, "cfg": cfg, "rows": rows, "stock_ms": ms["stock"],
            "full_ms": ms["full"], "shared_ms": ms["shared"], "speedup": speedup, "ideal": ideal,
            "ratio": speedup / ideal, "full_speedup": ms["full"] / ms["shared"], "max_diff": max_diff,
            "rounds": rounds, "reps": reps, "clock": clock}


def ideal_speedup(first: int, blocks: int, cfg: bool) -> float:
    """`2 / (1 + (N - L)/N)` without CFG, `3 / (2 + (N - L)/N)` with (issue 14)."""
    rest = (blocks - first) / blocks if blocks else 1.0
    return 3 / (2 + rest) if cfg else 2 / (1 + rest)


def _calibrate(run: Callable[[], Any], sync: Callable[[], None], min_time: float, now: Callable[[], float]) -> int:
    run(), run()
    sync()
    start = now()
    run()
    sync()
    return max(1, int(min_time / max(now() - start, 1e-6)))


def _time(run: Callable[[], Any], sync: Callable[[], None], reps: int, now: Callable[[], float]) -> float:
    run()
    sync()
    start = now()
    for _ in range(reps):
        run()
    sync()
    return (now() - start) / reps


def build(family: str, config: dict[str, Any] | None = None, device: str = "cpu",
          dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A random-weight transformer (speed does not depend on weight values): "sd3" (default: SD3_24) or
    "flux" (default: FLUX_57)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls, default = (SD3Transformer2DModel, SD3_24) if family == "sd3" else (FluxTransformer2DModel, FLUX_57)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(**(config or default)).eval()
    finally:
        torch.set_default_dtype(previous)


def run(batch: int = 1, rounds: int = 5, min_time: float = 0.2, threads: int | None = 1, clock: str = "cpu",
        log: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Every case of issue 14 on the CPU models: SD3 (24 blocks) and FLUX (19 + 38) at L = 0, N/4, N/2,
    3N/4, FLUX also at the flux-golden-hour preset's layers, CFG off and on."""
    from headhunter.format.headset import HeadSet
    from headhunter.format.presets import load_preset
    from headhunter.plugin_system.registry import get_registry

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    results = []
    try:
        for family in ("sd3", "flux"):
            model = build(family)
            sets = cases(model)
            if family == "flux":
                preset = load_preset("flux-golden-hour")
                adapter = get_registry().adapter_for(model)
                sites = adapter.sites(model)
                heads = [(h.layer, h.head % sites[h.layer].num_heads, h.strength) for h in preset]
                sets["flux-golden-hour"] = HeadSet.from_heads(heads, sites=sites, architecture="flux",
                                                              name="flux-golden-hour layers")
            for label, hs in sets.items():
                for cfg in (False, True):
                    row = prefix_case(model, hs, batch, cfg, rounds=rounds, min_time=min_time, clock=clock)
                    row.update(model=f"{family} ({row['N']} blocks)", case=label, threads=torch.get_num_threads())
                    results.append(row)
                    log(format_row(row))
    finally:
        torch.set_num_threads(previous)
    return results


def format_row(row: dict[str, Any]) -> str:
    return (f"| {row['model']} | {row['case']} | {row['L']} | {'on' if row['cfg'] else 'off'} | {row['stock_ms']:.1f} | "
            f"{row['full_ms']:.1f} | {row['shared_ms']:.1f} | {row['speedup']:.2f} | {row['ideal']:.2f} | "
            f"{row['ratio']:.2f} | {row['max_diff']:.1e} |")


HEADER = ("| model | case | L | CFG | stock ms | guided full ms | guided shared ms | speed-up (stock/shared) | ideal "
          "| ratio | max diff |\n|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")


def format_report(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per case, medians, speed-up vs the stock forward at the same batch."""
    lines = [HEADER] + [format_row(r) for r in results]
    if results:
        r = results[0]
        lines.append(f"\nB={r['batch']}, {r['rounds']} interleaved rounds x {r['reps']}+ calls, {r['clock']} clock, "
                     f"{r.get('threads', '?')} threads, torch {torch.__version__}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(HEADER)
    print(format_report(run(log=print)).split("\n", 2)[-1])
