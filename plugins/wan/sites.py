"""Site names of the wan family, made once: the adapter lists a live model's sites with them and the
published models (`PUBLISHED`) are described with them, so head sets can be written without any weights."""

from __future__ import annotations

from headhunter.format.sites import Site


def wan_sites(num_layers: int, num_heads: int) -> list[Site]:
    """Sites of a Wan transformer: the self-attention of blocks 0..n-1 (Wan 2.1 14B: 0-39)."""
    return [Site(name=f"blocks.{i}.attn1", num_heads=num_heads, kind="image") for i in range(num_layers)]


#: Published Wan models (Hub id -> blocks, heads).
PUBLISHED: dict[str, tuple[int, int]] = {
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": (40, 40),  # diffusers' WanTransformer3DModel defaults
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": (30, 12),
}
