"""Full-size speed figures: SD3-medium at 1024x1024 and FLUX.1-dev at 512x512, random weights, bf16, on a GPU.

One script for the lent GPU (issue: speed on the hardware users run). Speed does not depend on weight values,
so the transformers are built from their published configs with random weights (no download). Measured side
by side in one process, per denoising step (the time between two step ends: forward(s), guidance and the
scheduler update), timed with CUDA events recorded at each step end (no extra host-device synchronisation
inside a run); the first step of every call (which carries the call's set-up) is not measured:

- `stock forward B=2 / B=3`: the stock transformer at the batch a guided step needs without / with CFG;
- `guided` cases: `headhunter.apply(pipe, headset, scale=3)` on a stock pipeline, batched (one forward)
  and sequential, with the first perturbed block early and late (presets sd3-dark-lighting L1H10,
  sd3-horizontal-banding L16H3; FLUX L4H5 and preset flux-golden-hour L38H18), without and with CFG;
- SD3 only: diffusers' `StableDiffusion3PAGPipeline` on one layer vs our equivalent head set (every head
  of that layer, identity target, scope pag_mask), without and with CFG;
- search throughput: 8 single-head candidates as one batched forward (`apply(per_sample=True)`, 8 cond + 8
  perturbed rows) vs one candidate at a time (8 guided calls of 2 rows);
- peak GPU memory (max allocated) for every case.

Run: `python -m headhunter.bench.fullsize --out DIR` (GPU), or `--tiny` to check the script on a CPU with
small widths and the real depths. Writes DIR/fullsize_<device>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch

#: SD3-medium: 24 joint blocks x 24 heads x 64 dims; 1024 px -> 128x128 latents -> 4096 image tokens; text
#: 77 CLIP + 256 T5 = 333 tokens (diffusers' StableDiffusion3Pipeline defaults).
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                  attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                  caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
#: FLUX.1-dev: 19 double + 38 single blocks x 24 heads x 128 dims, guidance embedding; 512 px -> 1024 packed
#: image tokens; 512 T5 tokens.
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                guidance_embeds=True, axes_dims_rope=(16, 56, 56))
#: The same depths and head counts with tiny widths: checks the script on a CPU in seconds.
SD3_TINY = dict(SD3_MEDIUM, attention_head_dim=4, joint_attention_dim=32, caption_projection_dim=96,
                pooled_projection_dim=32, sample_size=16, pos_embed_max_size=32, in_channels=4, out_channels=4)
FLUX_TINY = dict(FLUX_DEV, attention_head_dim=16, joint_attention_dim=32, pooled_projection_dim=16,
                 in_channels=16, axes_dims_rope=(4, 6, 6))

#: First perturbed blocks of the prefix-sharing sweep: 0, N/4, N/2, 3N/4 (+ FLUX preset layers 38 and 52).
SD3_SWEEP = (0, 6, 12, 18)
FLUX_SWEEP = (0, 14, 28, 38, 43, 52)

W = 3.0      # perturbation guidance scale (paper's searches)
CFG = 4.5    # SD3 CFG scale; FLUX uses true CFG (true_cfg_scale) with a negative prompt


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build random weights directly in `dtype` on the device (FLUX.1-dev: 24 GB in bf16, not 48 GB in fp32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class StepClock:
    """Marks the end of every denoising step: CUDA events on a GPU (read after the run), perf_counter on CPU.

    Pipelines call `callback` at each step end (`callback_on_step_end`), so the time between two marks is one
    whole step (the transformer forward(s), guidance, scheduler update); the first step of a call, which also
    carries the call's set-up, is never measured.
    """

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def callback(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.mark()
        return {}

    def ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


def _stats(values: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values), "n": len(values)}


class Bench:
    """Runs named cases interleaved over repetitions. A case is `fn(clock)`: it asks `clock()` for a fresh
    StepClock per pipeline call and passes `clock.callback` as the call's `callback_on_step_end`."""

    def __init__(self, device: str, repeats: int) -> None:
        self.device, self.repeats = device, repeats
        self.cuda = device == "cuda"
        self.cases: dict[str, Callable[[Callable[[], StepClock]], Any]] = {}
        self.factor: dict[str, float] = {}

    def add(self, name: str, fn: Callable[[Callable[[], StepClock]], Any], factor: float = 1.0) -> None:
        """`factor` multiplies the per-step time (one candidate at a time: 8 calls make one unit of 8)."""
        self.cases[name] = fn
        self.factor[name] = factor

    def run(self, log: Callable[[str], None]) -> dict[str, dict[str, float]]:
        results: dict[str, dict[str, Any]] = {}
        times: dict[str, list[float]] = {name: [] for name in self.cases}
        peaks: dict[str, float] = {}
        for name, fn in self.cases.items():  # warm-up, and the peak memory of each case alone
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            fn(lambda: StepClock(self.cuda))
            if self.cuda:
                torch.cuda.synchronize()
                peaks[name] = torch.cuda.max_memory_allocated() / 2**30
            log(f"warm: {name}")
        for _ in range(self.repeats):
            for name, fn in self.cases.items():
                clocks: list[StepClock] = []

                def clock() -> StepClock:
                    clocks.append(StepClock(self.cuda))
                    return clocks[-1]

                fn(clock)
                times[name] += [ms * self.factor[name] for c in clocks for ms in c.ms()]
        for name, values in times.items():
            results[name] = _stats(values)
            if name in peaks:
                results[name]["peak_gib"] = peaks[name]
        return results


