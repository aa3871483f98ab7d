"""The plugin manager and the registry that answers "give me perturbation X / the adapter for this model".

Built-in plugins are entry points of this distribution in the `headhunter` group, found and registered
exactly like a third-party plugin's. Registering is cheap: a plugin may
register an import reference `"package.module:attribute"` instead of the object, and the registry imports
it on first use, so listing plugins and building the CLI never import torch or diffusers.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import pluggy

import headhunter.plugin_system.hookspecs as hookspecs
from headhunter._version import __version__
from headhunter.errors import HeadSetError, ModelError, PluginError

#: The distribution whose entry points (group `headhunter`, pyproject.toml) are the built-in plugins.
BUILTIN_DISTRIBUTION = "headhunter-guidance"
ENTRY_POINT_GROUP = "headhunter"


def builtin_plugins() -> tuple[str, ...]:
    """Module names of the built-in plugins: this distribution's own entry points in the `headhunter` group,
    in the order pyproject.toml lists them. Built-ins are found exactly the way a third-party plugin is, so
    the plugin system never names a module above it.

    Raises PluginError when none are found (the package is not installed: `pip install -e .`)."""
    found: list[str] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        if dist is not None and _canonical(dist.name) == BUILTIN_DISTRIBUTION and ep.value not in found:
            found.append(ep.value)
    if not found:
        raise PluginError(
            f"no built-in plugins found: they are entry points of the installed {BUILTIN_DISTRIBUTION!r} "
            "distribution; install the package (`pip install -e .` in a checkout) instead of importing it from a path"
        )
    return tuple(found)


def unwrap(module: Any) -> Any:
    """The module inside a `torch.compile(module)` wrapper (`OptimizedModule._orig_mod`), else `module`.
    torch-free: without torch imported there is no wrapper to look through."""
    inner = getattr(module, "_orig_mod", None)
    torch = sys.modules.get("torch")
    return inner if torch is not None and isinstance(inner, torch.nn.Module) else module


def model_of(model: Any) -> Any:
    """The transformer an adapter should recognise in `model`: `model.transformer` for a pipeline, else
    `model`, with a `torch.compile` wrapper looked through."""
    return unwrap(getattr(model, "transformer", model))


def model_name(model: Any) -> str | None:
    """The name a model goes by: diffusers' `name_or_path` of a pipeline (the Hub id or folder it was loaded
    from; `headhunter.load_model` sets a registered model's name, e.g. `digits`), else its config's
    `_name_or_path`, else None. The one place a loaded model's name is read: the found head set's base
    model, the report and the fit check all use it."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if isinstance(name, str) and name else None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


KINDS = ("perturbation", "adapter", "objective", "model", "base_model")
_HOOK_OF_KIND = {
    "perturbation": "register_perturbations",
    "adapter": "register_adapters",
    "objective": "register_objectives",
    "model": "register_models",
    "base_model": "register_base_models",
}

#: Keys a `search_defaults` hook may return (what `headhunter.hunt` fills in when not told).
SEARCH_DEFAULT_KEYS = frozenset(
    {"objective", "prompts", "seeds", "eval_seeds", "metrics", "set_metrics", "rounds", "top_k", "strength",
     "scale", "steps", "schedule", "budget", "first_pairs", "atlas", "eval_prompts"}
)

_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass
class Entry:
    """One registered thing: its kind, name, the object (or its import reference), and where it came from.

    `obj` is the registered object; an import reference `"module:attribute"` is imported on first access
    (PluginError naming the plugin and the reference when that fails).
    """

    kind: str
    name: str
    target: Any
    plugin: str
    distribution: str
    version: str
    description: str
    _loaded: Any = field(default=None, repr=False, compare=False)

    @property
    def is_reference(self) -> bool:
        return isinstance(self.target, str)

    @property
    def obj(self) -> Any:
        if not self.is_reference:
            return self.target
        if self._loaded is None:
            self._loaded = _import_reference(self.target, f"{self.kind} {self.name!r} of plugin {self.plugin}")
        return self._loaded


def _import_reference(reference: str, what: str) -> Any:
    module_name, _, attr = reference.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as err:
        raise PluginError(f"{what}: cannot load {reference!r}: {err}") from err
    return value


