"""Built-in plugin: Stable Diffusion 3 / 3.5 (the adapter and the published models' site tables).

Site names are made once, by `sites.sd3_sites`: the adapter lists a live model's sites with it and the
published models are described with it, so head sets can be written without loading any weights. The
adapter (`headhunter.plugins.sd3.adapter`, torch + diffusers) is registered by import reference and loads
on first use.
"""

from __future__ import annotations

from headhunter.plugin_system.hookspecs import Register, hookimpl


@hookimpl
def register_adapters(register: Register) -> None:
    register("sd3", "headhunter.plugins.sd3.adapter:SD3Adapter",
             description="Stable Diffusion 3 / 3.5 MMDiT (SD3Transformer2DModel), and pipelines built on it")


@hookimpl
def register_base_models(register: Register) -> None:
    # Imported here, not at the top: listing plugins (the CLI start-up) must not pay for pydantic.
    from headhunter.format.sites import KnownModel

    from .sites import PUBLISHED, sd3_sites

    for repo_id, (layers, heads, dual) in PUBLISHED.items():
        register(repo_id, KnownModel("sd3", tuple(sd3_sites(layers, heads, dual))),
                 description=f"sd3: {layers} joint blocks x {heads} heads" + (f", attn2 in blocks 0-{dual[-1]}" if dual else ""))
