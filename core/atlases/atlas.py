"""Atlas: every head's measured effect, to answer "which heads should I perturb on this model?".

The paper's first finding (Ahn et al., arXiv 2506.10978, Sec. 4 / Fig. 1) is that single heads govern
distinct visual concepts. `atlas(...)` measures it on any model the toolkit can run: every selected head
is perturbed **alone** (plus every whole layer, plus no guidance) on the same prompt x seed pairs, and each
unit's effect on every offline image statistic and every named objective is the **paired difference** against
no guidance on the same pair. Effects get 95 % t intervals; the ones that are significant after a Bonferroni
correction over every (unit, measure) test and not tiny are labelled in words ("darker", "sharper",
"higher digit confidence"); heads with similar effect vectors are grouped (hierarchical clustering).

Images per atlas = (heads + layers + 1) x prompts x seeds. Rows are generated in batches with per-sample
head sets (`_runner.run_batches`, the search's engine) and the state is checkpointed atomically after every
batch, so an interrupted atlas resumes where it stopped. `core/report/atlas_page.py` renders the page; docs/atlas.md
is the user guide.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

import headhunter.format.headset_io as io
from headhunter.format.files import read_json
from headhunter.engine.runner import Row, run_batches
from headhunter._version import __version__
from headhunter.errors import HeadSetError, SearchError
from headhunter.format.headset import HeadSet
from headhunter.format.schedule import bounds_of, format_interval
from headhunter.format.schema import GenerationSettings, SearchProvenance, Seed, validated
from headhunter.format.sites import Site, format_notation, head_range, missing_head, parse_notation
from headhunter.atlases.effects import NONE, Effect, Group, IntervalDifference, Measure, analyse
from headhunter.atlases.measures import Measurer
from headhunter.search.checkpoint import FIX, STATE_NAME, Checkpoint

ATLAS_NAME = "atlas.json"
IMAGES_DIR = "images"
#: Offline image statistics measured by default (registered objectives of `plugins/_image_stats.py`).
#: Keys of the `atlas` entry a `search_defaults` hook may return (docs/plugins.md).
#: Largest side of the thumbnails kept for the contact sheets.
THUMB_SIDE = 128


class AtlasSettings(GenerationSettings):
    """Everything that determines an atlas; a checkpoint is only resumed with equal settings.

    Extends `GenerationSettings` (guidance: scale w, cfg, scope; perturbation; steps; pipeline_kwargs), the
    vocabulary the search uses too.
    """

    model: str = Field(description="model name or id (provenance)")
    prompts: list[str] = Field(min_length=1)
    seeds: list[Seed] = Field(min_length=1)
    heads: list[str] = Field(description="heads perturbed alone, paper notation, in order")
    layers: list[int] = Field(description="layers perturbed whole (every head), in order")
    strength: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False,
                            description="SoftPAG strength u of each perturbed head")
    measures: list[str] = Field(description="image statistics (registered objective names)")
    objectives: list[str] = Field(default_factory=list, description="objective expressions also measured")
    classes: str | None = Field(default=None, description="name of the model's classifier for 'changes the class'")
    batch_size: int = Field(ge=1)
    sheet_pairs: int = Field(default=8, ge=1, description="prompt-seed pairs shown in the contact sheets")
    intervals: list[tuple[float, float]] | None = Field(
        default=None, exclude_if=lambda value: value is None,  # atlases without intervals keep their checkpoints
        description="intervals of the noise level sigma ([[0, b1], ..., [b(K-1), 1]], K >= 2): every head and layer "
                    "is also measured acting only inside each of them (docs/atlas.md, 'Per noise interval')")

    @field_validator("intervals")
    @classmethod
    def _partition(cls, intervals: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if intervals is None:
            return None
        try:
            bounds = bounds_of(intervals)
        except HeadSetError as exc:
            raise ValueError(str(exc)) from None
        if len(bounds) < 3:
            raise ValueError("intervals= needs at least 2 intervals (one full-range interval is the atlas itself)")
        return intervals


def interval_unit(unit: str, interval: tuple[float, float]) -> str:
    """The name of `unit` (`L3H2`, `L3`) measured only inside `interval` of sigma: `L3H2@[0,0.4)`."""
    return f"{unit}@{format_interval(interval)}"


@dataclass
class Atlas:
    """A measured atlas: settings, sites, per-pair values, effects, labels and groups.

    values[unit][pair] = {measure: value} with pair the index into prompts x seeds (prompt-major).
    """

    settings: AtlasSettings
    sites: list[Site]
    architecture: str
    measures: list[Measure]
    values: dict[str, list[dict[str, float]]]
    effects: dict[str, dict[str, Effect]] = field(default_factory=dict)
    groups: list[Group] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # measures constant on every image
    alpha: float = 0.05
    min_effect: float = 0.2
    timing: dict[str, float] = field(default_factory=dict)
    out_dir: Path | None = None
    thumbs: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)
    #: with `settings.intervals`: effects of every unit acting only in one interval, keyed `interval_unit(...)`
    interval_effects: dict[str, dict[str, Effect]] = field(default_factory=dict)
    interval_differences: list[IntervalDifference] = field(default_factory=list)

    # ----- reading -------------------------------------------------------------------------------------
    @property
    def units(self) -> list[str]:
        """no guidance, the whole layers (`L3`), then the heads (`L3H2`), in generation order."""
        return unit_names(self.settings)

    @property
    def interval_units(self) -> list[tuple[str, int, str]]:
        """With `settings.intervals`: (unit, interval index, name) for every layer and head in every interval,
        in generation order (after the units); empty without intervals."""
        return interval_units(self.settings)

    @property
    def pairs(self) -> list[tuple[str, int]]:
        return [(p, s) for p in self.settings.prompts for s in self.settings.seeds]

    @property
    def images(self) -> int:
        """Images this atlas is made of: ((heads + layers) x (1 + intervals) + 1) x prompts x seeds."""
        return (len(self.units) + len(self.interval_units)) * len(self.pairs)

    def labels(self, unit: str) -> list[str]:
        """The words for `unit`'s significant effects, strongest first."""
        found = [e for e in self.effects.get(unit, {}).values() if e.label]
        return [e.label for e in sorted(found, key=_strength, reverse=True)]  # type: ignore[misc]

    def label_table(self) -> list[tuple[str, list[Effect]]]:
        """(unit, its labelled effects strongest first) for every unit with at least one label."""
        table = []
        for unit in self.units[1:]:
            found = sorted((e for e in self.effects.get(unit, {}).values() if e.label), key=_strength, reverse=True)
            if found:
                table.append((unit, found))
        return table

    def effect_words(self) -> dict[str, int]:
        """Every label word in this atlas -> how many heads carry it."""
        counts: dict[str, int] = {}
        for unit in self.settings.heads:
            for word in self.labels(unit):
                counts[word] = counts.get(word, 0) + 1
        return counts

    def heads_with(self, effect: str) -> list[str]:
        """Heads (not whole layers) labelled `effect`, strongest first.

        `effect` is a label word ("darker", "higher digit confidence") or the generic word of a relabelled
        statistic ("brighter" also finds "thicker strokes"). Raises SearchError naming the words available
        when no measure has that word.
        """
        measure, direction = self._resolve_effect(effect)
        found = []
        for unit in self.settings.heads:
            e = self.effects.get(unit, {}).get(measure.name)
            if e is not None and e.label is not None and (e.mean > 0) == (direction > 0):
                found.append(e)
        return [e.unit for e in sorted(found, key=_strength, reverse=True)]

    def _resolve_effect(self, effect: str) -> tuple[Measure, int]:
        """(measure, +1 or -1) for a label word: an exact label or generic word, else the one label holding
        the words of `effect` ("thicker" finds "brighter (thicker strokes)"); SearchError otherwise."""
        wanted = " ".join(effect.strip().lower().split())
        options = [(m, direction, word, generic) for m in self.measures
                   for direction, word, generic in ((1, m.words[0], m.generic[0]), (-1, m.words[1], m.generic[1]))]
        for m, direction, word, generic in options:
            if wanted in {w.lower() for w in (word, generic) if w}:
                return m, direction
        pattern = re.compile(rf"\b{re.escape(wanted)}\b") if wanted else None
        partial = [(m, d, word) for m, d, word, _ in options if word and pattern and pattern.search(word.lower())]
        if len(partial) == 1:
            return partial[0][0], partial[0][1]
        words = sorted({w for m in self.measures for w in (*m.words, *m.generic) if w})
        if partial:
            raise SearchError(f"effect {effect!r} matches several labels: {', '.join(w for _, _, w in partial)}; "
                              "give one of them whole")
        raise SearchError(f"effect {effect!r} is not measured by this atlas; effects it knows: {', '.join(words)}")

    def export(self, effect: str, top: int = 3, *, name: str | None = None, strength: float | None = None) -> HeadSet:
        """A head set of the `top` heads labelled `effect` (strongest first), with the atlas as provenance.

        strength defaults to the atlas's u. Raises SearchError when no head carries the effect (naming the
        effects that do occur) or top < 1.
        """
        if top < 1:
            raise SearchError(f"top must be at least 1, got {top}")
        heads = self.heads_with(effect)
        if not heads:
            present = ", ".join(f"{w} ({n})" for w, n in sorted(self.effect_words().items())) or "none"
            raise SearchError(f"no head of this atlas is labelled {effect!r}; labels present (heads): {present}")
        chosen = heads[:top]
        u = self.settings.strength if strength is None else strength
        s = self.settings
        measure, _ = self._resolve_effect(effect)
        specs = [(layer, head, u) for layer, head, _ in map(parse_notation, chosen)]
        summary = {h: {"mean": self.effects[h][measure.name].mean, "ci95": [self.effects[h][measure.name].low,
                                                                            self.effects[h][measure.name].high],
                       "d": _finite(self.effects[h][measure.name].d)} for h in chosen}
        provenance = SearchProvenance(
            objective=f"atlas effect '{effect}' ({measure.name})", prompts=s.prompts, seeds=s.seeds, steps=s.steps,
            strength=s.strength, scale=s.guidance.scale, cfg=s.guidance.cfg, candidates=len(s.heads),
            evaluation={"atlas_effects": summary, "heads_with_effect": len(heads)},
        )
        where = str(self.out_dir) if self.out_dir else "an atlas"
        return HeadSet.from_heads(
            specs, sites=self.sites, architecture=self.architecture,
            name=name or f"atlas-{effect.replace(' ', '-')}-top{len(chosen)}", base_model=s.model, origin="atlas",
            source=f"headhunter atlas export {where} --effect '{effect}' --top {top} (headhunter {__version__})",
            description=f"The {len(chosen)} heads with the strongest '{effect}' effect ({measure.name}) in a head atlas",
            perturbation=s.perturbation, guidance=s.guidance, search=provenance,
            tags=["headhunter", "atlas", effect.replace(" ", "-")],
        )

    # ----- numbers ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready data (what atlas.json holds)."""
        return {
            "format": "headhunter-atlas", "library_version": __version__,
            "settings": self.settings.model_dump(), "architecture": self.architecture,
            "sites": [s.model_dump() for s in self.sites], "measures": [asdict(m) for m in self.measures],
            "skipped_measures": self.skipped, "alpha": self.alpha, "min_effect": self.min_effect,
            "timing": self.timing, "images": self.images,
            "effects": {u: {m: _jsonable(asdict(e)) for m, e in per.items()} for u, per in self.effects.items()},
            "labels": {u: self.labels(u) for u in self.units[1:] if self.labels(u)},
            "groups": [asdict(g) for g in self.groups],
            "interval_effects": {u: {m: _jsonable(asdict(e)) for m, e in per.items()}
                                 for u, per in self.interval_effects.items()},
            "interval_differences": [_jsonable(asdict(d)) for d in self.interval_differences],
            "values": self.values,
        }

    def effect_rows(self) -> list[dict[str, Any]]:
        """One row per (unit, measure) for effects.csv."""
        rows = []
        for unit in self.units[1:] + [name for _, _, name in self.interval_units]:
            layer, head = _unit_position(unit)
            for m in self.measures:
                e = self.effects.get(unit, self.interval_effects.get(unit, {})).get(m.name)
                if e is not None:
                    rows.append({"unit": unit, "layer": layer, "head": "" if head is None else head, "measure": m.name,
                                 "mean": e.mean, "ci_low": e.low, "ci_high": e.high, "d": e.d, "p": e.p, "n": e.n,
                                 "significant": e.significant, "label": e.label or ""})
        return rows

    def save(self, out_dir: str | Path | None = None) -> Path:
        """Write atlas.json, effects.csv and values.csv (atomically) into out_dir; returns atlas.json's path."""
        out = Path(out_dir or self.out_dir or ".")
        out.mkdir(parents=True, exist_ok=True)
        io.write_atomic(out / ATLAS_NAME, json.dumps(self.to_dict(), indent=1, allow_nan=True).encode())
        io.write_atomic(out / "effects.csv", _csv(self.effect_rows()))
        value_rows = [{"unit": unit, "prompt": p, "seed": s, "measure": k, "value": v}
                      for unit in self.units + [name for _, _, name in self.interval_units]
                      for (p, s), values in zip(self.pairs, self.values.get(unit, []))
                      for k, v in values.items()]
        io.write_atomic(out / "values.csv", _csv(value_rows))
        return out / ATLAS_NAME


