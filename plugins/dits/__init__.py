"""Built-in plugin: the DiT families guided by declaration (headhunter.plugins.dits.declarations), one generic
adapter class each (`headhunter.engine.intercept.DeclaredAdapter`), registered by import reference so listing
plugins imports neither torch nor diffusers."""

from __future__ import annotations

from headhunter.plugin_system.hookspecs import Register, hookimpl


@hookimpl
def register_adapters(register: Register) -> None:
    from .declarations import DECLARATIONS

    for decl in DECLARATIONS:
        register(decl.name, f"headhunter.plugins.dits.adapters:ADAPTERS.{decl.name}",
                 description=f"{decl.description} ({', '.join(decl.classes)}), declared")
