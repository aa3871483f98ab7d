"""Head sets applied to a ComfyUI MODEL through ComfyUI's own patch points (what the nodes run).

Nothing here patches ComfyUI process-wide, nothing touches the stock cond/uncond passes and nothing is
stored on the model object: every patch lives in a **copy of `model_options` made for the perturbed pass
only**, so two patched MODELs with different head sets work side by side in one process, and patches
stack. The pieces (ComfyUI 0.3.64; the models to follow are comfy_extras/nodes_slg.py and nodes_pag.py):

1. The perturbed pass. `sequential` (default): a post-CFG function
   (`ModelPatcher.set_model_sampler_post_cfg_function`) runs, inside the window,
   `comfy.samplers.calc_cond_batch(model, [cond] * K, x, sigma, perturbed_options)` (one forward for the K
   head sets active at this step) and returns `cfg_result + sum_k w_k (cond - perturbed_k)`. In denoised
   (x0) space this is the paper's `uncond + s (cond - uncond) + w (cond - perturbed)` in velocity space:
   for flow models `x0 = x - sigma v`, and the coefficients (1 - s, s + w, -w) sum to 1. `batched`: a
   `sampler_calc_cond_batch_function` runs `[cond, uncond, cond x K]` in one forward and shifts cond and
   uncond by the same term (then later post-CFG functions see the shifted values; sequential is the clean
   default).
2. `perturbed_model_options(model_options, plan, chunk_branch)` adds, to a copy:
   - an `apply_model` wrapper (`transformer_options["wrappers"]["apply_model"]`) that reads the image grid
     from the latent's shape and, from `transformer_options["cond_or_uncond"]`, which batch rows belong to
     which head set; it builds the per-site strengths of this forward (`SiteStrength`, cached per layout
     and device) and passes them down in a copy of transformer_options;
   - `patches_replace["dit"]` block wrappers, only on blocks that hold a perturbed site, that tell the
     attention override which block runs (0.3.64 passes no block index to attention); an existing
     replacement for the block (another node's) is called inside ours;
   - `transformer_options["optimized_attention_override"]`: ComfyUI's `wrap_attn` calls it for every
     attention call as `override(func, *args, **kwargs)`. Outside a perturbed site it calls through
     (to the previous override, if any). At a site it computes the model's own output O (RoPE, qk-norm and
     the attention backend are ComfyUI's), then `headhunter.engine.attention.mix` (the project's engine, the
     registered perturbation plugin's `target`) per sample and head: `O + u (T.V - O)`.

Schedules (format 2.0 head sets, strengths over intervals of the noise level): a step's branch strengths are
those of the plan's segment holding the step's sigma, `sample_sigmas[i]` (diffusers reads
`scheduler.sigmas[i]`); for SD3 and FLUX ComfyUI's sigma is the same flow-matching noise level.

Token order: ComfyUI concatenates `[text | image]` in MMDiT joint attention and in FLUX (diffusers' SD3
orders `[image | text]`), so every call gets `TokenLayout(text_first=True)`; SD3.5's `attn2` is image only.

Hot path: per attention call only shape comparisons and dict look-ups; per forward the strengths are a
dict look-up once built (host-side, from the plan); per step one host read of sigma (as nodes_slg.py).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from headhunter.contracts.adapter import TokenLayout
from headhunter.engine.attention import mix
from headhunter.engine.reference import reference_attention
from headhunter.errors import HeadSetError, ModelError
from headhunter.format.headset import HeadSet
from headhunter.plan.plan import Plan, compile_plan
from headhunter.plan.strengths import SiteStrength

from .sites import ComfySite, architecture, check_fits, comfy_sites, diffusion_model_of

STATE_PREFIX = "headhunter_state:"
BLOCK_KEY = "headhunter_block"
WRAPPER_PREFIX = "headhunter:"
#: How the window is read: `steps` (the head set's definition, exact) or `sigma` (percent_to_sigma, like SLG).
WINDOWS = ("steps", "sigma")
#: How the perturbed pass runs: its own forward after CFG, or batched with cond and uncond.
MODES = ("sequential", "batched")
#: `fast`: the engine's mix; `reference`: every perturbed site recomputed in float64 (tests only, slow).
ENGINES = ("fast", "reference")


@dataclass(frozen=True)
class BranchTable:
    """One head set's perturbed branch: its scale w, window [start, stop) (fractions of the steps) and the
    strengths it applies in each segment of the plan's schedule, `tables[k] = {site: float32 [H]}` on the
    host (one segment without schedules; `{}` where the head set has no heads), already mapped by the
    perturbation's `strengths` (identity: any non-zero u acts as 1)."""

    scale: float
    start: float
    stop: float
    tables: tuple[Mapping[str, np.ndarray], ...]
    name: str


