"""headhunter's ComfyUI nodes: load head sets, combine them, apply them to a MODEL (SD3 / SD3.5, FLUX.1).

ComfyUI reads `NODE_CLASS_MAPPINGS` from a custom-node package; `headhunter comfyui install PATH` writes one
(`custom_nodes/headhunter/__init__.py`) that re-exports this module's mappings, so ComfyUI loads the nodes
from the installed package (docs/comfyui.md). Importing this module needs torch but not ComfyUI: ComfyUI is
imported only when a node runs on a ComfyUI model.

The nodes use ComfyUI's legacy node API (`INPUT_TYPES` / `RETURN_TYPES` / `FUNCTION`, read by ComfyUI
0.3.x and later), which needs no import from ComfyUI. Head sets travel between nodes as `HEADHUNTER_HEADSETS`
(a `HeadSetList`: one or more `headhunter.HeadSet`, each its own perturbed branch). Every node error is a
`headhunter.HeadhunterError` whose message names the bad value and what is allowed; ComfyUI shows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headhunter.errors import HeadSetError
from headhunter.format.headset import MERGE_RULES, HeadSet
from headhunter.format.loading import load_headset
from headhunter.format.schema import SCOPES

from .patch import MODES, WINDOWS, apply_headsets

CATEGORY = "advanced/guidance/headhunter"
HEADSETS = "HEADHUNTER_HEADSETS"
#: Widget value meaning "what the head set recommends".
FROM_HEADSET = "headset"
COMBINE = ("separate", *(f"merge-{rule}" for rule in MERGE_RULES))


class HeadSetList(tuple):
    """One or more head sets, in order; each is its own perturbed branch with its own scale (the value of a
    `HEADHUNTER_HEADSETS` socket)."""

    def __repr__(self) -> str:
        return "HeadSetList(" + ", ".join(f"{hs.name!r} ({hs.metadata.architecture}, {len(hs)} heads)" for hs in self) + ")"


def _perturbation_names() -> list[str]:
    from headhunter.plugin_system.registry import get_registry

    return get_registry().names("perturbation")


def _optional(value: float) -> float | None:
    """Widget convention: a negative number means "the head set's own setting"."""
    return None if value < 0 else float(value)


def parse_params(text: str) -> dict[str, Any]:
    """The perturbation parameters widget: empty, or a JSON object such as `{"sigma": 10}`."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise HeadSetError(f"perturbation params {text[:80]!r} are not JSON ({err.msg}); write an object such as "
                           '{"sigma": 10}, or leave the field empty') from None
    if not isinstance(value, dict):
        raise HeadSetError(f"perturbation params {text[:80]!r} must be a JSON object such as {{\"sigma\": 10}}")
    return value


class HeadHunterLoadHeadSet:
    """Load a head set: a file path, `preset:NAME` (shipped presets, `headhunter presets`) or a Hub repo id
    (`user/repo`, optional revision and file name), through `headhunter.load_headset`."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (HEADSETS,)
    RETURN_NAMES = ("headsets",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "source": ("STRING", {"default": "preset:sd3-dark-lighting", "tooltip": "a .safetensors/.json path, preset:NAME, or a Hub repo id user/repo"}),
            },
            "optional": {
                "revision": ("STRING", {"default": "", "tooltip": "Hub branch, tag or commit (empty: main)"}),
                "weight_name": ("STRING", {"default": "", "tooltip": "file in the Hub repo (empty: its one head-set file)"}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, source: str, revision: str = "", weight_name: str = "") -> Any:
        """ComfyUI re-runs the node when this changes: a local file's modification time (an edited file is
        read again), else the inputs themselves."""
        path = Path(source.strip())
        return (str(path), path.stat().st_mtime_ns) if path.is_file() else (source, revision, weight_name)

    def load(self, source: str, revision: str = "", weight_name: str = "") -> tuple[HeadSetList]:
        headset = load_headset(source.strip(), weight_name=weight_name.strip() or None, revision=revision.strip() or None)
        return (HeadSetList([headset]),)


class HeadHunterCombineHeadSets:
    """Combine head sets: `separate` keeps each its own perturbed branch (own scale and window, one more
    term w_k (cond - perturbed_k) each); `merge-max|sum|override` makes one head set (HeadSet.merge)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (HEADSETS,)
    RETURN_NAMES = ("headsets",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "headsets_a": (HEADSETS,),
            "headsets_b": (HEADSETS,),
            "combine": (list(COMBINE), {"default": "separate", "tooltip": "separate branches, or one merged head set (rule for heads in both)"}),
        }}

    def combine(self, headsets_a: Any, headsets_b: Any, combine: str = "separate") -> tuple[HeadSetList]:
        items = list(_headsets(headsets_a, "headsets_a")) + list(_headsets(headsets_b, "headsets_b"))
        if combine == "separate":
            return (HeadSetList(items),)
        if combine not in COMBINE:
            raise HeadSetError(f"combine {combine!r}; allowed: {', '.join(COMBINE)}")
        merged = items[0]
        for other in items[1:]:
            merged = merged.merge(other, rule=combine.removeprefix("merge-"))
        return (HeadSetList([merged]),)


