"""Site names of the sd3 family, made once: the adapter lists a live model's sites with them and the
published models (`PUBLISHED`) are described with them, so head sets can be written without any weights."""

from __future__ import annotations

from headhunter.format.sites import Site


def sd3_sites(num_layers: int, num_heads: int, dual_attention_layers: tuple[int, ...] = ()) -> list[Site]:
    """Sites of an SD3/SD3.5 transformer: one joint site per block, then the image-only `attn2` sites.

    The `attn2` sites come after all joint sites so that `Lk` is block k's joint attention on every
    SD3 variant (the paper's numbering).
    """
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
