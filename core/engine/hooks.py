"""Hooks: how guidance attaches to a live transformer and learns, per call, what the call is.

`apply()` must compose with everything else that wraps the same objects (issue #12): accelerate's offload
hooks (re-installed after every pipeline call with model offload), diffusers' hook registry (group offload,
FirstBlockCache, PyramidAttentionBroadcast, ...), PEFT layers, `torch.compile` (in place and the
`torch.compile(module)` wrapper), and other pipelines sharing the transformer (`from_pipe`). So guidance
replaces no attribute of any live object. It uses:

- **torch module hooks on the transformer** (`register_forward_pre_hook(..., with_kwargs=True,
  prepend=True)` and `register_forward_hook(..., with_kwargs=True, always_call=True)`). `Module.__call__`
  runs them around whatever `forward` currently is, so they survive accelerate restoring and re-wrapping
  `forward` after every call, and every forward wrapper (accelerate, diffusers' registry) sees the rows the
  pre-hook added. diffusers' registry is not used at the root for this: its wrapper is an instance
  `forward`, which accelerate's model offload drops after the first call when the registry hook was added
  after offload was enabled (measured with diffusers 0.42.1 / accelerate 1.15: calls 2 and 3 unguided).
- **a stateful diffusers `ModelHook` that only observes** the cache context (`transformer.cache_context(
  "uncond")`, FLUX's true-CFG negative pass), the same way FirstBlockCache learns it: diffusers hands the
  context to every stateful hook's `StateManager`. Its own forward wrapper does nothing, so losing it to
  accelerate is harmless.
- **the calling pipeline, found on the call stack** (`calling_pipeline`): the innermost frame whose `self`
  is a pipeline holding this transformer. Its own per-call state (CFG flag, scheduler position) decides
  which rows are conditional, so a `from_pipe` sibling sharing the transformer is read, not the pipeline
  `apply()` was given. No cache is keyed on object identity or memory address.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch

from headhunter.errors import ModelError
from headhunter.plugin_system.registry import unwrap

#: Name of the observer in diffusers' hook registry.
CONTEXT_HOOK = "headhunter_cache_context"

#: How many frames up `calling_pipeline` looks (pipelines call their transformer a few frames down).
_MAX_DEPTH = 64


def holds(pipe: Any, transformer: torch.nn.Module) -> bool:
    """Whether `pipe` is a pipeline (it has a scheduler) whose `.transformer` (or `.transformer_2`, Wan 2.2's
    low-noise expert) is `transformer` (or a compiled wrapper of it)."""
    if not hasattr(pipe, "__dict__") or "scheduler" not in pipe.__dict__:
        return False
    for name in ("transformer", "transformer_2"):
        own = pipe.__dict__.get(name)
        if own is not None and unwrap(own) is transformer:
            return True
    return False


def calling_pipeline(transformer: torch.nn.Module) -> Any | None:
    """The pipeline whose call is running `transformer` now: the innermost frame on the stack whose first
    argument `self` holds it (`holds`), or None when the transformer is called outside any pipeline.

    Only the instance's own attributes are read (no properties run). Host-only and cheap (a few frames);
    diffusers has no per-call hook on pipelines, and a pipeline object
    read at any other time may be a `from_pipe` sibling's stale state.
    """
    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            candidate = frame.f_locals.get("self")
            if candidate is not None and not isinstance(candidate, torch.nn.Module) and holds(candidate, transformer):
                return candidate
        frame = frame.f_back
    return None


def schedule_position(pipe: Any) -> tuple[int, int, int]:
    """(index of the current step in the full schedule, schedule length N, index of the first step this call
    runs), read on the host from the calling pipeline's scheduler.

    img2img / inpaint pipelines keep the full schedule in `scheduler.timesteps` and start at
    `scheduler.begin_index` (`strength < 1`), so indices count the full schedule.
    """
    scheduler = getattr(pipe, "scheduler", None)
    timesteps = getattr(scheduler, "timesteps", None)
    total = 0 if timesteps is None else len(timesteps)
    if total == 0:
        raise ModelError(f"{type(scheduler).__name__} of {type(pipe).__name__} has no timesteps set; headhunter "
                         "guides pipelines that call scheduler.set_timesteps before their transformer")
    begin = getattr(scheduler, "begin_index", None) or 0
    index = getattr(scheduler, "step_index", None)
    return (begin if index is None else index), total, begin


def first_call_of_run(pipe: Any) -> bool:
    """True before the pipeline's first `scheduler.step` of this call (the scheduler has no step index yet)."""
    return getattr(pipe.scheduler, "step_index", None) is None


