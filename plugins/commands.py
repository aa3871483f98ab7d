"""Built-in CLI commands, added through the `register_commands` hook like any plugin's commands."""

from __future__ import annotations

import importlib
from typing import Any

from headhunter.hookspecs import hookimpl

#: (module under headhunter.cli, command attribute): one module per verb.
BUILTIN_COMMANDS: tuple[tuple[str, str], ...] = (
    ("show", "show"),
    ("plugins", "plugins"),
    ("presets", "presets"),
    ("inspect", "inspect"),
    ("generate", "generate"),
    ("hunt", "hunt"),
    ("push", "push"),
    ("pull", "pull"),
    ("search", "search"),
    ("bench", "bench"),
    ("train_demo", "train_demo"),
)


@hookimpl
def register_commands(cli: Any) -> None:
    for module_name, attr in BUILTIN_COMMANDS:
        try:
            module = importlib.import_module(f"headhunter.cli.{module_name}")
        except ModuleNotFoundError as err:
            if err.name != f"headhunter.cli.{module_name}":
                raise
            continue  # that verb is not part of this build yet
        cli.add_command(getattr(module, attr))
