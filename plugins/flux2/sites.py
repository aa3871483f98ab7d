"""Site names of the flux2 family, made once: the adapter lists a live model's sites with them and the
published models (`PUBLISHED`) are described with them, so head sets can be written without any weights."""

from __future__ import annotations

from headhunter.format.sites import Site


def flux2_sites(num_layers: int, num_single_layers: int, num_heads: int) -> list[Site]:
    """Sites of a FLUX.2 transformer: double-stream blocks 0..n-1, then single-stream blocks n.. (paper order:
    FLUX.2-dev 0-7 double, 8-55 single)."""
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
