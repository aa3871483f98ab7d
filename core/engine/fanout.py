"""Rows computed once: a perturbed row shares its conditional row's computation up to its first perturbed block.

A perturbed row is a copy of a conditional row (same latents, timestep and prompt) with a head set. Every
transformer block before the first one holding a perturbed head computes the same function on the same
input, so the row equals its conditional row until there. The execution plan (`headhunter.plan.plan`) knows each
row's first perturbed block (from the blocks the adapter declares); this module executes it:

- **batched** (apply's default, the search): the blocks before a row's first perturbed block run without
  it; at that block its per-row inputs (the adapter's `row_inputs`: hidden states, text states, `temb`) are
  fanned out from its conditional row by `index_select`, and after the last block every row is expanded
  back, so the transformer's own code after the blocks sees the full batch. Per-sample head sets (search
  candidates) each fan out at their own block. Strengths are re-indexed on the host to the rows present at
  each site, so the hot path still reads no device value.
- **sequential** (`apply(..., batched=False)`): the stock forward records the conditional rows' block
  inputs at the blocks where a branch starts; the branch's own forward then passes the blocks before its
  first perturbed block through (no computation: the adapter's `block_outputs` are returned as they came in)
  and resumes from the recorded inputs. A per-sample branch starts at the earliest first block of its rows.

Every decision (which rows are present where, the index lists) is made on the host once per batch layout
and cached; the per-call work is a few `index_select`s. It is installed through diffusers' hook registry
(`ModelHook` on every declared block, the mechanism diffusers' own block caches use), is inert outside a
guided forward, and is removed with the guidance.

Falls back to the full computation (exact, never faster), decided per call: the adapter declares no blocks
(`ModelAdapter.blocks` returns []); or some other diffusers hook sits on the transformer or a submodule
besides offloading and layer-wise casting (a cache such as FirstBlockCache compares the first block's
output between steps, which a changing batch would break); or gradients are enabled (training).
ControlNet residual lists (one tensor per block, full batch) are indexed to the rows present after each
block by a list wrapper, so ControlNet composes.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from headhunter.errors import ModelError
from headhunter.plan.strengths import StrengthMap

#: diffusers hook names (prefixes) that do not depend on the batch and so compose with fan-out.
COMPOSING_HOOKS = ("group_offloading", "lazy_prefetch_group_offloading", "layer_execution_tracker", "lazy_leafs",
                   "layerwise_casting", "peft_autocast_disable", "headhunter")
HOOK_NAME = "headhunter_fanout"
#: Set False to compute every row in full (for before/after measurements, or to rule fan-out out): read at
#: every guided call, and at `apply`, which then installs no hooks (a compiled transformer keeps its one graph).
enabled = True


class _Indices:
    """A host index list with its device tensors made on first use per device (a copy, never a read)."""

    __slots__ = ("rows", "_by_device")

    def __init__(self, rows: Sequence[int]) -> None:
        self.rows = tuple(rows)
        self._by_device: dict[str, torch.Tensor] = {}

    def on(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._by_device:
            self._by_device[key] = torch.tensor(self.rows, dtype=torch.long, device=device)
        return self._by_device[key]


class BatchedLayout:
    """Which rows of a batch are present at every block, and how to get there (host lists).

    `firsts[r]`: row r's first perturbed block (-1 for a row that is always computed: uncond and cond rows;
    `num_blocks` for a row never perturbed); `sources[r]`: the row it equals before that block.
    """

    def __init__(self, firsts: Sequence[int], sources: Sequence[int], num_blocks: int) -> None:
        size = len(firsts)
        self.size = size
        self.num_blocks = num_blocks
        everything = tuple(range(size))
        self.live: list[tuple[int, ...]] = []
        self.select: dict[int, _Indices] = {}  # block -> rows of the full batch present there
        self.gather: dict[int, _Indices] = {}  # block -> positions in the previous block's rows
        previous = everything
        for b in range(num_blocks):
            live = tuple(r for r in everything if firsts[r] <= b)
            self.live.append(live)
            if live != everything:
                self.select[b] = _Indices(live)
            if live != previous and previous != everything:
                where = {r: k for k, r in enumerate(previous)}
                self.gather[b] = _Indices([where[r] if r in where else where[sources[r]] for r in live])
            previous = live
        where = {r: k for k, r in enumerate(previous)}
        self.final = None if previous == everything else _Indices(
            [where[r] if r in where else where[sources[r]] for r in everything])
        self.trims = bool(self.select)

    def computed_rows(self) -> int:
        """Row-blocks computed (for benchmarks and tests): sum over blocks of the rows present."""
        return sum(len(live) for live in self.live)


class FanOut:
    """Fan-out hooks on the declared blocks of one guided transformer (see the module docstring)."""

    def __init__(self, transformer: torch.nn.Module, blocks: Sequence[str], row_inputs: Sequence[str],
                 block_outputs: Sequence[str] | Mapping[str, Sequence[str]], compiled: bool = False) -> None:
        self.transformer = transformer
        self.names = tuple(blocks)
        self.row_inputs = tuple(row_inputs)
        #: per block: what it returns, as names of its inputs (the adapter's `block_outputs`, one tuple for
        #: every block or a mapping from block-name prefix to a tuple, for families with several block kinds)
        self.block_outputs = [outputs_of(block_outputs, name) for name in self.names]
        self.run: Any = None  # the layout being executed; None = inert
        self.modules = [transformer.get_submodule(name) for name in self.names]
        self._created: list[bool] = []  # whether we made the block's registry (then we take it away again)
        for index, module in enumerate(self.modules):
            hook = (_CompiledBlockHook if compiled else _BlockHook)(self, index, _positional_names(module))
            self._created.append("_diffusers_hook" not in module.__dict__)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)
            if compiled:
                # the registry's own wrapper around the block (diffusers' hooks.py `new_forward`, one code object
                # for every hooked module) would otherwise be compiled as a frame of its own, guarded on its
                # inputs' sizes and strides before the rows are indexed: it computes nothing, so it is skipped
                # too (measured: FLUX 19 + 38 blocks hit the recompile limit on it). remove_hook puts the
                # block's forward back, and a hook registered later wraps this one, as diffusers chains hooks.
                module.forward = torch.compiler.disable(module.forward, recursive=False)
        self._invalidate()
        self._layouts: dict[tuple, Any] = {}

    def remove(self) -> None:
        """Take the hooks off every block (idempotent)."""
        for module, created in zip(self.modules, self._created):
            registry = module.__dict__.get("_diffusers_hook")
            if registry is not None and registry.get_hook(HOOK_NAME) is not None:
                registry.remove_hook(HOOK_NAME, recurse=False)
            if created and registry is not None and not registry.hooks:
                del module._diffusers_hook  # the block is exactly as it was
        self._invalidate()
        self.modules = []
        self.run = None

    def _invalidate(self) -> None:
        """Block registries came or went: diffusers caches the list of child registries on the root's
        registry (cache contexts are handed down through it), so that list must be rebuilt."""
        root = self.transformer.__dict__.get("_diffusers_hook")
        if root is not None:
            root.invalidate_child_registries_cache()

    def usable(self) -> str | None:
        """None when fan-out can run for this call; otherwise why the full computation is used."""
        if not enabled:
            return "headhunter.engine.fanout.enabled is False"
        if not self.modules:
            return "removed"
        if torch.is_grad_enabled():
            return "gradients are enabled"
        for module in self.transformer.modules():
            registry = module.__dict__.get("_diffusers_hook")
            if registry is not None:
                for hook in registry.hooks:
                    if not hook.startswith(COMPOSING_HOOKS):
                        return f"diffusers hook {hook!r} on {type(module).__name__}"
        return None

    # ----- batched ---------------------------------------------------------------------------------
    def batched(self, key: tuple, make: Any) -> _BatchedRun | None:
        """The run for one batch layout (cached by `key`; `make()` gives `(firsts, sources, strengths,
        site_block)` on a miss), or None when every row is needed at every block."""
        if key not in self._layouts:
            firsts, sources, strengths, site_block = make()
            layout = BatchedLayout(firsts, sources, len(self.names))
            self._layouts[key] = _BatchedRun(self, layout, _trimmed(strengths, layout, site_block)) \
                if layout.trims else None
        return self._layouts[key]

    # ----- sequential ------------------------------------------------------------------------------
    def recorder(self, blocks: set[int], rows: slice) -> _Recorder:
        """A run that records the `rows` of every block input named in `row_inputs` at `blocks`."""
        return _Recorder(self, blocks, rows)

    def resumer(self, start: int, recorded: dict[str, torch.Tensor]) -> _Resumer:
        """A run that passes blocks before `start` through and feeds block `start` the recorded inputs."""
        return _Resumer(self, start, recorded)

    def stop(self) -> None:
        """Back to inert (every block computes every row it is given)."""
        run, self.run = self.run, None
        if run is not None:
            run.current = None


def outputs_of(block_outputs: Sequence[str] | Mapping[str, Sequence[str]], block: str) -> tuple[str, ...]:
    """The outputs of `block` from an adapter's `block_outputs`: the tuple itself, or the entry of a mapping
    {block-name prefix: tuple} with the longest prefix of `block` (FLUX.2: double- and single-stream blocks
    return different things). ModelError when no prefix matches."""
    if not isinstance(block_outputs, Mapping):
        return tuple(block_outputs)
    matches = [prefix for prefix in block_outputs if block.startswith(prefix)]
    if not matches:
        raise ModelError(f"block_outputs names no prefix of block {block!r}; prefixes: {sorted(block_outputs)}")
    return tuple(block_outputs[max(matches, key=len)])


def _positional_names(module: torch.nn.Module) -> tuple[str, ...]:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _trimmed(strengths: StrengthMap, layout: BatchedLayout, site_block: dict[str, int]) -> StrengthMap:
    """The strengths re-indexed to the rows present at each site's block (host work, once per layout)."""
    data, heads, samples = {}, dict(strengths.heads), {}
    for site, u in strengths.items():
        live = layout.live[site_block[site]]
        if len(live) == layout.size:
            data[site], samples[site] = u, strengths.samples[site]
            continue
        position = {r: k for k, r in enumerate(live)}
        present = [position[r] for r in strengths.samples[site] if r in position]
        if not present:  # a dense site (compiled transformer) before every perturbed row's first block: stock
            heads.pop(site, None)
            continue
        data[site] = u.index_select(0, torch.tensor(live, dtype=torch.long, device=u.device))
        samples[site] = present
    return StrengthMap(data, heads, samples)


