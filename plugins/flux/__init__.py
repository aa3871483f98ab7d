"""Built-in plugin: FLUX.1 (the adapter and the published models' site tables).

Site names are made here once, by `flux_sites`: the adapter lists a live model's sites with it and the
published models are described with it, so head sets can be written without loading any weights. The
adapter (`headhunter.plugins.flux.adapter`, torch + diffusers) is registered by import reference and loads
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headhunter.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from headhunter.sites import Site


def flux_sites(num_layers: int, num_single_layers: int, num_heads: int) -> list[Site]:
    """Sites of a FLUX.1 transformer: double-stream blocks 0..n-1, then single-stream blocks (paper numbering:
    0-18 double, 19-56 single on FLUX.1)."""
    from headhunter.sites import Site

    double = [Site(name=f"transformer_blocks.{i}.attn", num_heads=num_heads, kind="joint") for i in range(num_layers)]
    single = [
        Site(name=f"single_transformer_blocks.{i}.attn", num_heads=num_heads, kind="single")
        for i in range(num_single_layers)
    ]
    return double + single


#: Published FLUX.1 models (Hub id -> double-stream blocks, single-stream blocks, heads).
PUBLISHED: dict[str, tuple[int, int, int]] = {
    "black-forest-labs/FLUX.1-dev": (19, 38, 24),
    "black-forest-labs/FLUX.1-schnell": (19, 38, 24),
}


@hookimpl
def register_adapters(register: Register) -> None:
    register("flux", "headhunter.plugins.flux.adapter:FluxAdapter",
             description="FLUX.1 (FluxTransformer2DModel: double- then single-stream blocks), and pipelines built on it")


@hookimpl
def register_base_models(register: Register) -> None:
    from headhunter.sites import KnownModel

    for repo_id, (double, single, heads) in PUBLISHED.items():
        register(repo_id, KnownModel("flux", tuple(flux_sites(double, single, heads))),
                 description=f"flux: {double} double-stream + {single} single-stream blocks x {heads} heads")


def __getattr__(name: str) -> Any:
    # FluxAdapter and FluxPerturbingProcessor stay importable from here, loaded on first access.
    if name in ("FluxAdapter", "FluxPerturbingProcessor"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
