"""Presets: head sets shipped in the package's headsets/ folder, listed in its index.json.

Load one with `load_headset("preset:NAME")`; `preset:NAME@U` loads the same heads with every strength
set to U (presets store SoftPAG u = 0.5, the paper's tuned default; `@1` is plain PAG, the strength the
paper's head figures were made with). `headhunter presets` lists them.

The index (`headsets/index.json`, format 1) is `{"format": 1, "presets": [entry, ...]}`; an entry is a
`PresetEntry`: name, file (relative to headsets/, at most one folder deep), model, architecture, origin
(`paper` | `search` | `manual`), effect, heads (paper notation), source, tags. Every field but `name`,
`file` and `effect` repeats the head set's own metadata so the list shows without reading the files; a
test checks they agree. `add_preset(headset, name, file)` writes the file and its entry in one call.
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from headhunter.format.files import write_atomic
from headhunter.errors import HeadSetError

if TYPE_CHECKING:  # the head-set reader (numpy, safetensors) loads only when a preset is loaded, not listed
    from headhunter.format.headset import HeadSet

#: Version of the index layout.
INDEX_FORMAT = 1
INDEX_NAME = "index.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


class PresetEntry(BaseModel):
    """One line of headsets/index.json."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME.pattern, description="preset name: lower-case letters, digits, '-' and '.'")
    file: str = Field(min_length=1, description="path relative to headsets/, at most one folder deep")
    model: str = Field(description="base model it was made for (Hub id, or the architecture)")
    architecture: str = Field(description="model family: sd3, flux, digits, ...")
    origin: Literal["paper", "search", "manual"] = Field(description="paper: named in the paper; search: found by headhunter")
    effect: str = Field(description="what it does, in a few words")
    heads: str = Field(description="the heads in paper notation")
    source: str = Field(description="'paper Fig. N', 'official code ...' or the search run")
    tags: list[str] = Field(default_factory=list)


def headsets_root() -> Path:
    """The shipped headsets/ folder (in a source checkout or editable install: the repo's headsets/)."""
    return Path(str(resources.files("headhunter.headsets")))


def list_presets(
    model: str | None = None, origin: str | None = None, root: str | Path | None = None
) -> list[PresetEntry]:
    """The presets in the index, in index order; optionally only those for `model` (id or family) or `origin`."""
    entries = _read_index(Path(root) if root else headsets_root())
    if model is not None:
        entries = [p for p in entries if model in (p.model, p.architecture)]
    if origin is not None:
        entries = [p for p in entries if p.origin == origin]
    return entries


def load_preset(name: str, root: str | Path | None = None) -> HeadSet:
    """Load the preset `name` (or `name@u`: every strength set to u); the error lists the available names."""
    from headhunter.format.headset import HeadSet

    base, strength = _split_strength(name)
    folder = Path(root) if root else headsets_root()
    entries = {p.name: p for p in _read_index(folder)}
    if base not in entries:
        raise HeadSetError(
            f"unknown preset {base!r}; available: {', '.join(entries) or '(none yet)'} (see `headhunter presets`)"
        )
    headset = HeadSet.from_file(folder / entries[base].file)
    if strength is None:
        return headset
    return HeadSet({site: dict.fromkeys(heads, strength) for site, heads in headset.strengths().items()}, headset.metadata)


def add_preset(
    headset: HeadSet,
    name: str,
    file: str,
    *,
    effect: str | None = None,
    root: str | Path | None = None,
    replace: bool = False,
) -> PresetEntry:
    """Ship a head set as a preset: write it to headsets/`file` and add (or with `replace`, update) its entry.

    `effect` defaults to the head set's description. The index keeps its order; a new entry goes last.
    Both writes are atomic. Used by `headhunter.format.presets_build` and by scripts that add searched presets.
    """
    folder = Path(root) if root else headsets_root()
    path = PurePosixPath(file)
    if not file.endswith(".safetensors") or path.is_absolute() or ".." in path.parts or len(path.parts) > 2:
        raise HeadSetError(
            f"preset file {file!r} must be a .safetensors path relative to headsets/, at most one folder deep "
            "(e.g. 'sd3-medium/dark.safetensors'), so that the package data includes it"
        )
    m = headset.metadata
    try:
        entry = PresetEntry(
            name=name, file=file, model=m.base_model or m.architecture, architecture=m.architecture, origin=m.origin,
            effect=effect if effect is not None else m.description, heads=headset.notation(),
            source=m.source or "-", tags=list(m.tags),
        )
    except ValidationError as err:
        raise HeadSetError(f"cannot add preset {name!r}: {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}") from None
    entries = _read_index(folder) if (folder / INDEX_NAME).exists() else []
    names = [p.name for p in entries]
    if name in names and not replace:
        raise HeadSetError(f"preset {name!r} exists already in {folder / INDEX_NAME}; pass replace=True to overwrite it")
    clash = [p.name for p in entries if p.file == file and p.name != name]
    if clash:
        raise HeadSetError(f"preset file {file!r} is already used by preset {clash[0]!r}; choose another file name")
    headset.save(folder / file)
    if name in names:
        entries[names.index(name)] = entry
    else:
        entries.append(entry)
    _write_index(folder, entries)
    return entry


def preset_rows(model: str | None = None, origin: str | None = None) -> list[dict[str, Any]]:
    """Presets as plain dicts for display."""
    return [p.model_dump() for p in list_presets(model=model, origin=origin)]


def _split_strength(name: str) -> tuple[str, float | None]:
    if "@" not in name:
        return name, None
    base, _, text = name.rpartition("@")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise HeadSetError(f"preset strength {text!r} in {name!r} must be a number in (0, 1], e.g. 'preset:{base}@1'")
    return base, value


def _read_index(folder: Path) -> list[PresetEntry]:
    path = folder / INDEX_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HeadSetError(f"cannot read the preset index {path}: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
        raise HeadSetError(f"{path} is not a preset index of format {INDEX_FORMAT}: {str(raw)[:80]}")
    entries = []
    for i, item in enumerate(raw.get("presets", [])):
        try:
            entries.append(PresetEntry.model_validate(item))
        except ValidationError as err:  # a broken shipped index is a packaging bug; say which entry
            raise HeadSetError(f"{path}: entry {i} ({item.get('name', '?')!r}) is malformed: {err.errors()[0]['msg']}") from None
    return entries


def _write_index(folder: Path, entries: list[PresetEntry]) -> None:
    doc = {"format": INDEX_FORMAT, "presets": [p.model_dump() for p in entries]}
    write_atomic(folder / INDEX_NAME, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode())


__all__ = ["INDEX_FORMAT", "PresetEntry", "add_preset", "headsets_root", "list_presets", "load_preset", "preset_rows"]
