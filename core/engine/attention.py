"""The engine inside attention: perturbing processors, their installation, and per-sample strengths.

For a perturbed head of sample b with strength u = strengths[site][b, h] (paper Eq. 7, any target T):

    out = O + u (T·V - O),   O = the model's own attention output, T·V from the perturbation plugin,

on the query rows the scope selects. A site absent from the strengths runs the model's original processor
object (bit-identical); a sample with u = 0 in a perturbed batch gets exactly O.

The hot-path rule: nothing here calls `.item()`, `.any()`, `bool()` or `.nonzero()` on a device tensor
inside an attention call. Which sites and heads are perturbed is decided on the host in `set_strengths`;
the strengths themselves stay device tensors that the attention calls only read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Callable

import torch

from headhunter.engine.reference import reference_attention
from headhunter.contracts.adapter import ModelAdapter, TokenLayout
from headhunter.errors import HeadSetError, ModelError, PluginError
from headhunter.contracts.perturbation import Perturbation
from headhunter.plan.plan import resolve_perturbation
from headhunter.format.sites import Site
from headhunter.format.headset import HeadSet
from headhunter.plan.strengths import SegmentedStrengthMap, SiteStrength, StrengthMap, batch_strengths, check_scope

MODES = ("fast", "reference")


class EngineState:
    """What the processors of one installation share: the perturbation, scope, strengths, layout facts."""

    def __init__(self, perturbation: Perturbation, scope: str, mode: str) -> None:
        self.perturbation = perturbation
        self.scope = scope
        self.mode = mode
        self.active: dict[str, SiteStrength] = {}
        #: Set by the adapter's `observe` before each forward (FLUX single-stream text length, image grid).
        self.text_len: int | None = None
        self.grid: tuple[int, int] | None = None
        #: reference-image tokens after (or, Wan VACE, before) the target image's in this forward (edit pipelines)
        self.ref_len: int = 0
        #: Free space for adapters (e.g. a cache of the grid read from FLUX's img_ids).
        self.cache: dict[str, Any] = {}


def needs_target_layout(state: EngineState) -> bool:
    """Whether the perturbed rows depend on where the target image's tokens are (scope `image`/`pag_mask`, a
    target on image rows only such as blur, or the image grid): only then does an adapter read reference-token
    positions from device tensors (FLUX `img_ids`); joint scope with an all-rows target perturbs every row."""
    pert = state.perturbation
    return state.scope != "joint" or pert.rows != "all" or bool(pert.needs_grid)


class PerturbingProcessor:
    """Base of the processors adapters install: wraps the model's original processor object for one site.

    Subclasses implement `__call__` with the original's signature: when `self.strength` (this site's
    `SiteStrength`, set by the installation; None: not perturbed) is None they call `self.original`
    unchanged; otherwise they reproduce the original computation and route the attention call through
    `attend`. Read `self.strength`, not `self.state.active.get(self.site_name)` (which holds the same entry):
    under torch.compile a lookup by the site's name is guarded on that name, so blocks that share one code
    object (regional compilation, and the per-block frames of a compiled transformer whose rows are shared,
    `headhunter.engine.fanout`) would each compile a graph of their own, up to dynamo's recompile limit.
    """

    def __init__(self, site: Site, original: Any, state: EngineState) -> None:
        self.site = site
        self.site_name = site.name
        self.original = original
        self.state = state
        self.strength: SiteStrength | None = None

    # diffusers' `set_attention_backend` / context parallelism read and write these two attributes on a
    # processor (`hasattr(processor, "_attention_backend")`): they reach the wrapped processor, so a backend
    # set before or after installation is the one the model's own attention call uses. Where the original
    # processor has no such attribute (SD3's JointAttnProcessor2_0), neither has the wrapper.
    @property
    def _attention_backend(self) -> Any:
        return self.original._attention_backend

    @_attention_backend.setter
    def _attention_backend(self, backend: Any) -> None:
        self.original._attention_backend = backend

    @property
    def _parallel_config(self) -> Any:
        return self.original._parallel_config

    @_parallel_config.setter
    def _parallel_config(self, config: Any) -> None:
        self.original._parallel_config = config

    def attend(
        self,
        entry: SiteStrength,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layout: TokenLayout,
        attention: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """Perturbed attention output [B, H, S, D]; `q, k, v` [B, H, S, D] (views are fine), `attention()`
        returns the model's own output O in the same layout."""
        state = self.state
        if entry.u.shape != (q.shape[0], q.shape[1]):
            raise ModelError(
                f"strengths for {self.site_name} have shape {list(entry.u.shape)} but this forward has batch "
                f"{q.shape[0]} and {q.shape[1]} heads; give one row per batch element (CFG doubles the batch)"
            )
        if state.mode == "reference":
            return reference_attention(q, k, v, entry.u, layout, state.perturbation, state.scope).to(q.dtype)
        return mix(attention(), q, k, v, entry, layout, state.perturbation, state.scope)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(site={self.site_name!r}, original={type(self.original).__name__})"