def bind_arguments(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A transformer call's positional arguments turned into keywords (pipelines pass keywords anyway)."""
    if not args:
        return dict(kwargs)
    bound = inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments
    bound.pop(next(iter(bound)))  # self
    return dict(bound)


# ----- the cache-context observer ---------------------------------------------------------------------------
def _observer_class() -> type:
    from diffusers.hooks import ModelHook
    from diffusers.hooks.hooks import BaseState, StateManager

    class _Nothing(BaseState):
        def reset(self, *args: Any, **kwargs: Any) -> None:
            pass

    class CacheContextObserver(ModelHook):
        """A stateful diffusers hook that only records the current cache context (name and fields)."""

        _is_stateful = True

        def __init__(self, on_reset: Callable[[], None] | None = None) -> None:
            super().__init__()
            self.state_manager = StateManager(_Nothing)
            self.on_reset = on_reset

        @property
        def context(self) -> Any | None:
            return getattr(self.state_manager, "_context", None)

        def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
            # diffusers resets stateful hooks at the end of every pipeline call (maybe_free_model_hooks)
            if self.on_reset is not None:
                self.on_reset()
            return module

    return CacheContextObserver


class TransformerHooks:
    """Guidance's hooks on one transformer: a pre-hook and an always-called forward hook (torch), plus the
    cache-context observer (diffusers' registry). `remove()` takes all of them off; idempotent.

    `before(module, kwargs) -> kwargs | None` may return new keyword arguments (more rows);
    `after(module, kwargs, output) -> output | None` may return a new output (None: keep it);
    `on_reset()` runs when diffusers resets stateful hooks (end of a pipeline call). Both hooks run
    outside `torch.compile` tracing (`torch.compiler.disable`): decisions stay in Python on the host.
    """

    def __init__(self, transformer: torch.nn.Module, before: Callable[..., Any], after: Callable[..., Any],
                 owner: Any, on_reset: Callable[[], None] | None = None) -> None:
        self.transformer = transformer
        self.owner = owner

        @torch.compiler.disable
        def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
            new = before(module, args, kwargs)
            return None if new is None else ((), new)

        @torch.compiler.disable
        def post_hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
            return after(module, kwargs, output)

        pre_hook._headhunter_owner = owner  # type: ignore[attr-defined]
        self._handles = [
            transformer.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True),
            transformer.register_forward_hook(post_hook, with_kwargs=True, always_call=True),
        ]
        self.observer: Any = None
        if callable(getattr(transformer, "cache_context", None)):
            from diffusers.hooks import HookRegistry

            registry = HookRegistry.check_if_exists_or_initialize(transformer)
            self.observer = _observer_class()(on_reset)
            registry.register_hook(self.observer, CONTEXT_HOOK)

    @property
    def context(self) -> Any | None:
        """The diffusers cache context of the current call (`.name`: "cond", "uncond", ...), or None."""
        return None if self.observer is None else self.observer.context

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.observer is not None:
            _unregister(self.transformer, CONTEXT_HOOK, self.observer)
            self.observer = None


def guided_by(transformer: torch.nn.Module) -> Any | None:
    """The owner (a GuidanceHandle) of headhunter hooks already on `transformer`, or None."""
    for hook in transformer._forward_pre_hooks.values():
        owner = getattr(hook, "_headhunter_owner", None)
        if owner is not None:
            return owner
    return None


def _unregister(module: torch.nn.Module, name: str, hook: Any) -> None:
    """Take our observer out of diffusers' registry without putting back a stale `forward`.

    `HookRegistry.remove_hook` restores the `forward` that was current when the hook was registered if it
    is the last hook; when accelerate (model offload) has since rewrapped `forward`, that would drop the
    offload hook. Our wrapper then is no longer in the chain, so only the registry's bookkeeping goes.
    """
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or registry.hooks.get(name) is not hook:
        return
    index = registry._hook_order.index(name)
    fn_ref = registry._fn_refs[index]
    last = index == len(registry._hook_order) - 1
    current = module.__dict__.get("forward")
    ours = getattr(current, "func", None)
    cells = [c.cell_contents for c in (getattr(ours, "__closure__", None) or ())]
    if last and not any(c is fn_ref for c in cells):
        del registry.hooks[name]
        registry._hook_order.pop(index)
        registry._fn_refs.pop(index)
        return
    registry.remove_hook(name, recurse=False)


__all__ = [
    "CONTEXT_HOOK",
    "TransformerHooks",
    "bind_arguments",
    "calling_pipeline",
    "first_call_of_run",
    "guided_by",
    "holds",
    "schedule_position",
]
