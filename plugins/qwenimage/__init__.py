"""Built-in plugin: Qwen-Image (`QwenImageTransformer2DModel`): the adapter and the published model's site table.

Sites in paper order: `transformer_blocks.{i}.attn` (joint: MMDiT double-stream blocks, one joint attention
over [text | image]). The adapter (`headhunter.plugins.qwenimage.adapter`, torch + diffusers) is registered by
import reference and loads on first use.
"""

from __future__ import annotations

from headhunter.plugin_system.hookspecs import Register, hookimpl


@hookimpl
def register_adapters(register: Register) -> None:
    register("qwenimage", "headhunter.plugins.qwenimage.adapter:QwenImageAdapter",
             description="Qwen-Image (QwenImageTransformer2DModel: joint double-stream blocks), and pipelines "
                         "built on it")


@hookimpl
def register_base_models(register: Register) -> None:
    # Imported here, not at the top: listing plugins (the CLI start-up) must not pay for pydantic.
    from headhunter.format.sites import KnownModel

    from .sites import PUBLISHED, qwenimage_sites

    for repo_id, (blocks, heads) in PUBLISHED.items():
        register(repo_id, KnownModel("qwenimage", tuple(qwenimage_sites(blocks, heads))),
                 description=f"qwenimage: {blocks} joint blocks x {heads} heads")