def mix(
    out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    entry: SiteStrength,
    layout: TokenLayout,
    perturbation: Perturbation,
    scope: str,
) -> torch.Tensor:
    """`O + u (T·V - O)` per sample and head on the scope's rows (paper Eq. 7 applied to A·V)."""
    if entry.u_sub is not None and (perturbation.heavy or scope == "pag_mask"):
        samples, heads = entry.samples, entry.heads
        part = [_pick(t, samples, heads) for t in (out, q, k, v)]
        mixed = _mix_rows(*part, entry.u_sub, layout, perturbation, scope)
        if samples is None:
            return out.index_copy(1, heads, mixed)
        if heads is not None:
            mixed = out.index_select(0, samples).index_copy(1, heads, mixed)
        return out.index_copy(0, samples, mixed)
    return _mix_rows(out, q, k, v, entry.u, layout, perturbation, scope)


def _pick(t: torch.Tensor, samples: torch.Tensor | None, heads: torch.Tensor | None) -> torch.Tensor:
    if samples is not None:
        t = t.index_select(0, samples)
    return t if heads is None else t.index_select(1, heads)


def _mix_rows(out, q, k, v, u, layout, perturbation, scope) -> torch.Tensor:
    w = u.to(out.dtype)[:, :, None, None]
    all_rows = scope == "joint" and perturbation.rows == "all"
    if scope == "pag_mask":
        _no_references_with_pag_mask(layout)
        tv = self_and_text_attention(q, k, v, layout)
    else:
        tv = perturbation.target(q, k, v, layout)
        _check_target(tv, out, layout, perturbation)
        if not all_rows and perturbation.rows == "all":
            tv = tv[:, :, layout.image_slice]
    tv = tv.to(out.dtype)
    if all_rows or (layout.text_len == 0 and layout.ref_len == 0):
        return torch.lerp(out, tv, w)  # out + w (tv - out): exactly out where w = 0, exactly tv where w = 1
    # only the target image's rows: text and reference-image rows are the model's own output, bit for bit
    rows = layout.image_slice
    mixed = torch.lerp(out[:, :, rows], tv, w)
    parts = [out[:, :, :rows.start], mixed, out[:, :, rows.stop:]]
    return torch.cat([p for p in parts if p.shape[2]], dim=2)


def _no_references_with_pag_mask(layout: TokenLayout) -> None:
    if layout.ref_len:
        raise ModelError(
            f"scope='pag_mask' is not defined with reference-image tokens ({layout.ref_len} here, an edit or "
            "reference pipeline): which keys a target query may still see is ambiguous; use scope='image' "
            "(target rows perturbed, references left as they are) or scope='joint'")


