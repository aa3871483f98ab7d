"""What an atlas measures on every image: registered image statistics, objective expressions, and the paired
measures against the unguided image of the same prompt-seed pair (pixel change, class changed)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from headhunter.atlases.effects import CHANGE, Measure
from headhunter.errors import SearchError
from headhunter.objective.expr import parse_objective
from headhunter.plugin_system.registry import get_registry

DEFAULT_MEASURES = ("brightness", "contrast", "saturation", "colorfulness", "sharpness", "warmth", "redness")
#: measure -> (word when it goes up, word when it goes down).
WORDS: dict[str, tuple[str, str]] = {
    "brightness": ("brighter", "darker"),
    "contrast": ("more contrast", "less contrast"),
    "saturation": ("more saturated", "less saturated"),
    "colorfulness": ("more colourful", "less colourful"),
    "sharpness": ("sharper", "blurrier"),
    "warmth": ("warmer", "cooler"),
    "redness": ("redder", "less red"),
}
#: The paired pixel measure: mean |image - unguided image| over pixels and channels, in [0, 1].

@dataclass
class Measurer:
    """Turns a batch of images (+ the unguided images of the same pairs) into per-image measure values."""

    stats: dict[str, Any]
    objectives: dict[str, Any]
    classify: Callable[[torch.Tensor], torch.Tensor] | None
    class_measure: str | None

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], base: torch.Tensor | None) -> list[dict[str, float]]:
        columns: dict[str, list[float]] = {}
        for name, objective in {**self.stats, **self.objectives}.items():
            values = objective(images, list(prompts)).double().cpu().tolist()
            bad = [v for v in values if not math.isfinite(v)]
            if bad:
                raise SearchError(f"measure {name!r} returned {bad[0]} on an atlas image; measures must be finite")
            columns[name] = values
        if base is not None:
            columns[CHANGE] = (images - base).abs().flatten(1).mean(dim=1).double().tolist()
            if self.classify is not None and self.class_measure is not None:
                changed = self.classify(images) != self.classify(base)
                columns[self.class_measure] = changed.double().tolist()
        return [{k: v[i] for k, v in columns.items()} for i in range(len(images))]



def build_measures(settings: Any, words: dict[str, Any], classify: Any) -> tuple[Measurer, list[Measure]]:

    registry = get_registry()
    stats, objectives, measures = {}, {}, []
    for name in settings.measures:
        stats[name] = registry.objective(name)
        generic = WORDS.get(name, (f"higher {name}", f"lower {name}"))
        own = tuple(words.get(name, generic))
        measures.append(Measure(name, "stat", own, generic if own != generic else (None, None)))  # type: ignore[arg-type]
    for text in settings.objectives:
        objective = parse_objective(text)
        label = str(objective).replace("-", " ")
        objectives[str(objective)] = objective
        measures.append(Measure(str(objective), "objective", (f"higher {label}", f"lower {label}")))
    measures.append(Measure(CHANGE, "paired", (None, None)))
    if settings.classes is not None:
        measures.append(Measure(f"{settings.classes} changed", "paired", (f"changes the {settings.classes}", None),
                                min_abs=0.2))
    measurer = Measurer(stats, objectives, classify, f"{settings.classes} changed" if settings.classes else None)
    return measurer, measures
