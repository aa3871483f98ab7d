"""HeadSet: a sparse map site -> per-head strength u in [0, 1], plus the metadata that makes it shareable.

A head set is what HeadHunter finds and what `apply` uses. On disk it is a safetensors file with one
float32 tensor `[num_heads]` per site that has at least one non-zero strength, keyed by the site name,
and the metadata JSON under the header key `headhunter` (docs/format.md is the specification).

A head set may hold a **schedule**: one strength map per interval of the flow-matching noise level sigma
in [0, 1] (`headhunter.format.schedule`). Such a file is format 2.0, one tensor per (site, interval) keyed
`<site>@<k>`; a head set without a schedule is one full-range interval and is still written as format 1.0.
"""

from __future__ import annotations

import json
import tempfile
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
from pydantic import ValidationError

import headhunter.format.headset_io as io
import headhunter.format.hub as hub
import headhunter.format.model_card as model_card
from headhunter._version import __version__
from headhunter.errors import HeadSetError
from headhunter.format.schedule import (FULL, Interval, bounds_of, check_interval, format_interval, interval_index,
                                        intervals_of, parse_item, refine, runs, split_items)
from headhunter.format.schema import (CONSTANT_FORMAT_VERSION, FORMAT_VERSION, GuidanceSettings, HeadSetMetadata,
                                      describe_validation, format_major)
from headhunter.format.sites import Site, format_notation, head_range, missing_head
from headhunter.format.text import safe_line
from headhunter.plugin_system.registry import get_registry
from headhunter.format.files import parse_json

#: One head given by site name or paper layer index, head index, strength and (optionally) the interval of the
#: noise level sigma it acts in: `(site, head)`, `(site, head, u)` or `(site, head, u, (lo, hi))`.
HeadSpec = Union[tuple[Union[str, int], int], tuple[Union[str, int], int, float],
                 tuple[Union[str, int], int, float, tuple[float, float]]]
#: A head set's strengths in one interval: {site: {head: u}}.
StrengthDict = dict[str, dict[int, float]]
#: Separates a site name from its interval index in the tensor keys of a scheduled (format 2.x) file.
INTERVAL_KEY_SEP = "@"

MERGE_RULES = ("max", "sum", "override")
#: Smallest non-zero strength: float32's smallest subnormal (strengths are stored as float32; a value that
#: rounds to 0 there, like 1e-300, would vanish from the file, so it is refused).
MIN_STRENGTH = float(np.finfo(np.float32).smallest_subnormal)

_HEAD_INDEX = re.compile(r"^(0|[1-9][0-9]{0,8})$")  # canonical: "3", not "03" (two spellings of one head)


class Head(NamedTuple):
    """One selected head: its site, the site's paper layer index, the head index, strength u and the interval
    of the noise level sigma it acts in with that strength (`(0.0, 1.0)`: always)."""

    site: str
    layer: int
    head: int
    strength: float
    interval: Interval = FULL

    def __str__(self) -> str:
        text = format_notation(self.layer, self.head, self.strength)
        return text if self.interval == FULL else f"{text}@{format_interval(self.interval)}"


