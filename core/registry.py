"""The plugin manager and the registry that answers "give me perturbation X / the adapter for this model".

Built-in plugins are modules listed in DEFAULT_PLUGINS and registered through the very same hooks a
third-party plugin (an entry point in the `headhunter` group) uses.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import ModelError, PluginError

#: Modules of the built-in plugins, registered at start-up like any other plugin.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "headhunter.plugins.perturbations",
    "headhunter.plugins.sd3",
    "headhunter.plugins.flux",
    "headhunter.plugins.flux2",
    "headhunter.plugins.qwenimage",
    "headhunter.plugins.wan",
    "headhunter.plugins.objectives",
    "headhunter.plugins.digits",
    "headhunter.plugins.commands",
)

KINDS = ("perturbation", "adapter", "objective", "model")
_HOOK_OF_KIND = {
    "perturbation": "register_perturbations",
    "adapter": "register_adapters",
    "objective": "register_objectives",
    "model": "register_models",
}


@dataclass(frozen=True)
class Entry:
    """One registered thing: its kind, name, the object, and the plugin/distribution it came from."""

    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str
    description: str


def get_plugin_manager(load_entry_points: bool = True, builtins: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager with the built-ins and (optionally) installed third-party plugins."""
    pm = pluggy.PluginManager("headhunter")
    pm.add_hookspecs(hookspecs)
    if builtins:
        for module_name in DEFAULT_PLUGINS:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                if err.name != module_name:
                    raise
                continue  # a built-in that is not part of this build
            pm.register(module, name=module_name)
    if load_entry_points:
        pm.load_setuptools_entrypoints("headhunter")
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
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by {existing.plugin} ({existing.distribution}) "
                f"and by {plugin} ({source[0]}); uninstall one of them"
            )
        doc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
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

    def adapter_for(self, model: Any) -> Any:
        """The adapter (an instance) that recognises `model` (a pipeline or a transformer)."""
        matches = [e for e in self.entries("adapter") if e.obj.matches(model)]
        if not matches:
            raise ModelError(
                f"no adapter recognises {type(model).__name__}; installed adapters: "
                f"{', '.join(self.names('adapter')) or '(none)'}"
            )
        return matches[0].obj()


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
