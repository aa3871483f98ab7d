"""headhunter: find, store, share and apply head-level perturbation guidance for diffusion transformers.

Implements HeadHunter and SoftPAG from "Where and How to Perturb: On the Design of Perturbation
Guidance in Diffusion and Flow Models" (Ahn et al., arXiv 2506.10978).
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import (
    HeadhunterError,
    HeadSetError,
    HubError,
    ModelError,
    ObjectiveError,
    PluginError,
    SearchError,
)
from .headset import Head, HeadSet
from .hookspecs import hookimpl
from .registry import get_plugin_manager, get_registry
from .schema import (
    FORMAT_VERSION,
    GenerationSettings,
    GuidanceSettings,
    HeadSetMetadata,
    PerturbationSpec,
    SearchProvenance,
)
from .sites import Site

# Heavier parts load on first use so `import headhunter` (and the CLI) stays quick.
_LAZY = {
    "load_headset": "headhunter._loading",
    "load_model": "headhunter._loading",
    "Objective": "headhunter.objective",
    "Perturbation": "headhunter.perturbation",
    "ModelAdapter": "headhunter.adapter",
    "apply": "headhunter.guidance",
    "GuidanceHandle": "headhunter.guidance",
    "HeadHunterGuidance": "headhunter.guider",
    "hunt": "headhunter.workflow",
    "atlas": "headhunter.atlas",
    "Atlas": "headhunter.atlas",
    "load_atlas": "headhunter.atlas",
    "HuntResult": "headhunter.search",
    "evaluate": "headhunter.evaluation",
    "parse_objective": "headhunter.objective_expr",
    "load_pipeline": "headhunter._loading",
}

__all__ = [
    "FORMAT_VERSION",
    "GenerationSettings",
    "GuidanceSettings",
    "Head",
    "HeadSet",
    "HeadSetError",
    "HeadSetMetadata",
    "HeadhunterError",
    "HubError",
    "ModelError",
    "ObjectiveError",
    "PerturbationSpec",
    "PluginError",
    "SearchError",
    "SearchProvenance",
    "Site",
    "__version__",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headhunter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