class HeadSet:
    """Heads to perturb, with their strengths, and metadata (model, perturbation, guidance, provenance).

    Build with `HeadSet.from_heads`, `HeadSet.from_notation`, `HeadSet.from_schedule` or
    `headhunter.load_headset`. Immutable: setting or deleting any attribute raises AttributeError (naming
    the way to a changed copy); `with_metadata`, `merge`, `scaled` and `restricted` return new head sets.

    `HeadSet(strengths, metadata)`: `strengths` is `{site: {head: u}}`. With `intervals=[(0, a), (a, b), ...,
    (c, 1)]` (contiguous, covering sigma in [0, 1]) it is a list of such maps, one per interval: a scheduled
    head set. Neighbouring intervals with equal maps are merged, so a schedule that is the same everywhere
    is a head set without a schedule (format 1.0), and equal head sets compare equal.
    """

    def __init__(self, strengths: StrengthDict | Sequence[StrengthDict], metadata: HeadSetMetadata, *,
                 intervals: Sequence[Sequence[float]] | None = None) -> None:
        if intervals is None:
            if not isinstance(strengths, dict):
                raise HeadSetError(f"strengths must be a {{site: {{head: u}}}} map, got {type(strengths).__name__}; "
                                   "pass intervals= with one map per interval for a schedule")
            bounds, maps = FULL, [strengths]
        else:
            bounds = bounds_of([tuple(i) for i in intervals])
            if isinstance(strengths, dict) or len(strengths) != len(bounds) - 1:
                have = "a single map" if isinstance(strengths, dict) else f"{len(strengths)} maps"
                raise HeadSetError(f"a schedule of {len(bounds) - 1} intervals needs one strength map per interval, "
                                   f"got {have}")
            maps = list(strengths)
        if not isinstance(metadata, HeadSetMetadata):
            raise HeadSetError(f"metadata must be a HeadSetMetadata, got {type(metadata).__name__}; build a head set "
                               "with HeadSet.from_heads(...) / from_notation(...), which take metadata fields as keywords")
        checked = [_validated_strengths(m, metadata.sites) for m in maps]
        bounds, maps = _canonical(bounds, checked)
        object.__setattr__(self, "_bounds", bounds)  # the only assignments: a head set is immutable
        object.__setattr__(self, "_maps", maps)
        object.__setattr__(self, "_meta", _versioned(metadata, bounds))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(_immutable(name, "set"))

    def __delattr__(self, name: str) -> None:
        raise AttributeError(_immutable(name, "delete"))

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def from_heads(
        cls,
        heads: Iterable[HeadSpec],
        *,
        sites: Sequence[Site] | None = None,
        base_model: str | None = None,
        strength: float = 1.0,
        **metadata: Any,
    ) -> HeadSet:
        """Build from (site name or layer index, head[, strength]) triples.

        `sites` is the model's ordered site list (`adapter.sites(model)`); for a published model,
        `base_model` (e.g. `stabilityai/stable-diffusion-3-medium-diffusers`) fills it in.
        A missing strength takes `strength`. A fourth element `(lo, hi)` restricts the head to the noise
        levels sigma in `[lo, hi)` (`[lo, 1]` for hi = 1); heads with intervals make a scheduled head set.
        Remaining keyword arguments are metadata fields.
        """
        site_list, architecture = _resolve_sites(sites, base_model, metadata.pop("architecture", None))
        names = [s.name for s in site_list]
        entries: list[tuple[str, int, float, Interval]] = []
        for spec in heads:
            site_ref, head, value, interval = _unpack(spec, strength)
            name = _site_name(site_ref, names, site_list)
            if isinstance(head, int) and not isinstance(head, bool) and head >= 0:  # negatives: below
                missing = missing_head(site_list, names.index(name), head)
                if missing is not None:
                    raise HeadSetError(f"head {missing}")
            entries.append((name, head, value, interval))
        bounds = refine(FULL, *(interval for *_, interval in entries))
        maps: list[StrengthDict] = [{} for _ in range(len(bounds) - 1)]
        for name, head, value, (lo, hi) in entries:
            for k, (a, b) in enumerate(intervals_of(bounds)):
                if lo <= a and b <= hi:
                    per_site = maps[k].setdefault(name, {})
                    if head in per_site:
                        where = "" if (lo, hi) == FULL else f" in overlapping intervals (at sigma in {format_interval((a, b))})"
                        raise HeadSetError(f"duplicate head {head} at {name} "
                                           f"({format_notation(names.index(name), head)}){where}")
                    per_site[head] = value
        meta = _metadata(dict(metadata, architecture=architecture, base_model=base_model, sites=list(site_list)))
        if len(maps) == 1:
            return cls(maps[0], meta)
        return cls(maps, meta, intervals=intervals_of(bounds))

    @classmethod
    def from_notation(
        cls,
        heads: str | Iterable[str],
        *,
        sites: Sequence[Site] | None = None,
        base_model: str | None = None,
        strength: float = 1.0,
        **metadata: Any,
    ) -> HeadSet:
        """Build from paper notation: `"L12H3, L0H4@0.5"` or `["L12H3", "L0H4@0.5"]`; an interval of the noise
        level sigma after the head makes a schedule: `"L3H2@[0,0.4), L3H2@0.5@[0.4,1]"` (docs/format.md).
        HeadSetError for a notation that names no head (`""`, `" , "`, `[]`): the grammar has at least one item
        (a head set with no heads, which guides nothing, is `HeadSet.from_heads([], ...)`)."""
        if not isinstance(heads, (str, list, tuple)):
            raise HeadSetError(f"heads must be a notation string like {NOTATION_EXAMPLE!r} or a list of such items, "
                               f"got {type(heads).__name__}")
        items = split_items(heads) if isinstance(heads, str) else list(heads)
        if not items:
            raise HeadSetError(f"notation {safe_line(str(heads))[:80]!r} names no head; write heads as "
                               f"{NOTATION_EXAMPLE!r} (layer L, head H, both 0-based; @strength optional, default 1)")
        specs: list[HeadSpec] = []
        for item in items:
            if not isinstance(item, str):
                raise HeadSetError(f"head {item!r} must be a string in paper notation like 'L12H3'")
            layer, head, value, interval = parse_item(item)
            specs.append((layer, head, strength if value is None else value, interval or FULL))
        return cls.from_heads(specs, sites=sites, base_model=base_model, **metadata)

    @classmethod
    def from_schedule(cls, pieces: Iterable[tuple[Sequence[float], HeadSet | None]], **metadata: Any) -> HeadSet:
        """A scheduled head set from `[((lo, hi), head set or None), ...]`: each head set's heads act for the
        noise levels sigma in `[lo, hi)` (`[lo, 1]` for hi = 1). Intervals must not overlap; sigma not covered
        by any piece (or a None piece) perturbs nothing. The head sets must be for the same model and hold no
        schedule themselves; the metadata is the first head set's, with `metadata` overrides."""
        items = [(check_interval(*tuple(interval), where="from_schedule"), hs) for interval, hs in pieces]
        given = [hs for _, hs in items if hs is not None]
        if not given:
            raise HeadSetError("from_schedule needs at least one (interval, HeadSet) piece with a head set")
        first = given[0]
        for hs in given:
            if not isinstance(hs, HeadSet):
                raise HeadSetError(f"from_schedule pieces hold HeadSets or None, got {type(hs).__name__}")
            first._require_same_sites(hs)
            if hs.scheduled:
                raise HeadSetError(f"head set {hs.name!r} already holds a schedule; from_schedule takes head sets "
                                   "without one (use merge to combine scheduled sets)")
        ordered = sorted(items, key=lambda item: item[0])
        for (a, _), (b, _) in zip(ordered, ordered[1:]):
            if b[0] < a[1]:
                raise HeadSetError(f"from_schedule intervals {format_interval(a)} and {format_interval(b)} overlap")
        bounds = refine(FULL, *(interval for interval, _ in items))
        maps: list[StrengthDict] = []
        for a, b in intervals_of(bounds):
            owner = [hs for (lo, hi), hs in items if lo <= a and b <= hi and hs is not None]
            maps.append(owner[0]._maps[0] if owner else {})
        return cls(maps, _metadata({**first._meta.model_dump(), **metadata}), intervals=intervals_of(bounds))

    # ----- reading --------------------------------------------------------------------------
    @property
    def metadata(self) -> HeadSetMetadata:
        """The head set's metadata (a frozen pydantic model: change it with `with_metadata`)."""
        return self._meta

    @property
    def name(self) -> str:
        return self._meta.name

    @property
    def sites(self) -> list[Site]:
        """The ordered sites of the model this head set was made for."""
        return list(self._meta.sites)

    # ----- the schedule ----------------------------------------------------------------------------------
    @property
    def scheduled(self) -> bool:
        """Whether the strengths depend on the noise level sigma (more than one interval; format 2.x)."""
        return len(self._maps) > 1

    @property
    def intervals(self) -> list[Interval]:
        """The intervals of the noise level sigma, `[(0, b1), (b1, b2), ..., (b(K-1), 1)]`: each `[lo, hi)`, the
        top one `[lo, 1]`. `[(0.0, 1.0)]` for a head set without a schedule."""
        return intervals_of(self._bounds)

    @property
    def bounds(self) -> tuple[float, ...]:
        """The schedule's boundaries `(0, b1, ..., 1)` (`(0.0, 1.0)` without a schedule)."""
        return self._bounds

    def schedule(self) -> list[tuple[Interval, StrengthDict]]:
        """A copy of `[(interval, {site: {head: u}}), ...]`, one entry per interval (one entry without a schedule)."""
        return [(iv, {site: dict(h) for site, h in m.items()}) for iv, m in zip(self.intervals, self._maps)]

    def interval_index(self, sigma: float) -> int:
        """Index into `intervals` of the interval holding noise level `sigma` in [0, 1]; HeadSetError outside."""
        try:
            return interval_index(self._bounds, float(sigma))
        except ValueError as exc:
            raise HeadSetError(f"{exc}; head-set schedules are defined for sigma in [0, 1]") from None

    def at(self, sigma: float) -> HeadSet:
        """The head set acting at noise level `sigma` in [0, 1]: a head set without a schedule (maybe with no
        heads), same metadata. `hs.at(s)` for a head set without a schedule is `hs`."""
        if not self.scheduled:
            return self
        return self._piece(self.interval_index(sigma))

    def pieces(self) -> list[tuple[Interval, HeadSet]]:
        """`[(interval, head set without a schedule), ...]`: what acts in each interval (a piece may be empty)."""
        if not self.scheduled:
            return [(FULL, self)]
        return [(iv, self._piece(k)) for k, iv in enumerate(self.intervals)]

    def restricted(self, lo: float, hi: float) -> HeadSet:
        """The same heads, acting only for noise levels sigma in `[lo, hi)` (`[lo, 1]` for hi = 1): strengths
        outside are 0. `hs.restricted(0, 1)` is `hs`. HeadSetError for an interval outside [0, 1]."""
        lo, hi = check_interval(lo, hi, where="restricted")
        bounds = refine(self._bounds, (lo, hi))
        maps = [self._maps[self._cell(a)] if lo <= a and b <= hi else {} for a, b in intervals_of(bounds)]
        return self._remade(bounds, maps)

    def _piece(self, k: int) -> HeadSet:
        return HeadSet(self._maps[k], self._meta.model_copy(update={"intervals": None,
                                                                     "format_version": CONSTANT_FORMAT_VERSION}))

    def _cell(self, lo: float) -> int:
        """The interval of this head set's schedule that holds the refined cell starting at `lo`."""
        return interval_index(self._bounds, lo)

    def _remade(self, bounds: Sequence[float], maps: Sequence[StrengthDict], meta: HeadSetMetadata | None = None) -> HeadSet:
        meta = self._meta if meta is None else meta
        if len(maps) == 1:
            return HeadSet(dict(maps[0]), meta.model_copy(update={"intervals": None,
                                                                  "format_version": CONSTANT_FORMAT_VERSION}))
        return HeadSet(list(maps), meta, intervals=intervals_of(bounds))

    def _constant(self, what: str) -> StrengthDict:
        if self.scheduled:
            raise HeadSetError(
                f"head set {self.name!r} holds a schedule ({len(self._maps)} intervals of the noise level sigma), so "
                f"{what} is not defined; use .schedule(), .pieces() or .at(sigma)")
        return self._maps[0]

    def strengths(self) -> dict[str, dict[int, float]]:
        """A copy of the sparse map site -> {head: strength}, sites in model order, heads ascending. HeadSetError
        for a scheduled head set (use `schedule()`, `pieces()` or `at(sigma)`)."""
        return {site: dict(heads) for site, heads in self._constant("strengths()").items()}

    def dense(self) -> dict[str, np.ndarray]:
        """float32 `[num_heads]` strength vector for every site with at least one selected head. HeadSetError
        for a scheduled head set (use `pieces()`)."""
        return _dense(self._constant("dense()"), self._meta.sites)

    def __iter__(self) -> Iterator[Head]:
        """The heads in site order, then head order; a scheduled head yields one `Head` per run of intervals
        with the same strength (`Head.interval`), lowest sigma first."""
        layer_of = {s.name: i for i, s in enumerate(self._meta.sites)}
        if not self.scheduled:
            for site, heads in self._maps[0].items():
                for head, value in heads.items():
                    yield Head(site, layer_of[site], head, value)
            return
        for site in layer_of:
            heads = sorted({h for m in self._maps for h in m.get(site, {})})
            for head in heads:
                values = [m.get(site, {}).get(head, 0.0) for m in self._maps]
                for value, interval in runs(values, self._bounds):
                    yield Head(site, layer_of[site], head, value, interval)

    def __len__(self) -> int:
        """Number of distinct heads selected (in any interval)."""
        return len({(site, h) for m in self._maps for site, heads in m.items() for h in heads})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeadSet):
            return NotImplemented
        return self._bounds == other._bounds and self._maps == other._maps and self._meta == other._meta

    def __hash__(self) -> int:  # pragma: no cover - head sets are values but mutable metadata objects
        raise TypeError("HeadSet is not hashable")

    def notation(self) -> str:
        """The heads in paper notation, in site order: `L1H10, L12H3@0.5`; scheduled heads carry their interval
        of the noise level sigma: `L3H2@[0,0.4), L3H2@0.5@[0.4,1]` (docs/format.md)."""
        return ", ".join(str(h) for h in self)

    def __repr__(self) -> str:
        return f"HeadSet(name={self.name!r}, architecture={self._meta.architecture!r}, heads=[{self.notation()}])"

    def describe(self) -> str:
        """A multi-line human summary: metadata, recommended guidance and the heads (per interval of the noise
        level sigma when the head set holds a schedule)."""
        m = self._meta
        g = m.guidance
        lines = [
            f"name:          {m.name}",
            "description:   " + (m.description or "-").replace("\n", "\n" + " " * 15),
            f"architecture:  {m.architecture}  base model: {m.base_model or '-'}  ({len(m.sites)} sites)",
            f"origin:        {m.origin}{'  source: ' + m.source if m.source else ''}",
            f"perturbation:  {m.perturbation.name}" + (f" {json.dumps(m.perturbation.params)}" if m.perturbation.params else ""),
            f"guidance:      scale w={g.scale:g} cfg={g.cfg if g.cfg is not None else '-'} "
            f"window=[{g.start:g}, {g.stop:g}) scope={g.scope}",
            f"format:        {m.format_version} (headhunter {m.library_version})  license: {m.license or '-'}",
        ]
        if m.tags:
            lines.append(f"tags:          {', '.join(m.tags)}")
        if m.search is not None:
            s = m.search
            lines.append(
                f"search:        objective={s.objective} rounds={s.rounds} top_k={s.top_k} steps={s.steps} "
                f"prompts={len(s.prompts)} seeds={len(s.seeds)}"
            )
        lines.append(f"heads ({len(self)}): {self.notation() or '(none)'}")
        if self.scheduled:
            lines.append(f"schedule ({len(self._maps)} intervals of the noise level sigma, 1 = pure noise):")
            for interval, piece in self.pieces():
                lines.append(f"  sigma in {format_interval(interval):<14} {piece.notation() or '(no heads)'}")
        # no line ends in spaces (a blank description line, the padding of an empty field): labels align at
        # column 15, nothing trails
        return "\n".join(line.rstrip() for line in "\n".join(lines).split("\n"))

    # ----- composition ------------------------------------------------------------------------
    def merge(self, other: HeadSet, rule: str = "max", **metadata: Any) -> HeadSet:
        """Union of two head sets for the same model.

        Overlapping heads take `rule`: `max` (default; the stronger perturbation wins), `sum` (capped
        at 1) or `override` (`other` wins). Metadata is this head set's, with `metadata` overrides.
        Scheduled head sets merge pointwise in the noise level: `a.merge(b).at(s) == a.at(s).merge(b.at(s))`
        for every sigma s (on the common refinement of both schedules).
        """
        if rule not in MERGE_RULES:
            raise HeadSetError(f"unknown merge rule {rule!r}; allowed: {', '.join(MERGE_RULES)}")
        self._require_same_sites(other)
        bounds = refine(self._bounds, other._bounds)
        maps = []
        for lo, _ in intervals_of(bounds):
            merged = {site: dict(h) for site, h in self._maps[self._cell(lo)].items()}
            for site, heads in other._maps[other._cell(lo)].items():
                target = merged.setdefault(site, {})
                for head, value in heads.items():
                    target[head] = _combine(target.get(head), value, rule)
            maps.append(merged)
        return self._remade(bounds, maps, _metadata({**self._meta.model_dump(), **metadata}))

    def union(self, other: HeadSet) -> HeadSet:
        """`merge` with the default rule (max)."""
        return self.merge(other)

    def __or__(self, other: HeadSet) -> HeadSet:
        return self.merge(other)

    def scaled(self, u: float) -> HeadSet:
        """Every strength multiplied by u in [0, 1] (e.g. turn a PAG set into SoftPAG at u), in every interval."""
        if not (0.0 <= u <= 1.0) or math.isnan(u):
            raise HeadSetError(f"scale factor {u} out of range; allowed: [0, 1]")
        maps = [{site: {h: v * u for h, v in heads.items()} for site, heads in m.items()} for m in self._maps]
        return self._remade(self._bounds, maps)

    def with_metadata(self, **updates: Any) -> HeadSet:
        """The same heads (and schedule) with some metadata fields replaced, validated: a field given replaces
        the whole field (`guidance={"scale": 3}` resets cfg, start, stop, scope to their defaults; keep them with
        `guidance=hs.metadata.guidance.model_copy(update={"scale": 3})`). HeadSetError naming each bad field,
        its value and what is allowed (an unknown field lists the fields)."""
        data = self._meta.model_dump()
        data.update(updates)
        data["format_version"], data["intervals"] = CONSTANT_FORMAT_VERSION, None  # set again from the schedule
        return self._remade(self._bounds, self._maps, _metadata(data))

    def validate_against(self, sites: Sequence[Site], architecture: str | None = None, base_model: str | None = None) -> None:
        """Check this head set fits a model with these sites; raise HeadSetError naming the first mismatch.

        `base_model`: the model's name (a Hub id, or a registered name like `digits`), when known. A head
        set made for another base model that does not fit says so first ("this head set is for X; the model
        is Y"), with the mismatch in brackets; one that fits is accepted (a fine-tune has its base's sites)."""
        try:
            self._validate_sites(sites, architecture)
        except HeadSetError as err:
            mine = self._meta.base_model
            if base_model and mine and mine != base_model:
                raise HeadSetError(
                    f"head set {self.name!r} is for {mine}; the model is {base_model} ({err}): use a head set made "
                    f"for {base_model} (`headhunter presets --model {base_model}`, or one found on it)"
                ) from None
            raise

    def _validate_sites(self, sites: Sequence[Site], architecture: str | None) -> None:
        if architecture is not None and architecture != self._meta.architecture:
            raise HeadSetError(
                f"head set {self.name!r} was made for architecture {self._meta.architecture!r}, "
                f"not {architecture!r}; use a head set made for this model family"
            )
        model_sites = {s.name: s for s in sites}
        for strengths in self._maps:
            for site, heads in strengths.items():
                if site not in model_sites:
                    raise HeadSetError(
                        f"site {site!r} of head set {self.name!r} does not exist in this model "
                        f"({len(model_sites)} sites, e.g. {', '.join(list(model_sites)[:3])})"
                    )
                have = model_sites[site].num_heads
                wanted = next(s.num_heads for s in self._meta.sites if s.name == site)
                if have != wanted:
                    raise HeadSetError(
                        f"site {site!r} has {have} heads in this model but the head set {self.name!r} "
                        f"was made for {wanted}"
                    )
                for head in heads:
                    if head >= have:
                        raise HeadSetError(f"head {head} out of range for {site} ({have} heads)")

    def _require_same_sites(self, other: HeadSet) -> None:
        if not isinstance(other, HeadSet):
            raise HeadSetError(f"expected a HeadSet, got {type(other).__name__}")
        if [s.name for s in self._meta.sites] != [s.name for s in other._meta.sites]:
            raise HeadSetError(
                f"cannot merge head sets for different models: {self.name!r} "
                f"({self._meta.architecture}, {len(self._meta.sites)} sites) and {other.name!r} "
                f"({other._meta.architecture}, {len(other._meta.sites)} sites)"
            )

    # ----- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the safetensors file (or, for a `.json` path, the JSON rendering) atomically."""
        path = Path(path)
        meta_json = self._meta.model_dump_json()
        io.parse_metadata(meta_json, source=f"head set {self.name!r} (not saved to {path})")  # what the reader checks
        if path.suffix == ".json":
            io.write_atomic(path, self.to_json().encode())
        else:
            io.write_safetensors(path, self._tensors(), meta_json)
        return path

    def _tensors(self) -> dict[str, np.ndarray]:
        """The file's tensors: `{site: [H]}` (format 1.x), or `{"<site>@<k>": [H]}` per interval k (format 2.x)."""
        if not self.scheduled:
            return _dense(self._maps[0], self._meta.sites)
        return {f"{site}{INTERVAL_KEY_SEP}{k}": vec for k, m in enumerate(self._maps)
                for site, vec in _dense(m, self._meta.sites).items()}

    def push_to_hub(
        self, repo_id: str, *, weight_name: str | None = None, images: Any = None, **options: Any
    ) -> Any:
        """Publish to a Hub repo as one commit: the file, its JSON rendering, a model card and example images.

        `weight_name` (default `headset.safetensors`) must end in `.safetensors`; the JSON goes beside it
        (`headset.json`, or `<stem>.json`). `images` are paths or PIL images, or a mapping prompt -> image
        (the prompt becomes the card's widget caption); they land in `images/`. `options` are
        `headhunter.format.hub.PushOptions` (private, token, commit_message, revision, create_pr). Returns
        huggingface_hub's `CommitInfo`. HubError for Hub failures, naming the repo."""
        push = hub.PushOptions(**options)
        hub.check_repo_id(repo_id)
        weight_name = hub.check_weight_name(weight_name or io.WEIGHTS_NAME)
        with tempfile.TemporaryDirectory(prefix="headhunter-push-") as tmp:
            folder = Path(tmp)
            self.save(folder / weight_name)
            self.save(folder / model_card.json_name(weight_name))
            captions = hub.write_images(folder, images)
            model_card.model_card(self, repo_id, weight_name=weight_name, images=captions).save(folder / "README.md")
            return hub.upload_folder(folder, repo_id, push, f"Upload head set {self.name} ({len(self)} heads)")

    def to_json(self) -> str:
        """The human-readable, editable JSON rendering; `load_headset` reads it back to an equal HeadSet."""
        maps = [{site: {str(h): v for h, v in heads.items()} for site, heads in m.items()} for m in self._maps]
        doc = {
            io.METADATA_KEY: json.loads(self._meta.model_dump_json()),
            "heads": maps if self.scheduled else maps[0],  # scheduled: one map per interval of metadata.intervals
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_file(cls, path: str | Path) -> HeadSet:
        """Read a head set from a `.safetensors` file or its `.json` rendering."""
        path = Path(path)
        if path.suffix == ".json":
            return cls._from_json_doc(io.read_json_rendering(path), source=str(path))
        meta_json, tensors = io.read_safetensors(path)
        meta = io.parse_metadata(meta_json, source=str(path))
        safe = {safe_line(site): vec for site, vec in tensors.items()}  # keyed as the (safe) site names
        if len(safe) != len(tensors):
            raise HeadSetError(f"{path}: two tensor names differ only in control characters; site names are plain text")
        tensors = safe
        sizes = {s.name: s.num_heads for s in meta.sites}
        count = 1 if meta.intervals is None else len(meta.intervals)
        maps: list[StrengthDict] = [{} for _ in range(count)]
        for key, vec in tensors.items():
            site, k = _tensor_key(key, meta.intervals, str(path))
            if site in sizes and vec.shape != (sizes[site],):
                raise HeadSetError(f"{path}: tensor {key} has shape {list(vec.shape)}, expected [{sizes[site]}]")
            maps[k][site] = _sparse(vec, site, source=str(path))
        if meta.intervals is None:
            return cls(maps[0], meta)
        return cls(maps, meta, intervals=meta.intervals)

    @classmethod
    def _from_json_text(cls, text: str, source: str) -> HeadSet:
        """A head set from the text of a JSON rendering (bounded depth, finite numbers; see headhunter.format.files)."""
        return cls._from_json_doc(parse_json(text, source=source, error=HeadSetError, max_bytes=io.MAX_JSON_BYTES), source)

    @classmethod
    def _from_json_doc(cls, doc: Any, source: str) -> HeadSet:
        if not isinstance(doc, dict) or set(doc) != {io.METADATA_KEY, "heads"}:
            keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise HeadSetError(f"{source} is not a head-set JSON: expected keys 'headhunter' and 'heads', got {keys}")
        meta = io.parse_metadata(doc[io.METADATA_KEY], source=source)
        heads = doc["heads"]
        if meta.intervals is None:
            return cls(_json_map(heads, source), meta)
        if not isinstance(heads, list) or len(heads) != len(meta.intervals):
            raise HeadSetError(f"{source}: a scheduled head set's 'heads' must be a list of {len(meta.intervals)} "
                               f"{{site: {{head: strength}}}} maps, one per interval, got {str(heads)[:200]!r}")
        return cls([_json_map(m, f"{source} (interval {k})") for k, m in enumerate(heads)], meta,
                   intervals=meta.intervals)


# ----- helpers ---------------------------------------------------------------------------------------
def load_headset_file(path: str | Path) -> HeadSet:
    """Read a head set from a local file or a folder holding `headset.safetensors`."""
    path = Path(path)
    if path.is_dir():
        candidate = path / io.WEIGHTS_NAME
        if not candidate.exists():
            raise HeadSetError(f"folder {path} holds no {io.WEIGHTS_NAME}")
        path = candidate
    if not path.exists():
        raise HeadSetError(f"head-set file {path} does not exist")
    return HeadSet.from_file(path)  # refuses FIFOs, devices and oversized files without blocking


def _resolve_sites(
    sites: Sequence[Site] | None, base_model: str | None, architecture: str | None
) -> tuple[list[Site], str]:
    if sites is None:
        if base_model is None:
            raise HeadSetError("pass sites=adapter.sites(model) or base_model=<a known Hub id> to build a head set")

        known = get_registry().base_model(base_model)
        return list(known.sites), architecture or known.architecture
    if architecture is None:
        raise HeadSetError("architecture= is required with explicit sites (e.g. 'sd3', 'flux', 'digits')")
    return [s if isinstance(s, Site) else Site.model_validate(s) for s in sites], architecture


def _unpack(spec: HeadSpec, default: float) -> tuple[str | int, int, float, Interval]:
    if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3, 4):
        raise HeadSetError(f"head {spec!r} must be (site or layer, head), (site or layer, head, strength) or "
                           "(site or layer, head, strength, (lo, hi))")
    site, head = spec[0], spec[1]
    value = spec[2] if len(spec) >= 3 else default
    interval = FULL
    if len(spec) == 4:
        if not isinstance(spec[3], (tuple, list)) or len(spec[3]) != 2:
            raise HeadSetError(f"interval {spec[3]!r} of head {spec!r} must be a (lo, hi) pair of noise levels")
        interval = check_interval(*spec[3], where=f"head {spec!r}")
    return site, head, value, interval


