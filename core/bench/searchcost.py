"""What a search costs: candidate image-steps per decision, projected into device-hours with every factor's source.

A search's cost is its transformer forwards (99.7 % of its time on CPU, measured), so it is counted in
**candidate image-steps**: one denoising step of one candidate image (the conditional row and its perturbed
row, batched with other candidates). `project(recipe, rate, variant)` multiplies three things:

1. the recipe's image-steps under an allocation (exhaustive = paper Algorithm 1; racing; multi-fidelity:
   screen every candidate cheaply, race the survivors at full fidelity, confirm every selection there);
2. the cost of one candidate image-step (ms) on a device;
3. the per-image extras (VAE decode + objective scoring), which do not shrink with fewer steps.

Every factor is a `Factor(value, source)` with its source one of "measured here" (this process, this
device), "measured on a GPU" (the H200 figures in docs/benchmarks.md and docs/gpu/), "measured on the
embedded model" (docs/search.md: racing's image fraction; docs/benchmarks.md: the multi-fidelity study) or
"assumed" (with the reason). Each projection comes as an optimistic and a pessimistic variant; the printed
table says which factor made the difference. Nothing here is a measurement of the paper's searches: there
are no SD3 / FLUX / PickScore weights on this machine; it is a projection from measured rates.

`run(model="digits")` measures the per-candidate-image-step cost of a registered model on the current
device (many candidates per pipeline call, as the search runs) and projects that model's own demo recipe
plus the paper's SD3 and FLUX searches; `format_report` prints it. `headhunter bench --suite search-cost`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MEASURED_HERE = "measured here"
MEASURED_GPU = "measured on a GPU (H200, docs/benchmarks.md 'GPU figures', docs/gpu/fullsize_h200_2026-11-29_run*.json)"
MEASURED_DIGITS = "measured on the embedded digits model"
ASSUMED = "assumed"


@dataclass(frozen=True)
class Factor:
    """One number of a projection and where it comes from."""

    value: float
    source: str
    note: str = ""


@dataclass(frozen=True)
class Recipe:
    """A search as the paper states it: candidate pool, prompt-seed pairs M, denoising steps, rounds R, top k.

    `resolution` is for the label only; the cost per image-step is what carries it (`rate`)."""

    name: str
    heads: int
    pairs: int
    steps: int
    rounds: int = 1
    top_k: int = 1
    resolution: str = ""
    resolution_screen: bool = True  #: whether a lower-resolution screen is a lever at all (not at 16x16)

    def candidate_images(self) -> int:
        """Exhaustive candidate images: every head not yet selected on every pair, every round."""
        return sum(max(0, self.heads - r * self.top_k) for r in range(self.rounds)) * self.pairs

    def reference_images(self) -> int:
        """The current set S (round 0: no guidance) on every pair, every round: the paired reference."""
        return self.rounds * self.pairs


#: The paper's searches (Ahn et al. 2025; /work/shared/DESIGN.md "Paper settings") and the demo's.
RECIPES: dict[str, Recipe] = {
    "sd3-quality": Recipe("paper SD3-medium general quality", heads=576, pairs=20, steps=20, rounds=1, top_k=24,
                          resolution="1024²"),
    "flux-style": Recipe("paper FLUX.1-dev style", heads=1368, pairs=5, steps=15, rounds=5, top_k=3,
                         resolution="512²"),
    "digits-demo": Recipe("digits demo (hunt --out runs/demo)", heads=48, pairs=64, steps=12, rounds=1, top_k=2,
                          resolution="16²", resolution_screen=False),
}

#: Candidate image-step cost on an H200 (bf16, random weights, batched candidates), docs/benchmarks.md.
GPU_RATES = {
    "sd3-quality": {
        "optimistic": Factor(41.9, MEASURED_GPU, "SD3-medium 1024², 8 candidates as one B=16 step with rows "
                                                 "computed once (candidates in blocks 0-14): 335 ms / 8"),
        "pessimistic": Factor(48.6, MEASURED_GPU, "the same step before rows were computed once (run 1): 389 ms / 8"),
    },
    "flux-style": {
        "optimistic": Factor(66.9, MEASURED_GPU, "FLUX.1-dev 512², 8 candidates as one B=16 step, rows computed "
                                                 "once (candidates in blocks 30-51): 535 ms / 8"),
        "pessimistic": Factor(104.3, MEASURED_GPU, "the same step before rows were computed once (run 1): 834 ms / 8"),
    },
}

#: Per image: VAE decode + objective (PickScore ViT-H/14 at 224²). Not measured here (no weights).
EXTRAS_MS = {
    "optimistic": Factor(10.0, ASSUMED, "VAE decode + PickScore per image, batched on an H200 (not measured)"),
    "pessimistic": Factor(60.0, ASSUMED, "VAE decode at 1024² alone may be tens of ms per image (not measured)"),
}

#: Racing's candidate images as a fraction of exhaustive (docs/search.md, 48 heads, 5 pools of 16 seeds).
RACING_FRACTION = {
    "optimistic": Factor(0.29, MEASURED_DIGITS, "the calibrated racing rule in the demo (digit-sharpness, 64 pairs, "
                                                "first 8, budget 0.5, k = 2): 880 of 3,072 candidate images, the pick "
                                                "stable (99.8 %) and beating its null (docs/search.md, 'The demo, "
                                                "measured')"),
    "pessimistic": Factor(0.55, MEASURED_DIGITS, "the calibrated racing rule uncapped, first 4 of 16 pairs, k = 1, "
                                                 "on digits sharpness: median 0.55 of exhaustive (docs/search.md, "
                                                 "multi-fidelity)"),
}


@dataclass(frozen=True)
class MultiFidelity:
    """Screen every candidate on `screen_pairs` pairs at `screen_cost` of a full image, keep `survivors`
    (a fraction of the pool), race them at full fidelity (`racing` of their exhaustive images), confirm
    every selection there. `screen_cost` = (steps run / steps) x (resolution cost factor)."""

    screen_pairs: Factor
    screen_steps: Factor  # fraction of the denoising steps run before the cheap score (x0 read out there)
    resolution: Factor  # cost of a screening image-step relative to a full-resolution one
    survivors: Factor
    racing: Factor


def multi_fidelity(variant: str, pairs: int, resolution_screen: bool = True) -> MultiFidelity:
    """The multi-fidelity factors of a variant for a recipe with `pairs` pairs (defaults documented in
    docs/benchmarks.md 'Search cost': the survivor fraction is the embedded model's measurement)."""
    if variant in ("optimistic", "optimistic-fullres"):
        resolution = Factor(0.25, ASSUMED, "screen at half the side (1/4 of the image tokens); cost linear in "
                                           "tokens; rank transfer from half resolution not measured (the "
                                           "embedded model is 16x16)")
        if variant == "optimistic-fullres" or not resolution_screen:
            resolution = Factor(1.0, ASSUMED, "no resolution screening" + ("" if resolution_screen else
                                                                           " (not a lever at 16x16)"))
        return MultiFidelity(
            screen_pairs=Factor(min(pairs, 4), ASSUMED, "pairs per candidate in the screen"),
            screen_steps=Factor(0.25, MEASURED_DIGITS, "a schedule of 1/4 of the steps (steps:3 of 12): Kendall "
                                                         "tau 0.40 vs full; the pick in the full-fidelity leaders "
                                                         "in 40/40 splits (docs/search.md, multi-fidelity)"),
            resolution=resolution,
            survivors=Factor(0.10, MEASURED_DIGITS, "top 10 % promoted after steps:3: pick in the full-fidelity "
                                                    "leaders 40/40 (sharpness), 37/40 (digit-sharpness; exhaustive "
                                                    "39/40); x0:3 needed 25 %"),
            racing=RACING_FRACTION["optimistic"])
    if variant == "pessimistic":
        return MultiFidelity(
            screen_pairs=Factor(min(pairs, 8), ASSUMED, "pairs per candidate in the screen"),
            screen_steps=Factor(0.5, MEASURED_DIGITS, "half the steps (x0:6 or steps:6 of 12)"),
            resolution=Factor(1.0, ASSUMED, "full resolution (no resolution screening)"),
            survivors=Factor(0.25, MEASURED_DIGITS, "top quarter promoted: the pick in the leaders in 36-40 of "
                                                     "40 splits for every cheap fidelity measured"),
            racing=RACING_FRACTION["pessimistic"])
    raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")


ALLOCATIONS = ("exhaustive", "racing", "multi-fidelity")
#: optimistic-fullres: the optimistic variant without the (unmeasured) resolution screen.
VARIANTS = ("optimistic", "optimistic-fullres", "pessimistic")


@dataclass
class Projection:
    """One recipe x allocation x variant: image-steps (full-fidelity equivalents), images, hours."""

    recipe: str
    allocation: str
    variant: str
    image_steps: float
    images: float
    step_ms: Factor
    extras_ms: Factor
    factors: dict[str, Factor] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.image_steps * self.step_ms.value + self.images * self.extras_ms.value) / 1000.0


