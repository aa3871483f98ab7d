"""Built-in plugin: Wan 2.x video (`WanTransformer3DModel`): the adapter and the published models' site tables.

Sites in paper order: the self-attention `blocks.{i}.attn1` of every block (kind `image`: video tokens
only, frames x rows x cols). The text cross-attention `blocks.{i}.attn2` is not a site: it stays stock.
The adapter (`headhunter.plugins.wan.adapter`, torch + diffusers) is registered by import reference and loads
on first use.
"""

from __future__ import annotations

from headhunter.plugin_system.hookspecs import Register, hookimpl


@hookimpl
def register_adapters(register: Register) -> None:
    register("wan", "headhunter.plugins.wan.adapter:WanAdapter",
             description="Wan 2.x video (WanTransformer3DModel: self-attention sites, cross-attention stock), "
                         "and pipelines built on it")


@hookimpl
def register_base_models(register: Register) -> None:
    # Imported here, not at the top: listing plugins (the CLI start-up) must not pay for pydantic.
    from headhunter.format.sites import KnownModel

    from .sites import PUBLISHED, wan_sites

    for repo_id, (blocks, heads) in PUBLISHED.items():
        register(repo_id, KnownModel("wan", tuple(wan_sites(blocks, heads))),
                 description=f"wan: {blocks} self-attention sites x {heads} heads")
