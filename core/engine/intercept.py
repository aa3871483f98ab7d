"""Declared DiTs in the engine: each site's processor object is wrapped, and its own attention call intercepted.

For a site with strengths, the wrapper runs *the original processor class's own `__call__` code*, rebound to
private globals in which the names that code uses for attention (`dispatch_attention_fn`, `F` for
`F.scaled_dot_product_attention`, a directly imported `scaled_dot_product_attention`, and module helpers that
reach them) point at interceptors. An interceptor calls the real function with the very arguments the
processor gave it (so the user's attention backend, context-parallel config, masks, GQA, RoPE and qk-norm are
as shipped), then the engine's `mix` computes `O + u (T·V - O)` on the chosen samples, heads and rows
(headhunter.engine.attention). A site without strengths calls the original object: the stock code path.

Per module and per call: nothing process-wide is modified (no module global, no `torch.nn.functional`
attribute, no backend registry entry). The rebound function exists only inside the wrapper; the call in
progress sits in a `threading.local` slot only while the wrapper's own call runs, so another transformer of the
same class, another thread, or the same processor class elsewhere runs stock code. torch.compile: one rebound
function per processor class (repeated blocks share graphs), a thread-local (a ContextVar graph-breaks), a
private module as the rebound globals (dynamo resolves globals through `sys.modules[__name__]`) and a fresh code
object (dynamo caches compiled frames per code object). docs/engine.md, "Declared DiTs", has the reasons.

A processor is refused (ModelError, naming the site and class) when its code reaches no attention name, when
it is an `nn.Module` (IP adapters), when a perturbed call made no attention call, or when no call matched the
declaration; those are host checks on Python ints, never a device sync.
"""

from __future__ import annotations

import dis
import fnmatch
import inspect
import itertools
import math
import sys
import threading
import types
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from headhunter.contracts.adapter import ModelAdapter, TokenLayout
from headhunter.contracts.declaration import AttentionCall, CallLayout, DiTDeclaration, SiteDecl
from headhunter.engine.attention import EngineState, PerturbingProcessor, mix
from headhunter.engine.reference import reference_mix
from headhunter.errors import ModelError
from headhunter.format.sites import Site
from headhunter.plan.strengths import SiteStrength
from headhunter.plugin_system.registry import model_of

# ---------------------------------------------------------------------------------------------------------------
# Rebinding: the processor's own code with private attention names
# ---------------------------------------------------------------------------------------------------------------


class _Frame:
    """One perturbed processor call: the wrapper, its strengths, the call's arguments, the attention calls seen."""

    __slots__ = ("proc", "entry", "args", "kwargs", "count", "mixed")

    def __init__(self, proc: SiteProcessor, entry: SiteStrength, args: tuple, kwargs: dict) -> None:
        self.proc, self.entry, self.args, self.kwargs, self.count, self.mixed = proc, entry, args, kwargs, 0, 0


class _Current(threading.local):
    """The perturbed processor call in progress, per thread. `__init__` runs once in every thread that uses it,
    so the attribute is always in the thread's dict (dynamo guarded on its presence and recompiled once when a
    first perturbed call added it)."""

    def __init__(self) -> None:
        self.frame: _Frame | None = None


#: set by SiteProcessor, read by the interceptors
_CURRENT = _Current()
#: original function -> (rebound function, number of attention names it reaches); one per processor class
_PATCHED: dict[types.FunctionType, tuple[Callable, int]] = {}
_COUNTER = itertools.count()
_SHIM: types.ModuleType | None = None


def _real_dispatch() -> Callable:
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return dispatch_attention_fn


def _code_names(code: types.CodeType, attrs: bool = False) -> set[str]:
    """Global names a code object (and the functions nested in it) loads; with attrs=True, attribute names."""
    ops = ("LOAD_ATTR", "LOAD_METHOD") if attrs else ("LOAD_GLOBAL", "LOAD_NAME")
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname in ops}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const, attrs)
    return names