def unit_names(settings: AtlasSettings) -> list[str]:
    return [NONE, *(f"L{i}" for i in settings.layers), *settings.heads]


def interval_units(settings: AtlasSettings) -> list[tuple[str, int, str]]:
    """(unit, interval index, name) for every layer and head unit in every interval of `settings.intervals`."""
    if not settings.intervals:
        return []
    return [(unit, k, interval_unit(unit, tuple(iv))) for unit in unit_names(settings)[1:]
            for k, iv in enumerate(settings.intervals)]


def _unit_position(unit: str) -> tuple[int, int | None]:
    unit = unit.split("@", 1)[0]  # an interval unit: `L3H2@[0,0.4)`
    if "H" in unit:
        layer, head, _ = parse_notation(unit)
        return layer, head
    return int(unit[1:]), None


def _strength(e: Effect) -> float:
    return abs(e.d) if math.isfinite(e.d) else abs(e.mean)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buffer = _io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue().encode()


def _quantize(images: torch.Tensor) -> torch.Tensor:
    """What a user sees: 8-bit images, back as floats in [0, 1] (so resumed runs measure identical pixels)."""
    return (images.clamp(0, 1) * 255).round() / 255


def _thumb(image: torch.Tensor) -> torch.Tensor:
    """uint8 [C, h, w] with the longer side at most THUMB_SIDE."""
    side = max(image.shape[-2:])
    if side > THUMB_SIDE:
        scale = THUMB_SIDE / side
        size = (max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale)))
        image = torch.nn.functional.interpolate(image[None], size=size, mode="area")[0]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