class ComfyPlan:
    """A compiled `headhunter.plan.Plan` for one ComfyUI diffusion model: which ComfyUI block and attention
    call each perturbed site is, and every branch's host-side strengths. Built once, when the node runs."""

    def __init__(self, plan: Plan, dm: Any, sites: Sequence[ComfySite], engine: str = "fast") -> None:
        if engine not in ENGINES:
            raise ModelError(f"engine {engine!r}; allowed: {', '.join(ENGINES)}")
        self.plan = plan
        self.arch = architecture(dm)
        self.perturbation = plan.perturbation
        self.scope = plan.scope
        self.engine = engine
        self.patch_size = int(dm.x_embedder.patch_size[0] if self.arch == "sd3" else dm.patch_size)
        self.num_heads = {s.name: s.site.num_heads for s in sites}
        by_name = {s.name: s for s in sites}
        self.branches: list[BranchTable] = []
        used: set[str] = set()
        for b in plan.branches:
            tables = []
            for k in range(plan.segments):
                piece = plan.piece(b.headset, k)  # what acts in segment k (None: no heads there)
                table = {}
                for name, vec in ({} if piece is None else piece.dense()).items():
                    table[name] = self.perturbation.strengths(torch.from_numpy(vec)).to(torch.float32).numpy()
                    used.add(name)
                tables.append(table)
            self.branches.append(BranchTable(b.scale, b.start, b.stop, tuple(tables), b.headset.name))
        #: block key -> {call: site name}, only blocks with a perturbed site
        self.entries: dict[tuple[str, int], dict[str, str]] = {}
        for name in sorted(used, key=[s.name for s in sites].index):
            s = by_name[name]
            self.entries.setdefault(s.block, {})[s.call] = name
        self.token = uuid.uuid4().hex[:12]
        self._cache: dict[tuple, dict[str, SiteStrength]] = {}

    @property
    def state_key(self) -> str:
        return STATE_PREFIX + self.token

    @property
    def scheduled(self) -> bool:
        """Whether a head set holds a schedule over the noise level (format 2.0)."""
        return self.plan.scheduled

    def segment_of(self, sigma: float) -> int:
        """The plan's segment holding the step's noise level `sigma` (0 without schedules)."""
        try:
            return self.plan.segment_of(sigma)
        except ValueError as exc:
            raise ModelError(f"{exc}: a head set with a schedule over sigma in [0, 1] needs a flow-matching "
                             "model sampling (SD3, FLUX)") from None

    def acts(self, j: int, segment: int) -> bool:
        """Whether branch j has heads in `segment`."""
        return bool(self.branches[j].tables[segment])

    def strengths_for(self, chunks: Sequence[int], per: int, chunk_branch: Mapping[int, tuple[int, int]],
                      device: torch.device, dtype: torch.dtype) -> dict[str, SiteStrength]:
        """Per-site strengths `[len(chunks) * per, H]` of one forward: rows of chunk c (ComfyUI's
        `cond_or_uncond` entry) take branch j's strengths in segment k, `(j, k) = chunk_branch[c]`, other rows
        0. Built on the host
        once per layout and device, then a dict look-up (what `Installation.set_strengths` makes, with the
        perturbed samples and heads as index tensors so heavy targets run on those only)."""
        key = (tuple(chunks), per, tuple(sorted(chunk_branch.items())), str(device), str(dtype))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out = {}
        for calls in self.entries.values():
            for name in calls.values():
                rows = [self.branches[chunk_branch[c][0]].tables[chunk_branch[c][1]].get(name)
                        if c in chunk_branch else None for c in chunks]
                if all(r is None for r in rows):
                    continue
                H = self.num_heads[name]
                table = np.zeros((len(chunks) * per, H), dtype=np.float32)
                for i, r in enumerate(rows):
                    if r is not None:
                        table[i * per:(i + 1) * per] = r
                heads = np.flatnonzero(table.any(axis=0)).tolist()
                samples = np.flatnonzero(table.any(axis=1)).tolist()
                u = torch.from_numpy(table).to(device=device, dtype=dtype)
                # all rows or heads (or none: every u = 0, the mix then returns O exactly) -> no index
                pick_s = None if len(samples) in (0, table.shape[0]) else torch.tensor(samples, dtype=torch.long, device=device)
                pick_h = None if len(heads) in (0, H) else torch.tensor(heads, dtype=torch.long, device=device)
                if pick_s is None and pick_h is None:
                    out[name] = SiteStrength(u, None, None, None)
                    continue
                sub = u if pick_s is None else u.index_select(0, pick_s)
                sub = sub if pick_h is None else sub.index_select(1, pick_h)
                out[name] = SiteStrength(u, pick_s, pick_h, sub)
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = out
        return out

    def __repr__(self) -> str:
        names = ", ".join(f"{b.name} (w={b.scale:g}, window [{b.start:g}, {b.stop:g}))" for b in self.branches)
        return (f"ComfyPlan({self.arch}, {self.perturbation!r}, scope={self.scope!r}, {len(self.entries)} blocks, "
                f"branches: {names})")


