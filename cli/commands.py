"""Built-in CLI commands, added through the `register_commands` hook like any plugin's commands.

Each verb is one module under headhunter.cli that imports only click at module level (torch, diffusers and
transformers load inside the command when it runs), so building the CLI stays quick.
"""

from __future__ import annotations

import importlib
from typing import Any

from headhunter.plugin_system.hookspecs import hookimpl

#: (module under headhunter.cli, command attribute): one module per verb.
BUILTIN_COMMANDS: tuple[tuple[str, str], ...] = (
    ("show", "show"),
    ("plugins", "plugins"),
    ("presets", "presets"),
    ("inspect", "inspect"),
    ("generate", "generate"),
    ("hunt", "hunt"),
    ("atlas", "atlas"),
    ("push", "push"),
    ("pull", "pull"),
    ("search", "search"),
    ("bench", "bench"),
)


@hookimpl
def register_commands(cli: Any) -> None:
    for module_name, attr in BUILTIN_COMMANDS:
        cli.add_command(getattr(importlib.import_module(f"headhunter.cli.{module_name}"), attr))
