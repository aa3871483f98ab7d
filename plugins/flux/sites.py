"""Site names of the flux family, made once: the adapter lists a live model's sites with them and the
published models (`PUBLISHED`) are described with them, so head sets can be written without any weights."""

from __future__ import annotations

from headhunter.format.sites import Site


def flux_sites(num_layers: int, num_single_layers: int, num_heads: int) -> list[Site]:
    """Sites of a FLUX.1 transformer: double-stream blocks 0..n-1, then single-stream blocks (paper numbering:
    0-18 double, 19-56 single on FLUX.1)."""
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
