"""Guided sampling on stock diffusers pipelines: `apply(pipe, headsets, ...)` and the guidance math.

Users load SD3 / FLUX (or the embedded digits model) with diffusers as always, then add head-level
perturbation guidance the way they add a LoRA:

    with headhunter.apply(pipe, headset, scale=3.0):
        image = pipe("a photo of a cat", guidance_scale=5.0).images[0]

How it works (the pipeline's own loop is untouched; no transformer attribute is replaced):
- Torch hooks on the transformer (headhunter.engine.hooks, docs/architecture.md): before each call, inside the
  step window, a call that carries conditional rows gets, for every active head set, a copy of those rows
  appended (the perturbed branch, conditional prompt) with that head set's per-sample strengths; cond,
  uncond and all perturbed branches then run in ONE forward (`batched=True`) or the perturbed branches one
  after the other (`batched=False`). After the call, the pipeline gets back exactly the rows it asked for.
- The term `delta = sum_k w_k (cond - perturbed_k)` is added to the prediction the calling pipeline
  steps on, after its own combination (CFG or not, linear or not): a one-shot wrapper on the calling
  pipeline's scheduler for that one step, gone once the step is taken. So the result is
  `uncond + s (cond - uncond) + w (cond - perturbed)` with CFG and `cond + w (cond - perturbed)` without.
- Which rows are conditional is decided per call from the calling pipeline's own state (found on the call
  stack, so a `from_pipe` sibling sharing the transformer is read, not a stale object): with its
  `do_classifier_free_guidance` (SD3, digits) the batch is `[uncond | cond]`; a call made under
  `transformer.cache_context("uncond")` (FLUX's true-CFG negative pass, seen by a diffusers stateful hook
  that only observes; Wan's and Qwen-Image's unconditional pass) and SD3's skip-layer-guidance pass
  (`skip_layers=`) are not perturbed; a call under `cache_context("cond")` (pipelines that run cond and
  uncond as separate calls: Wan, Qwen-Image, FLUX.2 Klein) is all conditional, whatever the pipeline's CFG
  flag says; without a cache context, a second call before the scheduler steps (the negative pass of
  FLUX img2img / inpaint / ControlNet) is left stock; any other call is all conditional. A call from
  outside any pipeline call is refused.
- `remove()` (or leaving the `with` block) takes the hooks off and puts back the original attention
  processors (and an unconsumed one-shot step): outputs are bit-identical to the unmodified pipeline.

Conventions (the field disagrees on these; see docs/guidance.md):
- CFG scale `s` is diffusers' `guidance_scale`: `uncond + s (cond - uncond)` (paper Eq. 4 writes
  `(1 + w) cond - w uncond`, i.e. `s = 1 + w`). diffusers' SD3 runs CFG only for `s > 1`; with `s <= 1`
  there is no unconditional pass and the update is `cond + w (cond - perturbed)` (s is then ignored, as
  diffusers ignores it). FLUX's `guidance_scale` is the distilled-guidance embedding, not CFG; its true
  CFG is `true_cfg_scale > 1` with a `negative_prompt`.
- Step window: step `i` (0-based) of `N = len(scheduler.timesteps)` is guided iff
  `start <= i / N < stop`: fractions of the number of steps, start inclusive, stop exclusive. `start=0,
  stop=1` guides every step; `stop=0.5` of 10 steps guides steps 0-4. Outside the window no perturbed
  pass is computed at all. img2img/inpaint (`strength < 1`) run only the last steps of the full
  schedule, and the window counts the full schedule (a window that guides none of the steps run warns
  once per apply()).
- The perturbed branch always uses the conditional prompt (paper code, diffusers' PAG).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from headhunter.errors import HeadSetError, ModelError
from headhunter.format.headset import HeadSet
from headhunter.engine.hooks import CONTEXT_HOOK, TransformerHooks, bind_arguments, calling_pipeline, first_call_of_run, guided_by, \
    schedule_position, unwrap
from headhunter.plan.plan import Branch, Plan, compile_plan, in_window
from headhunter.plan.strengths import StrengthMap
from headhunter.format.schema import GuidanceSettings, PerturbationSpec
from headhunter.engine.attention import install
from headhunter.plugin_system.registry import get_registry
from headhunter.engine import fanout as fanout_module
from headhunter.engine.fanout import FanOut

#: Transformer keyword arguments that are never per-sample, whatever their first dimension.
#: Transformer inputs that are never per-sample, whatever their first dimension: position ids, options, and
#: per-layer values (Wan VACE's `control_hidden_states_scale` has one entry per VACE block, so with as many
#: blocks as samples it used to be taken for a per-sample tensor and repeated). The guider shares this list.
NOT_PER_SAMPLE = frozenset({"txt_ids", "img_ids", "joint_attention_kwargs", "attention_kwargs", "return_dict",
                            "img_shapes", "rotary_emb", "control_hidden_states_scale"})
_NOT_BATCHED = NOT_PER_SAMPLE


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
@dataclass
class _Call:
    """What the pre-hook decided for the transformer call in flight (read back by the post-hook)."""

    kind: str  # "guided" | "companion" | "plain"
    step: int
    n: int = 0
    cond: slice | None = None
    active: tuple[int, ...] = ()
    kwargs: dict[str, Any] | None = None
    pipe: Any = None
    segment: int = 0  # the segment of the plan's schedule this step's sigma falls in


class GuidanceHandle:
    """Guidance applied to one pipeline's transformer. A context manager; `remove()` restores it exactly.

    Attributes: `pipeline`, `plan` (the compiled `headhunter.plan.plan.Plan` it executes), `branches` (head
    set and `GuidanceSettings` of every perturbed branch: `.scale`, `.start`, `.stop`), `scope`,
    `perturbation` (the plugin instance), `batched`, `installation` (the engine's), `fanout` (the block
    hooks that compute rows equal up to a block once, `headhunter.engine.fanout`; None when the adapter declares
    no blocks), `fallback` (why the last guided call computed every row in full; None when it shared),
    `shared_row_blocks` (row-blocks not computed because they were shared), and `calls`: counts of
    transformer calls (`forwards`), guided calls (`guided_steps`) and perturbed rows (`perturbed_rows`), for
    checks and benchmarks.

    Installed as torch hooks on the transformer (headhunter.engine.hooks): every pipeline holding that transformer
    (`from_pipe` siblings too) is guided, each from its own per-call state.
    """

    def __init__(self, pipe: Any, plan: Plan, batched: bool, adapter: Any) -> None:
        self.pipeline = pipe
        self.plan = plan
        self.branches = list(plan.branches)
        self.perturbation = plan.perturbation
        self.scope = plan.scope
        self.batched = batched
        self.adapter = adapter
        #: edit pipelines of this family step on the prediction's first tokens (ModelAdapter.trailing_references)
        self.adapter_slices_references = bool(getattr(adapter, "trailing_references", False))
        self.transformer = unwrap(pipe.transformer)
        self.calls = {"forwards": 0, "guided_steps": 0, "perturbed_rows": 0}
        self.shared_row_blocks = 0
        self.fanout: Any = None
        self.fallback: str | None = None
        self._recorder: Any = None
        self._no_fanout: str | None = None
        self._inner = False
        self._call: _Call | None = None
        self._armed: _StepOnce | None = None  # the guidance term waiting for this step's scheduler.step
        #: (scheduler, its timesteps, step_index) at the last conditional call: held references, compared with
        #: `is` (set_timesteps makes new timesteps at every pipeline call), never addresses
        self._step_marker: tuple[Any, Any, int | None] | None = None
        self._last_rows: int | None = None
        #: (scheduler.sigmas, its values on the host): read once per schedule (held reference, compared with `is`)
        self._sigmas: tuple[Any, list[float]] | None = None
        self._stable = False
        self._warned_window = False
        self._hooks: TransformerHooks | None = None
        #: hooks on the pipeline's other experts (Wan 2.2 A14B's transformer_2), each guided the same way
        self._expert_hooks: list[TransformerHooks] = []
        self.installation = install(adapter, pipe, plan.perturbation, plan.scope)
        self.sites = list(self.installation.sites)
        try:
            self._hooks = TransformerHooks(self.transformer, self._before, self._after, owner=self,
                                           on_reset=self._end_of_call)
            for expert in adapter.experts(pipe).values():
                if unwrap(expert) is not self.transformer:
                    self._expert_hooks.append(TransformerHooks(unwrap(expert), self._before, self._after, owner=self,
                                                               on_reset=self._end_of_call))
            #: compiled transformers get every site's strengths, zeros where nothing is perturbed, for every
            #: perturbed row: the graph then depends on the batch size only, not on the head sets (see _dense)
            self._compiled = _is_compiled(pipe.transformer, self.transformer)
            self._no_fanout = ("the adapter declares no blocks" if not plan.blocks else
                               None if fanout_module.enabled else "headhunter.engine.fanout.enabled is False")
            #: ... and, with a schedule and its rows in full, its strengths in the same tensors at every step
            self._stable = plan.scheduled and self._compiled
            self._dense_cache: dict[tuple, Any] = {}
            if self._no_fanout is None:
                self.fanout = FanOut(self.transformer, plan.blocks, adapter.row_inputs, adapter.block_outputs,
                                     compiled=self._compiled)
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
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        while self._expert_hooks:
            self._expert_hooks.pop().remove()
        self._disarm()
        self._call = None
        self._step_marker = None
        if self.fanout is not None:
            fanout, self.fanout = self.fanout, None
            fanout.remove()
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

    # --- one transformer call: decided before it runs (pre-hook), combined after (forward hook) ---
    def _before(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        if self._inner or not self.active:
            return None
        self.installation.set_strengths(None)  # a previous call that raised may have left them set
        self._call = None
        self.calls["forwards"] += 1
        pipe = calling_pipeline(module)
        if pipe is None:
            raise ModelError(
                f"the transformer guided by headhunter.apply({type(self.pipeline).__name__}) was called outside a "
                "pipeline call; apply() guides pipeline calls (pipe(...) and from_pipe siblings). Call "
                "handle.remove() first, or perturb your own loop with headhunter.engine.attention.install(adapter, model, ...) (docs/engine.md)")
        kwargs = bind_arguments(module, args, kwargs)
        hidden = kwargs.get("hidden_states")
        if not isinstance(hidden, Tensor):
            raise ModelError(f"{type(module).__name__} was called without a hidden_states tensor; cannot guide it")
        step, total, begin = schedule_position(pipe)
        hooks = next((h for h in [self._hooks, *self._expert_hooks] if h is not None and h.transformer is module), None)
        context = hooks.context if hooks is not None else None
        name = None if context is None else context.name
        marker = (pipe.scheduler, pipe.scheduler.timesteps, getattr(pipe.scheduler, "step_index", None))
        if name == "uncond" or kwargs.get("skip_layers") is not None or (name is None and self._same_step(marker)):
            # a later pass of the same step: FLUX's (Wan's, Qwen-Image's) negative pass under
            # cache_context("uncond"), the negative pass of FLUX img2img / inpaint / ControlNet (which open no
            # cache context: the second call before the scheduler steps), SD3's skip-layer pass: left stock
            self._check_companion(module, hidden.shape[0])
            self._call = _Call("companion", step)
            return None
        n = hidden.shape[0]
        cond = self._cond_rows(pipe, n, None if context is None else context.name)
        self._disarm()  # a term armed for an earlier step the pipeline never stepped on is dropped
        if first_call_of_run(pipe):
            self._warn_if_window_guides_nothing(begin, total)
        segment = self._segment(pipe, step) if self.plan.scheduled else 0
        active = self.plan.active(step, total, segment, every_segment=self._stable)
        if active and not self.batched and _stateful_cache_hooks(module):
            raise ModelError(
                f"apply(..., batched=False) runs extra forwards of the conditional rows through "
                f"{', '.join(sorted(_stateful_cache_hooks(module)))}, whose cached tensors belong to the full batch; "
                "use batched=True (the default) with diffusers caches")
        rows = cond.stop - cond.start
        batch = n + (rows * len(active) if self.batched else 0)
        self._fresh_caches(module, batch, context)
        self._step_marker = marker  # after the cache reset, which clears it
        if not active:
            self._call = _Call("plain", step)
            return None
        self._call = _Call("guided", step, n, cond, active, kwargs, pipe, segment)
        sharing = self._sharing()
        if not self.batched:
            if sharing:  # the stock call records the cond rows' inputs where a branch starts
                blocks = len(self.plan.blocks)
                starts = {self.plan.branch_start(j, rows, segment) for j in active} & set(range(1, blocks))
                if starts:
                    self._recorder = self.fanout.recorder(starts, cond)
                    self.fanout.run = self._recorder
            return None
        groups = (-1,) * (n // rows) + active
        strengths = self._strengths(groups, rows, hidden, segment, sharing)
        big = {k: _extend_rows(k, v, n, cond, len(active)) for k, v in kwargs.items()}
        run = self._batched_run(groups, rows, cond, n, strengths, hidden, segment) if sharing else None
        if run is not None:
            total = len(groups) * rows
            strengths = run.strengths
            big = {k: run.rows(v) if _per_block(k, v, total) else v for k, v in big.items()}
            self.shared_row_blocks += run.layout.size * run.layout.num_blocks - run.layout.computed_rows()
            self.fanout.run = run
        self.installation.set_strengths(strengths)
        return big

    # --- rows computed once (headhunter.engine.fanout) ---
    def _sharing(self) -> bool:
        """Whether this call may compute rows equal up to a block once (decided per call, on the host);
        sets `fallback` to the reason when not."""
        self.fallback = (self._no_fanout or "removed") if self.fanout is None else self.fanout.usable()
        return self.fallback is None

    def _strengths(self, groups: tuple[int, ...], rows: int, like: Tensor, segment: int, sharing: bool) -> Any:
        """This step's strengths for a batch layout: the segment's own map; for a compiled transformer the
        dense map (`_dense`), or, with a schedule and every row computed in full, the layout's map of every
        segment with this one selected (copied in place at `set_strengths`). When rows are shared, the
        schedule needs no tensors of its own: the fan-out's per-layout strengths are made per segment, and
        the graph depends on the rows present only."""
        if self._stable and not sharing:
            strengths = self.plan.stable_strengths(groups, rows, like.device, like.dtype)
            strengths.select(segment)
            return strengths
        if self._compiled:
            return self._dense(groups, rows, like, segment)
        return self.plan.strengths(groups, rows, like.device, like.dtype, segment)

    def _dense(self, groups: tuple[int, ...], rows: int, like: Tensor, segment: int) -> Any:
        """The layout's strengths on every installed site, every head, for every row of a perturbed group
        (zeros where the head sets perturb nothing; built on the host once per layout).

        Why: under torch.compile the processors' reads of which sites are active and which rows and heads
        they perturb are guarded, so the plan's own map (only the sites, rows and heads a head set touches)
        compiles a new graph for every combination of perturbed sites (measured: one per head set, until
        dynamo's cache limit sends the transformer back to eager). With every site present and the shapes
        set by the batch layout alone, one graph serves every head set of that layout. Exact: a strength of
        0 mixes nothing in (`out + 0 * (target - out)` = out), the stock output of that head; what it costs
        is the target on every site for the perturbed rows."""
        key = (groups, rows, str(like.device), like.dtype, segment)
        if key not in self._dense_cache:
            sparse = self.plan.strengths(groups, rows, like.device, like.dtype, segment)
            total = len(groups) * rows
            perturbed = [g * rows + r for g, j in enumerate(groups) if j >= 0 for r in range(rows)]
            data, heads, samples = {}, {}, {}
            for site in self.plan.sites:
                u = sparse.get(site.name)
                data[site.name] = u if u is not None else torch.zeros(total, site.num_heads, device=like.device,
                                                                      dtype=like.dtype)
                heads[site.name] = list(range(site.num_heads))
                samples[site.name] = perturbed
            self._dense_cache[key] = StrengthMap(data, heads, samples)
        return self._dense_cache[key]

    def _segment(self, pipe: Any, step: int) -> int:
        """The segment of the plan's schedule holding this step's noise level sigma = `scheduler.sigmas[step]`
        (the value the scheduler steps from). The sigmas are copied to the host once per schedule (the
        pipeline's `set_timesteps` makes a new tensor per call; held, compared with `is`), so a step reads a
        host list: no device sync per step."""
        scheduler = pipe.scheduler
        sigmas = getattr(scheduler, "sigmas", None)
        if not isinstance(sigmas, Tensor) or sigmas.ndim != 1:
            raise ModelError(f"{type(scheduler).__name__} of {type(pipe).__name__} has no 1-d `sigmas` tensor; head sets "
                             "with a schedule need a flow-matching scheduler that steps through sigma in [0, 1] "
                             "(FlowMatchEulerDiscreteScheduler and its kin); use a head set without a schedule")
        if self._sigmas is None or self._sigmas[0] is not sigmas:
            self._sigmas = (sigmas, [float(x) for x in sigmas.detach().float().cpu().tolist()])
        values = self._sigmas[1]
        if not 0 <= step < len(values):
            raise ModelError(f"step {step} is outside the {len(values)} sigmas of {type(scheduler).__name__}")
        sigma = values[step]
        try:
            return self.plan.segment_of(sigma)
        except ValueError:
            raise ModelError(f"{type(scheduler).__name__} is at noise level sigma={sigma!r} (step {step}), outside "
                             "[0, 1] where head-set schedules are defined; use a flow-matching scheduler or a head "
                             "set without a schedule") from None

    def _batched_run(self, groups: tuple[int, ...], rows: int, cond: slice, n: int, strengths: Any,
                     hidden: Tensor, segment: int = 0) -> Any:
        """The fan-out of this batch layout in this segment (built on the host once per layout and segment), or
        None if nothing is shared."""
        plan = self.plan

        def layout() -> tuple[list[int], list[int], Any, dict[str, int]]:
            firsts, sources = [-1] * n, list(range(n))
            for j in groups[n // rows:]:
                firsts += [plan.first_block(hs) for hs in plan.branch_rows(j, rows, segment)]
                sources += list(range(cond.start, cond.stop))
            return firsts, sources, strengths, plan.site_block

        key = (groups, rows, cond.start, n, str(hidden.device), hidden.dtype, segment)
        return self.fanout.batched(key, layout)

    def _stop_fanout(self) -> Any:
        recorder, self._recorder = self._recorder, None
        if self.fanout is not None:
            self.fanout.stop()
        return recorder

    def _after(self, module: Any, kwargs: dict[str, Any], output: Any) -> Any:
        if self._inner or self._call is None:
            return None
        call, self._call = self._call, None
        self.installation.set_strengths(None)
        recorder = self._stop_fanout()
        if output is None:  # the forward raised; the error propagates
            self._end_of_call()
            return None
        if call.kind != "guided":
            return None
        sample = _sample_of(output)
        n, cond, active = call.n, call.cond, call.active
        rows = cond.stop - cond.start
        if self.batched:
            ptbs = [sample[n + k * rows: n + (k + 1) * rows] for k in range(len(active))]
            sample = sample[:n]
        else:
            ptbs = self._sequential(module, call, sample, recorder)
        eps_cond = sample[cond]
        ws = [self.plan.row_scale(j, rows, eps_cond) for j in active]
        self._arm(call.pipe, guidance_delta(eps_cond, ptbs, ws))
        self.calls["guided_steps"] += 1
        self.calls["perturbed_rows"] += rows * len(active)
        return _with_sample(output, sample) if self.batched else None

    def _same_step(self, marker: tuple[Any, Any, int | None]) -> bool:
        """Whether a conditional call of this step already ran: same scheduler, same schedule (this
        pipeline call), same host step index; `scheduler.step` moves the index, so the first call after each
        step is the conditional one."""
        seen = self._step_marker
        return seen is not None and seen[0] is marker[0] and seen[1] is marker[1] and seen[2] == marker[2]

    def _end_of_call(self) -> None:
        """A pipeline call ended (diffusers resets stateful hooks in maybe_free_model_hooks) or a forward
        raised: the next call starts a new step."""
        self._step_marker = None

    # --- the guidance term, added to the prediction the calling pipeline steps on ---
    def _arm(self, pipe: Any, delta: Tensor) -> None:
        """Add `delta` to the next `scheduler.step` of the calling pipeline, once.

        Schedulers are plain Python objects with no hook mechanism, and the term must come after the
        pipeline's own combination (which may be non-linear: Qwen-Image rescales its CFG prediction), so a
        one-shot wrapper goes on the calling pipeline's scheduler for this step only: it takes itself off
        at that step (or at the next conditional call, or at remove()). Nothing stays installed between
        steps, and a from_pipe sibling or a swapped scheduler is simply the scheduler of the call.
        """
        scheduler = getattr(pipe, "scheduler", None)
        if scheduler is None or not callable(getattr(scheduler, "step", None)):
            raise ModelError(f"{type(pipe).__name__} has no scheduler with a step() method; apply() guides "
                             "pipelines whose loop calls scheduler.step")
        self._disarm()
        self._armed = _StepOnce(self, scheduler, delta)

    def _disarm(self) -> None:
        armed, self._armed = self._armed, None
        if armed is not None:
            armed.detach()

    def _sequential(self, module: Any, call: _Call, sample: Tensor, recorder: Any = None) -> list[Tensor]:
        """One forward of the cond rows per active branch, after the stock call (less memory). With declared
        blocks, a branch's forward passes the blocks before its rows' earliest first perturbed block through
        and resumes from the cond rows' inputs the stock call recorded there; a branch that perturbs nothing
        is its cond rows."""
        assert call.kwargs is not None and call.cond is not None
        rows = call.cond.stop - call.cond.start
        only_cond = {k: _take_rows(k, v, call.n, call.cond) for k, v in call.kwargs.items()}
        only_cond["return_dict"] = False
        blocks = len(self.plan.blocks)
        outs = []
        self._inner = True
        try:
            for j in call.active:
                start = self.plan.branch_start(j, rows, call.segment)
                if self.fallback is None and start >= blocks:
                    outs.append(sample[call.cond])
                    self.shared_row_blocks += rows * blocks
                    continue
                self.installation.set_strengths(self._strengths((j,), rows, sample, call.segment,
                                                                self.fallback is None))
                if recorder is not None and start in recorder.recorded:
                    self.fanout.run = self.fanout.resumer(start, recorder.recorded[start])
                    self.shared_row_blocks += rows * start
                try:
                    outs.append(module(**only_cond)[0])
                finally:
                    if self.fanout is not None:
                        self.fanout.stop()
        finally:
            self._inner = False
            self.installation.set_strengths(None)
        return outs

    def _cond_rows(self, pipe: Any, n: int, context: str | None) -> slice:
        """Which rows of this call are conditional, from the call itself: every row under
        `cache_context("cond")` (a separate conditional pass: Wan, Qwen-Image, FLUX.2 Klein); else the
        calling pipeline's own per-call CFG flag: `[uncond | cond]` when it runs CFG in one batch (SD3,
        digits); else every row."""
        if context == "cond":
            return slice(0, n)
        if getattr(pipe, "do_classifier_free_guidance", False):
            if n % 2:
                raise ModelError(f"CFG batch of {n} rows is not [uncond | cond]; cannot find the conditional rows")
            return slice(n // 2, n)
        return slice(0, n)

    def _check_companion(self, module: Any, n: int) -> None:
        """Refuse (before the forward) a negative pass that would share a per-module cache with the guided
        conditional pass of a different batch size (diffusers caches not keyed by cache context)."""
        if self._armed is None or not self.batched or self._last_rows == n:
            return
        unkeyed = _stateful_cache_hooks(module, context_blind=True)
        if unkeyed:
            raise ModelError(
                f"{', '.join(sorted(unkeyed))} keeps one cache per module for every pass of a step, but the guided "
                f"conditional pass has {self._last_rows} rows and this negative pass {n}; with headhunter guidance "
                "use a cache keyed by cache context (FirstBlockCache) or turn true CFG off (true_cfg_scale=1)")

    def _fresh_caches(self, module: Any, batch: int, context: Any) -> None:
        """When the conditional call's batch changes (a step window starting or ending), reset diffusers'
        stateful hooks (caches), which would otherwise mix tensors of the old and new batch."""
        changed = self._last_rows is not None and batch != self._last_rows
        self._last_rows = batch
        if not changed or getattr(module, "_diffusers_hook", None) is None:
            return
        from diffusers.hooks.hooks import _set_cache_context

        module._diffusers_hook.reset_stateful_hooks(recurse=True)
        if context is not None:
            _set_cache_context(module, context)  # the reset cleared it; the pipeline's `with` block is still open

    def _warn_if_window_guides_nothing(self, begin: int, total: int) -> None:
        if self._warned_window:
            return
        guided = any(b.guides and in_window(i, total, b.start, b.stop) for b in self.branches for i in range(begin, total))
        if guided or not any(b.guides for b in self.branches):
            return
        self._warned_window = True
        windows = ", ".join(f"[{b.start:g}, {b.stop:g})" for b in self.branches)
        skipped = (f"; this call starts at step {begin} (img2img/inpaint with strength < 1 skip the first steps, "
                   "and windows count the full schedule)") if begin else ""
        warnings.warn(
            f"the step window {windows} guides none of the steps this call runs (steps {begin}..{total - 1} of a "
            f"{total}-step schedule{skipped}; docs/guidance.md). Shown once per apply().", UserWarning, stacklevel=2)


class _StepOnce:
    """A one-shot `scheduler.step` for one step: adds the guidance term to the prediction, then takes itself
    off (restoring exactly what was there: the class method, or a user's own instance attribute)."""

    def __init__(self, handle: GuidanceHandle, scheduler: Any, delta: Tensor) -> None:
        self.handle = handle
        self.scheduler = scheduler
        self.delta = delta
        self.had_own = "step" in scheduler.__dict__
        self.previous = scheduler.__dict__.get("step")
        self.original = scheduler.step
        object.__setattr__(scheduler, "step", self)

    def detach(self) -> None:
        if self.scheduler.__dict__.get("step") is not self:
            return  # someone replaced it since; nothing of ours is left in place
        if self.had_own:
            object.__setattr__(self.scheduler, "step", self.previous)
        else:
            del self.scheduler.__dict__["step"]

    def __call__(self, model_output: Tensor, *args: Any, **kwargs: Any) -> Any:
        self.detach()
        if self.handle._armed is self:
            self.handle._armed = None
        delta = self.delta
        if delta.shape != model_output.shape and self.handle.adapter_slices_references:
            delta = _target_tokens(delta, model_output)
        if delta.shape != model_output.shape:
            raise ModelError(
                f"the pipeline stepped on a prediction of shape {tuple(model_output.shape)} but its conditional "
                f"rows have shape {tuple(self.delta.shape)}; apply() guides pipelines that combine their passes "
                "into a conditional-shaped prediction (edit pipelines that append reference tokens and step on "
                "the first latents.size(1) of them are guided for FLUX, FLUX.2 and Qwen-Image; docs/guidance.md)")
        return self.original(model_output + delta.to(model_output.dtype), *args, **kwargs)


def _target_tokens(delta: Tensor, model_output: Tensor) -> Tensor:
    """The guidance term on the tokens an edit pipeline steps on: `delta[:, :L]` when the pipeline sliced its
    prediction `[B, L_target + L_ref, C]` back to the target's `L` tokens (reference tokens come after the
    target's: FLUX Kontext, Qwen-Image Edit, FLUX.2 with `image=`). Any other mismatch is returned unchanged
    (the caller raises)."""
    if (delta.ndim == 3 and model_output.ndim == 3 and delta.shape[0] == model_output.shape[0]
            and delta.shape[2] == model_output.shape[2] and delta.shape[1] > model_output.shape[1]):
        return delta[:, :model_output.shape[1]]
    return delta


def _stateful_cache_hooks(module: Any, context_blind: bool = False) -> set[str]:
    """Class names of diffusers' stateful hooks (caches) under `module`, ours excepted; with `context_blind`
    only those whose state is not kept per cache context (no StateManager)."""
    from diffusers.hooks.hooks import StateManager

    names = set()
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if registry is None:
            continue
        for name, hook in registry.hooks.items():
            if not hook._is_stateful or name == CONTEXT_HOOK:
                continue
            if context_blind and any(isinstance(v, StateManager) for v in vars(hook).values()):
                continue
            names.add(type(hook).__name__)
    return names


def _is_compiled(given: Any, transformer: Any) -> bool:
    """Whether the pipeline's transformer is compiled: a `torch.compile(module)` wrapper,
    compiled in place, or regionally (its blocks compiled, as diffusers' `compile_repeated_blocks` does).
    A compiled transformer gets dense strengths (`GuidanceHandle._dense`) and fan-out hooks that dynamo
    never traces (`headhunter.engine.fanout._CompiledBlockHook`): each block's forward is compiled as a frame
    of its own, whose only dependence on the head set is how many rows are present (a dynamic size), so
    rows are computed once without a graph per head set (measured, docs/compatibility.md "torch.compile")."""
    if given is not transformer or getattr(transformer, "_compiled_call_impl", None) is not None:
        return True
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in transformer.modules() if m is not transformer)


def _sample_of(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output.sample


def _with_sample(output: Any, sample: Tensor) -> Any:
    if isinstance(output, tuple):
        return (sample,) + tuple(output[1:])
    return dataclasses.replace(output, sample=sample)


# ----- row bookkeeping --------------------------------------------------------------------------------------
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
    - Head sets may hold a schedule (strengths over intervals of the noise level sigma, docs/format.md):
      step i uses the heads of the interval holding sigma_i = `scheduler.sigmas[i]` (read on the host once
      per call), inside the step window; a branch with no heads at sigma_i is not computed (docs/guidance.md,
      "Schedules").

    Everything is compiled once into an execution plan (`handle.plan`, `headhunter.plan.plan.compile_plan`).
    CFG is the pipeline's own (`guidance_scale=s` for SD3 and digits, `true_cfg_scale` for FLUX), so the
    result is `uncond + s (cond - uncond) + w (cond - perturbed)`, or `cond + w (cond - perturbed)`
    without CFG. Not thread-safe: one pipeline call at a time.
    """
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise ModelError(f"{type(pipe).__name__} has no `transformer`; apply() guides diffusers DiT pipelines "
                         "(StableDiffusion3Pipeline, FluxPipeline, the digits model)")
    if guided_by(unwrap(transformer)) is not None:
        raise ModelError("this pipeline is already guided by headhunter; call .remove() on the existing handle "
                         "first, or pass all head sets to one apply() call as a list")
    if not isinstance(batched, bool):
        raise HeadSetError(f"batched={batched!r} must be True or False")

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
