"""Speed of a guided denoising step: `apply` vs the stock floor and vs diffusers' StableDiffusion3PAGPipeline.

Per denoising step, medians over interleaved repetitions in one process:

- `floor`: one stock transformer forward at the guided batch size (cond + perturbed rows, plus uncond
  rows with CFG): the cost the extra branch cannot avoid. Target: guided <= 1.05 x floor.
- `stock step`: a stock pipeline step at that batch size (the forward plus the scheduler update).
- `guided`: `headhunter.apply(pipe, headset)`, batched (one forward per step) and sequential.
- `diffusers PAG`: `StableDiffusion3PAGPipeline` with `pag_applied_layers=["blocks.L"]`; ours runs the
  equivalent head set (every head of layer L, u = 1, `identity`, scope `pag_mask`), and the latents of the
  two are compared (they are the same computation). For information, the same heads with the paper's
  default scope `joint` (a different perturbation, so not compared for equality).

Run it: `python -m headhunter.bench.guidance` (or call `run_bench()`; `format_report()` renders Markdown).
The model is a tiny-but-not-trivial random SD3 transformer built from a config, no downloads.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

#: 4 joint blocks x 8 heads x 16 dims; 24x24 latents -> 144 image tokens; 16 text tokens (~1.4M parameters).
BENCH_CONFIG: dict[str, Any] = dict(
    sample_size=24, patch_size=2, in_channels=16, out_channels=16, num_layers=4, attention_head_dim=16,
    num_attention_heads=8, joint_attention_dim=64, caption_projection_dim=128, pooled_projection_dim=64,
    pos_embed_max_size=24,
)
TEXT_LEN = 16

#: CPU time of this process: on a shared machine it does not count the time other processes hold the cores
#: (wall time then varies by tens of percent between identical runs). `run_bench(clock="wall")` switches.
_clock = time.process_time


@dataclass
class BenchResult:
    """Milliseconds by configuration: median per step (`ms`), median per outermost transformer call
    (`call_ms`: the step's forward(s), without the pipeline's scheduler update), fastest step (`min_ms`:
    on a shared machine interference only adds time, so the minimum is the steadiest estimate of the
    intrinsic cost); `checks`: max |diff| figures."""

    settings: dict[str, Any]
    ms: dict[str, float] = field(default_factory=dict)
    call_ms: dict[str, float] = field(default_factory=dict)
    min_ms: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    checks: dict[str, float] = field(default_factory=dict)


def _pipelines(config: dict[str, Any], pag_layer: int) -> tuple[Any, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3PAGPipeline
    from diffusers import StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(**config).eval()
    parts = dict(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None,
                 text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                 tokenizer_3=None)
    pipe = StableDiffusion3Pipeline(**parts)
    pag = StableDiffusion3PAGPipeline(**parts, pag_applied_layers=[f"blocks.{pag_layer}"])
    for p in (pipe, pag):
        p.set_progress_bar_config(disable=True)
    return pipe, pag


def _embeds(config: dict[str, Any], rows: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pe = torch.randn(1, TEXT_LEN, config["joint_attention_dim"], generator=g).expand(rows, -1, -1).contiguous()
    pooled = torch.randn(1, config["pooled_projection_dim"], generator=g).expand(rows, -1).contiguous()
    return dict(prompt_embeds=pe, pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(pe),
                negative_pooled_prompt_embeds=torch.zeros_like(pooled))


class _StepTimer:
    """callback_on_step_end that records the duration of every step after the first, plus (while attached
    to a transformer) the duration of every outermost transformer call: the step minus the pipeline's own
    bookkeeping (scheduler update, CFG combination), i.e. what the forward(s) of a step cost."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.calls: list[float] = []
        self._last: float | None = None
        self._depth = 0
        self._start = 0.0

    def __call__(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        now = _clock()
        if self._last is not None:
            self.durations.append(now - self._last)
        self._last = now
        return {}

    def attach(self, module: torch.nn.Module) -> list[Any]:
        def before(*_: Any) -> None:
            self._depth += 1
            if self._depth == 1:
                self._start = _clock()

        def after(*_: Any) -> None:
            self._depth -= 1
            if self._depth == 0 and self._last is not None:  # step 0's call is dropped like step 0 itself
                self.calls.append(_clock() - self._start)

        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def run_bench(images: int = 2, steps: int = 8, repeats: int = 5, cfg: float = 4.5, scale: float = 3.0,
              pag_layer: int = 1, config: dict[str, Any] | None = None, threads: int | None = None,
              clock: str = "cpu") -> BenchResult:
    """Time every configuration `repeats` times, interleaved; medians of per-step durations (step 0 dropped).

    `threads`: torch CPU threads for the run (restored afterwards); on a shared machine 1 is the least noisy.
    `clock`: "cpu" (process CPU time, default: robust on a shared machine) or "wall".
    """
    global _clock
    previous, previous_clock = torch.get_num_threads(), _clock
    if threads is not None:
        torch.set_num_threads(threads)
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock={clock!r}; allowed: cpu, wall")
    _clock = time.process_time if clock == "cpu" else time.perf_counter
    try:
        result = _run_bench(images, steps, repeats, cfg, scale, pag_layer, config)
        result.settings["clock"] = clock
        return result
    finally:
        torch.set_num_threads(previous)
        _clock = previous_clock


def _run_bench(images: int, steps: int, repeats: int, cfg: float, scale: float, pag_layer: int,
               config: dict[str, Any] | None) -> BenchResult:
    import headhunter
    from headhunter import HeadSet, get_registry

    config = dict(BENCH_CONFIG if config is None else config)
    pipe, pag = _pipelines(config, pag_layer)
    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    layer = HeadSet.from_heads([(pag_layer, h) for h in range(sites[pag_layer].num_heads)], sites=sites,
                               architecture=adapter.architecture, name=f"layer{pag_layer}")
    size = config["sample_size"] * pipe.vae_scale_factor
    call = dict(height=size, width=size, num_inference_steps=steps, output_type="latent")
    heads = config["num_attention_heads"]

    def run(p: Any, s: float, n: int, timer: _StepTimer | None = None, **extra: Any) -> torch.Tensor:
        with torch.no_grad():
            return p(guidance_scale=s, generator=torch.Generator().manual_seed(0), callback_on_step_end=timer,
                     **_embeds(config, n), **call, **extra).images

    def guided(n: int, s: float, batched: bool = True, scope: str = "pag_mask") -> Callable[[_StepTimer], Any]:
        def go(timer: _StepTimer) -> Any:
            with headhunter.apply(pipe, layer, scale=scale, scope=scope, perturbation="identity",
                                  batched=batched):
                return run(pipe, s, n, timer)
        return go

    transformer = pipe.transformer
    latent = config["sample_size"]

    def floor(rows: int) -> Callable[[_StepTimer], Any]:
        x = torch.randn(rows, config["in_channels"], latent, latent, generator=torch.Generator().manual_seed(2))
        e = _embeds(config, rows)

        def go(timer: _StepTimer) -> None:
            with torch.no_grad():
                for _ in range(steps):
                    transformer(hidden_states=x, timestep=torch.full((rows,), 500.0),
                                encoder_hidden_states=e["prompt_embeds"],
                                pooled_projections=e["pooled_prompt_embeds"], return_dict=False)
                    timer(None, 0, None, {})
        return go

    b = images
    cases: dict[str, Callable[[_StepTimer], Any]] = {
        # no CFG: cond + perturbed = 2B rows
        "floor: stock forward, 2B rows": floor(2 * b),
        "stock step, 2B rows (no CFG, 2B images)": lambda t: run(pipe, 1.0, 2 * b, t),
        "guided step, batched (no CFG)": guided(b, 1.0),
        "guided step, sequential (no CFG)": guided(b, 1.0, batched=False),
        "diffusers PAG step (no CFG)": lambda t: run(pag, 1.0, b, t, pag_scale=scale),
        "guided step, batched, scope joint (no CFG)": guided(b, 1.0, scope="joint"),
        # CFG: uncond + cond + perturbed = 3B rows
        "floor: stock forward, 3B rows": floor(3 * b),
        "guided step, batched (CFG)": guided(b, cfg),
        "diffusers PAG step (CFG)": lambda t: run(pag, cfg, b, t, pag_scale=scale),
    }
    if (3 * b) % 2 == 0:
        cases["stock step, 3B rows (CFG, 1.5B images)"] = lambda t: run(pipe, cfg, 3 * b // 2, t)
    timers = {name: _StepTimer() for name in cases}
    for name, case in cases.items():  # warm-up
        case(_StepTimer())
    for _ in range(repeats):
        for name, case in cases.items():
            timer = timers[name]
            timer._last = None
            hooks = timer.attach(transformer)
            try:
                case(timer)
            finally:
                for hook in hooks:
                    hook.remove()
    result = BenchResult(settings=dict(images=b, steps=steps, repeats=repeats, cfg=cfg, scale=scale,
                                       pag_layer=pag_layer, heads=heads, config=config,
                                       threads=torch.get_num_threads(), torch=torch.__version__))
    for name, timer in timers.items():
        result.ms[name] = 1000 * statistics.median(timer.durations)
        result.call_ms[name] = 1000 * statistics.median(timer.calls)
        result.min_ms[name] = 1000 * min(timer.durations)
        result.samples[name] = len(timer.durations)
    for s, label in ((1.0, "no CFG"), (cfg, "CFG")):
        ours = guided(b, s)(_StepTimer())
        theirs = run(pag, s, b, _StepTimer(), pag_scale=scale)
        result.checks[f"max |ours - diffusers PAG| latents ({label})"] = (ours - theirs).abs().max().item()
    return result


def format_report(result: BenchResult) -> str:
    """A Markdown table of the medians, the ratios the issue asks for, and the agreement with diffusers' PAG."""
    ms, call, low = result.ms, result.call_ms, result.min_ms
    lines = ["| configuration | median ms / step | median ms / transformer call | min ms / step | samples |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {ms[name]:.2f} | {call[name]:.2f} | {low[name]:.2f} | {result.samples[name]} |"
              for name in ms]
    floor2, floor3 = "floor: stock forward, 2B rows", "floor: stock forward, 3B rows"
    g0, g1 = "guided step, batched (no CFG)", "guided step, batched (CFG)"
    p0, p1 = "diffusers PAG step (no CFG)", "diffusers PAG step (CFG)"
    ratios = [
        ("guided call (no CFG) / floor forward 2B", call[g0] / call[floor2]),
        ("guided call (CFG) / floor forward 3B", call[g1] / call[floor3]),
        ("guided step (no CFG) / stock step 2B", ms[g0] / ms["stock step, 2B rows (no CFG, 2B images)"]),
        ("guided step (no CFG) / floor forward 2B", ms[g0] / call[floor2]),
        ("guided step / diffusers PAG step (no CFG)", ms[g0] / ms[p0]),
        ("guided step / diffusers PAG step (CFG)", ms[g1] / ms[p1]),
        ("min: guided step (no CFG) / floor forward 2B", low[g0] / low[floor2]),
        ("min: guided step (CFG) / floor forward 3B", low[g1] / low[floor3]),
        ("min: guided step / diffusers PAG step (no CFG)", low[g0] / low[p0]),
        ("min: guided step / diffusers PAG step (CFG)", low[g1] / low[p1]),
    ]
    if "stock step, 3B rows (CFG, 1.5B images)" in ms:
        ratios.insert(3, ("guided step (CFG) / stock step 3B", ms[g1] / ms["stock step, 3B rows (CFG, 1.5B images)"]))
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {name} | {value:.3f} |" for name, value in ratios]
    lines += [""] + [f"- {name}: {value:.2e}" for name, value in result.checks.items()]
    s = result.settings
    lines += [f"- settings: B={s['images']} images, {s['steps']} steps x {s['repeats']} repeats (step 0 of each run "
              f"dropped), cfg={s['cfg']}, w={s['scale']}, layer {s['pag_layer']} ({s['heads']} heads), "
              f"torch {s['torch']}, {s['threads']} threads, {s.get('clock', 'cpu')} clock"]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    print(format_report(run_bench(images=args.images, steps=args.steps, repeats=args.repeats, threads=args.threads,
                                  clock=args.clock)))
