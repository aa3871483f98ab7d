"""Guided sampling on stock diffusers pipelines: `apply(pipe, headsets, ...)` and the guidance math.

Users load SD3 / FLUX (or the embedded digits model) with diffusers as always, then add head-level
perturbation guidance the way they add a LoRA:

    with headhunter.apply(pipe, headset, scale=3.0):
        image = pipe("a photo of a cat", guidance_scale=5.0).images[0]

How it works (the pipeline's own loop is untouched):
- The transformer's `forward` is wrapped at the instance level. Inside the step window, a call that
  carries conditional rows gets, for every active head set, a copy of those rows appended (the perturbed
  branch, conditional prompt) with that head set's per-sample strengths; cond, uncond and all perturbed
  branches then run in ONE forward (`batched=True`) or one after the other (`batched=False`). The pipeline
  gets back exactly the rows it asked for.
- The scheduler's `step` is wrapped the same way: the pipeline's own prediction (CFG or not, whatever
  combination it computes) gets `sum_k w_k (cond - perturbed_k)` added before the update. So the result is
  `uncond + s (cond - uncond) + w (cond - perturbed)` with CFG and `cond + w (cond - perturbed)` without,
  for any pipeline that combines its passes linearly and feeds the result to `scheduler.step`.
- Which rows are conditional: with `pipe.do_classifier_free_guidance` (SD3, digits) the transformer batch
  is `[uncond | cond]` and the second half is conditional; a call made under
  `transformer.cache_context("uncond")` (FLUX's true-CFG negative pass, Wan's and Qwen-Image's
  unconditional pass) and SD3's skip-layer-guidance pass (`skip_layers=`) are left stock; a call under
  `cache_context("cond")` (pipelines that run cond and uncond as separate calls: Wan, Qwen-Image, FLUX.2
  Klein) is all conditional, whatever the pipeline's CFG flag says; any other call is all conditional.
- `remove()` (or leaving the `with` block) puts back the original `forward`, `cache_context`, `step` and
  attention processors: outputs are bit-identical to the unmodified pipeline afterwards.

Conventions (the field disagrees on these; see docs/guidance.md):
- CFG scale `s` is diffusers' `guidance_scale`: `uncond + s (cond - uncond)` (paper Eq. 4 writes
  `(1 + w) cond - w uncond`, i.e. `s = 1 + w`). diffusers' SD3 runs CFG only for `s > 1`; with `s <= 1`
  there is no unconditional pass and the update is `cond + w (cond - perturbed)` (s is then ignored, as
  diffusers ignores it). FLUX's `guidance_scale` is the distilled-guidance embedding, not CFG; its true
  CFG is `true_cfg_scale > 1` with a `negative_prompt`.
- Step window: step `i` (0-based) of `N = len(scheduler.timesteps)` is guided iff
  `start <= i / N < stop`: fractions of the number of steps, start inclusive, stop exclusive. `start=0,
  stop=1` guides every step; `stop=0.5` of 10 steps guides steps 0-4. Outside the window no perturbed
  pass is computed at all.
- The perturbed branch always uses the conditional prompt (paper code, diffusers' PAG).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import HeadSetError, ModelError
from .headset import HeadSet
from .plan import Branch, Plan, compile_plan, in_window
from .schema import GuidanceSettings, PerturbationSpec

#: Transformer keyword arguments that are never per-sample, whatever their first dimension.
_NOT_BATCHED = frozenset({"txt_ids", "img_ids", "joint_attention_kwargs", "attention_kwargs", "return_dict"})


# ----- the math: small pure functions with the paper's names -----------------------------------------
def cfg_guidance(eps_uncond: Tensor, eps_cond: Tensor, s: float) -> Tensor:
    """Classifier-free guidance, diffusers convention: `uncond + s (cond - uncond)` (paper Eq. 4, s = 1 + w)."""
    return eps_uncond + s * (eps_cond - eps_uncond)


def perturbation_guidance(eps_cond: Tensor, eps_ptb: Tensor, w: float) -> Tensor:
    """Perturbation guidance, paper Eq. 5: `cond + w (cond - perturbed)` (PAG's rule with scale w)."""
    return eps_cond + w * (eps_cond - eps_ptb)


def guidance_delta(eps_cond: Tensor, eps_ptbs: Sequence[Tensor], ws: Sequence[float]) -> Tensor:
    """The perturbation term added to the pipeline's own prediction: `sum_k w_k (cond - perturbed_k)`.

    One term per head set (each its own perturbed branch and scale); paper Eq. 5 for a single head set.
    """
    if len(eps_ptbs) != len(ws) or not ws:
        raise ValueError(f"need one scale per perturbed prediction, got {len(ws)} scales for {len(eps_ptbs)}")
    delta = ws[0] * (eps_cond - eps_ptbs[0])
    for eps_ptb, w in zip(eps_ptbs[1:], ws[1:]):
        delta = delta + w * (eps_cond - eps_ptb)
    return delta


def guided_prediction(
    eps_cond: Tensor,
    eps_ptbs: Sequence[Tensor],
    ws: Sequence[float],
    eps_uncond: Tensor | None = None,
    s: float = 1.0,
) -> Tensor:
    """The guided prediction: `uncond + s (cond - uncond) + sum_k w_k (cond - perturbed_k)` with CFG
    (the HeadHunter code's combination, DESIGN.md), `cond + sum_k w_k (cond - perturbed_k)` without
    (`eps_uncond=None`; paper Eq. 5)."""
    base = eps_cond if eps_uncond is None else cfg_guidance(eps_uncond, eps_cond, s)
    return base + guidance_delta(eps_cond, eps_ptbs, ws)


# ----- the handle ------------------------------------------------------------------------------------------
class GuidanceHandle:
    """Guidance applied to one pipeline. A context manager; `remove()` restores the pipeline exactly.

    Attributes: `pipeline`, `plan` (the compiled `headhunter.plan.Plan` it executes), `branches` (head
    set and `GuidanceSettings` of every perturbed branch: `.scale`, `.start`, `.stop`), `scope`,
    `perturbation` (the plugin instance), `batched`, `installation` (the engine's), and `calls`: counts of
    transformer calls (`forwards`), guided calls (`guided_steps`) and perturbed rows computed
    (`perturbed_rows`), for checks and benchmarks.
    """

    def __init__(self, pipe: Any, plan: Plan, batched: bool, adapter: Any) -> None:
        self.pipeline = pipe
        self.plan = plan
        self.branches = list(plan.branches)
        self.perturbation = plan.perturbation
        self.scope = plan.scope
        self.batched = batched
        self.adapter = adapter
        self.transformer = pipe.transformer
        self.calls = {"forwards": 0, "guided_steps": 0, "perturbed_rows": 0}
        self._context: str | None = None
        self._inner = False
        self._pending: Tensor | None = None
        self._patches: list[tuple[Any, str, Any, Any, bool]] = []  # (object, attr, ours, previous, had own attr)
        self.installation = adapter.install(pipe, plan.perturbation, plan.scope)
        self.sites = list(self.installation.sites)
        try:
            self._patch(self.transformer, "forward", _GuidedForward(self, self.transformer.forward))
            if callable(getattr(self.transformer, "cache_context", None)):
                self._patch(self.transformer, "cache_context", self._cache_context(self.transformer.cache_context))
            self._ensure_scheduler_patched()
        except BaseException:
            self.remove()
            raise

    # --- lifecycle ---
    @property
    def active(self) -> bool:
        """True until `remove()`."""
        return self.installation is not None

    def remove(self) -> None:
        """Undo everything `apply` did; afterwards the pipeline's outputs are bit-identical to stock. Idempotent."""
        for obj, attr, ours, previous, had_own in reversed(self._patches):
            if obj.__dict__.get(attr) is not ours:
                continue  # someone wrapped on top of ours (e.g. an offload hook): ours stays in their chain, inert
            if had_own:
                object.__setattr__(obj, attr, previous)
            else:
                del obj.__dict__[attr]
        self._patches.clear()
        self._pending = None
        if self.installation is not None:
            installation, self.installation = self.installation, None
            installation.remove()

    def __enter__(self) -> GuidanceHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        parts = []
        for b in self.branches:
            name = b.headset.name if b.headset is not None else f"{len(b.per_row or ())} per-sample head sets"
            parts.append(f"{name} (w={b.scale:g}, window [{b.start:g}, {b.stop:g}))")
        state = "active" if self.active else "removed"
        return (f"GuidanceHandle({type(self.pipeline).__name__}: {'; '.join(parts)}; scope={self.scope}, "
                f"batched={self.batched}, {state})")

    # --- patching ---
    def _patch(self, obj: Any, attr: str, ours: Any) -> None:
        had_own = attr in obj.__dict__
        previous = obj.__dict__.get(attr)
        if not isinstance(ours, _GuidedForward):
            ours._headhunter_handle = self
        object.__setattr__(obj, attr, ours)
        self._patches.append((obj, attr, ours, previous, had_own))

    def _cache_context(self, original: Any) -> Any:
        """Wrap `transformer.cache_context(name)` to learn which call is FLUX's true-CFG negative pass."""

        @contextlib.contextmanager
        def cache_context(name: str, *args: Any, **kwargs: Any) -> Iterator[None]:
            previous, self._context = self._context, name
            try:
                with original(name, *args, **kwargs):
                    yield
            finally:
                self._context = previous

        return cache_context

    def _ensure_scheduler_patched(self) -> None:
        """Wrap `pipe.scheduler.step` (again, if the user swapped the scheduler after apply)."""
        scheduler = getattr(self.pipeline, "scheduler", None)
        if scheduler is None or not callable(getattr(scheduler, "step", None)):
            raise ModelError(f"{type(self.pipeline).__name__} has no scheduler with a step() method; "
                             "apply() guides pipelines whose loop calls pipe.scheduler.step")
        if getattr(scheduler.step, "_headhunter_handle", None) is self:
            return
        original = scheduler.step

        def step(model_output: Tensor, *args: Any, **kwargs: Any) -> Any:
            pending, self._pending = self._pending, None
            if pending is not None:
                if pending.shape != model_output.shape:
                    raise ModelError(
                        f"the pipeline stepped on a prediction of shape {tuple(model_output.shape)} but its "
                        f"conditional rows have shape {tuple(pending.shape)}; apply() guides pipelines that "
                        "combine their passes into a conditional-shaped prediction")
                model_output = model_output + pending.to(model_output.dtype)
            return original(model_output, *args, **kwargs)

        self._patch(scheduler, "step", step)

    # --- one transformer call ---
    def _step_position(self) -> tuple[int, int]:
        """(index of the current step, number of steps), read from the scheduler on the host."""
        scheduler = self.pipeline.scheduler
        timesteps = getattr(scheduler, "timesteps", None)
        total = 0 if timesteps is None else len(timesteps)
        if total == 0:
            raise ModelError(f"{type(scheduler).__name__} has no timesteps set: the transformer was called outside "
                             "a pipeline call while guidance is applied")
        index = getattr(scheduler, "step_index", None)
        if index is None:  # before the first scheduler.step of this run
            index = getattr(scheduler, "begin_index", None) or 0
        return index, total

    def _cond_rows(self, n: int, kwargs: Mapping[str, Any]) -> slice | None:
        """Which rows of this transformer call are conditional (None: leave the call stock)."""
        if self._context == "uncond" or kwargs.get("skip_layers") is not None:
            return None  # FLUX's true-CFG negative pass; SD3's skip-layer-guidance pass
        if self._context == "cond":
            return slice(0, n)  # a separate conditional pass (Wan, Qwen-Image, FLUX.2 Klein): every row is cond
        if getattr(self.pipeline, "do_classifier_free_guidance", False):
            if n % 2:
                raise ModelError(f"CFG batch of {n} rows is not [uncond | cond]; cannot find the conditional rows")
            return slice(n // 2, n)
        return slice(0, n)

    def _forward(self, original: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        self.calls["forwards"] += 1
        kwargs = _bind(original, args, kwargs)
        hidden = kwargs.get("hidden_states")
        cond = None if not isinstance(hidden, Tensor) else self._cond_rows(hidden.shape[0], kwargs)
        if cond is None:
            return original(**kwargs)
        self._ensure_scheduler_patched()
        self._pending = None
        step, total = self._step_position()
        active = self.plan.active(step, total)
        if not active:
            return original(**kwargs)
        return_dict = kwargs.pop("return_dict", True)
        n, rows = hidden.shape[0], cond.stop - cond.start
        run = self._batched if self.batched else self._sequential
        sample, ptbs = run(original, kwargs, n, cond, active, hidden)
        eps_cond = sample[cond]
        ws = [self.plan.row_scale(j, rows, eps_cond) for j in active]
        self._pending = guidance_delta(eps_cond, ptbs, ws)
        self.calls["guided_steps"] += 1
        self.calls["perturbed_rows"] += rows * len(active)
        return _wrap_output(sample, return_dict)

    def _run(self, kwargs: dict[str, Any], strengths: dict[str, Tensor]) -> Tensor:
        """One perturbed forward. It goes through the module call (so the engine's pre-forward hook records
        the token layout); our own wrapper passes it straight to the original forward."""
        self.installation.set_strengths(strengths)
        self._inner = True
        try:
            return self.transformer(**kwargs, return_dict=False)[0]
        finally:
            self._inner = False
            self.installation.set_strengths(None)

    def _batched(self, original: Any, kwargs: dict[str, Any], n: int, cond: slice, active: tuple[int, ...],
                 hidden: Tensor) -> tuple[Tensor, list[Tensor]]:
        """[original rows | copies of the cond rows, one block per active branch] in one forward."""
        rows = cond.stop - cond.start
        big = {k: _extend_rows(k, v, n, cond, len(active)) for k, v in kwargs.items()}
        out = self._run(big, self.plan.strengths((-1,) * (n // rows) + active, rows, hidden.device, hidden.dtype))
        return out[:n], [out[n + k * rows: n + (k + 1) * rows] for k in range(len(active))]

    def _sequential(self, original: Any, kwargs: dict[str, Any], n: int, cond: slice, active: tuple[int, ...],
                    hidden: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The stock call, then one forward of the cond rows per active branch (less memory)."""
        rows = cond.stop - cond.start
        sample = original(**kwargs, return_dict=False)[0]
        only_cond = {k: _take_rows(k, v, n, cond) for k, v in kwargs.items()}
        return sample, [self._run(only_cond, self.plan.strengths((j,), rows, hidden.device, hidden.dtype)) for j in active]


class _GuidedForward:
    """The instance-level `forward` of a guided transformer; a plain pass-through once removed."""

    def __init__(self, handle: GuidanceHandle, original: Any) -> None:
        self.handle = handle
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.handle.active or self.handle._inner:
            return self.original(*args, **kwargs)
        return self.handle._forward(self.original, args, kwargs)


# ----- row bookkeeping --------------------------------------------------------------------------------------
def _bind(function: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A transformer call's positional arguments turned into keywords (pipelines pass keywords anyway)."""
    if not args:
        return dict(kwargs)
    import inspect

    return dict(inspect.signature(function).bind_partial(*args, **kwargs).arguments)


def _is_batched(name: str, value: Any, n: int) -> bool:
    return name not in _NOT_BATCHED and isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == n


def _per_block(name: str, value: Any, n: int) -> bool:
    """A list of per-sample tensors, e.g. ControlNet residuals (one tensor per block)."""
    return (isinstance(value, (list, tuple)) and name not in _NOT_BATCHED and len(value) > 0
            and all(_is_batched(name, v, n) for v in value))


def _take_rows(name: str, value: Any, n: int, rows: slice) -> Any:
    if _is_batched(name, value, n):
        return value[rows]
    if _per_block(name, value, n):
        return type(value)(v[rows] for v in value)
    return value


def _extend_rows(name: str, value: Any, n: int, rows: slice, copies: int) -> Any:
    """`value` with `copies` copies of its conditional rows appended (the perturbed branches' inputs)."""
    if _is_batched(name, value, n):
        return torch.cat([value] + [value[rows]] * copies)
    if _per_block(name, value, n):
        return type(value)(torch.cat([v] + [v[rows]] * copies) for v in value)
    return value


def _wrap_output(sample: Tensor, return_dict: bool) -> Any:
    if not return_dict:
        return (sample,)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)


# ----- public entry point -------------------------------------------------------------------------------------
def apply(
    pipe: Any,
    headsets: HeadSet | Sequence[HeadSet | None],
    scale: float | Sequence[float] | None = None,
    start: float | Sequence[float] | None = None,
    stop: float | Sequence[float] | None = None,
    scope: str | None = None,
    perturbation: str | PerturbationSpec | Any | None = None,
    perturbation_params: Mapping[str, Any] | None = None,
    batched: bool = True,
    per_sample: bool = False,
    *,
    settings: GuidanceSettings | Sequence[GuidanceSettings] | None = None,
) -> GuidanceHandle:
    """Guide every later `pipe(...)` call with head-level perturbation guidance; returns the handle.

    - `headsets`: one HeadSet or a list; each list entry is its own perturbed branch with its own scale
      (merge them with `a | b` first for a single branch). Checked against the pipeline's model before
      anything runs (HeadSetError on the wrong architecture, sites or head counts).
    - `settings`: a `GuidanceSettings` (or one per head set) used instead of the head sets' recommended
      `metadata.guidance`; `scale` (w), `start`, `stop`: one value for all head sets or one per head set,
      overriding single fields. Left out, each head set's recommendation is used. Window: step i of N is
      guided iff start <= i/N < stop. Values are validated by `GuidanceSettings` (finite, in range).
    - `scope` (`joint` | `image` | `pag_mask`) and `perturbation` (a registered name, with
      `perturbation_params`, a `PerturbationSpec`, or a Perturbation instance): None takes the head sets'
      metadata, which must then agree.
    - `batched`: cond, uncond and every perturbed branch in one transformer forward (default); False runs
      the perturbed branches as separate forwards (less memory, same images to ~1e-6).
    - `per_sample`: `headsets` has one entry per conditional row of the later call (prompts x
      num_images_per_prompt), all in one perturbed branch; a None entry leaves its row unguided. This is
      how a search scores many candidate head sets in one forward.

    Everything is compiled once into an execution plan (`handle.plan`, `headhunter.plan.compile_plan`).
    CFG is the pipeline's own (`guidance_scale=s` for SD3 and digits, `true_cfg_scale` for FLUX), so the
    result is `uncond + s (cond - uncond) + w (cond - perturbed)`, or `cond + w (cond - perturbed)`
    without CFG. Not thread-safe: one pipeline call at a time.
    """
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise ModelError(f"{type(pipe).__name__} has no `transformer`; apply() guides diffusers DiT pipelines "
                         "(StableDiffusion3Pipeline, FluxPipeline, the digits model)")
    if isinstance(transformer.__dict__.get("forward"), _GuidedForward):
        raise ModelError("this pipeline is already guided by headhunter; call .remove() on the existing handle "
                         "first, or pass all head sets to one apply() call as a list")
    if not isinstance(batched, bool):
        raise HeadSetError(f"batched={batched!r} must be True or False")
    from .registry import get_registry

    adapter = get_registry().adapter_for(pipe)
    plan = compile_plan(pipe, headsets, settings=settings, scale=scale, start=start, stop=stop, scope=scope,
                        perturbation=perturbation, perturbation_params=perturbation_params,
                        per_sample=per_sample, adapter=adapter)
    return GuidanceHandle(pipe, plan, batched, adapter)


__all__ = [
    "Branch",
    "GuidanceHandle",
    "apply",
    "cfg_guidance",
    "guidance_delta",
    "guided_prediction",
    "in_window",
    "perturbation_guidance",
]
