"""HeadSet: a sparse map site -> per-head strength u in [0, 1], plus the metadata that makes it shareable.

A head set is what HeadHunter finds and what `apply` uses. On disk it is a safetensors file with one
float32 tensor `[num_heads]` per site that has at least one non-zero strength, keyed by the site name,
and the metadata JSON under the header key `headhunter` (docs/format.md is the specification).
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

import headhunter.format.headset_io as io
import headhunter.format.hub as hub
import headhunter.format.model_card as model_card
from headhunter._version import __version__
from headhunter.errors import HeadSetError
from headhunter.format.schema import FORMAT_VERSION, HeadSetMetadata
from headhunter.format.sites import Site, format_notation, parse_notation
from headhunter.format.text import safe_line
from headhunter.plugin_system.registry import get_registry
from headhunter.format.files import parse_json

#: One head given by site name or paper layer index, head index and strength.
HeadSpec = Union[tuple[Union[str, int], int], tuple[Union[str, int], int, float]]

MERGE_RULES = ("max", "sum", "override")
#: Smallest non-zero strength: float32's smallest subnormal (strengths are stored as float32; a value that
#: rounds to 0 there, like 1e-300, would vanish from the file, so it is refused).
MIN_STRENGTH = float(np.finfo(np.float32).smallest_subnormal)

_HEAD_INDEX = re.compile(r"^(0|[1-9][0-9]{0,8})$")  # canonical: "3", not "03" (two spellings of one head)


class Head(NamedTuple):
    """One selected head: its site, the site's paper layer index, the head index and strength u."""

    site: str
    layer: int
    head: int
    strength: float

    def __str__(self) -> str:
        return format_notation(self.layer, self.head, self.strength)