def _tensor_key(key: str, intervals: Any, source: str) -> tuple[str, int]:
    """(site, interval index) of a tensor key: `<site>` in a 1.x file, `<site>@<k>` in a 2.x file."""
    if intervals is None:
        return key, 0
    site, sep, index = key.rpartition(INTERVAL_KEY_SEP)
    if not sep or not _HEAD_INDEX.match(index) or int(index) >= len(intervals):
        raise HeadSetError(f"{source}: tensor {key[:80]!r} of a scheduled head set must be keyed "
                           f"'<site>{INTERVAL_KEY_SEP}<k>' with k in 0..{len(intervals) - 1} (an index into 'intervals')")
    return site, int(index)


def _json_map(heads: Any, source: str) -> StrengthDict:
    if not isinstance(heads, dict):
        raise HeadSetError(f"{source}: 'heads' must map site names to {{head: strength}}, got {str(heads)[:200]!r}")
    strengths: StrengthDict = {}
    for site, per_head in heads.items():
        site = safe_line(site)  # keyed as the (safe) site names of the metadata
        if not isinstance(per_head, dict):
            raise HeadSetError(f"{source}: heads of {site!r} must be a {{head: strength}} map, got {str(per_head)[:200]!r}")
        strengths[site] = {_head_index(h, site, source): _strength_value(v, site, source) for h, v in per_head.items()}
    return strengths


