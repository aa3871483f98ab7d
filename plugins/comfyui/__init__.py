"""Built-in plugin: headhunter's ComfyUI nodes (the same head-set files applied inside ComfyUI's graph).

- `nodes`: the node classes and `NODE_CLASS_MAPPINGS` (load, combine, apply head sets; docs/comfyui.md);
- `patch`: how a head set is applied to a ComfyUI MODEL through ComfyUI's own patch points;
- `sites`: diffusers site names <-> ComfyUI blocks (SD3 / SD3.5 `joint_blocks`, FLUX `double_blocks` /
  `single_blocks`);
- `install` and the `headhunter comfyui install PATH` verb (registered below).

Importing this package (or `nodes`) never imports ComfyUI; ComfyUI modules are imported when a node runs on
a ComfyUI model, i.e. inside ComfyUI. This module imports nothing heavy: the CLI builds from it.
"""

from __future__ import annotations

import importlib
from typing import Any

from headhunter.plugin_system.hookspecs import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(importlib.import_module("headhunter.plugins.comfyui.cli").comfyui)