def _fanout() -> Any:
    """The prefix-sharing module (`headhunter.engine.fanout`), or None in a version without it."""
    try:
        import headhunter.engine.fanout as fanout
    except ImportError:
        return None
    return fanout


def _without_fanout(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` run with prefix sharing switched off (every row computed in full): the before/after pair."""
    def go(clock: Callable[[], StepClock] | None = None) -> Any:
        fanout = _fanout()
        fanout.enabled = False
        try:
            return fn(clock)
        finally:
            fanout.enabled = True
    return go


def _sd3(config: dict[str, Any], device: str, dtype: torch.dtype, repeats: int, steps: int, tiny: bool,
         log: Callable[[str], None]) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3PAGPipeline
    from diffusers import StableDiffusion3Pipeline

    import headhunter
    from headhunter import HeadSet

    torch.manual_seed(0)
    with torch.device(device), _default_dtype(dtype):
        transformer = SD3Transformer2DModel(**config).eval()
    parts = dict(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=None,
                 text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                 tokenizer_3=None)
    pipe = StableDiffusion3Pipeline(**parts)
    pag_layer = 1
    pag = StableDiffusion3PAGPipeline(**parts, pag_applied_layers=[f"blocks.{pag_layer}.attn"])
    # diffusers matches pag_applied_layers with re.search: plain "blocks.1" would also take blocks 10-19
    for p in (pipe, pag):
        p.set_progress_bar_config(disable=True)
    text_len = 333
    px = config["sample_size"] * 8
    g = torch.Generator(device="cpu").manual_seed(1)

    def embeds(n: int) -> dict[str, torch.Tensor]:
        pe = torch.randn(1, text_len, config["joint_attention_dim"], generator=g).to(device, dtype).expand(n, -1, -1)
        pooled = torch.randn(1, config["pooled_projection_dim"], generator=g).to(device, dtype).expand(n, -1)
        return dict(prompt_embeds=pe.contiguous(), pooled_prompt_embeds=pooled.contiguous(),
                    negative_prompt_embeds=torch.zeros_like(pe).contiguous(),
                    negative_pooled_prompt_embeds=torch.zeros_like(pooled).contiguous())

    e1, e8 = embeds(1), embeds(8)

    def call(p: Any, s: float, e: dict[str, torch.Tensor], **extra: Any) -> Callable[..., Any]:
        def go(clock: Callable[[], StepClock] | None = None) -> Any:
            with torch.no_grad():
                return p(guidance_scale=s, height=px, width=px, num_inference_steps=steps, output_type="latent",
                         generator=torch.Generator(device="cpu").manual_seed(0), **e, **extra,
                         callback_on_step_end=None if clock is None else clock().callback).images
        return go

    def guided(hs: Any, s: float, batched: bool = True, **kw: Any) -> Callable[..., Any]:
        inner = call(pipe, s, e1)

        def go(clock: Callable[[], StepClock] | None = None) -> Any:
            with headhunter.apply(pipe, hs, scale=W, batched=batched, **kw):
                return inner(clock)
        return go

    sites = headhunter.get_registry().adapter_for(pipe).sites(pipe)
    early = headhunter.load_headset("preset:sd3-dark-lighting")          # L1H10@0.5
    late = headhunter.load_headset("preset:sd3-horizontal-banding")      # L16H3@0.5
    layer = HeadSet.from_heads([(pag_layer, h) for h in range(24)], sites=sites, architecture="sd3",
                               name=f"layer{pag_layer}")
    candidates = [HeadSet.from_heads([(2 * i, i)], sites=sites, architecture="sd3", name=f"L{2 * i}H{i}")
                  for i in range(8)]
    x = {n: torch.randn(n, config["in_channels"], config["sample_size"], config["sample_size"],
                        generator=g).to(device, dtype) for n in (2, 3)}
    ef = {n: embeds(n) for n in (2, 3)}

    def stock_forward(n: int) -> Callable[..., Any]:
        def go(clock: Callable[[], StepClock]) -> None:
            c = clock()
            with torch.no_grad():
                c.mark()
                for _ in range(steps):
                    transformer(hidden_states=x[n], timestep=torch.full((n,), 500.0, device=device, dtype=dtype),
                                encoder_hidden_states=ef[n]["prompt_embeds"],
                                pooled_projections=ef[n]["pooled_prompt_embeds"], return_dict=False)
                    c.mark()
        return go

    def one_at_a_time(clock: Callable[[], StepClock]) -> None:
        for hs in candidates:
            with headhunter.apply(pipe, hs, scale=W):
                call(pipe, 1.0, e1)(clock)

    def per_sample_batch(clock: Callable[[], StepClock]) -> Any:
        with headhunter.apply(pipe, candidates, scale=W, per_sample=True):
            return call(pipe, 1.0, e1, num_images_per_prompt=8)(clock)

    bench = Bench(device, repeats)
    bench.add("stock forward B=2", stock_forward(2))
    bench.add("stock forward B=3", stock_forward(3))
    bench.add("stock pipeline step B=2 (no CFG, 2 images)", call(pipe, 1.0, embeds(2)))
    bench.add("guided early L1 batched, no CFG (B=2)", guided(early, 1.0))
    bench.add("guided early L1 sequential, no CFG", guided(early, 1.0, batched=False))
    bench.add("guided late L16 batched, no CFG (B=2)", guided(late, 1.0))
    bench.add("guided late L16 sequential, no CFG", guided(late, 1.0, batched=False))
    bench.add("guided early L1 batched, CFG (B=3)", guided(early, CFG))
    bench.add("guided late L16 batched, CFG (B=3)", guided(late, CFG))
    bench.add("diffusers PAG layer 1, no CFG (B=2)", call(pag, 1.0, e1, pag_scale=W))
    bench.add("ours layer 1 pag_mask identity, no CFG (B=2)",
              guided(layer, 1.0, scope="pag_mask", perturbation="identity"))
    bench.add("diffusers PAG layer 1, CFG (B=3)", call(pag, CFG, e1, pag_scale=W))
    bench.add("ours layer 1 pag_mask identity, CFG (B=3)",
              guided(layer, CFG, scope="pag_mask", perturbation="identity"))
    bench.add("search: 8 candidates batched (B=16), per 8", per_sample_batch)
    bench.add("search: 8 candidates one at a time (8 x B=2), per 8", one_at_a_time, factor=8)
    for block in SD3_SWEEP:  # first perturbed block at 0, N/4, N/2, 3N/4 (prefix sharing)
        hs = HeadSet.from_heads([(block, 0)], sites=sites, architecture="sd3", name=f"L{block}H0")
        for label, s in (("no CFG (B=2)", 1.0), ("CFG (B=3)", CFG)):
            bench.add(f"sweep: first perturbed block {block}, {label}", guided(hs, s))
            if _fanout() is not None:
                bench.add(f"sweep (full computation): first perturbed block {block}, {label}",
                          _without_fanout(guided(hs, s)))
    log(f"sd3: {len(bench.cases)} cases, {steps} steps x {repeats} repeats")
    results = bench.run(log)
    checks = {}
    for s, label in ((1.0, "no CFG"), (CFG, "CFG")):
        ours = guided(layer, s, scope="pag_mask", perturbation="identity")().float()
        theirs = call(pag, s, e1, pag_scale=W)().float()
        checks[f"max |ours - diffusers PAG| latents, {label}"] = (ours - theirs).abs().max().item()
        checks[f"max |diffusers PAG latents|, {label}"] = theirs.abs().max().item()
    del pipe, pag, transformer
    return {"config": config, "tokens": {"image": (config["sample_size"] // 2) ** 2, "text": text_len},
            "steps_per_call": steps, "cases": results, "checks": checks}


def _flux(config: dict[str, Any], device: str, dtype: torch.dtype, repeats: int, steps: int, tiny: bool,
          log: Callable[[str], None]) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    import headhunter
    from headhunter import HeadSet

    torch.manual_seed(0)
    with torch.device(device), _default_dtype(dtype):
        transformer = FluxTransformer2DModel(**config).eval()
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    text_len = 512
    px = 64 if tiny else 512           # FLUX: vae_scale_factor 8 (no VAE), 2x2 packing -> (px/16)^2 tokens
    g = torch.Generator(device="cpu").manual_seed(1)

    def embeds(n: int, negative: bool = False) -> dict[str, torch.Tensor]:
        pe = torch.randn(1, text_len, config["joint_attention_dim"], generator=g).to(device, dtype).expand(n, -1, -1)
        pooled = torch.randn(1, config["pooled_projection_dim"], generator=g).to(device, dtype).expand(n, -1)
        out = dict(prompt_embeds=pe.contiguous(), pooled_prompt_embeds=pooled.contiguous())
        if negative:
            out.update(negative_prompt_embeds=torch.zeros_like(out["prompt_embeds"]),
                       negative_pooled_prompt_embeds=torch.zeros_like(out["pooled_prompt_embeds"]))
        return out

    e1, e1n = embeds(1), embeds(1, negative=True)

    def call(e: dict[str, torch.Tensor], **extra: Any) -> Callable[..., Any]:
        def go(clock: Callable[[], StepClock] | None = None) -> Any:
            with torch.no_grad():
                return pipe(height=px, width=px, num_inference_steps=steps, output_type="latent", guidance_scale=3.5,
                            generator=torch.Generator(device="cpu").manual_seed(0), **e, **extra,
                            callback_on_step_end=None if clock is None else clock().callback).images
        return go

    def guided(hs: Any, batched: bool = True, cfg: bool = False) -> Callable[..., Any]:
        inner = call(e1n, true_cfg_scale=CFG) if cfg else call(e1)

        def go(clock: Callable[[], StepClock] | None = None) -> Any:
            with headhunter.apply(pipe, hs, scale=W, batched=batched):
                return inner(clock)
        return go

    sites = headhunter.get_registry().adapter_for(pipe).sites(pipe)
    early = HeadSet.from_notation("L4H5@0.5", sites=sites, architecture="flux", name="flux-L4H5")
    late = headhunter.load_headset("preset:flux-golden-hour")           # L38H18@0.5
    candidates = [HeadSet.from_heads([(30 + 3 * i, i)], sites=sites, architecture="flux", name=f"L{30 + 3 * i}H{i}")
                  for i in range(8)]
    tokens = (px // 16) ** 2

    def stock_forward(n: int) -> Callable[[], Any]:
        hidden = torch.randn(n, tokens, config["in_channels"], generator=g).to(device, dtype)
        enc = torch.randn(n, text_len, config["joint_attention_dim"], generator=g).to(device, dtype)
        pooled = torch.randn(n, config["pooled_projection_dim"], generator=g).to(device, dtype)
        side = px // 16
        img_ids = torch.zeros(side, side, 3)
        img_ids[..., 1] = torch.arange(side)[:, None]
        img_ids[..., 2] = torch.arange(side)[None, :]
        img_ids = img_ids.reshape(-1, 3).to(device, dtype)
        txt_ids = torch.zeros(text_len, 3, device=device, dtype=dtype)

        def go(clock: Callable[[], StepClock]) -> None:
            c = clock()
            with torch.no_grad():
                c.mark()
                for _ in range(steps):
                    transformer(hidden_states=hidden, timestep=torch.full((n,), 0.5, device=device, dtype=dtype),
                                guidance=torch.full((n,), 3.5, device=device, dtype=dtype),
                                encoder_hidden_states=enc, pooled_projections=pooled, img_ids=img_ids,
                                txt_ids=txt_ids, return_dict=False)
                    c.mark()
        return go

    def one_at_a_time(clock: Callable[[], StepClock]) -> None:
        for hs in candidates:
            with headhunter.apply(pipe, hs, scale=W):
                call(e1)(clock)

    def per_sample_batch(clock: Callable[[], StepClock]) -> Any:
        with headhunter.apply(pipe, candidates, scale=W, per_sample=True):
            return call(e1, num_images_per_prompt=8)(clock)

    bench = Bench(device, repeats)
    bench.add("stock forward B=1", stock_forward(1))
    bench.add("stock forward B=2", stock_forward(2))
    bench.add("stock pipeline step B=2 (2 images)", call(embeds(2)))
    bench.add("guided early L4 batched, no CFG (B=2)", guided(early))
    bench.add("guided early L4 sequential, no CFG", guided(early, batched=False))
    bench.add("guided late L38 batched, no CFG (B=2)", guided(late))
    bench.add("guided late L38 sequential, no CFG", guided(late, batched=False))
    bench.add("guided late L38 batched, true CFG (B=2 + uncond B=1)", guided(late, cfg=True))
    bench.add("search: 8 candidates batched (B=16), per 8", per_sample_batch)
    bench.add("search: 8 candidates one at a time (8 x B=2), per 8", one_at_a_time, factor=8)
    for block in FLUX_SWEEP:  # 0, N/4, N/2, 3N/4 and the presets' layers 38 (golden hour) and 52
        hs = HeadSet.from_heads([(block, 0)], sites=sites, architecture="flux", name=f"L{block}H0")
        bench.add(f"sweep: first perturbed block {block}, no CFG (B=2)", guided(hs))
        if _fanout() is not None:
            bench.add(f"sweep (full computation): first perturbed block {block}, no CFG (B=2)",
                      _without_fanout(guided(hs)))
    log(f"flux: {len(bench.cases)} cases, {steps} steps x {repeats} repeats")
    results = bench.run(log)
    del pipe, transformer
    return {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
            "tokens": {"image": tokens, "text": text_len}, "steps_per_call": steps, "cases": results}


def ideal_speedup(block: int, blocks: int, cfg: bool) -> float:
    """Stock-at-the-same-batch time over guided time when perturbed rows start at `block` of `blocks`:
    2 / (1 + (N - L) / N) without CFG, 3 / (2 + (N - L) / N) with CFG (the issue's formulas)."""
    rest = (blocks - block) / blocks
    return 3 / (2 + rest) if cfg else 2 / (1 + rest)


def format_report(data: dict[str, Any]) -> str:
    """Markdown: one table per model, each case's median (min-max) ms per unit, peak memory, ratio to stock."""
    lines = [f"Device: {data['device_name']}, torch {data['torch']}, diffusers {data['diffusers']}, {data['dtype']}"]
    for model, floor2, floor3 in (("sd3", "stock forward B=2", "stock forward B=3"),
                                  ("flux", "stock forward B=2", None)):
        if model not in data:
            continue
        if "error" in data[model]:
            lines += ["", f"### {model}: failed: {data[model]['error']}"]
            continue
        cases = data[model]["cases"]
        lines += ["", f"### {model}: {data[model]['tokens']}", "",
                  "| case | median ms | min-max ms | peak GiB | / stock same batch |", "|---|---:|---:|---:|---:|"]
        for name, c in cases.items():
            ref = floor3 if ("B=3" in name and floor3) else floor2
            ratio = c["median_ms"] / cases[ref]["median_ms"] if ref in cases and "search" not in name else None
            lines.append(f"| {name} | {c['median_ms']:.1f} | {c['min_ms']:.1f}-{c['max_ms']:.1f} | "
                         f"{c.get('peak_gib', float('nan')):.2f} | {'' if ratio is None else f'{ratio:.3f}'} |")
        blocks = data[model]["config"]["num_layers"] + data[model]["config"].get("num_single_layers", 0)
        sweep = [(n, c) for n, c in cases.items() if n.startswith("sweep:")]
        if sweep:
            lines += ["", "| first perturbed block | CFG | speed-up vs stock same batch | ideal | of ideal | "
                      "rows in full (fan-out off) |", "|---:|---|---:|---:|---:|---:|"]
            for name, c in sweep:
                block, cfg = int(name.split("block ")[1].split(",")[0]), "CFG (B=3)" in name
                ref = cases[floor3 if cfg and floor3 else floor2]["median_ms"]
                speedup, ideal = ref / c["median_ms"], ideal_speedup(block, blocks, cfg)
                full = cases.get(name.replace("sweep:", "sweep (full computation):"))
                off = "" if full is None else f"{ref / full['median_ms']:.3f}"
                lines.append(f"| {block} | {'yes' if cfg else 'no'} | {speedup:.3f} | {ideal:.3f} | {speedup / ideal:.2f} | "
                             f"{off} |")
        for name, value in data[model].get("checks", {}).items():
            lines.append(f"- {name}: {value:.3e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small widths, real depths (checks the script on CPU)")
    parser.add_argument("--out", default=".", help="folder for fullsize_<device>.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="denoising steps per pipeline call")
    parser.add_argument("--models", default="sd3,flux")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # tiny CPU check: one thread is fastest and steady on a shared machine
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    import diffusers

    data: dict[str, Any] = {
        "device": device, "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "python": platform.python_version(), "tiny": args.tiny,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "repeats": args.repeats, "w": W, "cfg": CFG,
    }
    models = args.models.split(",")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"fullsize_{device}{'_tiny' if args.tiny else ''}.json")
    runners = {"sd3": (_sd3, SD3_TINY if args.tiny else SD3_MEDIUM), "flux": (_flux, FLUX_TINY if args.tiny else FLUX_DEV)}
    for model in models:
        run, config = runners[model]
        try:
            data[model] = run(config, device, dtype, args.repeats, args.steps, args.tiny, log)
        except Exception as exc:  # a bench records what failed and goes on to the next model
            traceback.print_exc()
            data[model] = {"error": f"{type(exc).__name__}: {exc}"}
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        data["seconds"] = time.perf_counter() - started
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    print(format_report(data))
    log(f"wrote {path}")
    return data


if __name__ == "__main__":  # pragma: no cover
    main()
