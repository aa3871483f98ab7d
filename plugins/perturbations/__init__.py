"""Built-in plugin: the perturbations identity (PAG), softpag, uniform (UG), blur (SEG) and drop.

Registered by import reference (`module:Class`), so listing plugins or building the CLI never imports torch;
the classes live in `headhunter.plugins.perturbations.targets` and load when a perturbation is first used.
"""

from __future__ import annotations

from typing import Any

from headhunter.plugin_system.hookspecs import Register, hookimpl

_TARGETS = "headhunter.plugins.perturbations.targets"

#: name -> (class in .targets, one-line description)
BUILTIN_PERTURBATIONS: dict[str, tuple[str, str]] = {
    "identity": ("Identity", "PAG: identity target at full strength (any non-zero u acts as 1)"),
    "softpag": ("SoftPAG", "SoftPAG: A' = (1-u) A + u I, the identity target interpolated by u"),
    "uniform": ("Uniform", "uniform guidance: T = 1/N, every row's T.V is the mean of the values"),
    "blur": ("Blur", "SEG: query Gaussian-blurred on the image grid (sigma=inf: mean query); param sigma="),
    "drop": ("Drop", "T = 0: the head's output scaled by 1-u"),
}


@hookimpl
def register_perturbations(register: Register) -> None:
    for name, (cls, description) in BUILTIN_PERTURBATIONS.items():
        register(name, f"{_TARGETS}:{cls}", description=description)


def __getattr__(name: str) -> Any:
    # The classes (SoftPAG, Identity, ...) and helpers stay importable from here, loaded on first access.
    import importlib

    module = importlib.import_module(_TARGETS)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
