"""Built-in plugin: Wan 2.x video (`WanTransformer3DModel`): the adapter and the published models' site tables.

Sites in paper order: the self-attention `blocks.{i}.attn1` of every block (kind `image`: video tokens
only, frames x rows x cols). The text cross-attention `blocks.{i}.attn2` is not a site: it stays stock.
The adapter (`headhunter.plugins.wan.adapter`, torch + diffusers) is registered by import reference and loads
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headhunter.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from headhunter.sites import Site


def wan_sites(num_layers: int, num_heads: int) -> list[Site]:
    """Sites of a Wan transformer: the self-attention of blocks 0..n-1 (Wan 2.1 14B: 0-39)."""
    from headhunter.sites import Site

    return [Site(name=f"blocks.{i}.attn1", num_heads=num_heads, kind="image") for i in range(num_layers)]


#: Published Wan models (Hub id -> blocks, heads).
PUBLISHED: dict[str, tuple[int, int]] = {
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": (40, 40),  # diffusers' WanTransformer3DModel defaults
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": (30, 12),
}


@hookimpl
def register_adapters(register: Register) -> None:
    register("wan", "headhunter.plugins.wan.adapter:WanAdapter",
             description="Wan 2.x video (WanTransformer3DModel: self-attention sites, cross-attention stock), "
                         "and pipelines built on it")


@hookimpl
def register_base_models(register: Register) -> None:
    from headhunter.sites import KnownModel

    for repo_id, (blocks, heads) in PUBLISHED.items():
        register(repo_id, KnownModel("wan", tuple(wan_sites(blocks, heads))),
                 description=f"wan: {blocks} self-attention sites x {heads} heads")


def __getattr__(name: str) -> Any:
    # The adapter and its processors stay importable from here, loaded on first access.
    if name in ("WanAdapter", "WanPerturbingProcessor"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
