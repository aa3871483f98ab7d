"""`headhunter bench`: what the perturbation engine costs per forward, as a ratio to the stock forward.

Cases, timed side by side on the same model object in interleaved rounds (medians):
  stock      the model's own processors;
  installed  headhunter processors installed, strengths absent (the stock code path);
  heads      `--heads` heads spread over all layers, softpag u=1, scope joint: for B >= 2 the second half of
             the batch is perturbed (a guided step's [cond | perturbed] layout), for B = 1 the one sample;
  pag_mask   the same heads with scope pag_mask.
Default models are CPU-sized random-weight SD3 and FLUX transformers; `--full-size sd3-medium|flux-dev`
builds the published architectures with random weights (speed does not depend on weight values) for a GPU:
`headhunter bench --full-size sd3-medium --device cuda --dtype bfloat16 --batch 2`.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from headhunter.bench.searchcost import RECIPES
from headhunter.cli import options
from headhunter.cli.params import BoundedInt, Device, DType, FiniteFloat, IntList

SD3_SMALL = dict(sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=6, attention_head_dim=16,
                 num_attention_heads=8, joint_attention_dim=64, caption_projection_dim=128,
                 pooled_projection_dim=64, pos_embed_max_size=32)
FLUX_SMALL = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=16,
                  num_attention_heads=8, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
                  axes_dims_rope=(4, 6, 6))
SD3_DIGITS = dict(SD3_SMALL, sample_size=16, in_channels=1, out_channels=1, pos_embed_max_size=8)
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                  attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                  caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))


@dataclass(frozen=True)
class BenchModel:
    """A transformer config and the token grid / text length of its inputs."""

    family: str  # "sd3" | "flux"
    config: dict[str, Any]
    grid: tuple[int, int]
    text_len: int
    label: str


MODELS: dict[str, BenchModel] = {
    "sd3-digits": BenchModel("sd3", SD3_DIGITS, (8, 8), 2,
                             "SD3 digits-sized: 6 joint x 8 heads, 64 img + 2 txt tokens"),
    "sd3-small": BenchModel("sd3", SD3_SMALL, (16, 16), 16, "SD3 small: 6 joint x 8 heads, 256 img + 16 txt tokens"),
    "flux-small": BenchModel("flux", FLUX_SMALL, (16, 16), 16,
                             "FLUX small: 2 double + 4 single x 8 heads, 256 img + 16 txt tokens"),
    "sd3-medium": BenchModel("sd3", SD3_MEDIUM, (64, 64), 333, "SD3-medium 1024^2: 24 x 24 heads, 4096 + 333 tokens"),
    "flux-dev": BenchModel("flux", FLUX_DEV, (32, 32), 512, "FLUX.1-dev 512^2: 19 + 38 x 24 heads, 1024 + 512 tokens"),
}
DTYPES = {name: name for name in DType.NAMES}  #: --dtype name -> torch attribute
CASES = ("stock", "installed", "heads", "pag_mask")


def build(spec: BenchModel, device: str, dtype: Any) -> Any:
    """A random-weight transformer, built directly on `device` in `dtype`, in eval mode."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = SD3Transformer2DModel if spec.family == "sd3" else FluxTransformer2DModel
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(**spec.config).eval()
    finally:
        torch.set_default_dtype(previous)


def inputs(spec: BenchModel, model: Any, batch: int, device: str, dtype: Any) -> dict[str, Any]:
    """Random inputs for one forward of `batch` samples (made once, outside the timed region)."""
    import torch

    g = torch.Generator(device=device).manual_seed(1)
    c = model.config
    rows, cols = spec.grid

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    if spec.family == "sd3":
        return dict(hidden_states=randn(batch, c.in_channels, rows * c.patch_size, cols * c.patch_size),
                    encoder_hidden_states=randn(batch, spec.text_len, c.joint_attention_dim),
                    pooled_projections=randn(batch, c.pooled_projection_dim),
                    timestep=torch.full((batch,), 500.0, device=device, dtype=dtype), return_dict=False)
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(cols, device=device)[None, :]
    extra = {"guidance": torch.full((batch,), 3.5, device=device, dtype=dtype)} if c.guidance_embeds else {}
    return dict(hidden_states=randn(batch, rows * cols, c.in_channels),
                encoder_hidden_states=randn(batch, spec.text_len, c.joint_attention_dim),
                pooled_projections=randn(batch, c.pooled_projection_dim),
                timestep=torch.full((batch,), 0.5, device=device, dtype=dtype), img_ids=ids.reshape(-1, 3),
                txt_ids=torch.zeros(spec.text_len, 3, device=device), return_dict=False, **extra)