def _check_target(tv: torch.Tensor, out: torch.Tensor, layout: TokenLayout, perturbation: Perturbation) -> None:
    rows = out.shape[2] if perturbation.rows == "all" else layout.image_len
    want = (out.shape[0], out.shape[1], rows, out.shape[3])
    if tuple(tv.shape) != want:
        raise PluginError(
            f"perturbation {perturbation.name!r} returned T·V of shape {list(tv.shape)}; expected {list(want)} "
            f"(rows={perturbation.rows!r})"
        )


def self_and_text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """The `pag_mask` target for image rows [B, H, image_len, D]: each image query attends to its own key and
    every text key (diffusers' PAG mask), computed with an image x text map, never image x image."""
    img, txt = layout.image_slice, layout.text_slice
    qi, ki, vi = q[:, :, img], k[:, :, img], v[:, :, img]
    if layout.text_len == 0:
        return vi
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    scale = q.shape[-1] ** -0.5
    qi_c = qi.to(compute)
    own = (qi_c * ki.to(compute)).sum(dim=-1, keepdim=True) * scale
    cross = torch.matmul(qi_c, k[:, :, txt].to(compute).transpose(-1, -2)) * scale
    p = torch.softmax(torch.cat([own, cross], dim=-1), dim=-1)
    res = p[..., :1] * vi.to(compute) + torch.matmul(p[..., 1:], v[:, :, txt].to(compute))
    return res.to(q.dtype)