def _make_interceptor(real: Callable, fmt: str) -> Callable:
    """An attention function with `real`'s signature (query, key, value, attn_mask, dropout_p, is_causal,
    scale, ...): calls it, then lets the perturbed call in progress in this thread (if any) mix its heads."""

    def interceptor(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        frame = getattr(_CURRENT, "frame", None)
        if frame is None:
            return out
        return frame.proc._intercept(frame, out, args, kwargs, fmt)

    interceptor.__name__ = f"headhunter_{getattr(real, '__name__', 'attention')}"
    interceptor.__wrapped_attention__ = real  # type: ignore[attr-defined]
    return interceptor


def _functional_shim() -> types.ModuleType:
    """A module with torch.nn.functional's attributes and an intercepting SDPA (torch's own is untouched)."""
    global _SHIM
    if _SHIM is None:
        shim = types.ModuleType("torch.nn.functional")
        shim.__dict__.update({k: v for k, v in F.__dict__.items() if k not in ("__name__", "__spec__", "__loader__")})
        shim.scaled_dot_product_attention = _make_interceptor(F.scaled_dot_product_attention, "BHSD")
        _SHIM = shim
    return _SHIM


def rebound(fn: types.FunctionType) -> tuple[Callable, int]:
    """`fn` rebound to private attention names, and how many it reaches (0: `fn` itself, nothing to intercept)."""
    if fn not in _PATCHED:
        _PATCHED[fn] = _rebind(fn, depth=2, module_name=fn.__module__)
    return _PATCHED[fn]


def _rebind(fn: types.FunctionType, depth: int, module_name: str) -> tuple[Callable, int]:
    """A copy of `fn` (equal code, same defaults and closure) whose globals are a private snapshot of its
    module's globals with the attention names pointing at interceptors; module-level helpers of the same module
    that reach an attention name (up to `depth` levels) are rebound the same way. The module is not modified."""
    g = fn.__globals__
    dispatch = _real_dispatch()
    overrides: dict[str, Any] = {}
    hits = 0
    for name in _code_names(fn.__code__):
        value = g.get(name)
        if value is None:
            continue
        if value is dispatch or getattr(value, "__wrapped_attention__", None) is dispatch:
            overrides[name] = _make_interceptor(value, "BSHD")
            hits += 1
        elif value is F:
            overrides[name] = _functional_shim()
            hits += "scaled_dot_product_attention" in _code_names(fn.__code__, attrs=True)
        elif value is F.scaled_dot_product_attention:
            overrides[name] = _make_interceptor(value, "BHSD")
            hits += 1
        elif (depth > 0 and isinstance(value, types.FunctionType) and value.__module__ == module_name
              and value is not fn):
            sub, sub_hits = _rebind(value, depth - 1, module_name)
            if sub_hits:
                overrides[name] = sub
                hits += sub_hits
    if not hits:
        return fn, 0
    private = f"_headhunter_rebound_{next(_COUNTER)}__{module_name.replace('.', '_')}"
    mod = types.ModuleType(private)
    mod.__dict__.update(g)
    mod.__dict__.update(overrides)
    mod.__dict__["__name__"] = private
    sys.modules[private] = mod  # dynamo builds guards through sys.modules[fn.__globals__["__name__"]]
    new = types.FunctionType(_fresh_code(fn.__code__), mod.__dict__, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__doc__ = fn.__doc__
    return new, hits


def _fresh_code(code: types.CodeType) -> types.CodeType:
    """An equal but distinct code object (nested functions' code too): dynamo caches frames per code object."""
    consts = tuple(_fresh_code(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_consts=consts)


# ---------------------------------------------------------------------------------------------------------------
# The wrapper installed per site
# ---------------------------------------------------------------------------------------------------------------

_WRAPPER_CLASSES: dict[type, type] = {}


def _wrapper_class(original_cls: type) -> type:
    """A `SiteProcessor` subclass that is also a subclass of the original class (diffusers decides things from
    the processor's class: QwenImage21 builds its flex BlockMask only if every processor `isinstance`s its flex
    processor; a wrapper failing that changed the idle model's output) and whose `__call__` shows the original's
    signature (`Attention.forward` filters keyword arguments by it). One per original class."""
    if original_cls not in _WRAPPER_CLASSES:
        def __call__(self: SiteProcessor, *args: Any, **kwargs: Any) -> Any:
            return self._run(args, kwargs)

        __call__.__signature__ = inspect.signature(original_cls.__call__)  # type: ignore[attr-defined]
        name = f"Site{original_cls.__name__}"
        try:
            cls = type(name, (SiteProcessor, original_cls), {"__call__": __call__})
        except TypeError:  # layout conflict (slots, a C base): a plain SiteProcessor
            cls = type(name, (SiteProcessor,), {"__call__": __call__})
        _WRAPPER_CLASSES[original_cls] = cls
    return _WRAPPER_CLASSES[original_cls]


class SiteProcessor(PerturbingProcessor):
    """Wraps one site's original processor object; intercepts its attention call when the site has strengths.

    Never calls the original class's `__init__`: every attribute not found here is read from the original
    object, and diffusers' `_attention_backend` / `_parallel_config` reach it (PerturbingProcessor), so
    `set_attention_backend` before or after installation reaches the processor the model's code consults.
    """

    def __init__(self, site: Site, original: Any, state: EngineState, decl: SiteDecl,
                 adapter: DeclaredAdapter) -> None:
        call = type(original).__call__
        if not isinstance(call, types.FunctionType):
            raise ModelError(f"{site.name}: {type(original).__name__}.__call__ is not a Python function; the "
                             f"{adapter.name} declaration cannot intercept it")
        fn, hits = rebound(call)
        if not hits:
            raise ModelError(f"{site.name}: {type(original).__name__} reaches no dispatch_attention_fn or "
                             "F.scaled_dot_product_attention by name, so its attention cannot be intercepted "
                             "(the family needs a copied processor, docs/plugins.md)")
        for key, value in (("site", site), ("site_name", site.name), ("original", original), ("state", state),
                           ("decl", decl), ("adapter", adapter), ("_patched", fn),
                           ("_sig", inspect.signature(call)), ("strength", None)):
            object.__setattr__(self, key, value)

    def __getattr__(self, name: str) -> Any:  # only for attributes not found on the wrapper
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(object.__getattribute__(self, "original"), name)

    def _run(self, args: tuple, kwargs: dict) -> Any:
        entry = self.strength
        if entry is None:
            return self.original(*args, **kwargs)
        outer = getattr(_CURRENT, "frame", None)  # restored after: a site nested in another site works
        frame = _Frame(self, entry, args, kwargs)
        _CURRENT.frame = frame
        try:
            out = self._patched(self.original, *args, **kwargs)
        finally:
            _CURRENT.frame = outer
        if frame.count == 0:
            raise ModelError(f"{self.site_name}: {type(self.original).__name__} made no attention call through "
                             "dispatch_attention_fn / F.scaled_dot_product_attention on this path, so nothing "
                             "could be perturbed (the family needs a copied processor, or the site is wrong)")
        if frame.mixed == 0:
            raise ModelError(f"{self.site_name}: {frame.count} attention call(s) of "
                             f"{type(self.original).__name__}, none matched the {self.adapter.name} declaration "
                             "(a cross-attention call, or the layout returned None): nothing was perturbed")
        return out

    # ---- inside the attention call ----------------------------------------------------------------------------
    def _intercept(self, frame: _Frame, out: Any, args: tuple, kwargs: dict, fmt: str) -> Any:
        index = frame.count
        frame.count = index + 1
        q = args[0] if len(args) > 0 else kwargs["query"]
        k = args[1] if len(args) > 1 else kwargs["key"]
        v = args[2] if len(args) > 2 else kwargs["value"]
        extra = None
        if isinstance(out, tuple):  # return_lse
            out, extra = out[0], out[1:]
        s_dim = 1 if fmt == "BSHD" else -2
        q_len, k_len = q.shape[s_dim], k.shape[s_dim]
        decl = self.decl
        if decl.calls != "self" and not decl.calls(q_len, k_len, index):
            return out if extra is None else (out, *extra)
        state = self.state
        pert = state.perturbation
        layout = None
        if (state.scope != "joint" or q_len != k_len or self.adapter.declaration.layout_always
                or pert.rows != "all" or pert.needs_grid):
            layout = self.adapter.call_layout(self, frame, q_len, k_len, index)
            if layout is None or (q_len != k_len and layout.key_start is None):
                return out if extra is None else (out, *extra)  # a cross-attention call: stock
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        is_causal = args[5] if len(args) > 5 else kwargs.get("is_causal", False)
        scale = args[6] if len(args) > 6 else kwargs.get("scale")
        if (mask is not None or is_causal) and not pert.row_local:
            raise ModelError(f"{self.site_name}: this attention call has a mask; perturbation {pert.name!r} "
                             "reads other keys than the row's own and does not take masks here (use softpag, "
                             "identity or drop)")
        qh, kh, vh, oh = ((t.transpose(1, 2) if fmt == "BSHD" else t) for t in (q, k, v, out))
        mixed = self._mix(frame, oh, qh, kh, vh, mask, scale, is_causal, layout, q_len, index)
        frame.mixed += 1
        mixed = mixed.transpose(1, 2) if fmt == "BSHD" else mixed
        return mixed if extra is None else (mixed, *extra)

    def _strengths(self, entry: SiteStrength, batch: int, heads: int, index: int) -> SiteStrength:
        mode = self.decl.batch
        if entry.u.shape[1] != heads:
            raise ModelError(f"strengths for {self.site_name} have {entry.u.shape[1]} heads but its attention call "
                             f"has {heads} query heads")
        if mode == "same":
            if entry.u.shape[0] != batch:
                raise ModelError(
                    f"strengths for {self.site_name} have shape {list(entry.u.shape)} but this forward has batch "
                    f"{batch} and {heads} heads; give one row per batch element (CFG doubles the batch)")
            return entry
        if mode == "per_call":  # call j is sample j (batch 1); u = 0 rows give exactly O (torch.lerp)
            return SiteStrength(entry.u[index:index + 1], None, None, None)
        reps = batch // entry.u.shape[0]  # "repeat": sample-major folding
        if reps * entry.u.shape[0] != batch:
            raise ModelError(f"{self.site_name}: attention batch {batch} is not a multiple of the "
                             f"{entry.u.shape[0]} samples the strengths are for")
        return SiteStrength(entry.u.repeat_interleave(reps, dim=0), None, None, None)

    def _mix(self, frame: _Frame, out, q, k, v, mask, scale, is_causal, layout: CallLayout | None, q_len: int,
             index: int) -> torch.Tensor:
        """out, q, k, v: [B, H, S, D] views (k, v may have fewer heads: GQA). Returns the mixed [B, H, Sq, D]."""
        entry = self._strengths(frame.entry, out.shape[0], q.shape[1], index)
        hq, hk = q.shape[1], k.shape[1]
        if hk != hq:  # GQA: the target sees each query head's own key/value head
            k, v = k.repeat_interleave(hq // hk, dim=1), v.repeat_interleave(hq // hk, dim=1)
        start, stop, tlayout, keep = _span(layout, q_len, self.state.grid)
        key_start = 0 if layout is None or layout.key_start is None else layout.key_start
        ks, ke = key_start + start, key_start + stop
        q_s, k_s, v_s = q[:, :, start:stop], k[:, :, ks:ke], v[:, :, ks:ke]
        if self.state.mode == "reference":
            mixed = reference_mix(q, k, v, entry.u, tlayout, self.state.perturbation, self.state.scope,
                                  mask=mask, scale=scale, is_causal=is_causal, rows=(start, stop), key_start=key_start,
                                  keep=keep)
            return mixed.to(out.dtype)
        whole = start == 0 and stop == q_len
        o_s = out if whole else out[:, :, start:stop]
        part = mix(o_s, q_s, k_s, v_s, entry, tlayout, self.state.perturbation, self.state.scope)
        if keep is not None:  # `other` rows inside the span keep the model's output
            part = torch.where(keep.to(part.device)[None, None, :, None], o_s, part)
        if whole:
            return part
        return torch.cat([out[:, :, :start], part, out[:, :, stop:]], dim=2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(site={self.site_name!r}, original={type(self.original).__name__})"


def _span(layout: CallLayout | None, q_len: int,
          grid: tuple[int, int] | None) -> tuple[int, int, TokenLayout, torch.Tensor | None]:
    """The rows from the first to the last text/image row, their TokenLayout, and (when `other` rows lie inside
    that span, e.g. padding between the image and the text) a bool [span] mask of the rows that keep O."""
    if layout is None:
        return 0, q_len, TokenLayout(text_len=0, image_len=q_len, text_first=False, grid=grid), None
    if layout.q_len != q_len:
        raise ModelError(f"the declared layout has {layout.q_len} rows but the attention call has {q_len} queries")
    pos, found = 0, []
    for label, n in layout.segments:
        if label not in ("text", "image", "other"):
            raise ModelError(f"layout label {label!r}: allowed text, image, other")
        if n > 0:
            found.append((label, pos, pos + n))
        pos += n
    while found and found[0][0] == "other":
        found.pop(0)
    while found and found[-1][0] == "other":
        found.pop()
    if not found:
        return 0, 0, TokenLayout(0, 0, False, grid=layout.grid or grid), None
    start, stop = found[0][1], found[-1][2]
    labels = [lab for lab, _, _ in found if lab != "other"]
    if len(set(labels)) != len(labels):
        raise ModelError(f"layout {layout.segments}: at most one text and one image segment")
    # `other` rows inside the span count with the segment before them (they keep O in the end)
    first = labels[0]
    text = 0
    side = first
    for lab, a, b in found:
        side = side if lab == "other" else lab
        if side == "text":
            text += b - a
    keep = None
    if any(lab == "other" for lab, _, _ in found):
        keep = torch.zeros(stop - start, dtype=torch.bool)
        for lab, a, b in found:
            if lab == "other":
                keep[a - start:b - start] = True
    tlayout = TokenLayout(text_len=text, image_len=stop - start - text, text_first=first == "text",
                          grid=layout.grid or grid, frames=layout.frames)
    return start, stop, tlayout, keep


# ---------------------------------------------------------------------------------------------------------------
# The generic adapter
# ---------------------------------------------------------------------------------------------------------------


class DeclaredAdapter(ModelAdapter):
    """A `ModelAdapter` made from a `DiTDeclaration` (`DeclaredAdapter.of(declaration)` gives the class that a
    plugin registers). Sites from the declaration's globs, processors that intercept the model's own attention
    call (SiteProcessor), facts recorded by the forward pre-hook. Matches the declared class names exactly, with
    priority 1 (above an adapter that matches a base class by isinstance)."""

    declaration: ClassVar[DiTDeclaration]
    priority: ClassVar[int] = 1

    @classmethod
    def of(cls, declaration: DiTDeclaration) -> type[DeclaredAdapter]:
        """The adapter class for `declaration` (name and architecture = `declaration.name`)."""
        name = "".join(p.capitalize() for p in declaration.name.replace("-", "_").split("_")) + "DeclaredAdapter"
        return type(name, (cls,), {"declaration": declaration, "name": declaration.name,
                                   "architecture": declaration.name, "__doc__": declaration.description or None})

    @classmethod
    def matches(cls, model: Any) -> bool:
        return type(model_of(model)).__name__ in cls.declaration.classes

    def sites(self, model: Any) -> list[Site]:
        t = self.transformer(model)
        modules = list(t.named_modules())
        out: list[Site] = []
        seen: set[str] = set()
        for sd in self.declaration.sites:
            for name, mod in modules:
                if name in seen or not fnmatch.fnmatchcase(name, sd.pattern) or not hasattr(mod, "processor"):
                    continue
                heads = next((getattr(mod, a) for a in self.declaration.heads_attr if hasattr(mod, a)), None)
                if not isinstance(heads, int):
                    raise ModelError(f"{name}: no head count among {self.declaration.heads_attr} on "
                                     f"{type(mod).__name__}")
                out.append(Site(name=name, num_heads=heads, kind=sd.kind))
                seen.add(name)
        if not out:
            raise ModelError(f"declaration {self.name!r}: no attention module of {type(t).__name__} matches "
                             f"{[s.pattern for s in self.declaration.sites]}")
        return out

    def _decl_for(self, site: Site) -> SiteDecl:
        for sd in self.declaration.sites:
            if fnmatch.fnmatchcase(site.name, sd.pattern):
                return sd
        raise ModelError(f"{site.name} matches no site pattern of declaration {self.name!r}")

    def make_processor(self, site: Site, module: torch.nn.Module, state: EngineState) -> SiteProcessor:
        original = module.processor
        if isinstance(original, torch.nn.Module):
            raise ModelError(f"{site.name} runs {type(original).__name__}, an nn.Module processor (IP adapter?); "
                             f"the {self.name} declaration wraps plain processors only (unload it first)")
        if state.scope == "pag_mask" and self.declaration.layout is None:
            raise ModelError(f"scope 'pag_mask' needs the token layout, which declaration {self.name!r} does not "
                             "give; use scope 'joint'")
        return _wrapper_class(type(original))(site, original, state, self._decl_for(site), self)

    def prepare(self, state: EngineState, transformer: torch.nn.Module) -> None:
        state.cache["forward_params"] = list(inspect.signature(transformer.forward).parameters)
        state.cache["config"] = getattr(transformer, "config", None)
        state.cache["facts"] = {}

    def observe(self, state: EngineState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        facts_fn = self.declaration.facts
        if facts_fn is None:
            return
        bound = dict(zip(state.cache["forward_params"], args))
        bound.update(kwargs)
        bound["__config__"] = state.cache["config"]
        facts = facts_fn(bound)
        state.cache["facts"] = facts
        state.text_len = facts.get("text_len")
        state.grid = facts.get("grid")

    def call_layout(self, proc: SiteProcessor, frame: _Frame, q_len: int, k_len: int, index: int) -> CallLayout | None:
        """The declared layout of one attention call (ModelError when the declaration has none)."""
        layout_fn = self.declaration.layout
        if layout_fn is None:
            pert = proc.state.perturbation
            raise ModelError(f"{proc.site_name}: scope {proc.state.scope!r} / perturbation {pert.name!r} needs the "
                             f"token layout, which declaration {self.name!r} does not give; use scope 'joint' with "
                             "softpag, identity, drop or uniform")
        bound = proc._sig.bind(proc.original, *frame.args, **frame.kwargs)
        bound.apply_defaults()
        call_args = dict(bound.arguments)
        call_args.pop("self", None)
        call = AttentionCall(proc.site_name, proc.site.kind, call_args, proc.state.cache.get("facts", {}),
                             q_len, k_len, index)
        try:
            return layout_fn(call)
        except KeyError as err:
            raise ModelError(f"{proc.site_name}: the {self.name} layout needs {err.args[0]}") from None

    def layout_summary(self, model: Any, height: int | None = None, width: int | None = None) -> list[str]:
        return list(self.declaration.layout_lines) or [f"declared family {self.name!r}: "
                                                       f"{len(self.declaration.sites)} site pattern(s)"]


__all__ = ["DeclaredAdapter", "SiteProcessor", "rebound"]
