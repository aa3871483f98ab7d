"""Built-in plugin: Qwen-Image (`QwenImageTransformer2DModel`): the adapter and the published model's site table.

Sites in paper order: `transformer_blocks.{i}.attn` (joint: MMDiT double-stream blocks, one joint attention
over [text | image]). The adapter (`headhunter.plugins.qwenimage.adapter`, torch + diffusers) is imported
when the hook runs.
"""

from __future__ import annotations

from headhunter.hookspecs import Register, hookimpl
from headhunter.sites import KnownModel, Site


def qwenimage_sites(num_layers: int, num_heads: int) -> list[Site]:
    """Sites of a Qwen-Image transformer: one joint site per block, block order (Qwen-Image: 0-59)."""
    return [Site(name=f"transformer_blocks.{i}.attn", num_heads=num_heads, kind="joint") for i in range(num_layers)]


#: Published Qwen-Image models (Hub id -> blocks, heads): diffusers' defaults.
PUBLISHED: dict[str, tuple[int, int]] = {
    "Qwen/Qwen-Image": (60, 24),
}


@hookimpl
def register_adapters(register: Register) -> None:
    register("qwenimage", "headhunter.plugins.qwenimage.adapter:QwenImageAdapter", description="Qwen-Image (QwenImageTransformer2DModel, joint blocks)")


@hookimpl
def register_base_models(register: Register) -> None:
    for repo_id, (layers, heads) in PUBLISHED.items():
        register(repo_id, KnownModel("qwenimage", tuple(qwenimage_sites(layers, heads))),
                 description=f"qwenimage: {layers} joint blocks x {heads} heads")
