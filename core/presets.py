"""Presets: head sets shipped in the package's headsets/ folder, listed in its index.json."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import HeadSetError
from .headset import HeadSet


class PresetEntry(BaseModel):
    """One line of headsets/index.json."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    file: str = Field(min_length=1, description="path relative to headsets/")
    model: str = Field(description="base model it was made for")
    description: str = ""
    source: str = Field(description="'paper Fig. N' or 'search: <run>'")
    origin: str = Field(description="paper | search | manual")


def list_presets() -> list[PresetEntry]:
    """The presets listed in the shipped index, in index order."""
    raw = json.loads(resources.files("headhunter.headsets").joinpath("index.json").read_text())
    try:
        return [PresetEntry.model_validate(p) for p in raw.get("presets", [])]
    except ValidationError as err:  # a broken shipped index is a packaging bug; say which entry
        raise HeadSetError(f"headsets/index.json is malformed: {err}") from None


def load_preset(name: str) -> HeadSet:
    """Load the shipped preset `name`; the error lists the available names."""
    entries = {p.name: p for p in list_presets()}
    if name not in entries:
        raise HeadSetError(f"unknown preset {name!r}; available: {', '.join(entries) or '(none yet)'}")
    path = resources.files("headhunter.headsets").joinpath(entries[name].file)
    with resources.as_file(path) as local:
        return HeadSet.from_file(local)


def preset_rows() -> list[dict[str, Any]]:
    """Presets as plain dicts for display."""
    return [p.model_dump() for p in list_presets()]
