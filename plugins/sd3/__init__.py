"""Built-in plugin: Stable Diffusion 3 / 3.5 (the adapter and the published models' site tables).

Site names are made here once, by `sd3_sites`: the adapter lists a live model's sites with it and the
published models are described with it, so head sets can be written without loading any weights. The
adapter (`headhunter.plugins.sd3.adapter`, torch + diffusers) is registered by import reference and loads
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headhunter.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from headhunter.sites import Site


def sd3_sites(num_layers: int, num_heads: int, dual_attention_layers: tuple[int, ...] = ()) -> list[Site]:
    """Sites of an SD3/SD3.5 transformer: one joint site per block, then the image-only `attn2` sites.

    The `attn2` sites come after all joint sites so that `Lk` is block k's joint attention on every
    SD3 variant (the paper's numbering).
    """
    from headhunter.sites import Site

    sites = [Site(name=f"transformer_blocks.{i}.attn", num_heads=num_heads, kind="joint") for i in range(num_layers)]
    sites += [
        Site(name=f"transformer_blocks.{i}.attn2", num_heads=num_heads, kind="image") for i in dual_attention_layers
    ]
    return sites


#: Published SD3 models (Hub id -> num_layers, num_heads, blocks with an image-only attn2).
PUBLISHED: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "stabilityai/stable-diffusion-3-medium-diffusers": (24, 24, ()),
    "stabilityai/stable-diffusion-3.5-medium": (24, 24, tuple(range(13))),
    "stabilityai/stable-diffusion-3.5-large": (38, 38, ()),
}


@hookimpl
def register_adapters(register: Register) -> None:
    register("sd3", "headhunter.plugins.sd3.adapter:SD3Adapter",
             description="Stable Diffusion 3 / 3.5 MMDiT (SD3Transformer2DModel), and pipelines built on it")


@hookimpl
def register_base_models(register: Register) -> None:
    from headhunter.sites import KnownModel

    for repo_id, (layers, heads, dual) in PUBLISHED.items():
        register(repo_id, KnownModel("sd3", tuple(sd3_sites(layers, heads, dual))),
                 description=f"sd3: {layers} joint blocks x {heads} heads" + (f", attn2 in blocks 0-{dual[-1]}" if dual else ""))


def __getattr__(name: str) -> Any:
    # SD3Adapter and SD3PerturbingProcessor stay importable from here, loaded on first access.
    if name in ("SD3Adapter", "SD3PerturbingProcessor"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