class Installation:
    """Perturbing processors installed on every site of one model; a context manager (`remove` on exit).

    Strengths start absent, so the model computes exactly as before until `set_strengths` (or the
    `strengths(...)` context manager) says which samples and heads to perturb.
    """

    def __init__(
        self, adapter: ModelAdapter, model: Any, perturbation: Perturbation | str, scope: str = "joint",
        *, mode: str = "fast",
    ) -> None:
        pert = resolve_perturbation(perturbation)
        check_scope(pert, scope)
        if mode not in MODES:
            raise ModelError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
        self.adapter = adapter
        self.architecture = adapter.architecture
        self.model = model
        self.transformer = adapter.transformer(model)
        self.sites: list[Site] = adapter.sites(model)
        self.perturbation = pert
        self.scope = scope
        self._state = EngineState(pert, scope, mode)
        self._by_name = {s.name: s for s in self.sites}
        self._originals: dict[str, Any] = {}
        adapter.prepare(self._state, self.transformer)
        processors = {}
        for site in self.sites:
            module = adapter.site_module(model, site.name)
            if isinstance(module.processor, PerturbingProcessor):
                raise ModelError(
                    f"headhunter processors are already installed on {site.name}; remove() the other "
                    "installation (or leave its `with` block) first"
                )
            processors[site.name] = (module, adapter.make_processor(site, module, self._state))
        self._processors = {name: processor for name, (_, processor) in processors.items()}
        for name, (module, processor) in processors.items():
            self._originals[name] = module.processor
            _set_processor(module, processor)
        self._hooks = [expert.register_forward_pre_hook(self._observe, with_kwargs=True)
                       for expert in adapter.experts(model).values()]
        self._removed = False

    # ----- strengths ----------------------------------------------------------------------------------------
    def set_strengths(self, strengths: Mapping[str, torch.Tensor] | None) -> None:
        """Per-site strengths `{site: Tensor[B, H]}` for the following forwards; a site left out (or None for
        all) runs the stock code path. CPU tensors are checked and moved to the model's device here.

        A `SegmentedStrengthMap` (a schedule's strengths for every segment, `Plan.stable_strengths`) is
        prepared once into tensors of its own and, at every later call, its selected segment is copied into
        those same tensors in place (device to device, only when the segment changed): the forwards always
        read the same tensors, so a compiled transformer does not recompile when the interval changes."""
        self._require_installed()
        if strengths is None:
            self._activate({})
            return
        device, dtype = _device_dtype(self.transformer)
        if isinstance(strengths, StrengthMap):
            key = (self._state, device, dtype)  # the state itself, so a later installation never shares a key
            segmented = isinstance(strengths, SegmentedStrengthMap)
            if key not in strengths.prepared:
                prepared = self._prepare(strengths, device, dtype, trusted=True)
                if segmented:
                    prepared = {name: SiteStrength(e.u.clone(), e.samples, e.heads,
                                                   None if e.u_sub is None else e.u_sub.clone())
                                for name, e in prepared.items()}  # buffers of our own, written in place
                    strengths.device_tables[key] = [self._segment_tables(strengths, prepared, device, dtype), 0]
                strengths.prepared[key] = prepared
            if segmented:
                self._select_segment(strengths, key)
            self._activate(strengths.prepared[key])
        else:
            self._activate(self._prepare(strengths, device, dtype, trusted=False))

    def _activate(self, active: dict[str, SiteStrength]) -> None:
        """`active` for the following forwards: on the state and, per site, on its processor (`strength`)."""
        if not active and not self._state.active:
            return
        self._state.active = active
        for name, processor in self._processors.items():
            object.__setattr__(processor, "strength", active.get(name))

    def _segment_tables(self, strengths: SegmentedStrengthMap, prepared: dict[str, SiteStrength],
                        device: torch.device, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Per site: the applied strengths of every segment `[S, B, H]` and of its picked sub-batch (device)."""
        tables = {}
        for name, entry in prepared.items():
            table = self.perturbation.strengths(strengths.tables[name].to(device=device, dtype=dtype))
            sub = None
            if entry.u_sub is not None:
                sub = table if entry.samples is None else table.index_select(1, entry.samples)
                sub = sub if entry.heads is None else sub.index_select(2, entry.heads)
            tables[name] = (table, sub)
        return tables

    def _select_segment(self, strengths: SegmentedStrengthMap, key: Any) -> None:
        """Copy the selected segment's strengths into the prepared tensors, in place (no sync, no new tensor)."""
        state = strengths.device_tables[key]
        if state[1] == strengths.segment:
            return
        prepared = strengths.prepared[key]
        for name, (table, sub) in state[0].items():
            entry = prepared[name]
            entry.u.copy_(table[strengths.segment])
            if entry.u_sub is not None:
                entry.u_sub.copy_(sub[strengths.segment])
        state[1] = strengths.segment

    @contextmanager
    def strengths(self, strengths: Mapping[str, torch.Tensor] | None) -> Iterator[Installation]:
        """Strengths for the forwards inside the `with` block only; the previous ones come back after."""
        previous = self._state.active
        self.set_strengths(strengths)
        try:
            yield self
        finally:
            self._activate(previous)

    def batch_strengths(self, rows: Sequence[HeadSet | None], repeat: int = 1) -> StrengthMap:
        """`batch_strengths` for this model's sites and architecture (validated), as CPU tensors."""
        return batch_strengths(rows, self.sites, repeat=repeat, architecture=self.architecture)

    def validate(self, headset: HeadSet) -> None:
        """Raise HeadSetError if `headset` does not fit this model (sites, head counts, architecture)."""
        headset.validate_against(self.sites, self.architecture)

    @property
    def active_sites(self) -> list[str]:
        """The sites that currently run the perturbing code path."""
        return list(self._state.active)

    @property
    def layout(self) -> dict[str, Any]:
        """Layout facts recorded at the last perturbed forward (text length, image grid)."""
        return {"text_len": self._state.text_len, "grid": self._state.grid}

    # ----- life cycle ---------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Put the original processor objects back and drop the hook: outputs are bit-identical to stock."""
        if self._removed:
            return
        for name, original in self._originals.items():
            _set_processor(self.adapter.site_module(self.model, name), original)
        for hook in self._hooks:
            hook.remove()
        self._activate({})
        self._removed = True

    def __enter__(self) -> Installation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._removed else f"{len(self._state.active)} active sites"
        return (f"Installation({self.adapter.name}, {self.perturbation!r}, scope={self.scope!r}, "
                f"{len(self.sites)} sites, {state})")

    # ----- internals ----------------------------------------------------------------------------------------
    def _observe(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._state.active:
            self.adapter.observe(self._state, args, kwargs)

    def _require_installed(self) -> None:
        if self._removed:
            raise ModelError("this installation was removed; install again with headhunter.engine.attention.install(adapter, model, ...)")

    def _prepare(self, strengths: Mapping[str, Any], device: torch.device, dtype: torch.dtype,
                 trusted: bool) -> dict[str, SiteStrength]:
        heads = getattr(strengths, "heads", {})
        samples = getattr(strengths, "samples", {})
        active = {}
        for name, value in strengths.items():
            entry = self._entry(name, value, heads.get(name), samples.get(name), device, dtype, trusted)
            if entry is not None:
                active[name] = entry
        return active

    def _entry(self, name: str, value: Any, heads: list[int] | None, samples: list[int] | None,
               device: torch.device, dtype: torch.dtype, trusted: bool) -> SiteStrength | None:
        site = self._by_name.get(name)
        if site is None:
            raise HeadSetError(
                f"unknown site {name!r} in strengths; this model has {len(self.sites)} sites, e.g. "
                f"{', '.join(s.name for s in self.sites[:3])}"
            )
        u = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if u.ndim != 2 or u.shape[1] != site.num_heads:
            raise HeadSetError(
                f"strengths for {name} have shape {list(u.shape)}; expected [batch, {site.num_heads}]"
            )
        if u.device.type == "cpu" and (not trusted or heads is None or samples is None):
            # host-side: checking and picking reads no device memory
            bad = ~((u >= 0) & (u <= 1))
            if bool(bad.any()):
                raise HeadSetError(f"strengths for {name} must be in [0, 1]; got {u[bad][0].item()!r}")
            nonzero = u != 0
            heads = torch.nonzero(nonzero.any(dim=0)).flatten().tolist()
            samples = torch.nonzero(nonzero.any(dim=1)).flatten().tolist()
        if heads is not None and not heads:
            return None  # all zero: the stock code path
        u = self.perturbation.strengths(u.to(device=device, dtype=dtype))
        pick_heads = _index(heads, site.num_heads, device)
        pick_samples = _index(samples, u.shape[0], device)
        if pick_heads is None and pick_samples is None:
            return SiteStrength(u, None, None, None)
        return SiteStrength(u, pick_samples, pick_heads, _pick(u, pick_samples, pick_heads))


def install(
    adapter: ModelAdapter, model: Any, perturbation: Perturbation | str = "softpag", scope: str = "joint", *,
    mode: str = "fast",
) -> Installation:
    """Install `adapter`'s perturbing processors on every site of `model`; strengths start absent (stock output).

    `scope`: joint | image | pag_mask (docs/engine.md). `mode="reference"` computes every perturbed site with
    the explicit float64 attention map instead (tests only; slow). Returns the Installation (a context
    manager; `remove()` restores the original processors).
    """
    return Installation(adapter, model, perturbation, scope, mode=mode)


def _set_processor(module: torch.nn.Module, processor: Any) -> None:
    """diffusers' `set_processor` where the attention module has one; else the attribute (MochiAttention)."""
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


def _index(chosen: list[int] | None, size: int, device: torch.device) -> torch.Tensor | None:
    """A device index tensor for a strict subset of range(size), None for all (or unknown)."""
    if chosen is None or len(chosen) == size:
        return None
    return torch.tensor(chosen, dtype=torch.long, device=device)


def _device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model computes: its first parameter's device and dtype. Under accelerate's sequential
    offload the parameters wait on the `meta` device; the execution device is then the offload hook's."""
    dtype, device = torch.float32, None
    for p in module.parameters():
        dtype = p.dtype
        if p.device.type != "meta":
            return p.device, p.dtype
        break
    for sub in module.modules():
        device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device), dtype
    return torch.device("cpu"), dtype


__all__ = [
    "EngineState",
    "Installation",
    "MODES",
    "PerturbingProcessor",
    "install",
    "mix",
    "needs_target_layout",
    "self_and_text_attention",
]
