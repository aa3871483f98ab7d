"""`load_headset`: a head set from a file or folder, a shipped preset (`preset:NAME`) or a Hub repo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headhunter.errors import HeadSetError
import headhunter.format.hub as hub
from headhunter.format.headset import HeadSet, load_headset_file
from headhunter.format.presets import load_preset
from headhunter.format.sites import parse_notation

PRESET_PREFIX = "preset:"


def load_headset(
    source: str | Path,
    weight_name: str | None = None,
    revision: str | None = None,
    **hub_kwargs: Any,
) -> HeadSet:
    """Load a head set from a local file/folder, a shipped preset (`preset:NAME`) or a Hub repo (`user/repo`).

    Local paths win: an existing path is always read as a file. The Hub arguments follow diffusers'
    `load_lora_weights` (explicit `weight_name`, else the single head-set file in the repo); `hub_kwargs`
    (`cache_dir`, `token`, `local_files_only`) go unchanged to `headhunter.format.hub.download_headset`, the one
    place that lists them (an unknown keyword is a TypeError there).
    """
    text = str(source)
    if Path(text).exists():
        return load_headset_file(text)
    if text.startswith(PRESET_PREFIX):
        return load_preset(text[len(PRESET_PREFIX) :])
    if looks_like_repo_id(text):
        return load_from_hub(text, weight_name=weight_name, revision=revision, **hub_kwargs)
    if text.endswith((".safetensors", ".json")):
        raise HeadSetError(
            f"head-set file {text} does not exist" + (
                " (a hunt writes it: `headhunter hunt --out runs/demo`, or `make demo`)"
                if Path(text).name.startswith("headset.") else "")
        )
    if _is_notation(text):
        raise HeadSetError(
            f"head set {text!r} not found: it reads as heads in paper notation, but a head set is a file, a folder, "
            f"'preset:NAME' or a Hub repo id. Make a file of those heads first: "
            f"`HeadSet.from_notation({text!r}, base_model=MODEL).save('mine.safetensors')` (MODEL e.g. 'digits'; "
            "docs/format.md), then pass mine.safetensors"
        )
    raise HeadSetError(
        f"head set {text!r} not found: not an existing file or folder, not 'preset:NAME' "
        "(see `headhunter presets`), not a Hub repo id 'user/repo'"
    )


def _is_notation(text: str) -> bool:
    """Whether `text` is a comma-separated list of heads in paper notation ('L0H1, L2H7@0.5')."""
    parts = [p for p in text.split(",") if p.strip()]
    try:
        return bool(parts) and all(parse_notation(p) for p in parts)
    except HeadSetError:
        return False


def looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.endswith((".safetensors", ".json"))


def load_from_hub(
    repo_id: str,
    *,
    weight_name: str | None = None,
    revision: str | None = None,
    **hub_kwargs: Any,
) -> HeadSet:
    """Download (or take from the cache) a head set from a Hub repo and read it.

    `revision` is a branch, tag or commit id (a commit id pins the exact file). Offline, the name comes
    from the cached snapshot; see the module docstring for the resolution rules. `hub_kwargs`
    (`cache_dir`, `token`, `local_files_only`) are passed to `download_headset` unchanged.
    """
    path, filename = hub.download_headset(repo_id, weight_name=weight_name, revision=revision, **hub_kwargs)
    return read_downloaded(path, repo_id, filename, revision)


def read_downloaded(path: Path, repo_id: str, filename: str, revision: str | None = None) -> HeadSet:
    """Read a head-set file fetched by `download_headset`; a file that is not a head set is a HeadSetError
    naming the file in the repo (not the cache path) and the fix (`weight_name=`, CLI `--weight-name`)."""
    try:
        return HeadSet.from_file(path)
    except HeadSetError as err:
        raise HeadSetError(hub.not_ours(repo_id, filename, revision, str(err).replace(str(path), "the file"))) from None
