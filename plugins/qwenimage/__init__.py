"""Built-in plugin: Qwen-Image (`QwenImageTransformer2DModel`): the adapter and the published model's site table.

Sites in paper order: `transformer_blocks.{i}.attn` (joint: MMDiT double-stream blocks, one joint attention
over [text | image]). The adapter (`headhunter.plugins.qwenimage.adapter`, torch + diffusers) is registered by
import reference and loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headhunter.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from headhunter.sites import Site


def qwenimage_sites(num_layers: int, num_heads: int) -> list[Site]:
    """Sites of a Qwen-Image transformer: one joint site per block, block order (Qwen-Image: 0-59)."""
    from headhunter.sites import Site

    return [Site(name=f"transformer_blocks.{i}.attn", num_heads=num_heads, kind="joint") for i in range(num_layers)]


#: Published Qwen-Image models (Hub id -> blocks, heads): diffusers' defaults.
PUBLISHED: dict[str, tuple[int, int]] = {
    "Qwen/Qwen-Image": (60, 24),
}


@hookimpl
def register_adapters(register: Register) -> None:
    register("qwenimage", "headhunter.plugins.qwenimage.adapter:QwenImageAdapter",
             description="Qwen-Image (QwenImageTransformer2DModel: joint double-stream blocks), and pipelines "
                         "built on it")


@hookimpl
def register_base_models(register: Register) -> None:
    from headhunter.sites import KnownModel

    for repo_id, (blocks, heads) in PUBLISHED.items():
        register(repo_id, KnownModel("qwenimage", tuple(qwenimage_sites(blocks, heads))),
                 description=f"qwenimage: {blocks} joint blocks x {heads} heads")


def __getattr__(name: str) -> Any:
    # The adapter and its processors stay importable from here, loaded on first access.
    if name in ("QwenImageAdapter", "QwenImagePerturbingProcessor"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