class HeadSet:
    """Heads to perturb, with their strengths, and metadata (model, perturbation, guidance, provenance).

    Build with `HeadSet.from_heads`, `HeadSet.from_notation` or `headhunter.load_headset`. Immutable:
    `merge` and `scaled` return new head sets.
    """

    def __init__(self, strengths: dict[str, dict[int, float]], metadata: HeadSetMetadata) -> None:
        self._meta = metadata
        self._strengths = _validated_strengths(strengths, metadata.sites)

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
        A missing strength takes `strength`. Remaining keyword arguments are metadata fields.
        """
        site_list, architecture = _resolve_sites(sites, base_model, metadata.pop("architecture", None))
        names = [s.name for s in site_list]
        strengths: dict[str, dict[int, float]] = {}
        for spec in heads:
            site_ref, head, value = _unpack(spec, strength)
            name = _site_name(site_ref, names)
            per_site = strengths.setdefault(name, {})
            if head in per_site:
                raise HeadSetError(f"duplicate head {head} at {name} ({format_notation(names.index(name), head)})")
            per_site[head] = value
        meta = HeadSetMetadata(
            architecture=architecture, base_model=base_model, sites=list(site_list), **metadata
        )
        return cls(strengths, meta)

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
        """Build from paper notation: `"L12H3, L0H4@0.5"` or `["L12H3", "L0H4@0.5"]`."""
        items = [h for h in heads.replace(";", ",").split(",") if h.strip()] if isinstance(heads, str) else list(heads)
        specs: list[HeadSpec] = []
        for item in items:
            layer, head, value = parse_notation(item)
            specs.append((layer, head, strength if value is None else value))
        return cls.from_heads(specs, sites=sites, base_model=base_model, **metadata)

    # ----- reading --------------------------------------------------------------------------
    @property
    def metadata(self) -> HeadSetMetadata:
        """The head set's metadata (a pydantic model; treat as read-only)."""
        return self._meta

    @property
    def name(self) -> str:
        return self._meta.name

    @property
    def sites(self) -> list[Site]:
        """The ordered sites of the model this head set was made for."""
        return list(self._meta.sites)

    def strengths(self) -> dict[str, dict[int, float]]:
        """A copy of the sparse map site -> {head: strength}, sites in model order, heads ascending."""
        return {site: dict(heads) for site, heads in self._strengths.items()}

    def dense(self) -> dict[str, np.ndarray]:
        """float32 `[num_heads]` strength vector for every site with at least one selected head."""
        sizes = {s.name: s.num_heads for s in self._meta.sites}
        out = {}
        for site, heads in self._strengths.items():
            vec = np.zeros(sizes[site], dtype=np.float32)
            for head, value in heads.items():
                vec[head] = value
            out[site] = vec
        return out

    def __iter__(self) -> Iterator[Head]:
        layer_of = {s.name: i for i, s in enumerate(self._meta.sites)}
        for site, heads in self._strengths.items():
            for head, value in heads.items():
                yield Head(site, layer_of[site], head, value)

    def __len__(self) -> int:
        return sum(len(h) for h in self._strengths.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeadSet):
            return NotImplemented
        return self._strengths == other._strengths and self._meta == other._meta

    def __hash__(self) -> int:  # pragma: no cover - head sets are values but mutable metadata objects
        raise TypeError("HeadSet is not hashable")

    def notation(self) -> str:
        """The heads in paper notation, in site order: `L1H10, L12H3@0.5`."""
        return ", ".join(str(h) for h in self)

    def __repr__(self) -> str:
        return f"HeadSet(name={self.name!r}, architecture={self._meta.architecture!r}, heads=[{self.notation()}])"

    def describe(self) -> str:
        """A multi-line human summary: metadata, recommended guidance and the heads."""
        m = self._meta
        g = m.guidance
        lines = [
            f"name:          {m.name}",
            "description:   " + (m.description or "-").replace("\n", "\n" + " " * 15),
            f"architecture:  {m.architecture}  base model: {m.base_model or '-'}  ({len(m.sites)} sites)",
            f"origin:        {m.origin}{'  source: ' + m.source if m.source else ''}",
            f"perturbation:  {m.perturbation.name} {json.dumps(m.perturbation.params) if m.perturbation.params else ''}",
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
        return "\n".join(lines)

    # ----- composition ------------------------------------------------------------------------
    def merge(self, other: HeadSet, rule: str = "max", **metadata: Any) -> HeadSet:
        """Union of two head sets for the same model.

        Overlapping heads take `rule`: `max` (default; the stronger perturbation wins), `sum` (capped
        at 1) or `override` (`other` wins). Metadata is this head set's, with `metadata` overrides.
        """
        if rule not in MERGE_RULES:
            raise HeadSetError(f"unknown merge rule {rule!r}; allowed: {', '.join(MERGE_RULES)}")
        self._require_same_sites(other)
        merged = self.strengths()
        for site, heads in other._strengths.items():
            target = merged.setdefault(site, {})
            for head, value in heads.items():
                target[head] = _combine(target.get(head), value, rule)
        meta = self._meta.model_copy(update=metadata) if metadata else self._meta
        return HeadSet(merged, _revalidated(meta))

    def union(self, other: HeadSet) -> HeadSet:
        """`merge` with the default rule (max)."""
        return self.merge(other)

    def __or__(self, other: HeadSet) -> HeadSet:
        return self.merge(other)

    def scaled(self, u: float) -> HeadSet:
        """Every strength multiplied by u in [0, 1] (e.g. turn a PAG set into SoftPAG at u)."""
        if not (0.0 <= u <= 1.0) or math.isnan(u):
            raise HeadSetError(f"scale factor {u} out of range; allowed: [0, 1]")
        scaled = {site: {h: v * u for h, v in heads.items()} for site, heads in self._strengths.items()}
        return HeadSet(scaled, self._meta)

    def with_metadata(self, **updates: Any) -> HeadSet:
        """The same heads with some metadata fields replaced (validated)."""
        data = self._meta.model_dump()
        data.update(updates)
        return HeadSet(self.strengths(), HeadSetMetadata.model_validate(data))

    def validate_against(self, sites: Sequence[Site], architecture: str | None = None) -> None:
        """Check this head set fits a model with these sites; raise HeadSetError naming the first mismatch."""
        if architecture is not None and architecture != self._meta.architecture:
            raise HeadSetError(
                f"head set {self.name!r} was made for architecture {self._meta.architecture!r}, "
                f"not {architecture!r}; use a head set made for this model family"
            )
        model_sites = {s.name: s for s in sites}
        for site, heads in self._strengths.items():
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
            io.write_safetensors(path, self.dense(), meta_json)
        return path

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
        doc = {
            io.METADATA_KEY: json.loads(self._meta.model_dump_json()),
            "heads": {site: {str(h): v for h, v in heads.items()} for site, heads in self._strengths.items()},
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
        for site, vec in tensors.items():
            if site in sizes and vec.shape != (sizes[site],):
                raise HeadSetError(f"{path}: tensor {site} has shape {list(vec.shape)}, expected [{sizes[site]}]")
        strengths = {site: _sparse(vec, site, source=str(path)) for site, vec in tensors.items()}
        return cls(strengths, meta)

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
        if not isinstance(heads, dict):
            raise HeadSetError(f"{source}: 'heads' must map site names to {{head: strength}}, got {heads!r}")
        strengths: dict[str, dict[int, float]] = {}
        for site, per_head in heads.items():
            site = safe_line(site)  # keyed as the (safe) site names of the metadata
            if not isinstance(per_head, dict):
                raise HeadSetError(f"{source}: heads of {site!r} must be a {{head: strength}} map, got {per_head!r}")
            strengths[site] = {_head_index(h, site, source): _strength_value(v, site, source) for h, v in per_head.items()}
        return cls(strengths, meta)


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


def _unpack(spec: HeadSpec, default: float) -> tuple[str | int, int, float]:
    if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
        raise HeadSetError(f"head {spec!r} must be (site or layer, head) or (site or layer, head, strength)")
    site, head = spec[0], spec[1]
    value = spec[2] if len(spec) == 3 else default
    return site, head, value


def _site_name(ref: str | int, names: list[str]) -> str:
    if isinstance(ref, bool) or not isinstance(ref, (str, int)):
        raise HeadSetError(f"site {ref!r} must be a site name or a layer index")
    if isinstance(ref, int):
        if not 0 <= ref < len(names):
            raise HeadSetError(f"layer {ref} out of range; this model has layers 0..{len(names) - 1}")
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


def _revalidated(meta: HeadSetMetadata) -> HeadSetMetadata:
    return HeadSetMetadata.model_validate(meta.model_dump())


__all__ = ["FORMAT_VERSION", "Head", "HeadSet", "HeadSpec", "MERGE_RULES", "load_headset_file", "__version__"]