class HeadHunterApplyHeadSet:
    """Head-level perturbation guidance on a MODEL: `uncond + s (cond - uncond) + w (cond - perturbed)` inside
    the window, the perturbed pass with the conditional prompt. -1 / "headset" = the head set's own setting."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL",),
            "headsets": (HEADSETS,),
            "scale": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 100.0, "step": 0.1,
                                "tooltip": "perturbation guidance scale w (-1: the head set's)"}),
            "strength": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.05,
                                   "tooltip": "every selected head's u in [0, 1] (-1: the head set's own strengths)"}),
            "perturbation": ([FROM_HEADSET, *_perturbation_names()], {"default": FROM_HEADSET,
                             "tooltip": "the target T (headset: the head set's perturbation and parameters)"}),
            "params": ("STRING", {"default": "", "tooltip": 'perturbation parameters as JSON, e.g. {"sigma": 10} (empty: defaults)'}),
            "scope": ([FROM_HEADSET, *SCOPES], {"default": FROM_HEADSET, "tooltip": "query rows perturbed in joint attention"}),
            "start_percent": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "window start, fraction of the steps (-1: the head set's)"}),
            "end_percent": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "window end (exclusive), fraction of the steps (-1: the head set's)"}),
            "window": (list(WINDOWS), {"default": "steps", "tooltip": "steps: step i of N guided iff start <= i/N < end; "
                                       "sigma: percent_to_sigma(end) < sigma <= percent_to_sigma(start)"}),
            "mode": (list(MODES), {"default": "sequential", "tooltip": "sequential: one extra forward after CFG; "
                                   "batched: cond, uncond and perturbed in one forward"}),
        }}

    def apply(self, model: Any, headsets: Any, scale: float = -1.0, strength: float = -1.0,
              perturbation: str = FROM_HEADSET, params: str = "", scope: str = FROM_HEADSET,
              start_percent: float = -1.0, end_percent: float = -1.0, window: str = "steps",
              mode: str = "sequential") -> tuple[Any]:
        items = _headsets(headsets, "headsets")
        parsed = parse_params(params)
        name = None if perturbation == FROM_HEADSET else perturbation
        if name is None and parsed:
            names = {hs.metadata.perturbation.name for hs in items}
            if len(names) != 1:
                raise HeadSetError(f"params given but the head sets use different perturbations ({', '.join(sorted(names))}); "
                                   "pick one in 'perturbation'")
            name = names.pop()
        patched = apply_headsets(
            model, list(items), scale=_optional(scale), strength=_optional(strength), start=_optional(start_percent),
            stop=_optional(end_percent), scope=None if scope == FROM_HEADSET else scope, perturbation=name,
            params=parsed or None, window=window, mode=mode)
        return (patched,)


def _headsets(value: Any, what: str) -> tuple[HeadSet, ...]:
    items = (value,) if isinstance(value, HeadSet) else tuple(value) if isinstance(value, (list, tuple)) else None
    if not items or not all(isinstance(hs, HeadSet) for hs in items):
        raise HeadSetError(f"{what} is {type(value).__name__}; connect the output of 'HeadHunter: load head set'")
    return items


NODE_CLASS_MAPPINGS = {
    "HeadHunterLoadHeadSet": HeadHunterLoadHeadSet,
    "HeadHunterCombineHeadSets": HeadHunterCombineHeadSets,
    "HeadHunterApplyHeadSet": HeadHunterApplyHeadSet,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "HeadHunterLoadHeadSet": "HeadHunter: load head set",
    "HeadHunterCombineHeadSets": "HeadHunter: combine head sets",
    "HeadHunterApplyHeadSet": "HeadHunter: apply head set",
}

__all__ = ["HeadHunterApplyHeadSet", "HeadHunterCombineHeadSets", "HeadHunterLoadHeadSet", "HeadSetList",
           "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "parse_params"]
