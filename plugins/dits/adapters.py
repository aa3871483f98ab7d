"""The declared families' adapter classes (imports torch and diffusers through the engine)."""

from __future__ import annotations

from types import SimpleNamespace

from headhunter.engine.intercept import DeclaredAdapter

from .declarations import DECLARATIONS

#: name -> DeclaredAdapter subclass (attribute access: the registry's "module:ADAPTERS.name" references)
ADAPTERS = SimpleNamespace(**{d.name: DeclaredAdapter.of(d) for d in DECLARATIONS})