class _BlockHook(ModelHook):
    """A diffusers `ModelHook` on one block: hands the block call to the run being executed, if any.

    A run has `enter(b, kwargs) -> (kwargs, outputs)` (the block's inputs for the rows present there; or, when
    `outputs` is not None, what the block returns without computing) and `leave(b, out)` (its outputs)."""

    def __init__(self, owner: FanOut, index: int, positional: tuple[str, ...]) -> None:
        super().__init__()
        self.owner, self.index, self.positional = owner, index, positional

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        run = self.owner.run
        forward = self.fn_ref.original_forward
        if run is None:
            return forward(*args, **kwargs)
        kwargs, outputs = run.enter(self.index, self.keywords(args, kwargs))
        return outputs if outputs is not None else run.leave(self.index, forward(**kwargs))

    def keywords(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Every argument by name (gradient checkpointing, for one, calls blocks positionally)."""
        return {**dict(zip(self.positional, args)), **kwargs} if args else dict(kwargs)


class _CompiledBlockHook(_BlockHook):
    """The hook on a block of a compiled transformer (in place, wrapped or regionally). Dynamo never traces
    it, so it guards neither on the block nor on the batch layout: it runs on the host, and the block's own
    forward, which it calls, is compiled as a frame of its own (one code object for every block of a class,
    as regional compilation compiles it), with the rows present as its only dependence on the head set."""

    @torch.compiler.disable(recursive=False)
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        run = self.owner.run
        forward = self.fn_ref.original_forward
        if run is None:
            return forward(*args, **kwargs)
        kwargs, outputs = _enter(run, self.index, _keywords(self, args, kwargs))
        return outputs if outputs is not None else _leave(run, self.index, forward(**kwargs))


# Host work around a compiled block: never traced, nor anything they call (torch.compiler.disable).
_keywords = torch.compiler.disable(_BlockHook.keywords)


@torch.compiler.disable
def _enter(run: Any, b: int, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    return run.enter(b, kwargs)


@torch.compiler.disable
def _leave(run: Any, b: int, out: Any) -> Any:
    return run.leave(b, out)


class _BatchedRun:
    def __init__(self, owner: FanOut, layout: BatchedLayout, strengths: StrengthMap) -> None:
        self.owner, self.layout, self.strengths = owner, layout, strengths
        self.current: _Indices | None = None  # rows present after the last block run (None: all)
        self._previous_size = layout.size

    def enter(self, b: int, kwargs: dict[str, Any]) -> tuple[dict[str, Any], None]:
        """Block `b`'s inputs indexed to the rows present there."""
        layout = self.layout
        if b == 0:
            self._previous_size = layout.size
        select, gather = layout.select.get(b), layout.gather.get(b)
        for name in self.owner.row_inputs:
            t = kwargs.get(name)
            if not isinstance(t, torch.Tensor) or t.ndim == 0:
                continue
            if t.shape[0] == layout.size:
                if select is not None:
                    kwargs[name] = t.index_select(0, select.on(t.device))
            elif t.shape[0] == self._previous_size and gather is not None:
                kwargs[name] = t.index_select(0, gather.on(t.device))
        return kwargs, None

    def leave(self, b: int, out: Any) -> Any:
        """Block `b`'s outputs; after the last block, every row of the batch again."""
        layout = self.layout
        select = layout.select.get(b)
        self.current = select
        self._previous_size = layout.size if select is None else len(select.rows)
        if b == layout.num_blocks - 1 and layout.final is not None:
            out = _map_tensors(out, self._previous_size, lambda t: t.index_select(0, layout.final.on(t.device)))
            self.current = None
            self._previous_size = layout.size
        return out

    def rows(self, value: Any) -> Any:
        """Wrap per-block lists (ControlNet residuals, full batch) so each is indexed to the rows present."""
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            return _PresentRows(value, self)
        return value


class _PresentRows(list):
    """A per-block residual list whose items come indexed to the rows present after the current block."""

    def __init__(self, items: Sequence[torch.Tensor], run: _BatchedRun) -> None:
        super().__init__(items)
        self._run = run

    @torch.compiler.disable  # host bookkeeping: the layout's row lists are never guarded by dynamo
    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        current = self._run.current
        if current is None or not isinstance(item, torch.Tensor):
            return item
        return item.index_select(0, current.on(item.device))


class _Recorder:
    def __init__(self, owner: FanOut, blocks: set[int], rows: slice) -> None:
        self.owner, self.blocks, self.rows = owner, blocks, rows
        self.recorded: dict[int, dict[str, torch.Tensor]] = {}
        self.current = None

    def enter(self, b: int, kwargs: dict[str, Any]) -> tuple[dict[str, Any], None]:
        if b in self.blocks:
            self.recorded[b] = {name: kwargs[name][self.rows] for name in self.owner.row_inputs
                                if isinstance(kwargs.get(name), torch.Tensor) and kwargs[name].ndim > 0}
        return kwargs, None

    def leave(self, b: int, out: Any) -> Any:
        return out


class _Resumer:
    def __init__(self, owner: FanOut, start: int, recorded: dict[str, torch.Tensor]) -> None:
        self.owner, self.start, self.recorded = owner, start, recorded
        self.current = None

    def enter(self, b: int, kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        if b < self.start:  # equal to the stock rows here: pass through, nothing computed
            outputs = tuple(kwargs.get(name) for name in self.owner.block_outputs[b])
            return kwargs, outputs[0] if len(outputs) == 1 else outputs
        if b == self.start:
            kwargs.update(self.recorded)
        return kwargs, None

    def leave(self, b: int, out: Any) -> Any:
        return out


def _map_tensors(out: Any, size: int, fn: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return fn(out) if out.ndim > 0 and out.shape[0] == size else out
    if isinstance(out, tuple):
        return tuple(_map_tensors(o, size, fn) for o in out)
    if isinstance(out, list):
        return [_map_tensors(o, size, fn) for o in out]
    return out


__all__ = ["BatchedLayout", "COMPOSING_HOOKS", "FanOut", "outputs_of"]
