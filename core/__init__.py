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

# Everything else loads on first attribute access (PEP 562), so `import headhunter` costs only the version
# and the exceptions: the CLI's --help/--version never pay for numpy, pydantic models or torch.
_LAZY = {
    "Head": "headhunter.headset",
    "HeadSet": "headhunter.headset",
    "hookimpl": "headhunter.hookspecs",
    "get_plugin_manager": "headhunter.registry",
    "get_registry": "headhunter.registry",
    "FORMAT_VERSION": "headhunter.schema",
    "GenerationSettings": "headhunter.schema",
    "GuidanceSettings": "headhunter.schema",
    "HeadSetMetadata": "headhunter.schema",
    "PerturbationSpec": "headhunter.schema",
    "SearchProvenance": "headhunter.schema",
    "Site": "headhunter.sites",
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
    "HeadSetError",
    "HeadhunterError",
    "HubError",
    "ModelError",
    "ObjectiveError",
    "PluginError",
    "SearchError",
    "__version__",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headhunter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
