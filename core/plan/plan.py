"""The execution plan: head sets + guidance settings + the model's sites, compiled once.

Data flows one way: head set -> schema -> **plan** -> engine -> images. Everything the engine needs to
know about "what to perturb, how strongly, on which rows, with which guidance settings" is decided here,
on the host, when guidance is applied (or a search batch starts), and read by `apply`'s forward wrapper
and the search's batched loop without ever being re-derived:

- the branches: one per head set (or one per-sample branch whose row i has its own head set), each with
  its validated `GuidanceSettings` (scale w, step window, scope, cfg);
- per-site, per-row strengths for a batch layout (`Plan.strengths`): `{site: Tensor[B, H]}` built on the
  host once per layout and cached (a `StrengthMap`, so the attention processors know which samples and
  heads are non-zero without reading device memory);
- each row's first perturbed block (`Plan.first_block`), from the blocks the adapter declares, so rows
  equal up to a block are computed once (docs/engine.md, "Rows computed once");
- head sets with a schedule (strengths over intervals of the noise level sigma, docs/format.md): the
  plan's **segments** are the common refinement of every head set's intervals (`Plan.bounds`), and every
  per-step question above takes the step's segment (`Plan.segment_of(sigma)`, decided on the host from the
  scheduler's sigma): the strengths, the active branches and the first perturbed blocks are those of the
  head sets acting in that segment. `Plan.stable_strengths` gives a layout's strengths for every segment
  at once over the union of their sites, heads and rows, so a compiled transformer sees the same tensors
  at every step and a change of interval is an in-place copy (no recompilation).

Settings are validated once, by the schema's types (`headhunter.format.schema.validated`); a head set's fit to
the model (architecture, sites, head counts) is checked once, in `compile_plan`; strengths were
range-checked when the head set was made. Nothing after this module checks them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headhunter.errors import HeadSetError, ModelError
from headhunter.format.headset import HeadSet
from headhunter.format.schedule import FULL, interval_index, refine
from headhunter.format.schema import GuidanceSettings, PerturbationSpec, validated
from headhunter.format.sites import Site
from headhunter.plan.strengths import check_scope
from headhunter.plugin_system.registry import get_registry, model_name
from headhunter.plan.strengths import strength_map

_WINDOW = ("scale", "start", "stop")


@dataclass(frozen=True)
class Branch:
    """One perturbed branch: its head set and its guidance settings (scale w, step window [start, stop)).

    A per-sample branch (`apply(..., per_sample=True)`) has `per_row` instead of `headset`: conditional row
    i is perturbed by `per_row[i]`, and a None entry leaves that row unguided (its term is exactly 0).
    """

    headset: HeadSet | None
    guidance: GuidanceSettings
    per_row: tuple[HeadSet | None, ...] | None = None

    @property
    def scale(self) -> float:
        """The perturbation guidance scale w."""
        return self.guidance.scale

    @property
    def start(self) -> float:
        """Window start (fraction of the steps, inclusive)."""
        return self.guidance.start

    @property
    def stop(self) -> float:
        """Window stop (fraction of the steps, exclusive)."""
        return self.guidance.stop

    @property
    def guides(self) -> bool:
        """False when the branch cannot change anything (w = 0, or only unguided rows): it is never computed."""
        return self.scale != 0.0 and (self.per_row is None or any(hs is not None for hs in self.per_row))

    def row_headsets(self, rows: int) -> list[HeadSet | None]:
        """The head set of each of `rows` conditional rows (ModelError if a per-sample branch has another count)."""
        if self.per_row is None:
            return [self.headset] * rows
        if len(self.per_row) != rows:
            raise ModelError(f"per_sample=True was given {len(self.per_row)} head sets but the pipeline call has "
                             f"{rows} conditional rows (prompts x num_images_per_prompt); give one per row")
        return list(self.per_row)


def in_window(step: int, num_steps: int, start: float, stop: float) -> bool:
    """Whether step `step` (0-based) of `num_steps` is guided: `start <= step / num_steps < stop`
    (fractions of the number of steps; start inclusive, stop exclusive)."""
    return start <= step / num_steps < stop


class Plan:
    """Head sets + settings + the model's sites, compiled once (see the module docstring).

    Attributes: `sites` (the model's, paper order), `architecture`, `branches` (tuple of `Branch`),
    `perturbation` (the plugin instance), `scope`, `blocks` (the model's transformer blocks in execution
    order as the adapter declares them; empty when it does not) and `site_block` ({site: block index}).
    A plan holds its head sets; treat it as immutable.
    """

    def __init__(self, sites: Sequence[Site], architecture: str, branches: Sequence[Branch], perturbation: Any,
                 scope: str, blocks: Sequence[str] = ()) -> None:
        self.sites = list(sites)
        self.architecture = architecture
        self.branches = tuple(branches)
        self.perturbation = perturbation
        self.scope = scope
        self.blocks = tuple(blocks)
        self.site_block = _site_blocks(self.sites, self.blocks)
        self._dense: dict[int, dict[str, np.ndarray]] = {}  # id(head set) -> dense rows; the plan holds them
        self._cache: dict[tuple, Any] = {}
        given = [hs for b in self.branches for hs in (b.per_row or (b.headset,)) if hs is not None]
        #: The segments of sigma in [0, 1]: the common refinement of every head set's schedule ((0, 1): none).
        self.bounds = refine(FULL, *(hs.bounds for hs in given))
        self._pieces: dict[tuple[int, int], HeadSet | None] = {}  # (id(head set), segment) -> what acts there

    # ----- schedules -------------------------------------------------------------------------------------------
    @property
    def scheduled(self) -> bool:
        """Whether any head set of the plan holds a schedule (more than one segment)."""
        return len(self.bounds) > 2

    @property
    def segments(self) -> int:
        """Number of segments of sigma (1 without schedules)."""
        return len(self.bounds) - 1

    def segment_of(self, sigma: float) -> int:
        """The segment holding noise level `sigma` in [0, 1] (0 without schedules). ValueError outside [0, 1]."""
        return interval_index(self.bounds, sigma) if self.scheduled else 0

    def piece(self, headset: HeadSet | None, segment: int = 0) -> HeadSet | None:
        """The head set (without a schedule) `headset` acts with in `segment`; None when it has no heads there."""
        if headset is None or not headset.scheduled:
            return headset
        key = (id(headset), segment)
        if key not in self._pieces:
            at = headset.at(self.bounds[segment])
            self._pieces[key] = at if len(at) else None
        return self._pieces[key]

    def branch_rows(self, j: int, rows: int, segment: int = 0) -> list[HeadSet | None]:
        """The head set acting on each of branch j's `rows` rows in `segment` (None: unperturbed there)."""
        return [self.piece(hs, segment) for hs in self.branches[j].row_headsets(rows)]

    # ----- what runs at a step -----------------------------------------------------------------------
    def active(self, step: int, total: int, segment: int = 0, *, every_segment: bool = False) -> tuple[int, ...]:
        """Indices of the branches that run at step `step` of `total` (w != 0, inside their window) in
        `segment` of the schedule: a branch whose head sets have no heads in that segment does not run,
        unless `every_segment` (a compiled transformer: the batch keeps its size across intervals)."""
        return tuple(j for j, b in enumerate(self.branches) if b.guides and in_window(step, total, b.start, b.stop)
                     and (every_segment or not self.scheduled or self._acts(j, segment)))

    def _acts(self, j: int, segment: int) -> bool:
        key = ("acts", j, segment)
        if key not in self._cache:
            b = self.branches[j]
            self._cache[key] = any(self.piece(hs, segment) is not None for hs in (b.per_row or (b.headset,)))
        return self._cache[key]

    def group_rows(self, groups: Sequence[int], rows: int, segment: int = 0) -> list[HeadSet | None]:
        """The head set of every row of a batch made of `len(groups)` groups of `rows` rows each: group g is
        perturbed by branch `groups[g]` (what acts in `segment`), or by nothing when it is -1."""
        per_row: list[HeadSet | None] = []
        for j in groups:
            per_row += [None] * rows if j < 0 else self.branch_rows(j, rows, segment)
        return per_row

    def strengths(self, groups: Sequence[int], rows: int, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32, segment: int = 0) -> Any:
        """`{site: Tensor[len(groups) * rows, H]}` (a `StrengthMap`) for the batch layout of `group_rows` in
        `segment`; built on the host once per layout, segment, device and dtype, then reused (no per-step
        allocation or sync)."""
        key = ("strengths", tuple(groups), rows, str(device), dtype, segment)
        if key not in self._cache:

            dense = [{} if hs is None else self._dense_of(hs) for hs in self.group_rows(groups, rows, segment)]
            self._cache[key] = strength_map(dense, self.sites, device=device, dtype=dtype)
        return self._cache[key]

    def stable_strengths(self, groups: Sequence[int], rows: int, device: torch.device | str | None = None,
                         dtype: torch.dtype = torch.float32) -> Any:
        """The layout's strengths for every segment at once (a `SegmentedStrengthMap`): its sites, heads and
        samples are the union over the segments, `tables[site]` is `[segments, B, H]`, and `select(segment)`
        picks the one the next forwards use; the installation copies it in place into the same tensors. Built
        on the host once per layout; what a compiled transformer is given, so changing intervals recompiles
        nothing."""
        key = ("stable", tuple(groups), rows, str(device), dtype)
        if key not in self._cache:
            from headhunter.plan.strengths import segmented_strength_map

            dense = [[{} if hs is None else self._dense_of(hs) for hs in self.group_rows(groups, rows, k)]
                     for k in range(self.segments)]
            self._cache[key] = segmented_strength_map(dense, self.sites, device=device, dtype=dtype)
        return self._cache[key]

    def row_scale(self, j: int, rows: int, like: torch.Tensor) -> float | torch.Tensor:
        """Branch j's scale w: a number, or for a per-sample branch a `[rows, 1, ...]` tensor shaped for
        `like` (0 for unguided rows), made once per layout."""
        branch = self.branches[j]
        if branch.per_row is None:
            return branch.scale
        key = ("scale", j, rows, like.ndim, str(like.device), like.dtype)
        if key not in self._cache:
            values = [0.0 if hs is None else branch.scale for hs in branch.row_headsets(rows)]
            shape = (rows,) + (1,) * (like.ndim - 1)
            self._cache[key] = torch.tensor(values, dtype=like.dtype).view(shape).to(like.device)
        return self._cache[key]

    # ----- where rows first differ ---------------------------------------------------------------------
    def first_block(self, headset: HeadSet | None) -> int:
        """Index (into `blocks`) of the first block holding a head `headset` perturbs with a non-zero
        strength; `len(blocks)` when it perturbs nothing (or the adapter declares no blocks: then 0 for
        any head set, i.e. every block computes every row)."""
        if headset is None:
            return len(self.blocks)
        if not self.blocks:
            return 0
        if headset.scheduled:
            raise HeadSetError(f"first_block takes what acts in one segment (Plan.piece), not the scheduled head set "
                               f"{headset.name!r}")
        dense = self._dense_of(headset)
        firsts = [self.site_block[site] for site, vec in dense.items() if vec.any()]
        return min(firsts) if firsts else len(self.blocks)

    def branch_start(self, j: int, rows: int, segment: int = 0) -> int:
        """The earliest first perturbed block over branch j's `rows` rows in `segment` (`len(blocks)`: none
        perturbs)."""
        key = ("start", j, rows, segment)
        if key not in self._cache:
            self._cache[key] = min(self.first_block(hs) for hs in self.branch_rows(j, rows, segment))
        return self._cache[key]

    def _dense_of(self, headset: HeadSet) -> dict[str, np.ndarray]:
        key = id(headset)
        if key not in self._dense:
            self._dense[key] = headset.dense()
        return self._dense[key]

    def __repr__(self) -> str:
        parts = []
        for b in self.branches:
            name = b.headset.name if b.headset is not None else f"{len(b.per_row or ())} per-sample head sets"
            parts.append(f"{name} (w={b.scale:g}, window [{b.start:g}, {b.stop:g}))")
        if self.scheduled:
            parts.append(f"{self.segments} segments of sigma")
        return f"Plan({self.architecture}: {'; '.join(parts)}; {self.perturbation!r}, scope={self.scope})"


def _site_blocks(sites: Sequence[Site], blocks: Sequence[str]) -> dict[str, int]:
    """{site name: index of the declared block that contains it} (a block `b` contains site `b.x...`)."""
    if not blocks:
        return {}
    out = {}
    for site in sites:
        owner = [i for i, b in enumerate(blocks) if site.name.startswith(b + ".")]
        if len(owner) != 1:
            raise ModelError(f"site {site.name!r} lies in {len(owner)} of the adapter's declared blocks "
                             f"({', '.join(blocks[:3])}, ...); each site must lie in exactly one")
        out[site.name] = owner[0]
    return out


# ----- compiling ------------------------------------------------------------------------------------------
def compile_plan(
    model: Any,
    headsets: HeadSet | Sequence[HeadSet | None],
    *,
    settings: GuidanceSettings | Sequence[GuidanceSettings] | None = None,
    scale: float | Sequence[float] | None = None,
    start: float | Sequence[float] | None = None,
    stop: float | Sequence[float] | None = None,
    scope: str | None = None,
    perturbation: str | PerturbationSpec | Any | None = None,
    perturbation_params: Mapping[str, Any] | None = None,
    per_sample: bool = False,
    adapter: Any = None,
    registry: Any = None,
) -> Plan:
    """Compile head sets and settings for `model` (a pipeline or a transformer) into a `Plan`.

    - `headsets`: one HeadSet or a list; each list entry is its own branch, or with `per_sample=True`
      one branch whose row i uses `headsets[i]` (None: an unguided row).
    - Settings per branch: `settings` (a `GuidanceSettings`, or one per head set) overrides the head sets'
      recommended `metadata.guidance` wholesale; `scale`, `start`, `stop` (one number, or one per head
      set) override single fields; `scope` overrides the scope. With none of these, each head set's
      recommendation is used; a per-sample branch and the scope need the head sets to agree.
    - `perturbation`: a registered name (with `perturbation_params`), a `PerturbationSpec` or a
      Perturbation instance; None takes the head sets' metadata (which must agree).
    - Head sets with a schedule compile into the plan's segments (`Plan.bounds`, `Plan.segment_of`); the
      step's segment selects the strengths (module docstring).

    Raises HeadSetError naming the bad value (and what is allowed) or the mismatching head set, and
    PluginError for an unknown perturbation or bad parameters, before anything is installed.
    """
    registry = registry or get_registry()
    adapter = adapter or registry.adapter_for(model)
    items = _headset_list(headsets, per_sample)
    sites = adapter.sites(model)
    given = _unique([hs for hs in items if hs is not None])
    for hs in given:  # the one fit check
        hs.validate_against(sites, adapter.architecture, base_model=model_name(model))
    names = [hs.name for hs in given]
    if isinstance(settings, GuidanceSettings):
        settings = [settings] * (1 if per_sample else len(items))
    if settings is not None:
        settings = list(settings)
        wanted = 1 if per_sample else len(items)
        if len(settings) != wanted or not all(isinstance(s, GuidanceSettings) for s in settings):
            raise HeadSetError(f"settings= needs one GuidanceSettings for all or one per head set ({wanted}); "
                               f"got {settings!r}")
    if scope is None:
        if settings is not None:
            scope = common_setting([s.scope for s in settings], "scope", [f"settings[{i}]" for i in range(len(settings))])
        else:
            scope = common_setting([hs.metadata.guidance.scope for hs in given], "scope", names) if given else "joint"
    scope = validated(GuidanceSettings, HeadSetError, scope=scope).scope
    resolved = resolve_perturbation(perturbation, perturbation_params, given, names, registry)
    check_scope(resolved, scope)
    branches = _branches(items, settings, scale, start, stop, scope, per_sample, given, names)
    return Plan(sites, adapter.architecture, branches, resolved, scope, _declared_blocks(adapter, model))


def resolve_branches(
    headsets: HeadSet | Sequence[HeadSet | None],
    scale: float | Sequence[float] | None = None,
    start: float | Sequence[float] | None = None,
    stop: float | Sequence[float] | None = None,
    per_sample: bool = False,
    scope: str | None = None,
) -> list[Branch]:
    """The branches alone, without a model (what `compile_plan` makes them with): one per head set, or
    (`per_sample`) one branch whose row i uses headsets[i]. Settings left as None take the head sets'
    recommendation (which must agree for a per-sample branch and for the scope). HeadSetError names a bad
    value and what is allowed."""
    items = _headset_list(headsets, per_sample)
    given = _unique([hs for hs in items if hs is not None])
    names = [hs.name for hs in given]
    if scope is None:
        scope = common_setting([hs.metadata.guidance.scope for hs in given], "scope", names) if given else "joint"
    scope = validated(GuidanceSettings, HeadSetError, scope=scope).scope
    return _branches(items, None, scale, start, stop, scope, per_sample, given, names)


def _declared_blocks(adapter: Any, model: Any) -> tuple[str, ...]:
    blocks = getattr(adapter, "blocks", None)
    return tuple(blocks(model)) if callable(blocks) else ()


def _branches(items: list[HeadSet | None], settings: list[GuidanceSettings] | None, scale: Any, start: Any,
              stop: Any, scope: str, per_sample: bool, given: list[HeadSet], names: list[str]) -> list[Branch]:
    overrides = {"scale": scale, "start": start, "stop": stop}
    if per_sample:
        for name, value in overrides.items():
            if value is not None and not isinstance(value, (int, float)):
                raise HeadSetError(f"{name}= must be one number with per_sample=True, got {value!r}")
        if settings is not None:
            base = settings[0].model_dump()
        elif given:
            base = {k: common_setting([getattr(hs.metadata.guidance, k) for hs in given], k, names)
                    for k in (*_WINDOW, "cfg") if overrides.get(k) is None}
        else:
            base = {}
        values = {**base, **{k: v for k, v in overrides.items() if v is not None}, "scope": scope}
        guidance = validated(GuidanceSettings, HeadSetError, **values)
        return [Branch(None, guidance, per_row=tuple(items))]
    per = {k: _per_headset(v, k, items) for k, v in overrides.items()}
    branches = []
    for i, hs in enumerate(items):
        base = (settings[i] if settings is not None else hs.metadata.guidance).model_dump()
        values = {**base, **{k: per[k][i] for k in per if per[k][i] is not None}, "scope": scope}
        try:
            guidance = validated(GuidanceSettings, HeadSetError, **values)
        except HeadSetError as exc:
            raise HeadSetError(f"head set {hs.name!r}: {exc}") from None
        branches.append(Branch(hs, guidance))
    return branches


def _per_headset(value: Any, name: str, headsets: Sequence[Any]) -> list[Any]:
    if value is None or isinstance(value, (int, float)):
        return [value] * len(headsets)
    values = list(value)
    if len(values) != len(headsets):
        raise HeadSetError(f"{name}= has {len(values)} values for {len(headsets)} head sets; "
                           f"pass one number for all, or one per head set")
    return values


def _headset_list(headsets: HeadSet | Sequence[HeadSet | None], per_sample: bool) -> list[HeadSet | None]:
    items = [headsets] if isinstance(headsets, HeadSet) else list(headsets)
    if not items:
        raise HeadSetError("apply() needs at least one head set")
    for item in items:
        if item is None and per_sample:
            continue  # an unguided row
        if not isinstance(item, HeadSet):
            hint = " (None marks an unguided row only with per_sample=True)" if item is None else ""
            raise HeadSetError(f"expected a HeadSet (see headhunter.load_headset), got {type(item).__name__}{hint}")
        if len(item) == 0:
            raise HeadSetError(f"head set {item.name!r} selects no heads; nothing to guide with")
    return items


def _unique(headsets: list[HeadSet]) -> list[HeadSet]:
    """Each head set object once (a search batch repeats one head set for all its prompt-seed pairs)."""
    seen: dict[int, HeadSet] = {}
    for hs in headsets:
        seen.setdefault(id(hs), hs)
    return list(seen.values())


def common_setting(values: Sequence[Any], what: str, names: Sequence[str]) -> Any:
    """The one value every head set asks for; HeadSetError naming the two that differ."""
    first = values[0]
    for value, name in zip(values[1:], names[1:]):
        if value != first:
            raise HeadSetError(f"head sets {names[0]!r} and {name!r} ask for different {what} ({first} vs {value}); "
                               f"pass {what}= to apply() to choose one for all")
    return first


def resolve_perturbation(perturbation: Any = None, params: Mapping[str, Any] | None = None,
                         headsets: Sequence[HeadSet] = (), names: Sequence[str] = (), registry: Any = None) -> Any:
    """The one place a perturbation is resolved, for apply, compile_plan, the guider and `install`.

    `perturbation`: a Perturbation instance (no `params` then), a registered name (with `params`), a
    `PerturbationSpec`, or None: the one the head sets' metadata name (they must agree; `names` label them
    in the error), else softpag. HeadSetError for a bad combination, PluginError for an unknown name or bad
    parameters (from the registry)."""
    registry = registry if registry is not None else get_registry()
    if isinstance(perturbation, PerturbationSpec):
        if params:
            raise HeadSetError("perturbation_params= goes with a perturbation name, not a PerturbationSpec")
        return registry.perturbation(perturbation.name, **perturbation.params)
    if perturbation is None:
        if params:
            raise HeadSetError("perturbation_params= needs perturbation=<name>")
        specs = [(hs.metadata.perturbation.name, hs.metadata.perturbation.params) for hs in headsets]
        name, from_meta = common_setting(specs, "perturbation", names) if specs else ("softpag", {})
        return registry.perturbation(name, **from_meta)
    if isinstance(perturbation, str):
        return registry.perturbation(perturbation, **dict(params or {}))
    if params:
        raise HeadSetError("perturbation_params= goes with a perturbation name, not an instance")
    if not callable(getattr(perturbation, "target", None)):
        raise HeadSetError(f"perturbation={perturbation!r} must be a registered name or a Perturbation instance")
    return perturbation


__all__ = ["Branch", "Plan", "common_setting", "compile_plan", "in_window", "resolve_branches", "resolve_perturbation"]
