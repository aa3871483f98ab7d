"""Built-in plugin: FLUX.2 (`Flux2Transformer2DModel`): the adapter and the published model's site table.

Sites in paper order: the double-stream `transformer_blocks.{i}.attn` (joint), then the single-stream
`single_transformer_blocks.{i}.attn` (single), as for FLUX.1; token order [text | image] in both. The
adapter itself (`headhunter.plugins.flux2.adapter`, torch + diffusers) is registered by import reference
and loads on first use.
"""

from __future__ import annotations

from headhunter.plugin_system.hookspecs import Register, hookimpl


@hookimpl
def register_adapters(register: Register) -> None:
    register("flux2", "headhunter.plugins.flux2.adapter:Flux2Adapter",
             description="FLUX.2 (Flux2Transformer2DModel: double- then single-stream blocks), and pipelines "
                         "built on it")


@hookimpl
def register_base_models(register: Register) -> None:
    # Imported here, not at the top: listing plugins (the CLI start-up) must not pay for pydantic.
    from headhunter.format.sites import KnownModel

    from .sites import PUBLISHED, flux2_sites

    for repo_id, (double, single, heads) in PUBLISHED.items():
        register(repo_id, KnownModel("flux2", tuple(flux2_sites(double, single, heads))),
                 description=f"flux2: {double} double-stream + {single} single-stream blocks x {heads} heads")