def spread_heads(sites: list[Any], count: int) -> list[tuple[int, int]]:
    """`count` (layer, head) pairs spread evenly over the layers, heads varied (deterministic)."""
    count = min(count, sum(s.num_heads for s in sites))
    picked: list[tuple[int, int]] = []
    i = 0
    while len(picked) < count:
        layer = (i * len(sites)) // count if i < count else i % len(sites)
        head = (i * 7 + layer) % sites[layer].num_heads
        if (layer, head) not in picked:
            picked.append((layer, head))
        i += 1
    return picked


def bench_model(spec: BenchModel, batches: list[int], heads: int, rounds: int, min_time: float, device: str,
                dtype_name: str, log: Callable[[str], None] = lambda s: None, clock: str = "wall",
                ) -> list[dict[str, Any]]:
    """Time every case at every batch size; one result dict per batch size.

    `clock`: "wall" (perf_counter; needed on a GPU) or "cpu" (this process's CPU time: on a shared CPU
    machine it leaves out the time other processes hold the cores)."""
    import torch

    from headhunter import HeadSet
    from headhunter.engine.attention import install
    from headhunter.plugin_system.registry import get_registry

    dtype = getattr(torch, DTYPES[dtype_name])
    model = build(spec, device, dtype)
    registry = get_registry()
    adapter = registry.adapter_for(model)
    sites = adapter.sites(model)
    headset = HeadSet.from_heads(spread_heads(sites, heads), sites=sites, architecture=adapter.architecture)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    now = time.process_time if clock == "cpu" else time.perf_counter
    overhead = wrapper_overhead_us(model, adapter, calls=20000 if min_time > 0 else 100)
    results = []
    for batch in batches:
        inp = inputs(spec, model, batch, device, dtype)
        rows = [headset] if batch == 1 else [None] * (batch - batch // 2) + [headset] * (batch // 2)
        strengths = batch_rows(rows, sites, adapter.architecture)

        def run():
            with torch.no_grad():
                model(**inp)

        reps = _calibrate(run, sync, min_time, now)
        configure = {
            "installed": lambda: install(adapter, model, "softpag", "joint"),
            "heads": lambda: _with_strengths(install(adapter, model, "softpag", "joint"), strengths),
            "pag_mask": lambda: _with_strengths(install(adapter, model, "softpag", "pag_mask"), strengths),
        }
        stock: list[float] = []
        samples: dict[str, list[float]] = {case: [] for case in CASES[1:]}
        ratios: dict[str, list[float]] = {case: [] for case in CASES[1:]}
        for r in range(rounds):  # paired samples: each case right after a stock sample, order rotated
            order = list(configure)[r % 3:] + list(configure)[: r % 3]
            for case in order:
                stock.append(_time(run, sync, reps, now))
                with configure[case]():
                    samples[case].append(_time(run, sync, reps, now))
                ratios[case].append(samples[case][-1] / stock[-1])
        row = {"model": spec.label, "batch": batch, "device": device, "dtype": dtype_name, "heads": len(headset),
               "rounds": rounds, "reps": reps, "clock": clock, "stock_ms": statistics.median(stock) * 1e3,
               "stock_ratio": 1.0}
        for case in CASES[1:]:
            row[f"{case}_ms"] = statistics.median(samples[case]) * 1e3
            row[f"{case}_ratio"] = statistics.median(ratios[case])
        row["call_overhead_us"], row["forward_overhead_us"] = overhead
        row["wrapper_ratio"] = 1 + overhead[1] / 1e3 / row["stock_ms"]
        results.append(row)
        log(format_row(row))
    return results


def _fanout_suite(full_size: tuple[str, ...], batch: int, rounds: int, min_time: float, device: str,
                  dtype_name: str, threads: int | None, clock: str) -> None:
    """Rows computed once (headhunter.bench.fanout): the CPU models of issue 14, or `--full-size` models."""
    import torch

    import headhunter.bench.fanout as fanout_bench

    clock = ("cpu" if device == "cpu" else "wall") if clock == "auto" else clock
    if not full_size:
        click.echo(fanout_bench.format_report(fanout_bench.run(batch=batch, rounds=rounds, min_time=min_time,
                                                               threads=threads or 1, clock=clock)))
        return
    dtype = getattr(torch, DTYPES[dtype_name])
    rows = []
    for name in full_size:
        spec = MODELS[name]
        model = build(spec, device, dtype)
        make = lambda n, spec=spec, model=model: {k: v for k, v in inputs(spec, model, n, device, dtype).items()  # noqa: E731
                                                  if k != "return_dict"}
        for label, headset in fanout_bench.cases(model).items():
            for cfg in (False, True):
                row = fanout_bench.prefix_case(model, headset, batch, cfg, make_inputs=make, rounds=rounds,
                                               min_time=min_time, clock=clock)
                rows.append({**row, "model": spec.label, "case": label})
                click.echo(fanout_bench.format_row(rows[-1]))
    click.echo(fanout_bench.format_report(rows))


def _search_cost_suite(model: str, recipe: str | None, json_path: str | None) -> None:
    """Measure `model`'s candidate image-step here and print the projections (headhunter.bench.searchcost)."""
    import headhunter.bench.searchcost as cost
    from headhunter.plugin_system.registry import get_registry

    known = get_registry().names("model")
    if model not in known:
        raise click.BadParameter(f"unknown model {model!r}; registered: {', '.join(sorted(known))}",
                                 param_hint="--search-model")
    if recipe is None and f"{model}-demo" not in cost.RECIPES:
        click.echo(f"no recipe for {model}: its rate is measured, the projections use the H200 rates", err=True)
    result = cost.run(model, recipe)
    click.echo(cost.format_report(result))
    if json_path:
        from headhunter.format.files import write_atomic

        write_atomic(Path(json_path), (json.dumps(cost.as_json(result), indent=1) + "\n").encode())


def _with_strengths(inst: Any, strengths: Any) -> Any:
    inst.set_strengths(strengths)
    return inst


def wrapper_overhead_us(model: Any, adapter: Any, calls: int = 20000) -> tuple[float, float]:
    """What installing costs with strengths absent, measured directly (microseconds, wall clock): one call
    through an installed processor minus one direct call of the processor it wraps (both wrapping a no-op,
    so only the dispatch is timed), and one forward's worth: every site plus the transformer's pre-hook.
    On a busy machine whole-forward ratios are far noisier than this difference."""
    import torch

    from headhunter.engine.attention import install

    def noop(*args: Any, **kwargs: Any) -> None:
        return None

    def per_call(fn: Callable[[], None]) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls

    with install(adapter, model, "softpag", "joint") as inst:
        processor = model.get_submodule(inst.sites[0].name).processor
        real, processor.original = processor.original, noop
        try:
            wrapped = statistics.median(per_call(lambda: processor(None, None)) for _ in range(5))
            direct = statistics.median(per_call(lambda: noop(None, None, None, None)) for _ in range(5))
        finally:
            processor.original = real
    probe = torch.nn.Identity()
    plain = statistics.median(per_call(lambda: probe(0)) for _ in range(5))
    hook = probe.register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True)
    hooked = statistics.median(per_call(lambda: probe(0)) for _ in range(5))
    hook.remove()
    call = (wrapped - direct) * 1e6
    return call, call * len(inst.sites) + (hooked - plain) * 1e6