def project(recipe: Recipe, allocation: str, variant: str, step_ms: Factor, extras_ms: Factor) -> Projection:
    """Image-steps, images and device time of one recipe under one allocation (see the module docstring).

    Raises ValueError for an unknown allocation or variant."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r}; allowed: {', '.join(ALLOCATIONS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    t, m = recipe.steps, recipe.pairs
    ref = recipe.reference_images()
    full = recipe.candidate_images()
    factors: dict[str, Factor] = {}
    if allocation == "exhaustive":
        images = full + ref
        steps = images * t
    elif allocation == "racing":
        f = RACING_FRACTION[_rates(variant)]
        factors["racing fraction"] = f
        images = full * f.value + ref
        steps = images * t
    else:
        mf = multi_fidelity(variant, m, recipe.resolution_screen)
        factors.update({"screen pairs": mf.screen_pairs, "screen steps fraction": mf.screen_steps,
                        "screen resolution cost": mf.resolution, "survivor fraction": mf.survivors,
                        "racing fraction (survivors)": mf.racing})
        screen_images = full / m * mf.screen_pairs.value + recipe.rounds * mf.screen_pairs.value
        screen_steps = screen_images * t * mf.screen_steps.value * mf.resolution.value
        confirm_images = full * mf.survivors.value * mf.racing.value + ref
        images = screen_images + confirm_images
        steps = screen_steps + confirm_images * t
    return Projection(recipe.name, allocation, variant, steps, images, step_ms, extras_ms, factors)


def _rates(variant: str) -> str:
    """The rate table a variant reads (optimistic-fullres differs from optimistic only in the screen)."""
    return "pessimistic" if variant == "pessimistic" else "optimistic"


# ----- measured here ------------------------------------------------------------------------------------
def measure_step_ms(model: str = "digits", candidates: int = 8, pairs: int = 8, steps: int = 12,
                    batch_size: int = 64, repeats: int = 3, pipe: Any = None, clock: str = "auto") -> dict[str, Any]:
    """Milliseconds per candidate image-step of a registered model on its device: `candidates` single-head
    candidates x `pairs` images x `steps` Euler steps, `batch_size` images per pipeline call (as the search
    runs), median of `repeats` runs after one warm-up call. `clock`: "cpu" (this process's CPU time: steady
    on a shared machine, and equal to the work with one torch thread), "wall", or "auto" (cpu on a CPU
    device, wall with a CUDA sync on a GPU). Decode and scoring are not included (the digits model decodes
    nothing; the model's default objective is timed separately as `extras_ms`)."""
    import torch

    from headhunter.bench.search import candidate_rows, registered_pipe
    from headhunter.engine.runner import pipeline_device, run_batches
    from headhunter.format.schema import GenerationSettings, GuidanceSettings

    pipe = pipe or registered_pipe(model)
    device = pipeline_device(pipe)
    if clock == "auto":
        clock = "cpu" if device.type == "cpu" else "wall"
    if clock not in ("cpu", "wall"):
        raise ValueError(f"unknown clock {clock!r}; allowed: auto, cpu, wall")
    now = time.process_time if clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = candidate_rows(pipe, candidates, [""], list(range(pairs)))
    gen = GenerationSettings(guidance=GuidanceSettings(scale=3.0), steps=steps)
    run_batches(pipe, rows[:2], GenerationSettings(guidance=GuidanceSettings(scale=3.0), steps=2), 2,
                lambda s, images: None)  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        start = now()
        run_batches(pipe, rows, gen, batch_size, lambda s, images: None)
        sync()
        times.append(now() - start)
    seconds = statistics.median(times)
    extras = _extras_ms(pipe, candidates * pairs, now)
    return {"model": model, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "clock": clock, "candidates": candidates, "pairs": pairs, "steps": steps, "batch_size": batch_size,
            "seconds": seconds, "step_ms": 1000.0 * seconds / (candidates * pairs * steps), "extras_ms": extras}


def _extras_ms(pipe: Any, images: int, now: Any) -> float | None:
    """Per-image cost of the model's default objective on the model's own output size (random images;
    None without a default objective)."""
    import torch

    from headhunter.objective.expr import components, parse_objective
    from headhunter.plugin_system.registry import get_registry

    name = get_registry().search_defaults(pipe).get("objective")
    if not isinstance(name, str):
        return None
    objective = parse_objective(name)
    prompts = [""] * images
    with torch.no_grad():
        sample = pipe(prompt=[""], num_inference_steps=1, output_type="pt").images
    x = torch.rand(images, *sample.shape[1:], generator=torch.Generator().manual_seed(0))
    components(objective, x[:2], prompts[:2])  # warm-up (loads the scorer)
    times = []
    for _ in range(3):
        start = now()
        components(objective, x, prompts)
        times.append(now() - start)
    return 1000.0 * statistics.median(times) / images


def _cases() -> list[tuple[str, str]]:
    """(allocation, variant) pairs shown: optimistic-fullres only where it differs (multi-fidelity)."""
    return [(a, v) for a in ALLOCATIONS for v in VARIANTS if v != "optimistic-fullres" or a == "multi-fidelity"]


def run(model: str = "digits", recipe: str | None = None, measure: bool = True, pipe: Any = None,
        **measure_kwargs: Any) -> dict[str, Any]:
    """Measure the model here (unless `measure=False`), project its recipe with the local rate and the
    paper's SD3 / FLUX searches with the H200 rates; returns plain data (JSON-ready)."""
    out: dict[str, Any] = {"projections": []}
    if measure:
        local = measure_step_ms(model, pipe=pipe, **measure_kwargs)
        out["measured"] = local
        own = RECIPES[recipe] if recipe else RECIPES.get(f"{model}-demo")
        if own is not None:
            rate = Factor(local["step_ms"], MEASURED_HERE, f"{local['device']}, torch {local['torch']}, "
                                                          f"{local['threads']} threads, batch {local['batch_size']}, "
                                                          f"{local['clock']} clock")
            extra = Factor(local["extras_ms"] or 0.0, MEASURED_HERE, "the model's default objective, per image")
            for allocation, variant in _cases():
                out["projections"].append(project(own, allocation, variant, rate, extra))
    for key in ("sd3-quality", "flux-style"):
        for allocation, variant in _cases():
            out["projections"].append(project(RECIPES[key], allocation, variant,
                                              GPU_RATES[key][_rates(variant)], EXTRAS_MS[_rates(variant)]))
    return out


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    """The result with projections as dicts (seconds included)."""
    rows = []
    for p in result["projections"]:
        row = asdict(p)
        row["seconds"] = p.seconds
        rows.append(row)
    return {**{k: v for k, v in result.items() if k != "projections"}, "projections": rows}


def format_report(result: dict[str, Any], target_minutes: float = 15.0) -> str:
    """Markdown: the local measurement, then per recipe a table of allocations x variants with minutes,
    and every factor with its source."""
    lines = []
    local = result.get("measured")
    if local:
        lines.append(f"measured here: {local['model']} on {local['device']} (torch {local['torch']}, "
                     f"{local['threads']} threads, {local['clock']} clock): {local['step_ms']:.3f} ms per candidate image-step "
                     f"({local['candidates']} candidates x {local['pairs']} images x {local['steps']} steps, "
                     f"{local['batch_size']} images per call, median of 3: {local['seconds']:.2f} s)"
                     + (f"; objective {local['extras_ms']:.3f} ms per image" if local.get("extras_ms") else ""))
        lines.append("")
    by_recipe: dict[str, list[Projection]] = {}
    for p in result["projections"]:
        by_recipe.setdefault(p.recipe, []).append(p)
    for name, rows in by_recipe.items():
        recipe = next(r for r in RECIPES.values() if r.name == name)
        exhaustive = {p.variant: p for p in rows if p.allocation == "exhaustive"}
        lines.append(f"### {name}: {recipe.heads} heads, M = {recipe.pairs}, {recipe.steps} steps, R = "
                     f"{recipe.rounds}, k = {recipe.top_k}, {recipe.resolution}")
        lines.append("")
        lines.append("| allocation | variant | image-steps (full-fidelity equiv.) | vs exhaustive | images | "
                     f"device minutes | <= {target_minutes:g} min |")
        lines.append("|---|---|---:|---:|---:|---:|---|")
        for p in rows:
            ratio = p.image_steps / exhaustive[_rates(p.variant)].image_steps
            minutes = p.seconds / 60.0
            lines.append(f"| {p.allocation} | {p.variant} | {p.image_steps:,.0f} | {ratio:.3f} | {p.images:,.0f} | "
                         f"{minutes:,.1f} | {'yes' if minutes <= target_minutes else 'no'} |")
        lines.append("")
        seen: dict[str, Factor] = {}
        for p in rows:
            seen.setdefault(f"candidate image-step ms ({p.variant})", p.step_ms)
            seen.setdefault(f"decode + objective ms per image ({p.variant})", p.extras_ms)
            for key, f in p.factors.items():
                seen.setdefault(f"{key} ({p.variant})", f)
        for key, f in seen.items():
            lines.append(f"- {key} = {f.value:g}: {f.source}" + (f" ({f.note})" if f.note else ""))
        lines.append("")
    return "\n".join(lines)


__all__ = ["ALLOCATIONS", "Factor", "GPU_RATES", "MultiFidelity", "Projection", "RECIPES", "Recipe", "VARIANTS",
           "format_report", "measure_step_ms", "multi_fidelity", "project", "run"]
