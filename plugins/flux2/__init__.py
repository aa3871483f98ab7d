"""Built-in plugin: FLUX.2 (`Flux2Transformer2DModel`): the adapter and the published model's site table.

Sites in paper order: the double-stream `transformer_blocks.{i}.attn` (joint), then the single-stream
`single_transformer_blocks.{i}.attn` (single), as for FLUX.1; token order [text | image] in both. The
adapter itself (`headhunter.plugins.flux2.adapter`, torch + diffusers) is registered by import reference
and loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headhunter.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from headhunter.sites import Site


def flux2_sites(num_layers: int, num_single_layers: int, num_heads: int) -> list[Site]:
    """Sites of a FLUX.2 transformer: double-stream blocks 0..n-1, then single-stream blocks n.. (paper order:
    FLUX.2-dev 0-7 double, 8-55 single)."""
    from headhunter.sites import Site

    double = [Site(name=f"transformer_blocks.{i}.attn", num_heads=num_heads, kind="joint") for i in range(num_layers)]
    single = [
        Site(name=f"single_transformer_blocks.{i}.attn", num_heads=num_heads, kind="single")
        for i in range(num_single_layers)
    ]
    return double + single


#: Published FLUX.2 models (Hub id -> double-stream blocks, single-stream blocks, heads): diffusers' defaults.
PUBLISHED: dict[str, tuple[int, int, int]] = {
    "black-forest-labs/FLUX.2-dev": (8, 48, 48),
}


@hookimpl
def register_adapters(register: Register) -> None:
    register("flux2", "headhunter.plugins.flux2.adapter:Flux2Adapter",
             description="FLUX.2 (Flux2Transformer2DModel: double- then single-stream blocks), and pipelines "
                         "built on it")


@hookimpl
def register_base_models(register: Register) -> None:
    from headhunter.sites import KnownModel

    for repo_id, (double, single, heads) in PUBLISHED.items():
        register(repo_id, KnownModel("flux2", tuple(flux2_sites(double, single, heads))),
                 description=f"flux2: {double} double-stream + {single} single-stream blocks x {heads} heads")


def __getattr__(name: str) -> Any:
    # The adapter and its processors stay importable from here, loaded on first access.
    if name in ("Flux2Adapter", "Flux2PerturbingProcessor", "Flux2SinglePerturbingProcessor"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