def _dense(strengths: StrengthDict, sites: Sequence[Site]) -> dict[str, np.ndarray]:
    sizes = {s.name: s.num_heads for s in sites}
    out = {}
    for site, heads in strengths.items():
        vec = np.zeros(sizes[site], dtype=np.float32)
        for head, value in heads.items():
            vec[head] = value
        out[site] = vec
    return out


def _canonical(bounds: Sequence[float], maps: list[StrengthDict]) -> tuple[tuple[float, ...], tuple[StrengthDict, ...]]:
    """Merge neighbouring intervals with equal maps (one spelling per schedule; a constant schedule is one
    full-range interval)."""
    keep_bounds, keep_maps = [bounds[0]], []
    for hi, strengths in zip(bounds[1:], maps):
        if keep_maps and keep_maps[-1] == strengths:
            keep_bounds[-1] = hi
        else:
            keep_maps.append(strengths)
            keep_bounds.append(hi)
    return tuple(keep_bounds), tuple(keep_maps)


def _versioned(meta: HeadSetMetadata, bounds: tuple[float, ...]) -> HeadSetMetadata:
    """The metadata with `format_version` and `intervals` matching the schedule: a scheduled head set is format
    2.x and lists its intervals; one without is 1.x (its minor kept, e.g. a lenient 1.7 read) with none."""
    if len(bounds) > 2:
        version = meta.format_version if format_major(meta.format_version) == 2 else FORMAT_VERSION
        intervals = [(float(a), float(b)) for a, b in intervals_of(bounds)]
    else:
        version = meta.format_version if format_major(meta.format_version) == 1 else CONSTANT_FORMAT_VERSION
        intervals = None
    if version == meta.format_version and intervals == meta.intervals:
        return meta
    return meta.model_copy(update={"format_version": version, "intervals": intervals})


