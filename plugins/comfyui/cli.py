"""`headhunter comfyui ...`: the ComfyUI verbs (added through the `register_commands` hook). Imports only click
at module level, like every verb."""

from __future__ import annotations

import click


@click.group()
def comfyui() -> None:
    """ComfyUI nodes: apply head sets inside ComfyUI's graph (docs/comfyui.md)."""


@comfyui.command()
@click.argument("comfyui_path", type=click.Path(file_okay=False))
def install(comfyui_path: str) -> None:
    """Make the ComfyUI tree COMFYUI_PATH load headhunter's nodes: writes custom_nodes/headhunter/__init__.py,
    which imports them from this installed package (install headhunter in ComfyUI's Python too)."""
    from headhunter.plugins.comfyui.install import install as write_shim

    target = write_shim(comfyui_path)
    click.echo(f"wrote {target}")
    click.echo("restart ComfyUI; the nodes are under advanced/guidance/headhunter "
               "(ComfyUI's Python must be able to `import headhunter`)")
