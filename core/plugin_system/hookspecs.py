"""Hook specifications: the only way plugins, built-in or third-party, add to headhunter.

The `register_*` hooks receive a `register` callable: `register(name, obj, *, description="")`. The host
owns registration (it validates, records the source plugin, and rejects a name registered twice). `obj`
may be an import reference `"package.module:attribute"` instead of the object itself: it is imported on
first use, so registering stays cheap (give `description=`, which is then not read from a docstring).
Registration must not import torch, diffusers or transformers: `headhunter --help`, `plugins` and
`presets` run without them. Project name and entry-point group: `headhunter`.
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
def register_base_models(register: Register) -> None:
    """Register published models by Hub id: `register(repo_id, headhunter.format.sites.KnownModel(architecture, sites))`.

    Lets head sets name a base model (`HeadSet.from_heads(..., base_model=repo_id)`) without loading it.
    """


@hookspec
def search_defaults(model: Any) -> dict[str, Any] | None:
    """Return what `headhunter.hunt` uses for `model` when not told otherwise, or None if not your model.

    Keys (all optional): objective, prompts, seeds, eval_seeds, metrics, set_metrics, rounds, top_k,
    strength, scale, steps, schedule, budget, first_pairs, atlas (`headhunter.plugin_system.registry.SEARCH_DEFAULT_KEYS`).
    `atlas` is a dict for `headhunter.atlases.atlas` (all optional): prompts, seeds, objectives, strength, scale,
    steps, words ({statistic: (word up, word down)}), and classes (a name) with classify (images -> int64
    [B] class ids) for the "changes the <class>" measure. Two plugins answering for one model is an error.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the `headhunter` CLI group `cli` (e.g. `cli.add_command(my_command)`)."""