def _site_name(ref: str | int, names: list[str], sites: Sequence[Site]) -> str:
    if isinstance(ref, bool) or not isinstance(ref, (str, int)):
        raise HeadSetError(f"site {ref!r} must be a site name or a layer index")
    if isinstance(ref, int):
        if not 0 <= ref < len(names):
            raise HeadSetError(f"layer {ref} out of range; this model has layers 0..{len(names) - 1} "
                               f"(heads: {head_range(sites)})")
        return names[ref]
    if ref not in names:
        raise HeadSetError(f"unknown site {ref!r}; sites look like {', '.join(names[:3])} ({len(names)} in all)")
    return ref


def _validated_strengths(strengths: dict[str, dict[int, float]], sites: Sequence[Site]) -> dict[str, dict[int, float]]:
    """Check every head and strength; return the map in site order with zero strengths dropped."""
    sizes = {s.name: s.num_heads for s in sites}
    for site, heads in strengths.items():
        if site not in sizes:
            raise HeadSetError(f"unknown site {site!r}; the head set's model has {len(sizes)} sites, e.g. {next(iter(sizes), '-')}")
        for head, value in heads.items():
            if isinstance(head, bool) or not isinstance(head, int):
                raise HeadSetError(f"head index {head!r} at {site} must be an integer")
            if not 0 <= head < sizes[site]:
                raise HeadSetError(f"head {head} out of range for {site} ({sizes[site]} heads)")
            _strength_value(value, site)
    ordered = {}
    for site in sizes:
        kept = {h: float(v) for h, v in sorted(strengths.get(site, {}).items()) if v != 0.0}
        if kept:
            ordered[site] = kept
    return ordered


