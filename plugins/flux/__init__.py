"""Built-in plugin: FLUX.1 (the adapter and the published models' site tables).

Site names are made once, by `sites.flux_sites`: the adapter lists a live model's sites with it and the
published models are described with it, so head sets can be written without loading any weights. The
adapter (`headhunter.plugins.flux.adapter`, torch + diffusers) is registered by import reference and loads
on first use.
"""

from __future__ import annotations

from headhunter.plugin_system.hookspecs import Register, hookimpl


@hookimpl
def register_adapters(register: Register) -> None:
    register("flux", "headhunter.plugins.flux.adapter:FluxAdapter",
             description="FLUX.1 (FluxTransformer2DModel: double- then single-stream blocks), and pipelines built on it")


@hookimpl
def register_base_models(register: Register) -> None:
    # Imported here, not at the top: listing plugins (the CLI start-up) must not pay for pydantic.
    from headhunter.format.sites import KnownModel

    from .sites import PUBLISHED, flux_sites

    for repo_id, (double, single, heads) in PUBLISHED.items():
        register(repo_id, KnownModel("flux", tuple(flux_sites(double, single, heads))),
                 description=f"flux: {double} double-stream + {single} single-stream blocks x {heads} heads")