def get_plugin_manager(load_entry_points: bool = True, builtins: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager with the built-ins and (optionally) installed third-party plugins.

    A built-in plugin module that fails to import raises (its ImportError propagates): a broken install
    is an error, not a silently smaller toolkit.
    """
    pm = pluggy.PluginManager("headhunter")
    pm.add_hookspecs(hookspecs)
    for module_name in builtin_plugins():
        if builtins:
            pm.register(importlib.import_module(module_name), name=module_name)
        else:  # third-party entry points only: keep ours out of load_setuptools_entrypoints
            pm.set_blocked(module_name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


class Registry:
    """Everything the plugins registered, by kind and name; built from a plugin manager."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
        for kind, hook_name in _HOOK_OF_KIND.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                dist = dists.get(id(impl.plugin))
                source = (dist.project_name, dist.version) if dist else ("headhunter-guidance", __version__)
                impl.function(register=partial(self._register, kind, impl.plugin_name, source))

    def _register(self, kind: str, plugin: str, source: tuple[str, str], name: str, obj: Any, *, description: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin} registered a {kind} with invalid name {name!r}")
        if isinstance(obj, str) and not _REFERENCE.match(obj):
            raise PluginError(
                f"plugin {plugin} registered {kind} {name!r} as {obj!r}: a string must be an import reference "
                "'package.module:attribute'"
            )
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by {existing.plugin} ({existing.distribution}) "
                f"and by {plugin} ({source[0]}); uninstall one of them"
            )
        doc = description or ("" if isinstance(obj, str) else (getattr(obj, "__doc__", None) or "").strip().split("\n")[0])
        self._entries[kind][name] = Entry(kind, name, obj, plugin, source[0], source[1], doc)

    def entries(self, kind: str | None = None) -> list[Entry]:
        """All entries (of one kind), sorted by kind then name."""
        kinds = KINDS if kind is None else (kind,)
        return [e for k in kinds for e in sorted(self._entries[k].values(), key=lambda e: e.name)]

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def get(self, kind: str, name: str) -> Any:
        """The registered object, or a PluginError listing what is installed (with a suggestion)."""
        try:
            return self._entries[kind][name].obj
        except KeyError:
            installed = self.names(kind)
            close = difflib.get_close_matches(name, installed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise PluginError(
                f"Unknown {kind} {name!r}; installed: {', '.join(installed) or '(none)'}.{hint}"
            ) from None

    def perturbation(self, name: str, **params: Any) -> Any:
        """An instance of the perturbation `name` with validated parameters."""
        return self.get("perturbation", name)(**params)

    def objective(self, name: str, **params: Any) -> Any:
        """A new objective from the factory registered as `name`."""
        return self.get("objective", name)(**params)

    def model_loader(self, name: str) -> Callable[[], Any]:
        return self.get("model", name)

    def base_model(self, repo_id: str) -> Any:
        """The `KnownModel` (architecture, sites) of a published model, by Hub id (no weights loaded).

        Raises HeadSetError naming the id and listing the known ones.
        """
        entry = self._entries["base_model"].get(repo_id)
        if entry is None:
            raise HeadSetError(
                f"unknown base model {repo_id!r}; known without loading: {', '.join(self.names('base_model')) or '(none)'}. "
                "For other models pass sites=adapter.sites(model), or have an adapter plugin register it "
                "(register_base_models)."
            )
        return entry.obj

    def known_model(self, name: str) -> Any:
        """The `KnownModel` registered under `name` (a Hub id or a registered model name), or None: what can be
        checked before a model loads (headhunter.format.preflight)."""
        entry = self._entries["base_model"].get(name)
        return None if entry is None else entry.obj

    def adapter_for(self, model: Any, name: str | None = None) -> Any:
        """The adapter (an instance) that recognises `model` (a pipeline or a transformer).

        `name` picks a registered adapter explicitly (ModelError if it does not recognise `model`). Otherwise
        the matching adapter with the highest `priority` class attribute wins; when two or more share the
        highest priority the choice is ambiguous and a ModelError names them all (pick one with
        `name=`, raise one adapter's `priority`, or uninstall one).
        """
        if name is not None:
            cls = self.get("adapter", name)
            if not cls.matches(model):
                raise ModelError(f"adapter {name!r} does not recognise {type(model).__name__}")
            return cls()
        matches = [e for e in self.entries("adapter") if e.obj.matches(model)]
        if not matches:
            inner = model_of(model)
            what = type(model).__name__
            if inner is not model:
                what += f" (its transformer is a {type(inner).__name__}"
                wrapper = getattr(model, "transformer", model)
                if wrapper is not inner:
                    what += f", seen through the {type(wrapper).__name__} wrapper"
                what += ")"
            raise ModelError(
                f"no adapter recognises {what}; installed adapters: {', '.join(self.names('adapter')) or '(none)'} "
                "(each handles its own transformer class; an adapter plugin can teach others, docs/plugins.md)"
            )
        top = max(getattr(e.obj, "priority", 0) for e in matches)
        best = [e for e in matches if getattr(e.obj, "priority", 0) == top]
        if len(best) > 1:
            both = ", ".join(f"{e.name!r} ({e.distribution}, plugin {e.plugin})" for e in best)
            raise ModelError(
                f"{type(model).__name__} is recognised by several adapters of priority {top}: {both}. Pick one "
                "with registry.adapter_for(model, name=...), give one adapter a higher `priority`, or uninstall one"
            )
        return best[0].obj()

    def search_defaults(self, model: Any) -> dict[str, Any]:
        """What `hunt` uses for `model` when not told otherwise, from the plugins' `search_defaults` hooks.

        Empty when no plugin knows the model; PluginError when two plugins answer for it or one answers with
        keys outside SEARCH_DEFAULT_KEYS.
        """
        answers = [
            (impl.plugin_name, answer)
            for impl in self.pm.hook.search_defaults.get_hookimpls()
            if (answer := impl.function(model=model)) is not None
        ]
        if not answers:
            return {}
        if len(answers) > 1:
            raise PluginError(
                f"several plugins give search defaults for {type(model).__name__}: "
                f"{', '.join(name for name, _ in answers)}; uninstall one"
            )
        plugin, defaults = answers[0]
        unknown = sorted(set(defaults) - SEARCH_DEFAULT_KEYS)
        if unknown:
            raise PluginError(
                f"plugin {plugin} gave unknown search defaults {unknown}; allowed: {', '.join(sorted(SEARCH_DEFAULT_KEYS))}"
            )
        return dict(defaults)


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built on first use from the built-ins and installed plugins)."""
    global _default
    if _default is None:
        _default = Registry(get_plugin_manager())
    return _default


def reset_registry(registry: Registry | None = None) -> None:
    """Replace the process-wide registry (tests use this to install inline plugins)."""
    global _default
    _default = registry


@contextlib.contextmanager
def use_registry(registry: Registry) -> Iterator[Registry]:
    """Make `registry` the process-wide one inside the block, then put the previous one back.

    The CLI runs every command inside this, so library calls made by a command (`apply`, `hunt`,
    `load_headset`) see the plugins of the manager `make_cli(pm)` was given.
    """
    global _default
    previous = _default
    _default = registry
    try:
        yield registry
    finally:
        _default = previous
