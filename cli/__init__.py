"""The `headhunter` command line: a click group built by `make_cli(pm)`; every command comes from a plugin.

Built-in commands live one module per verb in this package and are added through the same
`register_commands` hook that third-party plugins use (see headhunter.plugins.commands).
"""

from __future__ import annotations

import os
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads made sampling up to
# 60x slower next to one other busy process, at no measurable cost when the machine is quiet. Must be set
# before torch is first imported (the package root does not import torch).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click
import pluggy

from headhunter._version import __version__
from headhunter.errors import HeadhunterError


class _Group(click.Group):
    """A click group that turns library errors into clean CLI errors (no traceback for user mistakes)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HeadhunterError as err:
            raise click.ClickException(str(err)) from err


def make_cli(pm: pluggy.PluginManager | None = None) -> click.Group:
    """Build the CLI group with the commands of every registered plugin (default: all installed)."""
    from headhunter.registry import get_plugin_manager

    pm = pm if pm is not None else get_plugin_manager()

    @click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "obj": pm})
    @click.version_option(__version__, prog_name="headhunter")
    def cli() -> None:
        """Find, store, share and apply head-level perturbation guidance (HeadHunter, SoftPAG)
        for diffusion transformers: SD3/SD3.5, FLUX.1 and the embedded digits demo model."""

    pm.hook.register_commands(cli=cli)
    return cli


def main() -> None:
    """Console-script entry point."""
    make_cli()(prog_name="headhunter")