class _ComfyAdapter:
    """What `compile_plan` asks of an adapter: the architecture and the sites (no processors: ComfyUI runs
    the attention itself)."""

    def __init__(self, arch: str, sites: Sequence[ComfySite]) -> None:
        self.name = f"comfyui-{arch}"
        self.architecture = arch
        self._sites = [s.site for s in sites]

    def sites(self, model: Any) -> list:
        return list(self._sites)


def with_strength(headset: HeadSet, strength: float) -> HeadSet:
    """`headset` with every selected head at strength `strength` (in (0, 1]), in every interval of its
    schedule; HeadSetError otherwise."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or math.isnan(strength) \
            or not 0.0 < strength <= 1.0:
        raise HeadSetError(f"strength {strength!r} out of range; allowed: (0, 1] (or the head set's own strengths)")
    if headset.scheduled:
        return HeadSet.from_schedule([(iv, with_strength(piece, strength) if len(piece) else None)
                                      for iv, piece in headset.pieces()])
    return HeadSet({site: {h: float(strength) for h in heads} for site, heads in headset.strengths().items()},
                   headset.metadata)


def compile_for(model: Any, headsets: HeadSet | Sequence[HeadSet], *, scale: float | None = None,
                strength: float | None = None, start: float | None = None, stop: float | None = None,
                scope: str | None = None, perturbation: str | None = None,
                params: Mapping[str, Any] | None = None, engine: str = "fast", registry: Any = None) -> ComfyPlan:
    """Compile head sets for a ComfyUI MODEL (or its diffusion model): one branch per head set.

    None takes each head set's recommendation (`metadata.guidance`: scale w, window [start, stop) as
    fractions of the steps, scope; `metadata.perturbation`). `strength` sets every selected head's u.
    `perturbation` is a registered name (`headhunter plugins`), `params` its parameters. Raises HeadSetError
    naming both models for a head set made for another model, HeadSetError / PluginError naming the bad value
    for a bad setting, before anything is patched."""
    dm = diffusion_model_of(model)
    sites = comfy_sites(dm)
    items = [headsets] if isinstance(headsets, HeadSet) else list(headsets)
    if not items:
        raise HeadSetError("no head set given; connect at least one (HeadHunter: load head set)")
    for hs in items:
        if not isinstance(hs, HeadSet):
            raise HeadSetError(f"expected a head set, got {type(hs).__name__}")
        check_fits(hs, dm, sites)
    if strength is not None:
        items = [with_strength(hs, strength) for hs in items]
    plan = compile_plan(dm, items, scale=scale, start=start, stop=stop, scope=scope, perturbation=perturbation,
                        perturbation_params=params, adapter=_ComfyAdapter(architecture(dm), sites), registry=registry)
    return ComfyPlan(plan, dm, sites, engine)


# ----- the per-pass patches ----------------------------------------------------------------------------------
def _image_tokens(h: int, w: int, p: int) -> tuple[int, int]:
    return (-(-h // p), -(-w // p))  # MMDiT and Flux both pad the latent up to the patch size


def _layout_wrapper(plan: ComfyPlan, chunk_branch: Mapping[int, tuple[int, int]]) -> Callable:
    """apply_model wrapper: per forward, the image grid and token count from the latent, and the per-site
    strengths of this batch (rows by `cond_or_uncond` chunk)."""

    def wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        rows, cols = _image_tokens(x.shape[-2], x.shape[-1], plan.patch_size)
        image_len = rows * cols
        for ref in kwargs.get("ref_latents") or []:  # FLUX Kontext: reference tokens follow the image tokens
            r, c = _image_tokens(ref.shape[-2], ref.shape[-1], plan.patch_size)
            image_len += r * c
        chunks = list(transformer_options.get("cond_or_uncond") or [0])
        batch = x.shape[0]
        if batch % len(chunks):
            raise ModelError(f"batch {batch} does not split into the {len(chunks)} chunks {chunks} ComfyUI reported")
        strengths = plan.strengths_for(chunks, batch // len(chunks), chunk_branch, x.device, x.dtype)
        state = {"image_len": image_len, "grid": (rows, cols) if image_len == rows * cols else None,
                 "strengths": strengths}
        to = dict(transformer_options)
        to[plan.state_key] = state
        return executor(x, t, c_concat, c_crossattn, control, to, **kwargs)

    return wrapper


def _block_wrapper(block: tuple[str, int], previous: Callable | None) -> Callable:
    def block_wrapper(args, extra):
        args = dict(args)
        to = dict(args.get("transformer_options") or {})
        to[BLOCK_KEY] = block
        args["transformer_options"] = to
        if previous is not None:
            return previous(args, extra)
        return extra["original_block"](args)

    return block_wrapper


def _override(plan: ComfyPlan, previous: Callable | None) -> Callable:
    def attend(func, *args, **kwargs):
        return previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)

    def override(func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        state = to.get(plan.state_key)
        calls = plan.entries.get(to.get(BLOCK_KEY)) if state is not None else None
        if not calls:
            return attend(func, *args, **kwargs)
        q, k, v = args[0], args[1], args[2]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        skip_reshape = kwargs.get("skip_reshape", False)
        B = q.shape[0]
        S = q.shape[2] if skip_reshape else q.shape[1]
        image_len = state["image_len"]
        if plan.arch == "flux":
            call = "single" if to[BLOCK_KEY][0] == "single_block" else "joint"
        else:
            call = "image" if S == image_len else "joint"
        name = calls.get(call)
        entry = state["strengths"].get(name) if name is not None else None
        if entry is None:
            return attend(func, *args, **kwargs)
        out = attend(func, *args, **kwargs)
        if skip_reshape:  # FLUX: q, k, v [B, H, S, D], RoPE applied
            qh, kh, vh = q, k, v
        else:  # MMDiT: q, k [B, S, H*D]; v [B, S, H, D] (split_qkv leaves it 4-D)
            qh, kh, vh = (t.reshape(B, S, heads, -1).transpose(1, 2) for t in (q, k, v))
        skip_out = kwargs.get("skip_output_reshape", False)
        oh = out if skip_out else out.view(B, S, heads, -1).transpose(1, 2)
        layout = TokenLayout(text_len=S - image_len, image_len=image_len, text_first=True, grid=state["grid"])
        if plan.engine == "reference":
            mixed = reference_attention(qh, kh, vh, entry.u, layout, plan.perturbation, plan.scope)
        else:
            mixed = mix(oh, qh, kh, vh, entry, layout, plan.perturbation, plan.scope)
        mixed = mixed.to(out.dtype)
        return mixed if skip_out else mixed.transpose(1, 2).reshape(B, S, -1)

    return override


def perturbed_model_options(model_options: dict, plan: ComfyPlan, chunk_branch: Mapping[int, tuple[int, int]]) -> dict:
    """A copy of `model_options` for the perturbed pass (the input is not modified): the layout wrapper,
    block wrappers on the plan's blocks (chained to existing replacements) and the attention override
    (chained to an existing one). `chunk_branch`: ComfyUI chunk index (`cond_or_uncond`) -> (branch index,
    schedule segment) of the rows to perturb; other rows run stock."""
    import comfy.patcher_extension as pe

    mo = model_options.copy()
    to = dict(mo.get("transformer_options", {}))
    wrappers = {k: dict(v) for k, v in to.get("wrappers", {}).items()}
    wrappers.setdefault(pe.WrappersMP.APPLY_MODEL, {})[WRAPPER_PREFIX + plan.token] = [_layout_wrapper(plan, dict(chunk_branch))]
    to["wrappers"] = wrappers
    replace = dict(to.get("patches_replace", {}))
    dit = dict(replace.get("dit", {}))
    for block in plan.entries:
        dit[block] = _block_wrapper(block, dit.get(block))
    replace["dit"] = dit
    to["patches_replace"] = replace
    to["optimized_attention_override"] = _override(plan, to.get("optimized_attention_override"))
    mo["transformer_options"] = to
    return mo


# ----- windows -----------------------------------------------------------------------------------------------
def step_index(sigma: float, sample_sigmas: Any) -> tuple[int, int] | None:
    """(i, N): `sigma` lies in step i of the N-step schedule `sample_sigmas` (N + 1 values, the last the end):
    the largest i with `sample_sigmas[i] >= sigma` (relative tolerance 1e-4), so a sampler's intermediate
    sigmas (Heun, DPM++ 2S) count towards their step. None without a schedule."""
    if sample_sigmas is None:
        return None
    values = [float(v) for v in sample_sigmas]
    n = len(values) - 1
    if n < 1:
        return None
    i = sum(1 for v in values[:n] if v >= sigma * (1 - 1e-4)) - 1
    return max(0, min(i, n - 1)), n


class Window:
    """A branch's window [start, stop), fractions of the steps as head sets store them.

    `steps` (default, the head set's own definition): step i of N is guided iff `start <= i / N < stop`, with
    i and N read from the schedule ComfyUI is sampling (`transformer_options["sample_sigmas"]`, set for
    every run). `sigma`: ComfyUI's percent convention (SkipLayerGuidanceDiT's start/end percent): guided iff
    `percent_to_sigma(stop) < sigma <= percent_to_sigma(start)` on the model's sampling object at that step
    (so a ModelSampling node placed after the apply node counts); it equals `steps` for the "simple"
    scheduler only (docs/comfyui.md). Without a schedule in transformer_options, `steps` falls back to `sigma`."""

    def __init__(self, start: float, stop: float, mode: str = "steps") -> None:
        if mode not in WINDOWS:
            raise HeadSetError(f"window {mode!r}; allowed: {', '.join(WINDOWS)}")
        self.start, self.stop, self.mode = start, stop, mode

    def active(self, sigma: float, at: tuple[int, int] | None, model_sampling: Any) -> bool:
        """Whether the step at noise level `sigma` (a host float), step `at = (i, N)` if known, is guided."""
        if self.mode == "steps" and at is not None:
            i, n = at
            return self.start <= i / n < self.stop
        return float(model_sampling.percent_to_sigma(self.stop)) < sigma <= float(model_sampling.percent_to_sigma(self.start))


# ----- guidance ----------------------------------------------------------------------------------------------
def apply_plan(model: Any, plan: ComfyPlan, window: str = "steps", mode: str = "sequential") -> Any:
    """A clone of the ModelPatcher `model` guided by `plan`; `model` itself is not modified. Branches with
    w = 0 never run; a clone with nothing to run has no patch at all."""
    import comfy.samplers

    if mode not in MODES:
        raise HeadSetError(f"mode {mode!r}; allowed: {', '.join(MODES)}")
    if window not in WINDOWS:
        raise HeadSetError(f"window {window!r}; allowed: {', '.join(WINDOWS)}")
    m = model.clone()
    live = [(j, b, Window(b.start, b.stop, window)) for j, b in enumerate(plan.branches)
            if b.scale != 0.0 and b.start < b.stop]
    if not live:
        return m

    def active(model_: Any, sigma: torch.Tensor, model_options: Mapping) -> list[tuple[tuple[int, int], float]]:
        """((branch, segment), w) of every branch that runs at this step."""
        s = float(sigma.flatten()[0])  # one host read per step (as nodes_slg.py), never per attention call
        schedule = model_options.get("transformer_options", {}).get("sample_sigmas")
        values = None if schedule is None else schedule.tolist() if torch.is_tensor(schedule) else list(schedule)
        at = step_index(s, values) if values is not None else None
        # a head set's schedule is read at the sigma the step starts from (diffusers: scheduler.sigmas[i])
        segment = plan.segment_of(values[at[0]] if at is not None else s) if plan.scheduled else 0
        return [((j, segment), b.scale) for j, b, win in live
                if win.active(s, at, model_.model_sampling) and plan.acts(j, segment)]

    if mode == "sequential":
        def post_cfg(args):
            cfg_result = args["denoised"]
            now = active(args["model"], args["sigma"], args["model_options"])
            if not now:
                return cfg_result
            pmo = perturbed_model_options(args["model_options"], plan, {i: j for i, (j, _) in enumerate(now)})
            perturbed = comfy.samplers.calc_cond_batch(args["model"], [args["cond"]] * len(now), args["input"],
                                                       args["sigma"], pmo)
            for (_, w), pert in zip(now, perturbed):
                cfg_result = cfg_result + (args["cond_denoised"] - pert) * w
            return cfg_result

        m.set_model_sampler_post_cfg_function(post_cfg)
        return m

    def calc_cond_batch_function(args):
        model_, conds, x, sigma, mo = args["model"], args["conds"], args["input"], args["sigma"], args["model_options"]
        now = active(model_, sigma, mo)
        if not now:
            return comfy.samplers.calc_cond_batch(model_, conds, x, sigma, mo)
        cond, uncond = conds
        pmo = perturbed_model_options(mo, plan, {2 + i: j for i, (j, _) in enumerate(now)})
        c, un, *perturbed = comfy.samplers.calc_cond_batch(model_, [cond, uncond] + [cond] * len(now), x, sigma, pmo)
        # cond' = cond + d, uncond' = uncond + d give uncond + s (cond - uncond) + d for every cfg s
        d = sum((c - pert) * w for (_, w), pert in zip(now, perturbed))
        return [c + d, un + d if uncond is not None else un]

    m.set_model_sampler_calc_cond_batch_function(calc_cond_batch_function)
    return m


def apply_headsets(model: Any, headsets: HeadSet | Sequence[HeadSet], *, window: str = "steps",
                   mode: str = "sequential", **settings: Any) -> Any:
    """`compile_for` + `apply_plan`: a guided clone of the ComfyUI MODEL `model` (what the apply node runs).
    `settings` are `compile_for`'s (scale, strength, start, stop, scope, perturbation, params)."""
    if window not in WINDOWS:
        raise HeadSetError(f"window {window!r}; allowed: {', '.join(WINDOWS)}")
    if mode not in MODES:
        raise HeadSetError(f"mode {mode!r}; allowed: {', '.join(MODES)}")
    if settings.get("strength") == 0:
        return model.clone()  # every u = 0: nothing to perturb
    return apply_plan(model, compile_for(model, headsets, **settings), window, mode)


__all__ = ["BranchTable", "ComfyPlan", "ENGINES", "MODES", "WINDOWS", "Window", "apply_headsets", "apply_plan",
           "compile_for", "perturbed_model_options", "step_index", "with_strength"]
