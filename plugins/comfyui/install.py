"""`headhunter comfyui install PATH`: make a ComfyUI tree load headhunter's nodes from the installed package.

It writes one file, `PATH/custom_nodes/headhunter/__init__.py` (`SHIM`), which re-exports
`headhunter.plugins.comfyui.nodes.NODE_CLASS_MAPPINGS`; ComfyUI then imports headhunter from its own Python
environment when it loads custom nodes, so headhunter must be installed there (`pip install
headhunter-guidance` with ComfyUI's Python). Nothing else of the package is copied: upgrading headhunter
upgrades the nodes. Standard library only (the CLI imports it).
"""

from __future__ import annotations

from pathlib import Path

from headhunter.errors import HeadhunterError
from headhunter.format.files import write_atomic

#: The folder under custom_nodes/ that the shim goes in.
FOLDER = "headhunter"
#: First line of the shim: marks a file this command wrote (and may rewrite).
MARKER = "# Written by `headhunter comfyui install`:"
#: The whole custom-node package (docs/comfyui.md shows the same text for copying by hand).
SHIM = f'''{MARKER} ComfyUI loads headhunter's nodes from the installed package.
# headhunter must be installed in ComfyUI's Python environment (pip install headhunter-guidance).
from headhunter.plugins.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
'''
#: Files whose presence makes a folder a ComfyUI tree (custom_nodes/ is made if it is missing).
TREE_MARKERS = ("comfy/model_patcher.py", "nodes.py", "main.py")


class ComfyUIError(HeadhunterError, ValueError):
    """A path is not a ComfyUI tree, or the custom-node folder holds something that is not ours."""


def check_tree(path: str | Path) -> Path:
    """`path` as a ComfyUI tree (its root); ComfyUIError naming what is missing otherwise."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ComfyUIError(f"{root} is not a folder; give the ComfyUI folder (the one with main.py, nodes.py and comfy/)")
    missing = [m for m in TREE_MARKERS if not (root / m).exists()]
    if missing:
        raise ComfyUIError(f"{root} is not a ComfyUI tree: no {', '.join(missing)} there; give the ComfyUI folder "
                           "(the one with main.py, nodes.py and comfy/)")
    return root


def install(path: str | Path) -> Path:
    """Write `custom_nodes/headhunter/__init__.py` (atomically, making the folders it needs) in the ComfyUI
    tree `path`; return its path.

    Rewriting the shim is fine (idempotent); a `custom_nodes/headhunter/` that holds anything else (another
    package of that name, or an `__init__.py` this command did not write) is refused with ComfyUIError."""
    root = check_tree(path)
    folder = root / "custom_nodes" / FOLDER
    target = folder / "__init__.py"
    if folder.exists() and not folder.is_dir():
        raise ComfyUIError(f"{folder} exists and is not a folder; move it away first")
    if target.exists():
        if not target.is_file() or not target.read_text(encoding="utf-8", errors="replace").startswith(MARKER):
            raise ComfyUIError(f"{target} exists and was not written by `headhunter comfyui install`; "
                               "move that custom node away first")
    elif folder.is_dir() and any(p.name != "__pycache__" for p in folder.iterdir()):
        raise ComfyUIError(f"{folder} already holds other files; move that custom node away first")
    write_atomic(target, SHIM.encode("utf-8"))
    return target


__all__ = ["ComfyUIError", "FOLDER", "MARKER", "SHIM", "check_tree", "install"]
