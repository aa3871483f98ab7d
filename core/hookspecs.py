"""Hook specifications: the only way plugins, built-in or third-party, add to headhunter.

Every hook receives a `register` callable: `register(name, obj, *, description="")`. The host owns
registration (it validates, records the source plugin, and rejects a name registered twice). Project
name and entry-point group: `headhunter`.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("headhunter")
hookimpl = pluggy.HookimplMarker("headhunter")

Register = Callable[..., None]


@hookspec
def register_perturbations(register: Register) -> None:
    """Register perturbations: `register(name, cls)`, cls a `headhunter.Perturbation` subclass.

    The perturbation computes only the target T·V for selected heads; the engine interpolates.
    """


@hookspec
def register_adapters(register: Register) -> None:
    """Register model adapters: `register(name, cls)`, cls a `headhunter.ModelAdapter` subclass.

    An adapter recognises a model, lists its sites and installs the perturbing attention processors.
    """


@hookspec
def register_objectives(register: Register) -> None:
    """Register objectives: `register(name, factory)`, `factory(**params) -> headhunter.Objective`."""


@hookspec
def register_models(register: Register) -> None:
    """Register loadable models: `register(name, loader)`, `loader() -> pipeline`, for `headhunter.load_model`."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the `headhunter` CLI group `cli` (e.g. `cli.add_command(my_command)`)."""