def batch_rows(rows: list[Any], sites: list[Any], architecture: str) -> Any:
    from headhunter.plan.strengths import batch_strengths

    return batch_strengths(rows, sites, architecture=architecture)


def _calibrate(run: Callable[[], None], sync: Callable[[], None], min_time: float, now: Callable[[], float]) -> int:
    run(), run()
    sync()
    start = now()
    run()
    sync()
    once = max(now() - start, 1e-6)
    return max(1, int(min_time / once))


def _time(run: Callable[[], None], sync: Callable[[], None], reps: int, now: Callable[[], float]) -> float:
    run()  # one untimed call after every (re)configuration
    sync()
    start = now()
    for _ in range(reps):
        run()
    sync()
    return (now() - start) / reps


def format_row(row: dict[str, Any]) -> str:
    cells = [f"{row['model'][:60]:<60}", f"B={row['batch']:<3d}", f"stock {row['stock_ms']:8.2f} ms"]
    for case in CASES[1:]:
        cells.append(f"{case} {row[f'{case}_ms']:8.2f} ms (x{row[f'{case}_ratio']:.3f})")
    cells.append(f"wrapper +{row['forward_overhead_us']:.1f} us/forward (x{row['wrapper_ratio']:.4f})")
    return " | ".join(cells)


@click.command("bench")
@click.option("--model", "models", multiple=True, type=click.Choice(sorted(MODELS)),
              help="Model(s) to time (default: sd3-small and flux-small).")
@click.option("--full-size", type=click.Choice(["sd3-medium", "flux-dev"]), multiple=True,
              help="Published architecture with random weights (for a GPU).")
@click.option("--batch", "batches", default="1,2,16", show_default=True, type=IntList(1, 4096),
              help="Comma-separated batch sizes, each in [1, 4096].")