def _strength_value(value: Any, site: str, source: str = "") -> float:
    where = source + ": " if source else ""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise HeadSetError(f"{where}strength {value!r} at {site} must be a number in [0, 1]")
    try:
        value = float(value)
    except OverflowError:
        raise HeadSetError(f"{where}strength {value} at {site} out of range; allowed: [0, 1]") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise HeadSetError(f"{where}strength {value} at {site} out of range; allowed: [0, 1]")
    if value != 0.0 and np.float32(value) == 0.0:
        raise HeadSetError(
            f"{where}strength {value:g} at {site} underflows to 0 in float32 (the file's dtype); allowed: 0 or "
            f"[{MIN_STRENGTH:.2g}, 1]"
        )
    return value


def _head_index(text: str, site: str, source: str) -> int:
    if not _HEAD_INDEX.match(text):
        raise HeadSetError(f"{source}: head index {text[:40]!r} at {site} is not a non-negative integer like '3' (no sign, spaces or leading zeros)")
    return int(text)


def _sparse(vec: np.ndarray, site: str, source: str) -> dict[int, float]:
    out = {}
    for head, value in enumerate(vec.tolist()):
        _strength_value(value, site, source)
        if value != 0.0:
            out[head] = float(value)
    if not out:
        raise HeadSetError(f"{source}: site {site} has no non-zero strength; such sites must be left out of the file")
    return out


