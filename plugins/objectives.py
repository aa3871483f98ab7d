"""Built-in objectives, registered through `register_objectives` like any third-party plugin.

Offline image statistics (no weights) live in `_image_stats`; the CLIP-based scorers in `_preference`
(PickScore, CLIP score, HPS v2) and `_aesthetic` (LAION aesthetic), built on `_clip` (preprocessing, CLIP
models) and `_weights` (fetching, state dicts, the `HubObjective` base). All are imported only when an
objective is created, so listing plugins stays quick.
Composition (sums, harmonic means, gates) is not an objective here but the grammar of
`headhunter.objective.expr.parse_objective` (objects: `headhunter.objective.composite`). docs/objectives.md describes each one.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from headhunter.plugin_system.hookspecs import hookimpl

#: name -> (module, class, one-line description). Descriptions give the range; higher is always better.
BUILTIN_OBJECTIVES: dict[str, tuple[str, str, str]] = {
    "pickscore": ("_preference", "PickScore", "PickScore v1 (the paper's objective): 100-scale CLIP-H preference, ~18-23"),
    "clipscore": ("_preference", "ClipScore", "CLIP ViT-L/14 image-text score, 100*cos; params template=, style="),
    "aesthetic": ("_aesthetic", "Aesthetic", "LAION aesthetic predictor v2 (CLIP ViT-L/14 + MLP), ~1-10"),
    "hps": ("_preference", "HPSv2", "HPS v2 human-preference score (cos, ~0.2-0.3), community transformers weights"),
    "brightness": ("_image_stats", "BrightnessObjective", "mean luma (BT.601), [0, 1]"),
    "darkness": ("_image_stats", "DarknessObjective", "1 - mean luma, [0, 1]"),
    "contrast": ("_image_stats", "ContrastObjective", "RMS contrast: std of luma, [0, 0.5]"),
    "saturation": ("_image_stats", "SaturationObjective", "mean HSV saturation, [0, 1]; 0 on gray"),
    "colorfulness": ("_image_stats", "ColorfulnessObjective", "Hasler-Suesstrunk colorfulness, 0-255 scale; 0 on gray"),
    "sharpness": ("_image_stats", "SharpnessObjective", "variance of the Laplacian of luma, [0, 16]"),
    "redness": ("_image_stats", "RednessObjective", "mean R - (G+B)/2, [-1, 1]; 0 on gray"),
    "warmth": ("_image_stats", "WarmthObjective", "mean R - B, [-1, 1]; 0 on gray"),
    "color": ("_image_stats", "ColorObjective", "closeness to a target colour, [0, 1]; param target=#rrggbb"),
}


def _factory(module: str, cls: str) -> Callable[..., Any]:
    def create(**params: Any) -> Any:
        return getattr(importlib.import_module(f"headhunter.plugins.{module}"), cls)(**params)

    create.__name__ = cls
    return create


@hookimpl
def register_objectives(register: Callable[..., None]) -> None:
    for name, (module, cls, description) in BUILTIN_OBJECTIVES.items():
        register(name, _factory(module, cls), description=description)