@click.option("--num-heads", "--heads", "heads", default=24, show_default=True, type=BoundedInt(0, 100_000),
              help="How many heads are perturbed in the 'heads' and 'pag_mask' cases (--heads is the old name).")
@click.option("--rounds", default=7, show_default=True, type=BoundedInt(1, 1000),
              help="Interleaved rounds per case (the median is reported).")
@click.option("--min-time", default=0.05, show_default=True, type=FiniteFloat(0.0, 60.0),
              help="Seconds per timed sample (sets repetitions), in [0, 60].")
@click.option("--device", default="cpu", show_default=True, type=Device(), help="cpu, cuda, cuda:1, mps")
@options.dtype("Weights and activations dtype of the timed models:", default="float32")
@click.option("--threads", type=BoundedInt(1, 1024), default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--clock", type=click.Choice(["auto", "wall", "cpu"]), default="auto", show_default=True,
              help="wall time, or this process's CPU time (auto: cpu on a CPU device, wall on a GPU).")
@options.output_file("Also write the results here, as JSON (--json FILE is the old spelling).", False, "--json")
@click.option("--suite", default="forward", show_default=True,
              help="Comma-separated: forward (perturbed vs stock forward), guided (guided step vs floor vs "
                   "diffusers PAG, CPU), search (candidate evaluations per second, batched vs one at a time), "
                   "startup (CLI start-up per light command, median of 5 fresh processes), "
                   "fanout (rows computed once: guided step vs stock at first perturbed block 0, N/4, N/2, 3N/4 "
                   "and the flux-golden-hour layers, CFG off/on; --full-size for the published architectures), "
                   "search-cost (ms per candidate image-step of --search-model measured here, and the paper's SD3 / "
                   "FLUX searches projected into device-hours per allocation, every factor's source printed), "
                   "compiled (guided step: inductor-compiled vs eager with and without rows computed once, tiny "
                   "widths at real depths, and graphs compiled across head sets).")
@click.option("--search-model", default="digits", show_default=True,
              help="search-cost: the registered model whose candidate image-step is measured here.")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
              help="search-cost: the recipe projected with the rate measured here (default: the model's demo).")
def bench(models: tuple[str, ...], full_size: tuple[str, ...], batches: list[int], heads: int, rounds: int,
          min_time: float, device: str, dtype_name: str, threads: int | None, clock: str,
          output: str | None, suite: str, search_model: str = "digits", recipe: str | None = None) -> None:
    """Time perturbed vs stock forwards (ratios are medians of per-round ratios), guided steps, search, start-up."""
    suites = [s.strip() for s in suite.split(",") if s.strip()]
    unknown = sorted(set(suites) - {"forward", "guided", "search", "startup", "fanout", "search-cost", "compiled"})
    if unknown:
        raise click.BadParameter(f"unknown suite {', '.join(unknown)}; allowed: forward, guided, search, startup, "
                                 "fanout, search-cost, compiled", param_hint="--suite")
    if "startup" in suites:
        import headhunter.bench.startup as startup_bench

        click.echo(startup_bench.format_report(startup_bench.run()))
        if suites == ["startup"]:
            return
    import torch

    if threads:
        torch.set_num_threads(threads)
    if "guided" in suites:
        import headhunter.bench.guidance as guidance_bench

        click.echo(guidance_bench.format_report(guidance_bench.run_bench(threads=threads)))
    if "search" in suites:
        import headhunter.bench.search as search_bench

        click.echo(search_bench.format_report(search_bench.run()))
    if "compiled" in suites:
        import headhunter.bench.compiled as compiled_bench

        click.echo(compiled_bench.format_report(compiled_bench.run(rounds=rounds, min_time=min_time)))
    if "search-cost" in suites:
        _search_cost_suite(search_model, recipe, output if suites == ["search-cost"] else None)
    if "fanout" in suites:
        _fanout_suite(full_size, batches[0], rounds, min_time, device, dtype_name, threads, clock)
    if "forward" not in suites:
        return

    if threads:
        torch.set_num_threads(threads)
    sizes = batches
    names = list(models) + list(full_size) or ["sd3-small", "flux-small"]
    if clock == "auto":
        clock = "cpu" if device == "cpu" else "wall"
    click.echo(f"torch {torch.__version__}, device {device}, dtype {dtype_name}, threads {torch.get_num_threads()}, "
               f"clock {clock}")
    results = []
    for name in names:
        results += bench_model(MODELS[name], sizes, heads, rounds, min_time, device, dtype_name, click.echo, clock)
    if output:
        from headhunter.format.files import write_atomic

        write_atomic(Path(output), (json.dumps(results, indent=1) + "\n").encode())
