"""headhunter: find, store, share and apply head-level perturbation guidance for diffusion transformers.

Implements HeadHunter and SoftPAG from "Where and How to Perturb: On the Design of Perturbation
Guidance in Diffusion and Flow Models" (Ahn et al., arXiv 2506.10978).
"""

from __future__ import annotations

import importlib
from typing import Any

from headhunter._version import __version__
from headhunter.errors import (
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
    "Head": "headhunter.format.headset",
    "HeadSet": "headhunter.format.headset",
    "hookimpl": "headhunter.plugin_system.hookspecs",
    "get_plugin_manager": "headhunter.plugin_system.registry",
    "get_registry": "headhunter.plugin_system.registry",
    "FORMAT_VERSION": "headhunter.format.schema",
    "CONSTANT_FORMAT_VERSION": "headhunter.format.schema",
    "GenerationSettings": "headhunter.format.schema",
    "GuidanceSettings": "headhunter.format.schema",
    "HeadSetMetadata": "headhunter.format.schema",
    "PerturbationSpec": "headhunter.format.schema",
    "SearchProvenance": "headhunter.format.schema",
    "Site": "headhunter.format.sites",
    "load_headset": "headhunter.format.loading",
    "load_model": "headhunter.engine.models",
    "Objective": "headhunter.contracts.objective",
    "Perturbation": "headhunter.contracts.perturbation",
    "ModelAdapter": "headhunter.contracts.adapter",
    "apply": "headhunter.engine.guidance",
    "GuidanceHandle": "headhunter.engine.guidance",
    "HeadHunterGuidance": "headhunter.engine.guider",
    "hunt": "headhunter.workflow.hunt",
    "atlas": "headhunter.workflow.atlas",
    "Atlas": "headhunter.atlases.atlas",
    "load_atlas": "headhunter.atlases.atlas",
    "HuntResult": "headhunter.search.search",
    "evaluate": "headhunter.search.evaluation",
    "parse_objective": "headhunter.objective.expr",
    "load_pipeline": "headhunter.engine.models",
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