def _combine(old: float | None, new: float, rule: str) -> float:
    if old is None or rule == "override":
        return new
    if rule == "max":
        return max(old, new)
    return min(1.0, old + new)


def _metadata(data: dict[str, Any]) -> HeadSetMetadata:
    """Metadata fields given by a caller, validated once: HeadSetError (not pydantic's ValidationError) naming
    each bad field, its value and what is allowed (`headhunter.format.schema.validated`)."""
    try:
        return HeadSetMetadata(**data)
    except ValidationError as exc:
        raise HeadSetError(f"bad head-set metadata: {describe_validation(exc, HeadSetMetadata)}") from None


#: What paper notation looks like, for messages.
NOTATION_EXAMPLE = "L0H1, L2H7@0.5"
_GUIDANCE_FIELDS = tuple(GuidanceSettings.model_fields)


def _immutable(name: str, action: str) -> str:
    """The message for setting or deleting an attribute of a HeadSet: which attribute, and the way to a
    changed copy."""
    field = safe_line(str(name))[:80]
    if field in _GUIDANCE_FIELDS:
        how = (f"for one use pass it to apply: headhunter.apply(pipe, hs, {field}=...); to store it, "
               f"hs.with_metadata(guidance=hs.metadata.guidance.model_copy(update={{{field!r}: ...}}))")
    elif field in HeadSetMetadata.model_fields:
        how = f"hs.with_metadata({field}=...) returns a copy with that metadata field replaced"
    else:
        how = ("hs.with_metadata(field=...) replaces metadata fields "
               f"({', '.join(f for f in HeadSetMetadata.model_fields if f not in ('format_version', 'intervals'))}); "
               "hs.scaled(u), hs.merge(other), hs.restricted(lo, hi) change the heads")
    return f"HeadSet is immutable: cannot {action} {field!r}; {how}"


__all__ = ["CONSTANT_FORMAT_VERSION", "FORMAT_VERSION", "Head", "HeadSet", "HeadSpec", "INTERVAL_KEY_SEP",
           "MERGE_RULES", "load_headset_file", "__version__"]
