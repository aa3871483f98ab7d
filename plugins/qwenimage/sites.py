"""Site names of the qwenimage family, made once: the adapter lists a live model's sites with them and the
published models (`PUBLISHED`) are described with them, so head sets can be written without any weights."""

from __future__ import annotations

from headhunter.format.sites import Site


def qwenimage_sites(num_layers: int, num_heads: int) -> list[Site]:
    """Sites of a Qwen-Image transformer: one joint site per block, block order (Qwen-Image: 0-59)."""
    return [Site(name=f"transformer_blocks.{i}.attn", num_heads=num_heads, kind="joint") for i in range(num_layers)]


#: Published Qwen-Image models (Hub id -> blocks, heads): diffusers' defaults.
PUBLISHED: dict[str, tuple[int, int]] = {
    "Qwen/Qwen-Image": (60, 24),
}