class _CheckpointFile(BaseModel):
    """The shape of an atlas's state.json: settings, version, per-unit per-pair measured values, finished
    batches and timing."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    settings: dict[str, Any]
    library_version: str
    values: dict[str, dict[str, dict[str, float | None]]]
    done: list[int]
    timing: dict[str, float]


class AtlasCheckpoint(Checkpoint):
    """values + finished batches + timing in out_dir/state.json; kept images in out_dir/images/*.safetensors."""

    what = "atlas"
    Schema = _CheckpointFile

    @classmethod
    def fresh(cls, settings: BaseModel) -> dict[str, Any]:
        return {"settings": settings.model_dump(), "library_version": __version__, "values": {}, "done": [],
                "timing": {"images": 0, "seconds": 0.0, "cpu_seconds": 0.0}}

    @classmethod
    def check(cls, data: dict[str, Any], path: Path) -> None:
        """Beyond the schema: finished batches are distinct batch starts (integers >= 0)."""
        done = data["done"]
        if any(d < 0 for d in done) or len(set(done)) != len(done):
            raise SearchError(f"atlas checkpoint {path} is damaged: done={done[:10]!r} must list distinct batch "
                              f"starts >= 0; {FIX}")

    @classmethod
    def started(cls, out_dir: Path) -> None:
        for old in (out_dir / IMAGES_DIR).glob("*.safetensors") if (out_dir / IMAGES_DIR).is_dir() else ():
            old.unlink()

    @property
    def out_dir(self) -> Path | None:
        return None if self.path is None else self.path.parent

    def done(self, start: int) -> bool:
        return start in self.data["done"]

    def keep_images(self, start: int, tensors: dict[str, torch.Tensor]) -> None:
        if self.out_dir is not None and tensors:
            from safetensors.torch import save

            io.write_atomic(self.out_dir / IMAGES_DIR / f"{start:08d}.safetensors",
                            save({k: v.contiguous() for k, v in tensors.items()}))

    def kept_images(self) -> dict[str, torch.Tensor]:
        if self.out_dir is None or not (self.out_dir / IMAGES_DIR).is_dir():
            return {}
        from safetensors.torch import load_file

        kept: dict[str, torch.Tensor] = {}
        for path in sorted((self.out_dir / IMAGES_DIR).glob("*.safetensors")):
            if int(path.stem) in self.data["done"]:
                kept.update(load_file(path))
        return kept

    def record(self, start: int, values: dict[str, dict[int, dict[str, float]]], images: int, seconds: float,
               cpu_seconds: float) -> None:
        for unit, per_pair in values.items():
            self.data["values"].setdefault(unit, {}).update({str(k): v for k, v in per_pair.items()})
        self.data["done"].append(start)
        self.data["timing"]["images"] += images
        self.data["timing"]["seconds"] += seconds
        self.data["timing"]["cpu_seconds"] = self.data["timing"].get("cpu_seconds", 0.0) + cpu_seconds
        self.save()


def select_heads(sites: Sequence[Site], heads: Sequence[str | int] | None) -> list[str]:
    """Heads in paper notation; a layer (`3`, `L3`) or a site name expands to all its heads. SearchError if unknown."""
    if heads is None:
        return [format_notation(i, h) for i, s in enumerate(sites) for h in range(s.num_heads)]
    names = [s.name for s in sites]
    out: list[str] = []
    for item in heads:
        text = str(item).strip()
        if text.isdigit() or text in names or re.fullmatch(r"L\d+", text):
            layer = names.index(text) if text in names else int(text.lstrip("L"))
            if not 0 <= layer < len(sites):
                raise SearchError(f"layer {layer} out of range; this model has layers 0..{len(sites) - 1} "
                                  f"(heads: {head_range(sites)})")
            out += [format_notation(layer, h) for h in range(sites[layer].num_heads)]
        else:
            layer, head, _ = parse_notation(text)
            missing = missing_head(sites, layer, head)
            if missing is not None:
                raise SearchError(f"head {missing}")
            out.append(format_notation(layer, head))
    return list(dict.fromkeys(out))


def measure_units(pipe: Any, sites: list[Site], architecture: str, settings: AtlasSettings, measurer: Measurer,
         state: AtlasCheckpoint, progress: bool) -> Atlas:
    from tqdm.auto import tqdm

    units = unit_names(settings)
    u = settings.strength
    headsets: dict[str, HeadSet | None] = {NONE: None}
    for i in settings.layers:
        headsets[f"L{i}"] = HeadSet.from_heads([(i, h, u) for h in range(sites[i].num_heads)], sites=sites,
                                               architecture=architecture, name=f"L{i}")
    for h in settings.heads:
        layer, head, _ = parse_notation(h)
        headsets[h] = HeadSet.from_heads([(layer, head, u)], sites=sites, architecture=architecture, name=h)
    for unit, k, name in interval_units(settings):  # a unit acting only for sigma in one interval
        lo, hi = settings.intervals[k]
        headsets[name] = headsets[unit].restricted(lo, hi).with_metadata(name=name)
    units = units + [name for _, _, name in interval_units(settings)]
    shown = set(unit_names(settings))  # contact sheets show the units, not every interval
    pairs = [(p, s) for p in settings.prompts for s in settings.seeds]
    m = len(pairs)
    rows = [Row(headsets[k], p, s) for k in units for p, s in pairs]
    gen = GenerationSettings(guidance=settings.guidance, perturbation=settings.perturbation, steps=settings.steps,
                             pipeline_kwargs=settings.pipeline_kwargs)
    kept = state.kept_images()
    base: dict[int, torch.Tensor] = {int(k.split("|")[1]): v.float() / 255 for k, v in kept.items() if k.startswith("base|")}
    thumbs = {(k.split("|")[0], int(k.split("|")[1])): v for k, v in kept.items() if not k.startswith("base|")}
    bar = tqdm(total=len(rows), desc=f"atlas: {len(units)} units x {m} pairs", unit="img", disable=not progress)
    done = sum(len(v) for v in state.data["values"].values())
    if done and progress and state.path is not None:
        import sys

        bar.write(f"resuming the atlas in {state.path.parent}: {done:,} of {len(rows):,} images are measured in "
                  f"{state.path.name} and are not made again (--no-resume, resume=False: start over)", file=sys.stderr)
    bar.update(done)
    clock = {"t": time.perf_counter(), "cpu": time.process_time()}

    def on_batch(start: int, images: torch.Tensor) -> None:
        seconds, cpu = time.perf_counter() - clock["t"], time.process_time() - clock["cpu"]
        images = _quantize(images)
        batch = rows[start : start + len(images)]
        keep: dict[str, torch.Tensor] = {}
        for offset in range(len(images)):
            unit, pair = units[(start + offset) // m], (start + offset) % m
            if unit == NONE:
                base[pair] = images[offset]
                keep[f"base|{pair}"] = (images[offset] * 255).round().to(torch.uint8)
            if pair < settings.sheet_pairs and unit in shown:
                thumbs[(unit, pair)] = _thumb(images[offset])
                keep[f"{unit}|{pair}"] = thumbs[(unit, pair)]
        reference = torch.stack([base[(start + o) % m] for o in range(len(images))])
        values = measurer(images, [r.prompt for r in batch], reference)
        per_unit: dict[str, dict[int, dict[str, float]]] = {}
        for offset, v in enumerate(values):
            per_unit.setdefault(units[(start + offset) // m], {})[(start + offset) % m] = v
        state.keep_images(start, keep)
        state.record(start, per_unit, len(images), seconds, cpu)
        bar.update(len(images))
        clock["t"], clock["cpu"] = time.perf_counter(), time.process_time()

    def skip(start: int) -> bool:
        done = state.done(start)
        if not done:
            clock["t"], clock["cpu"] = time.perf_counter(), time.process_time()
        return done

    run_batches(pipe, rows, gen, settings.batch_size, on_batch, skip=skip)
    bar.close()
    values = {unit: [state.data["values"][unit][str(i)] for i in range(m)] for unit in units}
    return Atlas(settings, list(sites), architecture, [], values, timing=dict(state.data["timing"]), thumbs=thumbs)


def restrict_candidates(pool: Sequence[str], atlas_or_dir: Any, effect: str | None, sites: Sequence[Site]) -> list[str]:
    """The heads of `pool` (paper notation) that the atlas labels `effect`, in pool order (the search's filter).

    Raises SearchError when either argument is missing, the atlas was made for other sites, or no candidate
    is left (naming the labels the atlas does have).
    """
    if atlas_or_dir is None or not effect:
        raise SearchError("candidates_from and effect go together: give the atlas (or its folder) and an effect word")
    source = atlas_or_dir if isinstance(atlas_or_dir, Atlas) else load_atlas(atlas_or_dir)
    if [(s.name, s.num_heads) for s in source.sites] != [(s.name, s.num_heads) for s in sites]:
        raise SearchError(f"the atlas was made for {source.settings.model} ({len(source.sites)} sites), "
                          f"whose sites differ from this model's ({len(sites)} sites)")
    allowed = set(source.heads_with(effect))
    kept = [head for head in pool if head in allowed]
    if not kept:
        present = ", ".join(f"{w} ({n})" for w, n in sorted(source.effect_words().items())) or "none"
        raise SearchError(f"no candidate head is labelled {effect!r} by the atlas; labels present (heads): {present}")
    return kept


def load_atlas(path: str | Path) -> Atlas:
    """Read an atlas folder (or its atlas.json) written by `atlas(..., out_dir=...)`.

    Raises SearchError when there is no atlas.json there or it is not an atlas.
    """
    p = Path(path)
    file = p / ATLAS_NAME if p.is_dir() else p
    if not file.is_file():
        raise SearchError(f"no atlas at {path}: {file} does not exist (make one with `headhunter atlas --out {path}`)")
    data = read_json(file, max_bytes=MAX_ATLAS_BYTES, error=SearchError, what="atlas file")
    if not isinstance(data, dict) or data.get("format") != "headhunter-atlas":
        raise SearchError(f"{file} is not a headhunter atlas (no 'format': 'headhunter-atlas')")
    try:
        result = Atlas(
            validated(AtlasSettings, SearchError, **data["settings"]), [Site(**s) for s in data["sites"]],
            data["architecture"],
            [Measure(**{**m, "words": tuple(m["words"]), "generic": tuple(m["generic"])}) for m in data["measures"]],
            {u: list(v) for u, v in data["values"].items()}, alpha=data["alpha"], min_effect=data["min_effect"],
            timing=data.get("timing", {}), out_dir=file.parent,
        )
        analyse(result)
    except SearchError as err:
        raise SearchError(f"atlas file {file} is damaged: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:  # an edited or damaged file
        raise SearchError(f"atlas file {file} is damaged: {type(err).__name__}: {' '.join(str(err).split())[:200]}") from None
    state = AtlasCheckpoint(file.parent / STATE_NAME, result.settings, {"done": _done_batches(file.parent)})
    result.thumbs = {(k.split("|")[0], int(k.split("|")[1])): v for k, v in state.kept_images().items()
                     if not k.startswith("base|")}
    return result


def _done_batches(folder: Path) -> list[int]:
    """The finished batches of the atlas checkpoint in `folder`; none when it is missing or damaged (a
    rendered atlas stays readable without its checkpoint)."""
    try:
        return AtlasCheckpoint.read(folder / STATE_NAME)["done"]
    except SearchError:
        return []


#: Largest atlas.json read.
MAX_ATLAS_BYTES = 512 * 1024 * 1024
